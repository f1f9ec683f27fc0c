"""Emulation of boxes larger than the training size: periodic tiles equal the whole box."""
import json
import subprocess

import h5py
import numpy as np
import pytest
import torch

from cosmonet.emulate import emulate_box, emulate_tiles, load_emulator, receptive_radius, tiling_blockers
from cosmonet.errors import InputError
from cosmonet.models import build_model, model_signature
from cosmonet.train.checkpoint import save_checkpoint
from mpi_util import cosmonet_exe


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2, norm="batch", residual=True)
    with torch.no_grad():                      # non-trivial running statistics
        model.train()
        model(torch.randn(2, 3, 16, 16, 16))
    out = tmp_path_factory.mktemp("ckpt")
    path = save_checkpoint(str(out), {"model": model.state_dict(), "model_signature": model_signature(model),
                                      "step": 7, "normalization": {"scale": 5.0}})
    return path


def test_tiles_equal_the_whole_box(checkpoint):
    model, norm, _ = load_emulator(checkpoint)
    r = receptive_radius(model)
    assert 4 <= r < 32
    disp = np.random.default_rng(1).normal(0, 4, (3, 64, 64, 64)).astype(np.float32)
    whole = emulate_box(model, disp, norm["scale"])
    tiled = emulate_box(model, disp, norm["scale"], tile=16)           # margin: measured radius
    learned = np.abs(whole - disp).max()          # the network's part (the rest is the residual input)
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * learned)
    # too little context is visibly wrong (the test can fail), so emulate_box refuses it
    short = emulate_tiles(model, torch.from_numpy(disp / norm["scale"]), norm["scale"], 16, 0)
    assert np.abs(short - whole).max() > 1e-2 * learned
    with pytest.raises(InputError, match="receptive radius"):
        emulate_box(model, disp, norm["scale"], tile=16, margin=0)
    for tile, margin, what in ((0, None, "--tile must be"), (-16, None, "--tile must be"), (12, None, "divide"),
                               (2, None, "multiple"), (16, -4, "--margin must be"), (16, 6, "multiple")):
        with pytest.raises(InputError, match=what):
            emulate_box(model, disp, norm["scale"], tile=tile, margin=margin)


@pytest.mark.parametrize("norm", ["group", "batch_statistics"])
def test_tiling_refused_where_statistics_span_the_tile(norm):
    """GroupNorm (and BatchNorm on batch statistics) normalise over the tile: the tiles are
    measurably different from the whole box, so emulate_box refuses to tile such a model."""
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2, norm="group" if norm == "group" else "batch").eval()
    if norm == "batch_statistics":
        model.train()
    assert tiling_blockers(model)
    disp = np.random.default_rng(2).normal(0, 4, (3, 32, 32, 32)).astype(np.float32)
    x = torch.from_numpy(disp / 5.0)
    whole = emulate_box(model, disp, 5.0)
    tiled = emulate_tiles(model, x, 5.0, 16, 16)            # generous margin: still not the whole box
    assert np.abs(tiled - whole).max() > 1e-3
    with pytest.raises(InputError, match="statistics over the tile"):
        emulate_box(model, disp, 5.0, tile=16)
    assert not tiling_blockers(build_model("unet", base_channels=4, depth=2, norm="batch").eval())
    assert not tiling_blockers(build_model("unet", base_channels=4, depth=2, norm="none").eval())


def test_emulate_command_on_a_run_sim_file(checkpoint, tmp_path):
    sim = tmp_path / "sim.h5"
    subprocess.run([cosmonet_exe(), "run-sim", "--nc", "32", "--box", "128", "--steps", "1", "--out", sim,
                    "--quiet"], check=True, capture_output=True)
    out = tmp_path / "emu.h5"
    proc = subprocess.run([cosmonet_exe(), "emulate", "--checkpoint", checkpoint, "--input", sim, "--out", out,
                           "--tile", "16"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["n"] == 32
    with h5py.File(out, "r") as f, h5py.File(sim, "r") as g:
        pred = f["emulated/disp"][...]
        assert pred.shape == (3, 32, 32, 32) and f.attrs["nc"] == 32
        model, norm, _ = load_emulator(checkpoint)
        np.testing.assert_allclose(pred, emulate_box(model, g["za/disp"][...], norm["scale"]), atol=1e-4)
        # the simulation's own fields ride along, so one file compares the emulator with them
        for name in ("za", "lpt2", "fastpm"):
            np.testing.assert_array_equal(f[f"{name}/disp"][...], g[f"{name}/disp"][...])
        true = g["fastpm/disp"][...].astype(np.float64)
        want = np.sqrt(((pred - true) ** 2).sum(axis=0)).mean() / np.sqrt((true ** 2).sum(axis=0)).mean()
    errors = info["displacement_error_vs_fastpm"]
    assert set(errors) == {"emulated", "lpt2", "za"} and errors["emulated"] == pytest.approx(want, rel=1e-5)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("emulate: 32^3 cells") and "8 tiles of 16^3" in lines[0], proc.stderr
    assert lines[-1].startswith("emulate: 8/8 tiles"), proc.stderr
    pk = tmp_path / "pk.json"
    proc = subprocess.run([cosmonet_exe(), "power", out, "--field", "emulated", "--second", "fastpm",
                           "--json", pk], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(pk.read_text())["field"] == "emulated"


def test_checkpoint_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([cosmonet_exe(), "emulate", "--checkpoint", bad, "--input", bad, "--out",
                           tmp_path / "o.h5"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.pt" in proc.stderr
