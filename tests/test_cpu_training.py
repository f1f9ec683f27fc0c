"""CPU training essentials: threads, bf16 precision, the in-network 2LPT prior, safe
checkpoint loading and the emulator's out-of-training warnings."""
import io
import os

import numpy as np
import pytest
import torch

from cosmonet.errors import InputError
from cosmonet.hardware import cpu_has_native_bf16, local_ranks, resolve_precision, torch_threads
from cosmonet.models import build_model
from cosmonet.models.lpt_prior import lpt2_coefficient, second_order_displacement


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- threads
@pytest.mark.parametrize("env,affinity,node,want", [
    ({}, 2, 2, 2),                                                     # the whole (small) machine
    ({"OMP_NUM_THREADS": "3"}, 2, 2, 3),                               # the user's word wins
    ({"SLURM_CPUS_PER_TASK": "4"}, 64, 64, 4),                         # SLURM's share of a big node
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 16, 16, 4),                  # 4 unbound ranks share 16 cores
    ({"LOCAL_WORLD_SIZE": "2"}, 16, 16, 8),                            # torchrun
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 4, 16, 4),                   # bound ranks: their own affinity
    ({"SLURM_NTASKS_PER_NODE": "3(x2)"}, 12, 12, 4),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 2, 2, 1),                    # never below one
])
def test_threads_follow_the_cores_a_process_has(env, affinity, node, want):
    threads, why = torch_threads(environ=env, affinity=affinity, node_cores=node)
    assert threads == want, why
    assert why


def test_local_ranks_default_to_one():
    assert local_ranks({}) == 1
    assert local_ranks({"MPI_LOCALNRANKS": "x"}) == 1


# --------------------------------------------------------------------------- precision
def test_precision_auto_reads_the_cpu_flags(monkeypatch):
    assert cpu_has_native_bf16({"avx512f", "avx512_bf16"})
    assert cpu_has_native_bf16({"amx_bf16"}) and cpu_has_native_bf16({"fphp", "bf16"})
    assert not cpu_has_native_bf16({"avx512f", "avx512bw", "avx2"})    # AVX-512 alone only emulates bf16
    import cosmonet.hardware as hw
    monkeypatch.setattr(hw, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2"})
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(hw, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512_bf16"})
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(InputError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def _loss_curve(precision, steps=40):
    """A tiny U-Net fitted to a fixed nonlinear map of random fields; the loss per step."""
    from cosmonet.hardware import autocast
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=1, zero_anchor=True)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = 0.5 * torch.randn(2, 3, 8, 8, 8, generator=g)
        y = x + 0.3 * torch.tanh(torch.roll(x, 1, dims=2)) * x
        with autocast(precision, "cpu"):
            pred = model(x)
        loss = torch.mean((pred.float() - y) ** 2)                    # the loss in float32
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert all(p.dtype == torch.float32 for p in model.parameters())   # weights stay float32
    return np.array(losses)


def test_bf16_training_follows_the_fp32_loss_curve():
    """Stated tolerance: every 10-step mean of the bf16 loss within 10% of fp32's, and both
    fall by more than 2x (so the test can fail)."""
    fp32, bf16 = _loss_curve("fp32"), _loss_curve("bf16")
    assert fp32[-10:].mean() < 0.5 * fp32[:5].mean() and bf16[-10:].mean() < 0.5 * bf16[:5].mean()
    a, b = fp32.reshape(-1, 10).mean(1), bf16.reshape(-1, 10).mean(1)
    np.testing.assert_allclose(b, a, rtol=0.10)
    assert not np.array_equal(fp32, bf16)                             # bf16 really ran


# --------------------------------------------------------------------------- the 2LPT prior
def _band_limited_sim(n=16, box=64.0, kmax_frac=0.25, seed=1):
    from mpi4py import MPI

    from cosmonet.sim.simulation import SimConfig, run_simulation
    rng = np.random.default_rng(seed)
    dk = np.fft.fftn(rng.normal(size=(n, n, n)))
    k = np.fft.fftfreq(n) * n
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    dk[kk > kmax_frac * n] = 0
    delta = np.fft.ifftn(dk).real
    delta *= 0.6 / delta.std()
    cfg = SimConfig(nc=n, box=box, steps=2, boost=2, seed=1)
    res = run_simulation(cfg, MPI.COMM_SELF, linear_field=delta, fields={"za/disp", "lpt2/disp"})
    return cfg, res.fields["za/disp"], res.fields["lpt2/disp"]


def test_lpt2_prior_equals_the_engines_second_order_term():
    """On a band-limited field (no aliasing, no Nyquist modes) the prior computed from the ZA
    displacement alone equals the engine's D2 psi_2 to float32 round-off."""
    cfg, za, lpt2 = _band_limited_sim()
    scale = 6.0
    c = lpt2_coefficient(cfg.cosmology, cfg.a_final, cfg.box, cfg.nc, scale)
    assert -0.5 * scale / (cfg.box / cfg.nc) < c < -0.4 * scale / (cfg.box / cfg.nc)     # D2/D1^2 ~ -3/7
    u2 = second_order_displacement(torch.from_numpy(za / scale)[None].float(), c)[0].numpy() * scale
    want = lpt2 - za
    assert np.sqrt(np.mean(want ** 2)) > 1e-3                        # a real second-order term
    np.testing.assert_allclose(u2, want, atol=2e-5 * np.abs(want).max() + 1e-6)


def test_lpt2_prior_is_equivariant_and_quadratic():
    u = 0.3 * torch.randn(1, 3, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    f = lambda v: second_order_displacement(v, -0.6)                  # noqa: E731
    assert torch.count_nonzero(f(torch.zeros_like(u))) == 0
    torch.testing.assert_close(f(2 * u), 4 * f(u), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f(torch.roll(u, 3, dims=3)), torch.roll(f(u), 3, dims=3), rtol=1e-4, atol=1e-6)
    # swap x and y: the field's components swap too
    perm = lambda v: v[:, [1, 0, 2]].transpose(2, 3)                  # noqa: E731
    torch.testing.assert_close(f(perm(u)), perm(f(u)), rtol=1e-4, atol=1e-6)


def test_unet_with_prior_answers_zero_to_zero_and_starts_at_2lpt():
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2, zero_anchor=True, lpt2_prior=-0.6).eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 6                                     # ZA and its 2LPT displacement
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 16, 16)).abs().max() < 1e-5
        torch.nn.init.zeros_(model.head.conv.weight)
        torch.nn.init.zeros_(model.head.conv.bias)
        x = 0.3 * torch.randn(1, 3, 16, 16, 16)
        want = x + second_order_displacement(x, -0.6)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="lpt2_prior"):
        build_model("unet", lpt2_prior=float("nan"))
    with pytest.raises(ValueError, match="in_channels 3"):
        build_model("unet", in_channels=1, out_channels=1, lpt2_prior=-0.6)


