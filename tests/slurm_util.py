"""A private one-node SLURM cluster for the test suite (wraps scripts/slurm_local.sh).

Typical use in a test module::

    from slurm_util import slurm_cluster, sbatch_and_wait  # noqa: F401  (fixture)

    @pytest.mark.slurm
    def test_job(slurm_cluster, tmp_path):
        script = tmp_path / "job.sbatch"
        script.write_text("#!/bin/bash\\n#SBATCH --ntasks=2\\nsrun --mpi=pmix hostname\\n")
        job_id, state, output = sbatch_and_wait(script, slurm_cluster)
        assert state == "COMPLETED", output

``slurm_cluster`` (module scope) yields the environment for client commands (SLURM_CONF,
OpenMPI's run-as-root switches, the venv's bin first in PATH); it skips the test when slurm
cannot be installed here (no apt-get, not root) and fails with the daemon logs when the
daemons do not start. By hand: ``with local_cluster(path) as env: ...``.
"""
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
PYTHON = sys.executable
EXIT_UNAVAILABLE = 5          # slurm_local.sh: cannot install slurm here
INSTALL_TIMEOUT = 900         # first start may run apt-get install
MAX_DIR_LEN = 70              # slurm_local.sh refuses longer directories (unix socket paths)
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}

JobResult = namedtuple("JobResult", "job_id state output")


class SlurmUnavailable(RuntimeError):
    """slurm is not installed and cannot be installed on this machine."""


class SlurmError(RuntimeError):
    """The local cluster failed to start or a job could not be submitted / followed."""


def _script_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    return env


def cluster_env(path):
    """Environment for slurm clients (and jobs: sbatch exports it) of the cluster in ``path``."""
    env = _script_env()
    env.update(SLURM_CONF=str(Path(path).resolve() / "slurm.conf"),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env["PATH"]
    return env


def cluster_logs(path, lines=60):
    """The last ``lines`` lines of each daemon log of the cluster in ``path``."""
    out = []
    for name in ("munged", "slurmctld", "slurmd"):
        log = Path(path) / "log" / f"{name}.log"
        if log.exists():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {log}\n" + "\n".join(text))
    return "\n".join(out) or f"(no daemon logs in {path}/log)"


def _run_script(action, path, timeout):
    return subprocess.run(["bash", str(SCRIPT), action, str(path)], env=_script_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_cluster(path, timeout=INSTALL_TIMEOUT):
    """Start (installing slurm/munge if needed) a cluster whose files live in ``path``.

    Returns the client environment (see :func:`cluster_env`). Raises SlurmUnavailable when
    slurm cannot be installed, SlurmError (with the daemon logs) when it does not start.
    ``path`` should be short (unix socket paths below it, at most 70 characters).
    """
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    proc = _run_script("start", path, timeout)
    text = proc.stdout + proc.stderr
    if proc.returncode == EXIT_UNAVAILABLE:
        raise SlurmUnavailable(text.strip())
    if proc.returncode != 0:
        logs = "" if "----- " in text else "\n" + cluster_logs(path)   # the script shows them
        raise SlurmError(f"{SCRIPT.name} start {path} failed ({proc.returncode}):\n{text}{logs}")
    return cluster_env(path)


def stop_cluster(path, timeout=120):
    """Stop the daemons started for ``path`` (no-op when none runs); returns the script output."""
    proc = _run_script("stop", Path(path).resolve(), timeout)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SlurmError(f"{SCRIPT.name} stop {path} failed ({proc.returncode}):\n{text}")
    return text


@contextlib.contextmanager
def local_cluster(path):
    """``with local_cluster(path) as env:`` a running cluster, stopped on exit (even on errors)."""
    try:
        env = start_cluster(path)
    except SlurmError:
        with contextlib.suppress(Exception):
            stop_cluster(path)
        raise
    try:
        yield env
    finally:
        stop_cluster(path)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """Module-scoped running cluster; yields the client env. Skips only if slurm can't be installed."""
    path = tmp_path_factory.mktemp("slurm")
    if len(str(path)) > MAX_DIR_LEN:                # long --basetemp: unix sockets need a short one
        path = Path(tempfile.mkdtemp(prefix="cosmonet-slurm-"))
    try:
        env = start_cluster(path)
    except SlurmUnavailable as exc:
        pytest.skip(f"no local slurm cluster: {exc}")
    except SlurmError as exc:
        with contextlib.suppress(Exception):
            stop_cluster(path)
        pytest.fail(str(exc), pytrace=False)
    env["SLURM_LOCAL_DIR"] = str(path)      # for cluster_logs(env["SLURM_LOCAL_DIR"])
    try:
        yield env
    finally:
        stop_cluster(path)


# ---------------------------------------------------------------- jobs
def _cmd(args, env, timeout=30, cwd=None):
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def job_info(job_id, env):
    """``scontrol show job`` fields as a dict, or None once slurmctld forgot the job."""
    proc = _cmd(["scontrol", "show", "job", "-o", job_id], env)
    if proc.returncode != 0 or "JobId=" not in proc.stdout:
        return None
    info = {}
    # key=value pairs; values may contain spaces only in the last fields, keep it simple
    for m in re.finditer(r"(\w[\w:/]*)=(\S*)", proc.stdout):
        info.setdefault(m.group(1), m.group(2))
    return info


def _sacct_state(job_id, env):
    """Final state from accounting, if slurmdbd runs (not on the local cluster)."""
    try:
        proc = _cmd(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    states = proc.stdout.split()
    return states[0].split()[0] if states else None


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def sbatch_and_wait(script, env, args=(), timeout=300, cwd=None, poll=0.25):
    """Submit ``script`` with ``sbatch --parsable [args]`` and wait for the job to end.

    Returns ``JobResult(job_id, state, output)`` (a 3-tuple): the final JobState
    (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) and the text of the job's output file
    (stdout, and stderr unless the script sends it elsewhere). ``cwd`` (default: the
    script's directory) is where sbatch runs, hence where slurm-<id>.out lands.
    On timeout the job is cancelled and TimeoutError raised.
    """
    script = Path(script).resolve()
    cwd = str(cwd or script.parent)
    proc = _cmd(["sbatch", "--parsable", *args, script], env, timeout=60, cwd=cwd)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    job_id = proc.stdout.strip().split(";")[0]
    stdout_path = os.path.join(cwd, f"slurm-{job_id}.out")
    state = None
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job_id, env)
        if info is None:                      # forgotten by slurmctld (MinJobAge passed)
            state = _sacct_state(job_id, env) or state or "UNKNOWN"
            break
        if info.get("StdOut"):
            stdout_path = info["StdOut"]
        state = info.get("JobState", "UNKNOWN")
        if state in TERMINAL_STATES:
            break
        if time.monotonic() > deadline:
            _cmd(["scancel", job_id], env)
            raise TimeoutError(f"job {job_id} still {state} after {timeout} s; output so far:\n"
                               f"{_read(stdout_path)}")
        time.sleep(poll)
    return JobResult(job_id, state, _read(stdout_path))
