"""The shipped emulator (cosmonet/pretrained/d3m_cpu): loads by name or path, safely, from a
clone and from a wheel, and beats 2LPT on fresh pairs it never saw."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from cli_util import assert_clean_error
from cosmonet.errors import InputError
from cosmonet.pretrained import PRETRAINED_DIR, available, card, resolve, weights_path
from mpi_util import cosmonet_exe, mpi_env

NAME = "d3m_cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh_pairs(seeds, nc=32):
    """ZA, 2LPT and FastPM displacements of new simulations in the shipped set-up."""
    from mpi4py import MPI

    from cosmonet.sim.simulation import SimConfig, run_simulation
    setup = card(NAME)["training_setup"]
    out = []
    for seed in seeds:
        cfg = SimConfig(nc=nc, box=setup["box"] * nc / setup["nc"], steps=setup["steps"], boost=setup["boost"],
                        a_start=setup["a_start"], a_final=setup["a_final"], seed=seed)
        res = run_simulation(cfg, MPI.COMM_SELF, fields={"za/disp", "lpt2/disp", "fastpm/disp"})
        out.append({k: res.fields[f"{k}/disp"].astype(np.float64) for k in ("za", "lpt2", "fastpm")})
    return out


def test_shipped_network_is_listed_and_resolves_by_name_and_path():
    assert NAME in available()
    path = weights_path(NAME)
    assert path == os.path.join(PRETRAINED_DIR, NAME, "weights.pt")
    assert resolve(NAME) == resolve(f"pretrained:{NAME}") == path
    assert resolve(path) == path
    assert os.path.realpath(os.path.join(ROOT, "pretrained", NAME, "weights.pt")) == os.path.realpath(path)
    with pytest.raises(InputError, match=f"shipped: .*{NAME}"):
        resolve("pretrained:no_such_net")
    assert resolve("no_such_net") is None


def test_weights_are_half_precision_plain_data_and_small():
    state = torch.load(weights_path(NAME), map_location="cpu", weights_only=True)     # no code can run
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert os.path.getsize(weights_path(NAME)) < 8 * 2 ** 20
    assert state["format"] == "cosmonet-pretrained-1"
    c = card(NAME)
    for key in ("config", "training_setup", "campaign", "training", "evaluation", "goals", "zero_input"):
        assert key in c, key
    assert c["campaign"]["seed"] != c["evaluation_data"]["seed"]


def test_shipped_network_beats_2lpt_on_fresh_pairs():
    """Three pairs from seeds used by no campaign: the emulator is closer to FastPM than 2LPT
    in each, and answers a zero input with (nearly) zero."""
    from cosmonet.analysis.power import displacement_error
    from cosmonet.emulate import emulate_box, load_emulator
    model, norm, _ = load_emulator(NAME)
    for pair in fresh_pairs([9_000_001, 9_000_002, 9_000_003]):
        pred = emulate_box(model, pair["za"].astype(np.float32), norm["scale"]).astype(np.float64)
        e_model = displacement_error(pred, pair["fastpm"])
        e_lpt = displacement_error(pair["lpt2"], pair["fastpm"])
        assert e_model < 0.9 * e_lpt, (e_model, e_lpt)
    with torch.no_grad():
        zero = model(torch.zeros(1, 3, 32, 32, 32)) * norm["scale"]
    assert float(zero.pow(2).sum(1).mean().sqrt()) < 0.05


def test_emulate_by_name_warns_outside_training(tmp_path):
    sim, emu = tmp_path / "sim.h5", tmp_path / "emu.h5"
    env = dict(mpi_env(), OMP_NUM_THREADS="1")
    subprocess.run([cosmonet_exe(), "run-sim", "--nc", "16", "--box", "64", "--steps", "4", "--seed", "5",
                    "--cosmology", "Omega_m=0.35", "--out", sim], check=True, capture_output=True, env=env)
    proc = subprocess.run([cosmonet_exe(), "emulate", "--checkpoint", NAME, "--input", sim, "--out", emu],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "outside the network's training: Omega_m 0.35, trained on 0.3089" in proc.stderr
    assert "fp32 on 1 torch thread (OMP_NUM_THREADS=1)" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "fp32"
    bad = subprocess.run([cosmonet_exe(), "emulate", "--checkpoint", "pretrained:nope", "--input", sim,
                          "--out", tmp_path / "x.h5"], capture_output=True, text=True, env=env)
    assert_clean_error(bad, "no shipped network 'nope'", NAME)


def test_a_wheel_carries_the_shipped_network(tmp_path):
    """pip's wheel of the package holds the weights, and cosmonet imported from the unpacked
    wheel finds them by name."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("cosmonet-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert f"cosmonet/pretrained/{NAME}/weights.pt" in z.namelist()
        z.extractall(site)
    code = ("import cosmonet.pretrained as p, os; path = p.resolve('d3m_cpu'); "
            "print(path); assert os.path.isfile(path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(site)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site))


def test_emulate_refuses_non_finite_input(tmp_path):
    """A NaN in the input is refused with one line naming the field and the count; nothing
    is written (it used to give an all-NaN field with exit 0)."""
    import h5py
    sim, emu = tmp_path / "sim.h5", tmp_path / "emu.h5"
    env = dict(mpi_env(), OMP_NUM_THREADS="1")
    subprocess.run([cosmonet_exe(), "run-sim", "--nc", "16", "--box", "64", "--steps", "2", "--seed", "5",
                    "--out", sim], check=True, capture_output=True, env=env)
    with h5py.File(sim, "r+") as f:
        f["za/disp"][0, 1, 2, 3] = np.nan
        f["za/disp"][1, 1, 2, 3] = np.inf
    proc = subprocess.run([cosmonet_exe(), "emulate", "--checkpoint", NAME, "--input", sim, "--out", emu],
                          capture_output=True, text=True, env=env)
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr
    assert "cosmonet: error:" in proc.stderr and "za/disp has 2 non-finite values" in proc.stderr
    assert not emu.exists()
