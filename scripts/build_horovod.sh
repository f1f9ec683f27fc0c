#!/usr/bin/env bash
# Install Horovod (PyTorch frontend, MPI + gloo, CPU) into a cosmonet virtual
# environment.  See docs/horovod.md.
#
#   scripts/build_horovod.sh [--no-build] [VENV]      (VENV defaults to .venv)
#
# 1. If `import horovod.torch` already works in VENV: nothing to do.
# 2. Else, if the wheel cache holds a horovod wheel built for this Python and this
#    torch version, pip-install it (seconds).
# 3. Else build the wheel from the PyPI sdist (about 10 minutes on 2 cores), store it in
#    the cache and install it.  With --no-build (or HOROVOD_NO_BUILD=1) this step is
#    skipped and the script exits 0 without horovod (tests needing it then skip).
#
# Why a build is needed at all: PyPI ships horovod only as an sdist, and 0.28.1's
# CMake files force -std=c++14 while torch 2.x headers need C++17.  We put compiler
# wrappers first on PATH that rewrite -std=c++14 to -std=c++17.  CMake 4 also refuses
# the bundled gloo's cmake_minimum_required, hence CMAKE_POLICY_VERSION_MINIMUM=3.5
# (and Debian's cmake 3.25 / PyPI's cmake<4 are preferred).
#
# Environment:
#   COSMONET_WHEEL_CACHE   wheel cache root (default ~/.cache/cosmonet/wheels)
#   HOROVOD_BUILD_JOBS     parallel compile jobs (default 2)
#   HOROVOD_NO_BUILD=1     same as --no-build
#   HOROVOD_GPU_OPERATIONS kept if set (NCCL on a GPU cluster); unset for the CPU build
#   WHEELHOUSE             offline: install the horovod wheel (and its dependencies) from
#                          this directory only, as `make wheelhouse` wrote it; never build
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

HVD_VERSION=0.28.1
NO_BUILD=${HOROVOD_NO_BUILD:-0}
VENV_ENV=${VENV:-}
VENV=""
for arg in "$@"; do
  case "$arg" in
    --no-build) NO_BUILD=1 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build_horovod: unknown option $arg" >&2; exit 2 ;;
    *) VENV=$arg ;;
  esac
done
VENV=${VENV:-$VENV_ENV}   # relative to the current directory; default: the repository's .venv
VENV=${VENV:-$REPO/.venv}
PY="$VENV/bin/python"
CACHE_ROOT=${COSMONET_WHEEL_CACHE:-$HOME/.cache/cosmonet/wheels}
JOBS=${HOROVOD_BUILD_JOBS:-2}
WHEELHOUSE=${WHEELHOUSE:-}
PIP_OPTS=(-q --no-input)
if [ -n "$WHEELHOUSE" ]; then
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
  PIP_OPTS+=(--no-index --find-links "$WHEELHOUSE")
fi
T0=$SECONDS

