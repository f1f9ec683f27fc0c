#!/usr/bin/env bash
# Set up cosmonet: a virtual environment with the Python packages, on the MPI and FFTW that
# this machine already has (docs/install.md). Safe to run again: each step is skipped when done.
#
#   scripts/setup_env.sh                      the set-up (make setup)
#   scripts/setup_env.sh --check              say what it finds and would do, change nothing
#   scripts/setup_env.sh --wheelhouse DIR     write every wheel of the set-up into DIR (make wheelhouse)
#
# MPI and FFTW (needed by the [mpi] extra only): an `mpicc` on PATH (or $MPICC), as `module
# load openmpi` gives; FFTW from $FFTW_ROOT (or $FFTW_DIR, $FFTW_HOME), pkg-config's fftw3,
# the directories in $CPATH/$LIBRARY_PATH, or $FFTW_PREFIXES (default /usr /usr/local
# /opt/local /opt/homebrew). When one is missing: as root with apt-get, it is installed
# (openmpi-bin libopenmpi-dev, libfftw3-dev); otherwise one line says what to load or
# install, and the script stops.
#
# Environment:
#   VENV        the virtual environment (default .venv)
#   PYTHON      the Python that creates it (default python3)
#   EXTRAS      extras to install besides the core (default mpi,test; empty: the core alone,
#               e.g. on a GPU node without MPI)
#   TORCH_SPEC  torch requirement (default torch==2.13.0, the CPU build; on a GPU cluster
#               e.g. "torch>=2.1")
#   WHEELHOUSE  install from this directory only, no network (pip --no-index); made by
#               `make wheelhouse` on a machine with network
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS-mpi,test}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WHEELHOUSE=${WHEELHOUSE:-}
MODE=setup
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) MODE=check ;;
    --wheelhouse) MODE=wheelhouse; OUT=${2:?--wheelhouse needs a directory}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_env: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = wheelhouse ]; then
  EXTRAS=${WHEELHOUSE_EXTRAS:-mpi,test}      # a wheelhouse holds every extra the set-up can ask for
