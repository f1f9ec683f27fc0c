"""slurm/simulate.sbatch and slurm/train.sbatch submitted with sbatch to a real one-node SLURM
cluster (the two batch scripts the README shows)."""
import json
import os
import subprocess
import sys

import h5py
import pytest
import yaml

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


def test_train_sbatch_runs_ddp_on_two_tasks(slurm_cluster, tmp_path):  # noqa: F811
    """slurm/train.sbatch as a user submits it: 2 tasks, srun starts the ranks, DDP reads the
    world from SLURM, rank 0 writes the checkpoint; a requeue (RESUME=1, the default) resumes."""
    exe = os.path.join(os.path.dirname(sys.executable), "cosmonet")
    pairs = tmp_path / "pairs"
    subprocess.run([exe, "simulate", os.path.join(ROOT, "configs", "d3m_pairs.yaml"), "--out", str(pairs),
                    "--quiet", "--set", "n_sims=8", "--set", "nc=8", "--set", "box=32", "--set", "steps=2",
                    "--set", "shard_size=4", "--set", "splits={train: 6, val: 1, test: 1}"],
                   check=True, capture_output=True, text=True, timeout=120)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group", "residual": True},
        "data": {"root": str(pairs), "scale": 4.0, "augment": True, "num_workers": 0},
        "train": {"backend": "ddp", "batch_size": 1, "base_batch": 2, "lr": 1e-3, "epochs": 1,
                  "log_every": 1, "seed": 2},
        "out": str(tmp_path / "run")}))
    env = dict(slurm_cluster)
    env.update(CONFIG=str(cfg), SET="train.epochs=2", COSMONET=exe)
    job_id, state, output = sbatch_and_wait(os.path.join(ROOT, "slurm", "train.sbatch"), env,
                                            args=["--ntasks=2", f"--output={tmp_path}/train-%j.out"],
                                            timeout=240, cwd=ROOT)
    details = f"job {job_id} {state}; output:\n{output}\n{cluster_logs(env['SLURM_LOCAL_DIR'], 20)}"
    assert state == "COMPLETED", details
    summary = json.loads([ln for ln in output.splitlines() if ln.startswith('{"out"')][-1])
    assert summary["ranks"] == 2 and summary["backend"] == "ddp", details
    assert summary["launcher"] == "srun", details
    assert summary["epochs_completed"] == 2 and summary["steps"] == 6, details   # 6 pairs / global batch 2
    assert os.path.exists(summary["checkpoint"]), details