say() { echo "build_horovod: $*"; }
elapsed() { local s=$((SECONDS - T0)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
hvd_imports() { "$PY" -c 'import horovod.torch' >/dev/null 2>&1; }

if [ ! -x "$PY" ]; then
  say "no virtual environment at $VENV (run 'make setup' first)" >&2
  exit 1
fi

# --- 1. already installed? ---------------------------------------------------------
if hvd_imports; then
  say "horovod.torch already importable in $VENV ($("$PY" -c 'import horovod;print(horovod.__version__)')), nothing to do"
  exit 0
fi

# --- 2. cached wheel? --------------------------------------------------------------
if ! TORCH_VERSION=$("$PY" -c 'import torch;print(torch.__version__)' 2>/dev/null); then
  say "torch is not installed in $VENV (run 'make setup' first)" >&2
  exit 1
fi
PY_TAG=$("$PY" -c 'import sys;print("cp%d%d" % sys.version_info[:2])')
# A GPU build (HOROVOD_GPU_OPERATIONS=NCCL, see docs/horovod.md) gets its own directory.
GPU_TAG=${HOROVOD_GPU_OPERATIONS:+-gpu$HOROVOD_GPU_OPERATIONS}
CACHE_DIR="$CACHE_ROOT/horovod-$HVD_VERSION-$PY_TAG-torch$TORCH_VERSION$GPU_TAG"
find_wheel() { compgen -G "$CACHE_DIR/horovod-$HVD_VERSION-$PY_TAG-*.whl" | head -n 1 || true; }

install_wheel() {  # install_wheel WHEEL -> 0 when horovod.torch imports afterwards
  # A horovod that does not import (e.g. built for another torch) has the same version
  # number, and pip would keep it: remove it first.
  if "$VENV/bin/pip" show -q horovod >/dev/null 2>&1; then
    say "pip uninstall the horovod in $VENV that does not import"
    "$VENV/bin/pip" uninstall -q -y horovod >/dev/null 2>&1 || true
  fi
  say "pip install $1"
  "$VENV/bin/pip" install "${PIP_OPTS[@]}" "$1"
  hvd_imports
}

WHEEL=$(find_wheel)
if [ -n "$WHEELHOUSE" ]; then
  WHEEL=$(compgen -G "$WHEELHOUSE/horovod-$HVD_VERSION-$PY_TAG-*.whl" | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    say "no horovod-$HVD_VERSION wheel for $PY_TAG in $WHEELHOUSE (make wheelhouse after make horovod writes one)" >&2
    exit 1
  fi
  if install_wheel "$WHEEL"; then
    say "done: horovod $HVD_VERSION installed from $WHEELHOUSE in $(elapsed)"
    exit 0
  fi
  say "horovod from $WHEELHOUSE does not import (built for another torch than $TORCH_VERSION?)" >&2
  exit 1
fi
if [ -n "$WHEEL" ]; then
  say "cached wheel found for Python $PY_TAG / torch $TORCH_VERSION"
  if install_wheel "$WHEEL"; then
    say "done: horovod $HVD_VERSION installed from cache in $(elapsed)"
    exit 0
  fi
  say "WARNING: cached wheel installed but 'import horovod.torch' fails:" >&2
  "$PY" -c 'import horovod.torch' 2>&1 | tail -n 5 >&2 || true
  say "moving it aside ($WHEEL.broken)" >&2
  mv -f "$WHEEL" "$WHEEL.broken"
  "$VENV/bin/pip" uninstall -q -y horovod >/dev/null 2>&1 || true
fi

if [ "$NO_BUILD" = 1 ]; then
  say "no cached wheel in $CACHE_DIR and --no-build given: skipping horovod (run 'make horovod' to build it, about 10 min)"
  exit 0
fi

# --- 3. build ----------------------------------------------------------------------
mkdir -p "$CACHE_DIR"
# One build per cache directory at a time (a second caller waits, then reuses the wheel).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_DIR/.lock"
  if ! flock -n 9; then
    say "another build_horovod is building into $CACHE_DIR; waiting for it"
    flock 9
    WHEEL=$(find_wheel)
    if [ -n "$WHEEL" ] && install_wheel "$WHEEL"; then
      say "done: horovod $HVD_VERSION installed from the wheel the other build made, $(elapsed)"
      exit 0
    fi
  fi
fi

say "step 1/5: build tools"
need_apt=()
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
cmake_ok() {  # horovod's setup.py wants cmake >= 3.13 (else it pip-installs an old one itself)
  local v
  v=$("${1:-cmake}" --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
  [ -n "$v" ] && [ "$(printf '%s\n3.13\n' "$v" | sort -V | head -n 1)" = 3.13 ]
}
if ! cmake_ok && ! cmake_ok "$VENV/bin/cmake" && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  need_apt+=(cmake)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${need_apt[*]}; install them (as root: apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  say "  apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! cmake_ok && ! cmake_ok "$VENV/bin/cmake"; then
  say "  pip install 'cmake>=3.13,<4' into $VENV"
  "$VENV/bin/pip" install -q --no-input 'cmake>=3.13,<4'
fi
export PATH="$(cd "$VENV/bin" && pwd):$PATH"   # venv cmake (if any) and python first
say "  using $(cmake --version | head -n 1), $(g++ --version | head -n 1)"
PY_INCLUDE=$("$PY" -c 'import sysconfig;print(sysconfig.get_paths()["include"])')
if [ ! -e "$PY_INCLUDE/Python.h" ]; then
  say "Python headers missing ($PY_INCLUDE/Python.h); install python3-dev for this Python" >&2
  exit 1
fi
# horovod's install_requires (setup_requires during a build): install them now so
# setuptools does not try to fetch them itself under --no-build-isolation.
"$VENV/bin/pip" install -q --no-input cloudpickle psutil pyyaml packaging 'cffi>=1.4.0' setuptools wheel

say "step 2/5: compiler wrappers (-std=c++14 -> -std=c++17)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/build_horovod.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin" "$TMP/wheel"
for name in g++ c++ gcc cc; do
  real=$(command -v "$name" 2>/dev/null) || continue
  real=$(readlink -f "$real")
  cat >"$TMP/bin/$name" <<EOF
#!/usr/bin/env bash
# build_horovod.sh: horovod 0.28.1 forces C++14, torch 2.x headers need C++17.
args=()
for a in "\$@"; do
  case "\$a" in
    -std=c++14|-std=c++1y) a=-std=c++17 ;;
    -std=gnu++14|-std=gnu++1y) a=-std=gnu++17 ;;
  esac
  args+=("\$a")
done
exec "$real" "\${args[@]}"
EOF
  chmod +x "$TMP/bin/$name"
done
export PATH="$TMP/bin:$PATH"
export CC="$TMP/bin/gcc" CXX="$TMP/bin/g++"

if command -v mpicxx >/dev/null 2>&1 || command -v mpicc >/dev/null 2>&1; then
  export HOROVOD_WITH_MPI=1 HOROVOD_CPU_OPERATIONS=MPI
  mpi_desc="MPI+gloo (default CPU ops: MPI; horovodrun --gloo switches to gloo)"
else
  export HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo
  unset HOROVOD_WITH_MPI
  mpi_desc="gloo only (no MPI compiler wrappers found)"
fi
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
       HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
       MAKEFLAGS="-j$JOBS" CMAKE_POLICY_VERSION_MINIMUM=3.5
if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then
  mpi_desc="$mpi_desc, GPU ops: $HOROVOD_GPU_OPERATIONS"
fi
say "  horovod $HVD_VERSION, torch $TORCH_VERSION, Python $PY_TAG, $mpi_desc, -j$JOBS"

LOG="$CACHE_DIR/build.log"
say "step 3/5: pip wheel horovod==$HVD_VERSION (about 10 min on 2 cores; log: $LOG)"
(
  while sleep 120 >/dev/null 2>&1; do say "  ... still building ($(elapsed))"; done
) &
HEARTBEAT=$!
trap 'kill "$HEARTBEAT" 2>/dev/null || true; rm -rf "$TMP"' EXIT
set +e
nice -n 10 "$VENV/bin/pip" wheel --no-input --no-build-isolation --no-deps --no-cache-dir \
  -v "horovod==$HVD_VERSION" -w "$TMP/wheel" >"$LOG" 2>&1
rc=$?
set -e
kill "$HEARTBEAT" 2>/dev/null || true
wait "$HEARTBEAT" 2>/dev/null || true
built=$(compgen -G "$TMP/wheel/horovod-$HVD_VERSION-*.whl" | head -n 1 || true)
if [ $rc -ne 0 ] || [ -z "$built" ]; then
  say "FAILED after $(elapsed) (pip wheel exit $rc); last 60 lines of $LOG:" >&2
  tail -n 60 "$LOG" >&2
  exit 1
fi

say "step 4/5: cache $(basename "$built") ($(du -h "$built" | cut -f1)) in $CACHE_DIR"
mv -f "$built" "$CACHE_DIR/"
WHEEL="$CACHE_DIR/$(basename "$built")"

say "step 5/5: install"
if ! install_wheel "$WHEEL"; then
  say "FAILED: wheel installed but 'import horovod.torch' fails:" >&2
  "$PY" -c 'import horovod.torch' 2>&1 | tail -n 20 >&2 || true
  exit 1
fi
say "done: horovod $HVD_VERSION built and installed in $(elapsed); wheel $WHEEL"