def test_tiles_equal_the_whole_box_with_the_prior():
    """The spectral prior needs the whole box: emulate computes it once on the whole box
    and tiles only the convolutions, so tiles still equal the whole box."""
    from cosmonet.emulate import emulate_box, receptive_radius
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2, zero_anchor=True, lpt2_prior=-0.6)
    with torch.no_grad():
        model.train()
        model(torch.randn(2, 3, 16, 16, 16))
    model.eval()
    assert 4 <= receptive_radius(model) < 32
    disp = np.random.default_rng(3).normal(0, 2, (3, 32, 32, 32)).astype(np.float32)
    whole = emulate_box(model, disp, 6.0)
    tiled = emulate_box(model, disp, 6.0, tile=16)
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * np.abs(whole - disp).max())


# --------------------------------------------------------------------------- safe loading
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["COSMONET_PWNED"],))


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path, monkeypatch):
    from cosmonet.train.checkpoint import load_checkpoint
    marker = tmp_path / "pwned"
    monkeypatch.setenv("COSMONET_PWNED", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_signature": {"name": "unet"}, "x": _Payload()}, path)
    with pytest.raises(InputError, match="refused: it holds the Python object .*system"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_rng_state_round_trips_through_a_safe_load(tmp_path):
    from cosmonet.train.checkpoint import rng_state, safe_load, set_rng_state
    np.random.seed(5)
    state = rng_state()
    want = np.random.random(3)
    buf = io.BytesIO()
    torch.save({"rng": state}, buf)
    buf.seek(0)
    (tmp_path / "s.pt").write_bytes(buf.getvalue())
    set_rng_state(safe_load(str(tmp_path / "s.pt"))["rng"])
    np.testing.assert_array_equal(np.random.random(3), want)
    # a checkpoint of the previous format (numpy's key as an array) still loads, safely
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": state["python"]}
    torch.save({"rng": old}, tmp_path / "old.pt")
    set_rng_state(safe_load(str(tmp_path / "old.pt"))["rng"])


# --------------------------------------------------------------------------- emulate warnings
def test_emulate_names_inputs_outside_the_training_setup():
    from cosmonet.emulate import outside_training
    setup = {"nc": 32, "box": 128.0, "a_final": 1.0, "cosmology": {"Omega_m": 0.3089, "sigma8": 0.8159,
                                                                   "transfer": "eisenstein_hu"}}
    same = {"nc": 64, "box_size": 256.0, "a_final": 1.0, "Omega_m": 0.3089, "sigma8": 0.8159}
    assert outside_training(setup, same) == []                        # a bigger box of the same cells
    lines = outside_training(setup, {"nc": 32, "box_size": 256.0, "a_final": 0.5, "Omega_m": 0.35})
    assert any("cell size 8 Mpc/h" in s and "trained on 4 Mpc/h" in s for s in lines)
    assert any("a_final 0.5, trained on 1" in s for s in lines)
    assert any("Omega_m 0.35, trained on 0.3089" in s for s in lines)
    assert outside_training(None, same) == []


# --------------------------------------------------------------------------- one writer per run
def test_a_second_train_into_the_same_run_is_refused(tiny_pairs, tmp_path, capsys):
    """While one ``train`` holds OUT/.lock, another into the same OUT exits 2 naming the
    holder; the holder's directory is left as it was."""
    import yaml

    from cosmonet.campaign.lock import CampaignLock
    from cosmonet.cli import main
    out = tmp_path / "run"
    out.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group"},
        "data": {"root": str(tiny_pairs), "scale": 4.0, "num_workers": 0, "val_split": ""},
        "train": {"batch_size": 2, "max_steps": 2, "log_every": 1, "precision": "fp32"}, "out": str(out)}))
    with CampaignLock(out, command="train"):
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"out {out} is being written by another cosmonet train (host " in err and "pid" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert main(["train", str(cfg)]) == 0                              # free again: it runs
    assert (out / "checkpoints").is_dir()


