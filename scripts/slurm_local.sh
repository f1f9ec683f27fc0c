#!/usr/bin/env bash
# A private one-node SLURM cluster on this machine, for tests and for trying the
# sbatch scripts by hand.
#
#   scripts/slurm_local.sh start  [DIR]   install slurm/munge if missing, start the daemons
#   scripts/slurm_local.sh stop   [DIR]   stop exactly the daemons started for DIR
#   scripts/slurm_local.sh status [DIR]   show what runs (exit 0 running, 3 stopped)
#   scripts/slurm_local.sh env    [DIR]   print the export line for clients
#
# DIR (default $SLURM_LOCAL_DIR or /tmp/cosmonet-slurm) holds everything: slurm.conf,
# a private munge key and socket, state/spool directories, pid files and logs.
# Nothing under /etc is written; the system munged/slurm services are not touched.
# Clients (sinfo, sbatch, srun, ...) need:  export SLURM_CONF=DIR/slurm.conf
#
# Settings (environment): SLURM_LOCAL_CPUS=N pretends the node has N CPUs (to run more
# ranks than cores; default: what `slurmd -C` finds), SLURM_LOCAL_TIMEOUT=seconds to wait
# for the node to become idle (default 60), SLURM_LOCAL_PORT=first port to try (6817).
#
# Exit codes: 0 ok, 1 failure (daemon logs printed), 2 usage, 3 not running (status),
# 5 slurm is not installed and cannot be installed here (no apt-get, not root).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
PROG=slurm_local
say() { echo "$PROG: $*"; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

cmd=${1:-}
case "$cmd" in
  start|stop|status|env) ;;
  *) echo "usage: $0 start|stop|status|env [DIR]" >&2; exit 2 ;;
esac
DIR=${2:-${SLURM_LOCAL_DIR:-/tmp/cosmonet-slurm}}
DIR=$(realpath -m -- "$DIR")
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
export SLURM_CONF=$CONF
# Jobs submitted from inside another allocation must not inherit its settings.
for v in $(compgen -e); do
  case "$v" in SLURM_CONF|SLURM_LOCAL_*) ;; SLURM_*|SBATCH_*|SRUN_*|SALLOC_*) unset "$v" ;; esac
done

# ---------------------------------------------------------------- processes
# pid of daemon NAME (munged, slurmctld, slurmd) if its pid file exists and the process
# is that daemon, started for this DIR; empty otherwise.
daemon_pid() {
  local name=$1 pidfile=$DIR/$1.pid pid cmdline
  [ -r "$pidfile" ] || return 0
  pid=$(tr -dc '0-9' < "$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
  cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 0
  case "$cmdline" in
    *"$name"*"$DIR/"*) echo "$pid" ;;
  esac
}

stop_pids() {  # stop_pids NAME:PID...: SIGTERM to all, SIGKILL to those left after 10 s
  local item left i
  for item in "$@"; do kill -TERM "${item#*:}" 2>/dev/null || true; done
  left=("$@")
  for i in $(seq 100); do
    local still=()
    for item in "${left[@]}"; do
      if kill -0 "${item#*:}" 2>/dev/null; then still+=("$item")
      else say "stopped ${item%%:*} (pid ${item#*:})"; fi
    done
    left=("${still[@]}")
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  for item in "${left[@]}"; do
    kill -KILL "${item#*:}" 2>/dev/null || true
    say "killed ${item%%:*} (pid ${item#*:}) after 10 s"
  done
}

# slurmstepd processes of this cluster (they hold sockets in DIR/spool open)
stepd_pids() {
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if ls -l "/proc/$p/fd" 2>/dev/null | grep -qF -- "$DIR/"; then echo "$p"; fi
  done
}

show_logs() {
  local f
  for f in "$DIR"/log/munged.log "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log; do
    [ -s "$f" ] || continue
    echo "----- $f (last 40 lines)" >&2
    tail -n 40 "$f" >&2
  done
}

