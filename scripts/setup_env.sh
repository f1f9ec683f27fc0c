#!/usr/bin/env bash
# Set up everything cosmonet needs on a fresh Debian machine: system packages
# (OpenMPI, FFTW) with apt-get when missing, a virtual environment in .venv and the
# Python packages. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# The CPU build of torch; override on a GPU cluster, e.g. TORCH_SPEC="torch>=2.1".
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
  || command -v mpicc >/dev/null 2>&1 || need_apt+=(libopenmpi-dev)
[ -e /usr/include/fftw3.h ] || need_apt+=(libfftw3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_env: need system packages ${need_apt[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup_env: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.cosmonet-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q "$TORCH_SPEC"
  "$VENV/bin/pip" install -q -e ".[test]"
  touch "$stamp"
fi
echo "setup_env: ready ($VENV)"