fi
say() { echo "setup_env: $*"; }
die() { echo "setup_env: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
wants() { [[ ",$EXTRAS," == *",$1,"* ]]; }

# --------------------------------------------------------------------------- MPI and FFTW
MPI_FOUND="" FFTW_INC="" FFTW_LIB=""
find_mpi() {
  local cc=${MPICC:-mpicc}
  MPI_FOUND=$(command -v "$cc" 2>/dev/null || true)
}
fftw_lib_in() {  # fftw_lib_in DIR...: the first DIR that holds libfftw3
  local d
  for d in "$@"; do
    [ -n "$d" ] || continue
    compgen -G "$d/libfftw3.so*" >/dev/null || compgen -G "$d/libfftw3.a" >/dev/null \
      || compgen -G "$d/libfftw3.dylib" >/dev/null || continue
    echo "$d"; return 0
  done
  return 1
}
fftw_inc_in() {
  local d
  for d in "$@"; do
    [ -n "$d" ] && [ -e "$d/fftw3.h" ] && { echo "$d"; return 0; }
  done
  return 1
}
find_fftw() {
  local triplet incs=() libs=() p
  triplet=$(gcc -print-multiarch 2>/dev/null || true)
  for p in "${FFTW_ROOT:-}" "${FFTW_DIR:-}" "${FFTW_HOME:-}"; do
    [ -n "$p" ] || continue
    incs+=("$p/include"); libs+=("$p/lib" "$p/lib64" ${triplet:+"$p/lib/$triplet"})
  done
  incs+=("${FFTW_INCLUDE_DIR:-}" "${FFTW_INC:-}"); libs+=("${FFTW_LIBRARY_DIR:-}" "${FFTW_LIB:-}")
  local pc=${PKG_CONFIG:-pkg-config}
  if command -v "$pc" >/dev/null 2>&1 && "$pc" --exists fftw3 2>/dev/null; then
    incs+=("$("$pc" --variable=includedir fftw3)"); libs+=("$("$pc" --variable=libdir fftw3)")
  fi
  local IFS=:
  for p in ${CPATH:-} ${C_INCLUDE_PATH:-}; do incs+=("$p"); done
  for p in ${LIBRARY_PATH:-} ${LD_LIBRARY_PATH:-}; do libs+=("$p"); done
  unset IFS
  for p in ${FFTW_PREFIXES-/usr /usr/local /opt/local /opt/homebrew}; do
    incs+=("$p/include"); libs+=(${triplet:+"$p/lib/$triplet"} "$p/lib64" "$p/lib")
  done
  FFTW_INC=$(fftw_inc_in "${incs[@]}" || true)
  FFTW_LIB=$(fftw_lib_in "${libs[@]}" || true)
}

check_system() {
  # sets NEED_APT (Debian packages to install) and HINTS (what a non-root user should load)
  NEED_APT=() HINTS=()
  wants mpi || return 0
  find_mpi
  find_fftw
  if [ -z "$MPI_FOUND" ]; then
    NEED_APT+=(openmpi-bin libopenmpi-dev); HINTS+=("an MPI (mpicc on PATH: module load openmpi)")
  fi
  # headers are needed to build mpi4py-fft; from a wheelhouse its wheel is built already
  if [ -z "$FFTW_LIB" ] || { [ -z "$WHEELHOUSE" ] && [ -z "$FFTW_INC" ]; }; then
    NEED_APT+=(libfftw3-dev); HINTS+=("FFTW 3 (module load fftw, or set FFTW_ROOT)")
  fi
}

report_system() {
  wants mpi || { say "no [mpi] extra asked for (EXTRAS='$EXTRAS'): MPI and FFTW not needed"; return 0; }
  [ -n "$MPI_FOUND" ] && say "MPI: $MPI_FOUND ($("$MPI_FOUND" --showme:version 2>/dev/null \
    || "$MPI_FOUND" -v 2>&1 | head -n 1 || true))"
  [ -n "$FFTW_LIB" ] && say "FFTW: headers ${FFTW_INC:-(none: installing a built wheel)}, library $FFTW_LIB"
  return 0
}

check_system
if [ ${#NEED_APT[@]} -gt 0 ] && is_root && command -v apt-get >/dev/null 2>&1; then
  if [ "$MODE" = check ]; then
    say "would apt-get install ${NEED_APT[*]}"
    NEED_APT=()
  else
    say "apt-get install ${NEED_APT[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${NEED_APT[@]}" >/dev/null
    check_system
  fi
fi
if [ ${#NEED_APT[@]} -gt 0 ]; then   # not root (or no apt-get): one line, what to load or install
  hint=$(printf '%s and ' "${HINTS[@]}"); hint=${hint% and }
  die "the [mpi] extra needs $hint; load or install it (as root: apt-get install ${NEED_APT[*]}), or set EXTRAS=test for the core install without MPI (docs/install.md)"
fi
report_system
[ -n "$FFTW_INC" ] && export FFTW_INCLUDE_DIR=$FFTW_INC     # what mpi4py-fft's build reads
[ -n "$FFTW_LIB" ] && export FFTW_LIBRARY_DIR=$FFTW_LIB

PIP_OPTS=(-q --no-input)
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "WHEELHOUSE $WHEELHOUSE is not a directory (make it with 'make wheelhouse' on a machine with network)"
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
  PIP_OPTS+=(--no-index --find-links "$WHEELHOUSE")
  say "installing from $WHEELHOUSE only (pip --no-index)"
fi
SPEC=".${EXTRAS:+[$EXTRAS]}"
NAME="cosmonet${EXTRAS:+[$EXTRAS]}"

if [ "$MODE" = check ]; then
  say "would install into $VENV: $TORCH_SPEC and $NAME${WHEELHOUSE:+ from $WHEELHOUSE}"
  exit 0
fi

# --------------------------------------------------------------------------- wheelhouse
if [ "$MODE" = wheelhouse ]; then
  PY="$VENV/bin/python"
  [ -x "$PY" ] || PY=$PYTHON
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  say "wheels for $("$PY" -c 'import sys;print("Python %d.%d" % sys.version_info[:2])') into $OUT"
  extra_reqs=()
  # Horovod's wheel is built by scripts/build_horovod.sh (make horovod) into its cache
  if "$PY" -c 'import torch' >/dev/null 2>&1; then
    tv=$("$PY" -c 'import torch;print(torch.__version__)')
    pt=$("$PY" -c 'import sys;print("cp%d%d" % sys.version_info[:2])')
    cache=${COSMONET_WHEEL_CACHE:-$HOME/.cache/cosmonet/wheels}/horovod-0.28.1-$pt-torch$tv${HOROVOD_GPU_OPERATIONS:+-gpu$HOROVOD_GPU_OPERATIONS}
    hvd=$(compgen -G "$cache/horovod-0.28.1-$pt-*.whl" | head -n 1 || true)
    if [ -n "$hvd" ]; then
      cp -f "$hvd" "$OUT/"
      extra_reqs+=("horovod==0.28.1")
      say "horovod: $(basename "$hvd") (built locally for torch $tv)"
    else
      say "horovod: no wheel built for torch $tv yet ('make horovod' builds one); left out"
    fi
  fi
  "$PY" -m pip wheel "${PIP_OPTS[@]}" --find-links "$OUT" -w "$OUT" pip setuptools wheel "$TORCH_SPEC" \
    ".[${EXTRAS}]" "${extra_reqs[@]}"
  # the cosmonet wheel itself is not needed (make setup installs the checkout) and would go stale
  rm -f "$OUT"/cosmonet-*.whl
  say "wheelhouse ready: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
  say "on the offline machine: make setup WHEELHOUSE=$OUT (and make horovod WHEELHOUSE=$OUT)"
  exit 0
fi

# --------------------------------------------------------------------------- the venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.cosmonet-installed"
want="extras=$EXTRAS torch=$TORCH_SPEC"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/pip" install "${PIP_OPTS[@]}" --upgrade pip setuptools wheel
  "$VENV/bin/pip" install "${PIP_OPTS[@]}" "$TORCH_SPEC"
  "$VENV/bin/pip" install "${PIP_OPTS[@]}" -e "$SPEC"
  echo "$want" >"$stamp"
fi
say "ready ($VENV, $NAME)"
