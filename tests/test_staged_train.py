"""Device-staged training data, the device-side non-finite flag and the wall-clock budget
(cosmonet/train/staged.py, cosmonet/train/schedule.py): on CPU, in process."""
import io
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from cosmonet.train.trainconfig import validate_train_config


@pytest.fixture(scope="module")
def campaign(tiny_pairs):
    # torch's first optimiser imports torch._dynamo (seconds): pay it here, not in a budgeted run
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return tiny_pairs


def config(root, out, data=None, **train):
    return validate_train_config({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group", "residual": True},
        "data": dict({"root": str(root), "scale": 4.0, "augment": True, "num_workers": 0, "val_split": ""},
                     **(data or {})),
        "train": dict({"batch_size": 2, "base_batch": 2, "lr": 1e-3, "epochs": 2, "checkpoint_every": 100,
                       "log_every": 1, "seed": 5}, **train),
        "out": str(out)})


def run(cfg, resume=False):
    from cosmonet.train.loop import train
    summary, model, _ = train(cfg, resume=resume, log_stream=io.StringIO())
    log = [json.loads(x) for x in open(f"{cfg['out']}/train_log.jsonl") if '"loss"' in x]
    return summary, model, log


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_batch_symmetry_equals_apply_symmetry_for_all_48(device):
    from cosmonet.data import all_symmetries, apply_symmetry
    from cosmonet.train.staged import BatchSymmetry
    n = 6
    x = torch.randn(48, 3, n, n, n)
    s = torch.randn(48, 2, n, n, n)
    k = torch.arange(48).flip(0)                       # every symmetry once, in some order
    bs = BatchSymmetry(n, device)
    yv, ys = (bs(x.to(device), k.to(device), vector=True).cpu(),
              bs(s.to(device), k.to(device), vector=False).cpu())
    syms = all_symmetries()
    for b in range(48):
        perm, flips = syms[int(k[b])]
        assert torch.equal(yv[b], apply_symmetry(x[b], perm, flips, vector=True))
        assert torch.equal(ys[b], apply_symmetry(s[b], perm, flips, vector=False))


def test_staged_batches_equal_loader_batches(campaign):
    """Every batch of two epochs (rank 1 of 2, and rank 0 of 1), including a mid-epoch start."""
    from torch.utils.data import DataLoader
    from cosmonet.data import EpochItems
    from cosmonet.train.loop import build_datasets
    from cosmonet.train.sampler import ShardedBatchSampler
    from cosmonet.train.staged import StagedBatches
    cfg = config(campaign, "unused")
    base, _ = build_datasets(cfg)            # the trainer's dataset: symmetry and normaliser transforms
    ds = EpochItems(base)
    assert cfg["data"]["scale"] == 4.0 and cfg["data"]["augment"] and cfg["train"]["seed"] == 5
    for rank, size in ((0, 1), (1, 2)):
        sampler = ShardedBatchSampler(len(ds), rank, size, 2, seed=5)
        staged = StagedBatches(base, ShardedBatchSampler(len(ds), rank, size, 2, seed=5), torch.device("cpu"),
                               4.0, True, 5)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0, drop_last=True)
        for epoch, start in ((0, 0), (1, 0), (3, 1)):
            sampler.set_epoch(epoch)
            sampler.set_start(start)
            got = list(staged.epoch(epoch, start))
            want = list(loader)
            assert len(got) == len(want) > 0
            for (x, y, i), (x0, y0, i0) in zip(got, want):
                assert torch.equal(i, i0) and torch.equal(x, x0) and torch.equal(y, y0)


def test_read_all_equals_per_sample_reads(campaign):
    from cosmonet.data import ShardDataset
    from cosmonet.train.staged import read_all
    base = ShardDataset(campaign, split=None, fields=("za/disp", "fastpm/disp"), indices=[9, 1, 2, 3, 4, 0, 5])
    got = read_all(base)
    for i in range(len(base)):
        for j, t in enumerate(base.read(i)):
            assert torch.equal(got[j][i], t)


