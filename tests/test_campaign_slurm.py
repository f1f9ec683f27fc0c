"""slurm/simulate.sbatch submitted with sbatch to a real one-node SLURM cluster."""
import json
import os
import subprocess
import sys

import h5py
import pytest

from slurm_util import cluster_logs, sbatch_and_wait, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_simulate_sbatch_runs_and_verifies(slurm_cluster, tmp_path):  # noqa: F811
    env = dict(slurm_cluster)
    out = tmp_path / "campaign"
    env.update(CONFIG=os.path.join(ROOT, "configs", "demo.yaml"), OUT=str(out),
               SET="n_sims=6 nc=8 steps=2 shard_size=2 density_nmesh=8 splits={}",
               COSMONET=os.path.join(os.path.dirname(sys.executable), "cosmonet"))
    job_id, state, output = sbatch_and_wait(os.path.join(ROOT, "slurm", "simulate.sbatch"), env,
                                            args=["--ntasks=2", f"--output={tmp_path}/job-%j.out"],
                                            timeout=240, cwd=ROOT)
    details = f"job {job_id} {state}; output:\n{output}\n{cluster_logs(env['SLURM_LOCAL_DIR'], 20)}"
    assert state == "COMPLETED", details
    summary = json.loads([ln for ln in output.splitlines() if ln.startswith('{"out"')][0])
    assert summary["ranks"] == 2 and summary["n_sims"] == 6, details
    verify = [json.loads(ln) for ln in output.splitlines() if ln.startswith('{"ok"')]
    assert verify and verify[-1]["ok"], details
    # and the files on disk pass an independent verify
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cosmonet"), "verify", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out / "shards" / "shard_000002.h5", "r") as f:
        assert list(f["params/index"][...]) == [4, 5]
        assert f["fastpm/disp"].shape == (2, 3, 8, 8, 8)