def test_resume_removes_a_killed_checkpoint_writes_temporaries(tiny_pairs, tmp_path, capsys):
    import yaml

    from cosmonet.cli import main
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group"},
        "data": {"root": str(tiny_pairs), "scale": 4.0, "num_workers": 0, "val_split": ""},
        "train": {"batch_size": 2, "max_steps": 2, "log_every": 1, "precision": "fp32"}, "out": str(out)}))
    assert main(["train", str(cfg)]) == 0
    left = [out / "checkpoints" / "step_00000004.pt.k2j3l4.tmp", out / "checkpoints" / "latest.a8b9c0.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    keep = out / "checkpoints" / "notes.tmp"                          # not cosmonet's: left alone
    keep.write_text("mine")
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--set", "train.max_steps=3"]) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not any(p.exists() for p in left) and keep.exists()


def test_a_network_too_deep_for_the_boxes_is_refused_before_it_is_built(tiny_pairs, tmp_path, capsys):
    import yaml

    from cosmonet.cli import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 9, "norm": "group"},
        "data": {"root": str(tiny_pairs), "scale": 4.0, "num_workers": 1000, "val_split": ""},
        "train": {"batch_size": 2, "max_steps": 1}, "out": str(tmp_path / "run")}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cosmonet: error: train config: model.depth=9 needs box sides divisible by 2**9 = 512; "
                   f"the campaign {tiny_pairs} has 8^3 boxes"]
    assert not (tmp_path / "run").exists()


def test_a_new_run_can_start_from_the_shipped_network(tiny_pairs, tmp_path, capsys):
    """train.init_from: the shipped network's weights (float16 on disk) seed a new run of the
    same architecture; another architecture is refused naming both."""
    import yaml

    from cosmonet.cli import main
    from cosmonet.pretrained import available, card
    if "d3m_cpu" not in available():
        pytest.skip("no shipped network")
    c = card("d3m_cpu")
    model = dict(c["model"]["kwargs"], name="unet")
    cfg = tmp_path / "c.yaml"
    body = {"model": model, "data": {"root": str(tiny_pairs), "scale": 6.0, "num_workers": 0, "val_split": ""},
            "train": {"batch_size": 1, "max_steps": 1, "init_from": "d3m_cpu"}, "out": str(tmp_path / "run")}
    cfg.write_text(yaml.safe_dump(body))
    assert main(["train", str(cfg)]) == 0
    assert "weights from" in capsys.readouterr().err
    body["model"] = dict(model, base_channels=model["base_channels"] * 2)
    body["out"] = str(tmp_path / "run2")
    cfg.write_text(yaml.safe_dump(body))
    assert main(["train", str(cfg)]) == 2
    assert "not the configured" in capsys.readouterr().err
