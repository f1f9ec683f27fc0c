"""Run commands under ``mpirun`` from the test suite (root-safe, oversubscribed)."""
import os
import shutil
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl_vader_single_copy_mechanism="none",
               PYTHONUNBUFFERED="1")
    return env


def mpirun(n, args, timeout=300, check=True):
    """``mpirun -np n --oversubscribe args...``; returns the CompletedProcess."""
    mpirun_exe = shutil.which("mpirun")
    assert mpirun_exe, "mpirun not found (make test installs openmpi-bin)"
    cmd = [mpirun_exe, "-np", str(n), "--oversubscribe"] + [str(a) for a in args]
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cosmonet_exe():
    return os.path.join(BIN, "cosmonet")