do_stop() {
  local pid ids p name
  if [ -n "$(daemon_pid slurmctld)" ] && [ -n "$(daemon_pid munged)" ]; then
    ids=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$ids" ]; then
      say "cancelling jobs $(echo $ids)"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for _ in $(seq 50); do
        [ -z "$(squeue -h -o %i 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
  fi
  # all together: each daemon takes ~2 s to exit on SIGTERM, none needs the others for it
  local rest=()
  for p in $(stepd_pids); do rest+=("slurmstepd:$p"); done
  for name in slurmd slurmctld munged; do
    pid=$(daemon_pid $name)
    if [ -n "$pid" ]; then rest+=("$name:$pid"); fi
  done
  if [ ${#rest[@]} -gt 0 ]; then stop_pids "${rest[@]}"; fi
  rm -f "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"
}

status_line() {  # "munged:PID slurmctld:PID slurmd:-"
  local name pid out=""
  for name in munged slurmctld slurmd; do
    pid=$(daemon_pid $name)
    out="$out $name:${pid:--}"
  done
  echo "${out# }"
}

all_running() {
  [ -n "$(daemon_pid munged)" ] && [ -n "$(daemon_pid slurmctld)" ] && [ -n "$(daemon_pid slurmd)" ]
}

# ---------------------------------------------------------------- installation
pmix_ok() {
  # Debian's mpi_pmix plugin dlopen()s the unversioned libpmix.so, shipped by libpmix-dev.
  local d
  for d in /usr/lib/*-linux-gnu/pmix2/lib /usr/lib/pmix2/lib /usr/lib64/pmix2/lib; do
    [ -e "$d/libpmix.so" ] && return 0
  done
  return 1
}

ensure_installed() {
  local need=() c
  for c in slurmctld slurmd sinfo sbatch srun scontrol; do
    command -v $c >/dev/null 2>&1 || { need+=(slurm-wlm); break; }
  done
  for c in munged munge mungekey; do
    command -v $c >/dev/null 2>&1 || { need+=(munge); break; }
  done
  pmix_ok || need+=(libpmix2 libpmix-dev)
  if [ ${#need[@]} -eq 0 ]; then
    # (no client command here: they retry for 60 s while slurm.conf does not exist yet)
    say "slurm $(dpkg-query -W -f '${Version}' slurm-client 2>/dev/null || echo '?') and munge already installed"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$PROG: cannot install ${need[*]}: no apt-get on this machine" >&2; exit 5
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "$PROG: cannot install ${need[*]}: need root for apt-get" >&2; exit 5
  fi
  export DEBIAN_FRONTEND=noninteractive
  local t0=$SECONDS
  # apt-get update only when the package lists do not know slurm-wlm (fresh image)
  if ! apt-cache show slurm-wlm >/dev/null 2>&1 || ! apt-cache show libpmix-dev >/dev/null 2>&1; then
    say "apt-get update"
    apt-get update -qq || echo "$PROG: apt-get update failed" >&2
  fi
  say "apt-get install ${need[*]}"
  if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$DIR/log/apt.log" 2>&1; then
    say "apt-get install failed; apt-get update and retry"
    apt-get update -qq || true
    if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$DIR/log/apt.log" 2>&1; then
      tail -n 20 "$DIR/log/apt.log" >&2
      echo "$PROG: cannot install ${need[*]} with apt-get" >&2; exit 5
    fi
  fi
  say "installed ${need[*]} in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- configuration
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_conf() {
  local node cpus port line
  node=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  line=$(slurmd -C 2>/dev/null | head -n 1)
  case "$line" in NodeName=*) ;; *) fail_start "slurmd -C failed: $line" ;; esac
  line=${line#NodeName=* }
  if [ -n "${SLURM_LOCAL_CPUS:-}" ]; then
    cpus=$SLURM_LOCAL_CPUS
    line="CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 $(echo "$line" | grep -o 'RealMemory=[0-9]*')"
  fi
  port=${SLURM_LOCAL_PORT:-6817}
  for _ in $(seq 50); do
    port_busy "$port" || port_busy $((port + 1)) || break
    port=$((port + 2))
  done
  cat > "$CONF" <<EOF
# Generated by scripts/slurm_local.sh for a private one-node test cluster.
ClusterName=cosmonet-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 $line State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  say "wrote $CONF (node $node: $line; ports $port,$((port + 1)))"
}

# ---------------------------------------------------------------- start
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2 end; shift 2
  end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then return 1; fi
    sleep 0.2
  done
}

munge_ok() { munge -n -S "$SOCK" </dev/null | unmunge -S "$SOCK" >/dev/null 2>&1; }
node_idle() { [ "$(sinfo -h -N -o %T 2>/dev/null | head -n 1)" = idle ]; }

fail_start() {
  echo "$PROG: error: $*" >&2
  show_logs
  say "stopping what was started"
  do_stop
  exit 1
}

do_start() {
  local t0=$SECONDS
  if [ -n "${SLURM_LOCAL_CPUS:-}" ] && ! [[ "$SLURM_LOCAL_CPUS" =~ ^[1-9][0-9]*$ ]]; then
    die "SLURM_LOCAL_CPUS must be a positive integer, not '$SLURM_LOCAL_CPUS'"
  fi
  [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_TIMEOUT must be a positive integer, not '$TIMEOUT'"
  mkdir -p "$DIR/log"
  ensure_installed
  t0=$SECONDS
  if all_running; then
    say "already running in $DIR ($(status_line))"
    say "clients: export SLURM_CONF=$CONF"
    return 0
  fi
  if [ -n "$(daemon_pid munged)$(daemon_pid slurmctld)$(daemon_pid slurmd)" ]; then
    say "partly running ($(status_line)); restarting"
    do_stop
  fi
  # unix socket paths are limited to 108 bytes (munge, slurmstepd and pmix sockets)
  [ ${#DIR} -le 70 ] || die "DIR is too long for unix sockets (${#DIR} > 70 characters): $DIR"
  mkdir -p "$DIR"/munge "$DIR"/state "$DIR"/spool "$DIR"/log
  chmod 700 "$DIR"/munge
  if [ ! -s "$DIR/munge/munge.key" ]; then
    mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 \
      || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 600 "$DIR/munge/munge.key"
    say "created munge key $DIR/munge/munge.key"
  fi
  # --force: run as root and accept a socket below a non-world-searchable directory
  # (pytest's tmp directories are 0700); every client here is root anyway.
  rm -f "$SOCK" "$SOCK.lock"
  munged --force --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" \
    || fail_start "munged failed to start"
  wait_for 10 munge munge_ok || fail_start "munged does not answer on $SOCK"
  say "started munged (pid $(daemon_pid munged), socket $SOCK)"

  write_conf
  slurmctld -f "$CONF" || fail_start "slurmctld failed to start"
  wait_for 20 slurmctld sh -c "[ -n \"\$(cat '$DIR/slurmctld.pid' 2>/dev/null)\" ] && scontrol ping | grep -q UP" \
    || fail_start "slurmctld does not answer (scontrol ping)"
  say "started slurmctld (pid $(daemon_pid slurmctld))"
  slurmd -f "$CONF" || fail_start "slurmd failed to start"
  wait_for 10 slurmd sh -c "[ -n \"\$(cat '$DIR/slurmd.pid' 2>/dev/null)\" ]" \
    || fail_start "slurmd wrote no pid file"
  say "started slurmd (pid $(daemon_pid slurmd))"
  if ! wait_for "$TIMEOUT" "idle node" node_idle; then
    sinfo -N -l >&2 || true
    scontrol show node >&2 || true
    fail_start "node not idle after $TIMEOUT s"
  fi
  say "node $(hostname -s) idle after $((SECONDS - t0)) s; partition debug"
  say "clients: export SLURM_CONF=$CONF"
}

case "$cmd" in
  start) do_start ;;
  stop)
    if [ -z "$(daemon_pid munged)$(daemon_pid slurmctld)$(daemon_pid slurmd)$(stepd_pids)" ]; then
      say "not running in $DIR"
      rm -f "$DIR"/munged.pid "$DIR"/slurmctld.pid "$DIR"/slurmd.pid
    else
      do_stop
      say "stopped ($DIR kept: logs in $DIR/log)"
    fi ;;
  status)
    say "$DIR: $(status_line)"
    if all_running; then
      sinfo -N -o '%N %P %T %c %m' 2>&1 | sed "s/^/$PROG: /"
      say "clients: export SLURM_CONF=$CONF"
    else
      exit 3
    fi ;;
  env) echo "export SLURM_CONF=$CONF" ;;
esac
