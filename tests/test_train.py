"""Distributed training: equivalence across ranks and launchers, resume, bad input, NaN."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

from mpi_util import cosmonet_exe, mpi_env, mpirun

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def campaign(tiny_pairs):
    return tiny_pairs


def write_config(path, root, out, **train):
    cfg = {"model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group", "residual": True},
           "data": {"root": str(root), "scale": 4.0, "augment": True, "num_workers": 0},
           "train": dict({"batch_size": 4, "base_batch": 4, "lr": 1e-3, "epochs": 3, "checkpoint_every": 2,
                          "log_every": 1, "seed": 5, "scheduler": "cosine",
                          "precision": "fp32"}, **train),
           "out": str(out)}
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_params(out):
    from cosmonet.train.checkpoint import latest_checkpoint
    state = torch.load(latest_checkpoint(str(out)), map_location="cpu", weights_only=True)
    return state["model"], state


def assert_same_params(a, b, atol):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < atol, worst


def run_train(args, n=1, launcher="mpirun", check=True):
    if launcher == "mpirun":
        return mpirun(n, [cosmonet_exe(), "train"] + [str(a) for a in args], check=check)
    cmd = [os.path.join(BIN, "torchrun"), "--standalone", f"--nproc-per-node={n}", "-m", "cosmonet.cli",
           "train"] + [str(a) for a in args]
    env = {k: v for k, v in mpi_env().items() if not k.startswith("OMPI_") or k.startswith("OMPI_ALLOW")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.mpi
def test_two_ranks_equal_one_rank_with_double_batch(campaign, tmp_path):
    """DDP over 2 ranks with batch 2 == 1 rank with batch 4 after 4 Adam steps (augmented data)."""
    one = write_config(tmp_path / "one.yaml", campaign, tmp_path / "one", batch_size=4, max_steps=4)
    two = write_config(tmp_path / "two.yaml", campaign, tmp_path / "two", batch_size=2, max_steps=4)
    run_train([one], n=1)
    run_train([two], n=2)
    p1, s1 = final_params(tmp_path / "one")
    p2, s2 = final_params(tmp_path / "two")
    assert s1["step"] == s2["step"] == 4 and s2["world_size"] == 2
    assert_same_params(p1, p2, atol=2e-5)
    # and training did move the weights
    from cosmonet.models import build_model
    torch.manual_seed(5)
    init = build_model("unet", base_channels=4, depth=1, norm="group", residual=True).state_dict()
    assert max(float((init[k] - p1[k]).abs().max()) for k in init) > 1e-4


@pytest.mark.mpi
def test_horovod_two_ranks_equal_one_rank_with_double_batch(campaign, tmp_path):
    pytest.importorskip("horovod.torch", reason="horovod not built (make horovod)")
    one = write_config(tmp_path / "one.yaml", campaign, tmp_path / "one", batch_size=4, max_steps=3)
    two = write_config(tmp_path / "two.yaml", campaign, tmp_path / "two", batch_size=2, max_steps=3,
                       backend="horovod")
    run_train([one], n=1)
    proc = run_train([two], n=2)
    assert "(horovod, mpirun, fp32," in proc.stderr
    p1, _ = final_params(tmp_path / "one")
    p2, s2 = final_params(tmp_path / "two")
    assert s2["world_size"] == 2
    assert_same_params(p1, p2, atol=2e-5)


@pytest.mark.mpi
def test_torchrun_launcher_matches_mpirun(campaign, tmp_path):
    cfg = write_config(tmp_path / "t.yaml", campaign, tmp_path / "tr", batch_size=2, max_steps=2)
    ref = write_config(tmp_path / "r.yaml", campaign, tmp_path / "mp", batch_size=2, max_steps=2)
    proc = run_train([cfg], n=2, launcher="torchrun")
    assert "torchrun" in proc.stderr
    run_train([ref], n=2)
    assert_same_params(final_params(tmp_path / "tr")[0], final_params(tmp_path / "mp")[0], atol=1e-6)


def test_resume_continues_the_same_trajectory(campaign, tmp_path):
    """6 steps straight == 3 steps, stop, --resume to 6 (mid-epoch: 2 steps per epoch)."""
    straight = write_config(tmp_path / "a.yaml", campaign, tmp_path / "a", max_steps=5)
    run_train([straight])
    part = write_config(tmp_path / "b.yaml", campaign, tmp_path / "b", max_steps=3)
    run_train([part])
    rest = write_config(tmp_path / "c.yaml", campaign, tmp_path / "b", max_steps=5)
    run_train([rest, "--resume"])
    pa, sa = final_params(tmp_path / "a")
    pb, sb = final_params(tmp_path / "b")
    assert sa["step"] == sb["step"] == 5
    assert_same_params(pa, pb, atol=1e-7)
    log = [json.loads(x) for x in open(tmp_path / "b" / "train_log.jsonl")]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5]


def test_resume_with_another_model_is_refused(campaign, tmp_path):
    cfg = write_config(tmp_path / "a.yaml", campaign, tmp_path / "a", max_steps=1)
    run_train([cfg])
    proc = run_train([cfg, "--resume", "--set", "model.base_channels=8"], check=False)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("cosmonet: error:")]
    assert len(err) == 1 and "checkpoint" in err[0] and "Traceback" not in proc.stderr


def test_nan_in_data_is_refused_before_training(campaign, tmp_path):
    """A NaN in the training split is refused before the first step (exit 2, one line naming
    the shard, the field, the simulation and the count), and the new run directory is
    removed again. (The device flag that stops a run on a NaN reaching a batch is tested in
    test_staged_train.py.)"""
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(campaign, bad)
    with h5py.File(bad / "shards" / "shard_000001.h5", "r+") as f:   # simulations 4-7 (train)
        f["za/disp"][1, 0, 0, 0, 0] = np.nan
        f["za/disp"][1, 1, 0, 0, 0] = np.inf
    cfg = write_config(tmp_path / "n.yaml", bad, tmp_path / "n", max_steps=6, checkpoint_every=1)
    proc = run_train([cfg], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cosmonet: error: ")]   # (mpirun adds its own)
    assert len(lines) == 1, proc.stderr
    assert "shard_000001.h5" in lines[0] and "za/disp of simulation 5 has 2 non-finite values" in lines[0]
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("bad,field", [({"train": {"batch_size": 0}}, "train.batch_size"),
                                       ({"train": {"backend": "mpi"}}, "train.backend"),
                                       ({"data": {"input": "nope/disp"}}, "nope/disp"),
                                       ({"data": {"root": "/nonexistent"}}, "/nonexistent"),
                                       ({"optimiser": {}}, "optimiser")])
def test_bad_train_config_is_one_line(campaign, tmp_path, bad, field):
    cfg = {"model": {"name": "unet", "base_channels": 4, "depth": 1},
           "data": {"root": str(campaign), "num_workers": 0}, "train": {"max_steps": 1}, "out": str(tmp_path / "o")}
    for k, v in bad.items():
        cfg[k] = dict(cfg.get(k, {}), **v) if isinstance(v, dict) and k in cfg else v
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([cosmonet_exe(), "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in proc.stderr


def test_density_loss_term_trains(campaign, tmp_path):
    cfg = write_config(tmp_path / "d.yaml", campaign, tmp_path / "d", max_steps=2, density_weight=1.0)
    run_train([cfg])
    log = [json.loads(x) for x in open(tmp_path / "d" / "train_log.jsonl") if '"loss"' in x]
    plain = write_config(tmp_path / "p.yaml", campaign, tmp_path / "p", max_steps=2)
    run_train([plain])
    log0 = [json.loads(x) for x in open(tmp_path / "p" / "train_log.jsonl") if '"loss"' in x]
    assert np.isfinite(log[0]["loss"]) and log[0]["loss"] > log0[0]["loss"]    # the density term adds