def test_staged_and_loader_give_the_same_loss_trajectory(campaign, tmp_path):
    s_l, m_l, log_l = run(config(campaign, tmp_path / "l", data={"staging": "loader"}))
    s_d, m_d, log_d = run(config(campaign, tmp_path / "d", data={"staging": "device"}, check_every=3))
    assert s_d["staged"] and not s_l["staged"] and s_l["steps"] == s_d["steps"] == 8
    np.testing.assert_allclose([r["loss"] for r in log_d], [r["loss"] for r in log_l], rtol=1e-6)
    for a, b in zip(m_l.state_dict().values(), m_d.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_staging_decision():
    from cosmonet.errors import InputError
    from cosmonet.train.staged import staging_decision
    cpu = torch.device("cpu")
    assert staging_decision("auto", 1e9, cpu, limit_gb=2.0)[0]
    assert not staging_decision("auto", 3e9, cpu, limit_gb=2.0)[0]
    assert not staging_decision("auto", 5e9, cpu)[0]          # default CPU limit 4 GB
    assert not staging_decision("loader", 10, cpu)[0]
    with pytest.raises(InputError, match="staging: device"):
        staging_decision("device", 3e9, cpu, limit_gb=2.0)


@pytest.mark.parametrize("staging", ["device", "loader"])
def test_device_flag_stops_on_nan_keeping_last_good_checkpoint(campaign, tmp_path, staging, monkeypatch):
    """The device flag is the second line of defence: with the check before the first step
    switched off (cosmonet/train/datacheck.py refuses such a shard with exit 2), a NaN
    that reaches a batch stops the run at that step."""
    from cosmonet.train import datacheck
    from cosmonet.train.checkpoint import latest_checkpoint, load_checkpoint
    from cosmonet.train.loop import TrainingError
    monkeypatch.setattr(datacheck, "check_splits_finite", lambda splits, backend: 0.0)
    bad = tmp_path / "bad"
    shutil.copytree(campaign, bad)
    with h5py.File(bad / "shards" / "shard_000001.h5", "r+") as f:   # simulations 4-7 (train)
        f["za/disp"][1, 0, 0, 0, 0] = np.nan
    cfg = config(bad, tmp_path / "n", data={"staging": staging}, check_every=4, checkpoint_every=2,
                 epochs=3)
    with pytest.raises(TrainingError, match=r"non-finite values in the batch of step (\d+)") as exc:
        run(cfg)
    import re
    first_bad = int(re.search(r"step (\d+)", str(exc.value)).group(1))
    # the sample with the NaN (split position 5) is in the batch of that step, and in none before
    from cosmonet.train.sampler import ShardedBatchSampler
    s = ShardedBatchSampler(8, 0, 1, 2, seed=5)
    steps = []
    for e in range(3):
        s.set_epoch(e)
        steps += [5 in b for b in s.global_batches()]
    assert first_bad == steps.index(True) + 1
    last = latest_checkpoint(str(tmp_path / "n"))
    if last is not None:
        state = load_checkpoint(last)
        assert state["step"] < first_bad and str(last) in str(exc.value)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_time_budget_stops_and_writes_a_checkpoint(campaign, tmp_path):
    """A real 3 s budget: the run stops on its own well before its 1000 epochs (4,000 steps)."""
    cfg = config(campaign, tmp_path / "t", data={"staging": "device"}, epochs=1000, time_budget=3.0,
                 budget_warmup_steps=2, log_every=50, check_every=10)
    s, _, _ = run(cfg)
    tb = s["time_budget"]
    assert tb["horizon"] is not None and tb["step_seconds"] > 0 and tb["spent_seconds"] < 3.0 + 1.0
    assert 2 <= s["steps"] <= tb["horizon"] < 4000 and s["wall_seconds"] < 3.0 + 3.0
    from cosmonet.train.checkpoint import load_checkpoint
    assert load_checkpoint(s["checkpoint"])["step"] == s["steps"]


def test_time_budget_schedule_and_resume_are_exact(campaign, tmp_path):
    """Horizon fixed by budget_step_seconds (10 steps): straight run == 4 steps + resume."""
    kw = dict(data={"staging": "device"}, epochs=100, time_budget=100.0, budget_step_seconds=10.0,
              check_every=5)
    s1, m1, log1 = run(config(campaign, tmp_path / "a", **kw))
    assert s1["steps"] == 10 and s1["time_budget"]["horizon"] == 10
    lrs = [r["lr"] for r in log1]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[4] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    run(config(campaign, tmp_path / "b", max_steps=4, **kw))
    s2, m2, log2 = run(config(campaign, tmp_path / "b", **kw), resume=True)
    assert s2["steps"] == 10
    assert [r["step"] for r in log2] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in log2], [r["loss"] for r in log1], rtol=1e-6)
    s3, _, _ = run(config(campaign, tmp_path / "b", **kw), resume=True)      # nothing left to do
    assert s3["steps"] == 10
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kw", [dict(depth=2, norm="batch"), dict(depth=1, norm="group", up_kernel=4),
                                dict(depth=2, norm="batch", down_kernel=3, residual=False)])
