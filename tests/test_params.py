"""Parameter inference (issue 6): sub-cubes split by simulation, paramnet, the trainer and
``cosmonet evaluate`` against the P(k) baseline and the constant predictor.

Fast tests use one campaign of 12 boxes (16^3 particles, density on a 16^3 mesh) made once
for the module; the slow test runs configs/params_small.yaml end to end.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from cli_util import assert_clean_error
from cosmonet.data.subcubes import SubcubeDataset, check_subcube
from cosmonet.errors import InputError
from cosmonet.models import build_model, model_signature
from mpi_util import cosmonet_exe, mpi_env, mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LHS = {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9]}


def make_campaign(out, fields=("density",), lhs=True, n=12, nmesh=16):
    from mpi4py import MPI

    from cosmonet.campaign.runner import prepare_directory, run_campaign
    from cosmonet.campaign.config import validate
    raw = {"n_sims": n, "nc": 16, "box": 128.0, "steps": 2, "shard_size": 4, "fields": list(fields),
           "density_nmesh": nmesh, "splits": {"train": n - 4, "val": 2, "test": 2}, "out": str(out)}
    if lhs:                                   # else every box at Planck 2015
        raw["cosmology"] = {"base": "planck15", "lhs": LHS, "lhs_seed": 3}
    cfg = validate(raw)
    prepare_directory(cfg)
    run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    return str(out)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    return make_campaign(tmp_path_factory.mktemp("params") / "lhs")


def train_config(tmp_path, root, **data):
    import yaml
    cfg = {"model": {"name": "paramnet", "channels": [2, 2, 4, 4, 4, 4], "hidden": [8, 8], "uncertainty": True},
           "data": {"root": root, "input": "density", "target": "params", "subcube": 16, "scale": 1.0,
                    "num_workers": 0, **data},
           "train": {"batch_size": 2, "epochs": 1, "max_steps": 2, "log_every": 1}, "out": str(tmp_path / "run")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# --------------------------------------------------------------------------- the split
def test_no_simulation_is_in_two_splits(campaign):
    sets = {}
    for split in ("train", "val", "test"):
        ds = SubcubeDataset(campaign, split, size=8)
        assert ds.per_box == 8 and len(ds) == 8 * len(ds.base)
        sims = [ds.sim_index(j) for j in range(len(ds))]
        # every simulation of the split gives exactly its 8 sub-cubes, and nothing else
        assert sorted(set(sims)) == sorted(ds.sim_indices)
        assert all(sims.count(s) == 8 for s in set(sims))
        sets[split] = set(sims)
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(12))


def test_subcubes_tile_their_box_and_carry_its_parameters(campaign):
    ds = SubcubeDataset(campaign, "test", size=8)
    box = ds.base.read(1)[0].numpy()                     # the second test simulation, (1, 16, 16, 16)
    rebuilt = np.zeros_like(box)
    for j in range(8, 16):
        b, (i, k, m) = ds.locate(j)
        assert b == 1
        rebuilt[:, i:i + 8, k:k + 8, m:m + 8] = ds.cube(j).numpy()
        x, y, idx = ds[j]
        assert idx == j and x.shape == (1, 8, 8, 8)
        np.testing.assert_allclose(ds.from_unit(y.numpy()), ds.theta[1], rtol=1e-6)
    np.testing.assert_array_equal(rebuilt, box)
    info = ds.base.sample_info(1)
    np.testing.assert_allclose(ds.theta[1], [info["Omega_m"], info["sigma8"]])


def test_unit_range_comes_from_the_latin_hypercube(campaign):
    ds = SubcubeDataset(campaign, "train", size=16)
    assert ds.ranges == {"Omega_m": (0.25, 0.35), "sigma8": (0.7, 0.9)}
    u = ds.to_unit(ds.theta)
    assert u.min() >= 0 and u.max() <= 1
    np.testing.assert_allclose(ds.from_unit(u), ds.theta)


def test_augmentation_moves_voxels_not_parameters(campaign):
    plain = SubcubeDataset(campaign, "train", size=8)
    aug = SubcubeDataset(campaign, "train", size=8, augment=True, seed=5)
    changed = 0
    for item in (3, len(aug) + 3, 2 * len(aug) + 3, 3 * len(aug) + 3):     # sub-cube 3 in epochs 0..3
        x, y, j = aug[item]
        x0, y0, _ = plain[3]
        assert j == 3
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_allclose(np.sort(x.flatten()), np.sort(x0.flatten()))
        changed += not torch.equal(x, x0)
    assert changed >= 2                                   # symmetries are drawn, per epoch
    np.testing.assert_array_equal(aug[len(aug) + 3][0], aug[len(aug) + 3][0])   # and reproducible


def test_subcube_size_must_divide_the_mesh():
    assert check_subcube(0, 32) == 32 and check_subcube(8, 32) == 8
    with pytest.raises(InputError, match="does not divide the density mesh of 32"):
        check_subcube(12, 32)


# --------------------------------------------------------------------------- the model
def test_paramnet_shapes_loss_and_signature():
    torch.manual_seed(0)
    net = build_model("paramnet", input_size=16, n_params=2, channels=[2, 2, 4, 4, 4, 4], hidden=[8, 8],
                      uncertainty=True)
    out = net(torch.randn(3, 1, 16, 16, 16))
    assert out.shape == (3, 4)
    mu, sigma = net.split(out)
    assert mu.shape == sigma.shape == (3, 2) and bool((sigma > 0).all())
    y = torch.rand(3, 2)
    nll = 0.5 * (torch.log(sigma ** 2) + (y - mu) ** 2 / sigma ** 2)
    plain = build_model("paramnet", **{**model_signature(net)["kwargs"], "nll_beta": 0.0})
    plain.load_state_dict(net.state_dict())
    torch.testing.assert_close(plain.loss(out, y), nll.mean())
    # beta = 1 (the default): the mean gets the gradient of half the MSE, and the
    # log-variance gradient vanishes where sigma^2 equals the squared error
    out_ = out.detach().clone().requires_grad_(True)
    net.loss(out_, y).backward()
    torch.testing.assert_close(out_.grad[:, :2], (out_[:, :2] - y).detach() / y.numel())
    log_var = torch.log((y - mu.detach()) ** 2)
    at_optimum = torch.cat([mu.detach(), log_var], dim=1).requires_grad_(True)
    net.loss(at_optimum, y).backward()
    torch.testing.assert_close(at_optimum.grad[:, 2:], torch.zeros(3, 2), atol=1e-7, rtol=0)
    mse_net = build_model("paramnet", input_size=16, channels=[2, 2, 4, 4, 4, 4], hidden=[8, 8])
    o = mse_net(torch.randn(2, 1, 16, 16, 16))
    assert o.shape == (2, 2) and mse_net.split(o)[1] is None
    torch.testing.assert_close(mse_net.loss(o, y[:2]), torch.mean((o - y[:2]) ** 2))
    assert model_signature(net)["kwargs"]["uncertainty"] is True
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("paramnet", input_size=24)
    with pytest.raises(ValueError, match="16\\^3 sub-cubes"):
        net(torch.randn(1, 1, 32, 32, 32))


def test_paramnet_follows_the_described_architecture():
    net = build_model("paramnet", input_size=32)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    pools = [m for m in net.modules() if isinstance(m, torch.nn.AvgPool3d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert (len(convs), len(fcs), len(pools), len(norms), len(acts)) == (6, 3, 2, 6, 8)
    # average pooling follows the first two convolutions only
    order = [type(m).__name__ for m in net.features.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.AvgPool3d))]
    assert order == ["Conv3d", "AvgPool3d", "Conv3d", "AvgPool3d", "Conv3d", "Conv3d", "Conv3d", "Conv3d"]


# --------------------------------------------------------------------------- trainer and bad input
@pytest.mark.mpi
def test_train_writes_a_paramnet_checkpoint_under_mpirun(campaign, tmp_path):
    """The same ``cosmonet train``: 2 ranks, DDP over gloo, launched by mpirun."""
    from cosmonet.train.checkpoint import latest_checkpoint, load_checkpoint
    cfg = train_config(tmp_path, campaign)
    proc = mpirun(2, [cosmonet_exe(), "train", cfg], timeout=300)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["ranks"], summary["backend"], summary["launcher"], summary["global_batch"]) == (2, "ddp", "mpirun", 4)
    state = load_checkpoint(latest_checkpoint(str(tmp_path / "run")))
    assert state["model_signature"]["name"] == "paramnet"
    assert state["model_signature"]["kwargs"]["input_size"] == 16          # filled from data.subcube
    norm = state["normalization"]
    assert norm["params"] == ["Omega_m", "sigma8"] and norm["ranges"]["sigma8"] == [0.7, 0.9]
    assert norm["subcube"] == 16 and norm["subcube_side"] == 128.0


def test_bad_parameter_inference_input_is_one_line(campaign, tmp_path):
    exe = cosmonet_exe()

    def run(cfg):
        return subprocess.run([exe, "train", cfg], capture_output=True, text=True, env=mpi_env(), timeout=300)

    assert_clean_error(run(train_config(tmp_path, campaign, subcube=12)), "does not divide the density mesh")
    assert_clean_error(run(train_config(tmp_path, campaign, subcube=8)), "model: ", "multiple of 16")
    assert_clean_error(run(train_config(tmp_path, campaign, params=["w0"])), "unknown parameter 'w0'")
    no_density = make_campaign(tmp_path / "disp_only", fields=("za/disp",), n=6)
    assert_clean_error(run(train_config(tmp_path, no_density)), "field 'density' is not in")
    fixed = make_campaign(tmp_path / "fixed", lhs=False, n=6)
    assert_clean_error(run(train_config(tmp_path, fixed)), "does not vary", "without parameters to infer")


def test_evaluate_refuses_a_checkpoint_of_the_other_task(campaign, tmp_path):
    from cosmonet.train.checkpoint import save_checkpoint
    unet = build_model("unet", base_channels=2, depth=1)
    ckpt = save_checkpoint(str(tmp_path / "u"), {"model": unet.state_dict(), "model_signature": model_signature(unet),
                                                  "step": 1, "normalization": {"scale": 6.0}})
    proc = subprocess.run([cosmonet_exe(), "evaluate", train_config(tmp_path, campaign), "--checkpoint", ckpt,
                           "--json", str(tmp_path / "e.json")], capture_output=True, text=True, timeout=300)
    assert_clean_error(proc, "holds model 'unet'", "data.target 'params'")


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_small_configuration_beats_the_constant_predictor(tmp_path):
    """configs/params_small.yaml: both estimators beat the training mean on both parameters."""
    data, run = tmp_path / "lhs", tmp_path / "run"
    mpirun(2, [cosmonet_exe(), "simulate", os.path.join(ROOT, "configs", "params_lhs_small.yaml"), "--out", data,
               "--quiet"], timeout=600)
    cfg = os.path.join(ROOT, "configs", "params_small.yaml")
    sets = ["--set", f"data.root={data}", "--set", f"out={run}"]
    proc = subprocess.run([cosmonet_exe(), "train", cfg] + sets, capture_output=True, text=True, env=mpi_env(),
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "eval.json"
    proc = subprocess.run([cosmonet_exe(), "evaluate", cfg, "--checkpoint", str(run), "--json", out,
                           "--plots", tmp_path / "plots"] + sets, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    table = {m: {p: round(report[m][p]["rmse"], 4) for p in ("Omega_m", "sigma8")}
             for m in ("paramnet", "pk_baseline", "constant")}
    print("rmse:", table)
    for p in ("Omega_m", "sigma8"):
        assert report["paramnet"][p]["rmse"] < report["constant"][p]["rmse"], table
        assert report["pk_baseline"][p]["rmse"] < report["constant"][p]["rmse"], table
        for m in ("paramnet", "pk_baseline"):
            assert 0 <= report[m][p]["coverage_68"] <= report[m][p]["coverage_95"] <= 1
            assert set(report[m][p]["per_box"]) == {"rmse", "mean_relative_error", "bias"}
        for m in ("paramnet", "pk_baseline"):       # a box's sub-cubes combined
            assert report[m][p]["per_box_combined"]["rmse"] < report["constant"][p]["rmse"], (m, p)
    assert report["n_test_boxes"] == 16 and report["n_test_subcubes"] == 128
    assert (tmp_path / "plots" / "predicted_vs_true.png").exists()
    assert (tmp_path / "plots" / "calibration.png").exists()
