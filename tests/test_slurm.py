"""MPI jobs through a real one-node SLURM cluster started for this module.

The ``slurm_cluster`` fixture (tests/slurm_util.py) installs slurm/munge with apt-get when
missing, starts private munged/slurmctld/slurmd daemons and stops them afterwards, also
when a test fails. Skipped only where slurm cannot be installed (no apt-get, not root).
"""
import re
import shlex
import subprocess
import textwrap

import pytest

from slurm_util import PYTHON, cluster_logs, sbatch_and_wait, slurm_cluster, start_cluster  # noqa: F401

pytestmark = pytest.mark.slurm

# one write(2) per rank: print() writes its pieces separately, and two ranks sharing the job's
# output file could interleave them ("rank 0rank 1 of 2")
HELLO = ("import sys; from mpi4py import MPI; c = MPI.COMM_WORLD; "
         "sys.stdout.write('rank %d of %d\\n' % (c.rank, c.size)); sys.stdout.flush()")


def write_job(tmp_path, name, body):
    path = tmp_path / f"{name}.sbatch"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name={name}
        #SBATCH --ntasks=2
        #SBATCH --time=5
        set -euo pipefail
        """) + textwrap.dedent(body))
    return path


def run_job(env, script):
    job_id, state, output = sbatch_and_wait(script, env, timeout=120)
    details = f"job {job_id} {state}; output:\n{output}\n{cluster_logs(env['SLURM_LOCAL_DIR'], 20)}"
    return state, output, details


def assert_two_ranks(output, details):
    ranks = re.findall(r"^rank (\d+) of (\d+)$", output, flags=re.M)
    assert sorted(ranks) == [("0", "2"), ("1", "2")], details


def test_srun_pmix_starts_two_mpi_ranks(slurm_cluster, tmp_path):
    plugins = subprocess.run(["srun", "--mpi=list"], env=slurm_cluster, capture_output=True,
                             text=True, timeout=30)
    assert "pmix" in plugins.stdout + plugins.stderr, plugins.stdout + plugins.stderr
    script = write_job(tmp_path, "srun-pmix", f"""\
        srun --mpi=pmix {shlex.quote(PYTHON)} -c {shlex.quote(HELLO)}
        """)
    state, output, details = run_job(slurm_cluster, script)
    assert state == "COMPLETED", details
    assert_two_ranks(output, details)


def test_mpirun_inside_allocation_starts_two_mpi_ranks(slurm_cluster, tmp_path):
    script = write_job(tmp_path, "mpirun", f"""\
        mpirun -np 2 {shlex.quote(PYTHON)} -c {shlex.quote(HELLO)}
        """)
    state, output, details = run_job(slurm_cluster, script)
    assert state == "COMPLETED", details
    assert_two_ranks(output, details)


def test_failing_job_reports_failed_and_start_is_idempotent(slurm_cluster, tmp_path):
    script = write_job(tmp_path, "fails", """\
        echo before
        exit 3
        """)
    state, output, details = run_job(slurm_cluster, script)
    assert state == "FAILED", details
    assert "before" in output, details
    # a second start on the running cluster keeps the same daemons
    assert start_cluster(slurm_cluster["SLURM_LOCAL_DIR"])["SLURM_CONF"] == slurm_cluster["SLURM_CONF"]