def test_zero_anchor_maps_zero_to_zero_untrained_and_trained(kw):
    """In eval mode f(0) = 0 to float rounding with zero_anchor; the plain U-Net gives a
    constant/periodic field after a few steps (biases, BatchNorm running statistics)."""
    from cosmonet.models import build_model
    zero = torch.zeros(1, 3, 16, 16, 16)
    rms = {}
    for anchor in (False, True):
        torch.manual_seed(0)
        m = build_model("unet", base_channels=4, zero_anchor=anchor, **kw)
        if anchor:
            with torch.no_grad():
                assert float(m.eval()(zero).pow(2).mean().sqrt()) < 1e-6          # untrained
            m.train()
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(2, 3, 8, 8, 8, generator=g)
            loss = ((m(x) - 0.5 * x - 0.3) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            rms[anchor] = float(m.eval()(zero).pow(2).mean().sqrt())
    assert rms[True] < 1e-6 and rms[False] > 1e-2, rms


def test_zero_anchor_loads_plain_checkpoints():
    from cosmonet.models import build_model
    plain = build_model("unet", base_channels=4, depth=1)
    anchored = build_model("unet", base_channels=4, depth=1, zero_anchor=True)
    anchored.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        plain.eval(), anchored.eval()
        torch.testing.assert_close(anchored(x), plain(x) - plain(torch.zeros_like(x)) + 0.0 * x, atol=1e-6, rtol=0)


def test_generated_pairs_never_repeat_and_resume_exactly(campaign, tmp_path):
    """data.source: generate: every batch is the torch engine's boxes of fresh seeds (none
    shared between ranks, epochs or with the campaign), and a resumed run regenerates the
    batches of the run it continues."""
    from cosmonet.campaign.plan import plan
    from cosmonet.campaign.store import read_config
    from cosmonet.torchpm import run_batch
    from cosmonet.train.generated import GeneratedBatches
    from cosmonet.train.sampler import ShardedBatchSampler
    seen = set()
    for rank in (0, 1):
        src = GeneratedBatches(campaign, ShardedBatchSampler(8, rank, 2, 2, seed=5), ("za/disp", "fastpm/disp"),
                               4.0, 5, torch.device("cpu"))
        for epoch in (0, 1):
            for x, y, seeds in src.epoch(epoch):
                assert x.shape == y.shape == (2, 3, 8, 8, 8)
                seen.update(seeds.tolist())
    assert len(seen) == 2 * 8                # 2 epochs of the 8-sample split, over both ranks: all different
    assert not seen & {s.seed for s in plan(read_config(campaign))}
    want = run_batch(src.sim, seeds.tolist(), fields=["za/disp", "fastpm/disp"])
    np.testing.assert_allclose(y.numpy(), want["fastpm/disp"] / 4.0, rtol=1e-6, atol=1e-7)
    straight, _, _ = run(config(campaign, tmp_path / "a", data={"source": "generate"}, epochs=2))
    run(config(campaign, tmp_path / "b", data={"source": "generate"}, epochs=2, max_steps=5))
    resumed, _, _ = run(config(campaign, tmp_path / "b", data={"source": "generate"}, epochs=2), resume=True)
    assert straight["batches"] == resumed["batches"] == "GeneratedBatches" and straight["steps"] == 8
    a, b = (torch.load(s["checkpoint"], weights_only=True)["model"] for s in (straight, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
