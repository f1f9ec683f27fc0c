"""Probes of a trained emulator (cosmonet/probes, ``cosmonet probe``).

Fast tests check each probe's arithmetic on operators whose answer is known (identity,
a fixed Fourier filter, a pointwise nonlinearity, an axis-dependent and a
position-dependent operator), tie the plane-wave input to the engine's ZA, and check
bad input; slow tests run every probe through the command line on the session's trained
checkpoint (tests/conftest.py ``trained_d3m``).
"""
import json
import math
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mpi4py import MPI
from scipy.special import jv

from cli_util import assert_clean_error
from cosmonet.analysis.power import k_edges
from cosmonet.cli import main
from cosmonet.errors import InputError
from cosmonet.cosmology import growth_for
from cosmonet.mesh import ParticleMesh
from cosmonet.models import build_model, model_signature
from cosmonet.probes.amplitude import probe_amplitude
from cosmonet.probes.cosmology_probe import cosmology_label, probe_cosmology
from cosmonet.probes.phase import SEED_PHASES, probe_phase
from cosmonet.probes.planewave import (ProbeSetup, cube_orbit, planewave_displacement, probe_planewave,
                                       resolve_mode, run_planewave_nbody)
from cosmonet.probes.rotation import probe_rotation
from cosmonet.train.checkpoint import save_checkpoint
from mpi_util import cosmonet_exe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = ProbeSetup(nc=32, box=128.0, steps=2)
SMALL = ProbeSetup(nc=16, box=64.0, steps=2)


def identity(d):
    return d


def fourier_filter(w_of_k, setup=SETUP):
    """predict = the isotropic filter W(|k|) applied to each displacement component."""
    pm = ParticleMesh(setup.nc, setup.box, MPI.COMM_SELF, dtype=np.float64)
    w = w_of_k(np.sqrt(pm.k2))
    return lambda d: np.stack([pm.c2r(pm.r2c(np.asarray(d[c], dtype=np.float64)) * w) for c in range(3)])


def population_spread(values):
    v = np.asarray(values, dtype=float)
    return v.std() / v.mean()


# --------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("a_final", [1.0, 0.6])
def test_engine_za_of_planewave_equals_the_analytic_mode(a_final):
    """The probe's linear field, run through the engine (run_simulation with linear_field),
    gives za/disp = A k_hat cos(k.q + phi): probe inputs follow the engine's conventions."""
    setup = ProbeSetup(nc=32, box=128.0, steps=1, a_final=a_final)
    assert growth_for(setup.cosmology).D1(a_final) == pytest.approx(1.0 if a_final == 1 else 0.71, abs=0.01)
    for mode, amp, phase in (((5, 0, 0), 1.3, 0.0), ((3, -2, 1), 0.8, 0.7)):
        sims = run_planewave_nbody(setup, mode, amp, phase)
        expect = planewave_displacement(setup, mode, amp, phase)
        np.testing.assert_allclose(sims["za"], expect, atol=3e-7 * amp)
        # one plane wave has no second-order source: 2LPT = ZA
        np.testing.assert_allclose(sims["lpt2"], expect, atol=3e-7 * amp)
        # the engine's displacement is along k_hat (longitudinal, curl free)
        khat = np.asarray(mode) / np.linalg.norm(mode)
        along = np.tensordot(khat, sims["za"], axes=1)
        assert np.abs(sims["za"] - khat[:, None, None, None] * along).max() < 3e-7 * amp


def test_resolve_mode_nearest_exact_and_nyquist():
    mode, note = resolve_mode(0.25, SETUP)
    assert mode == (5, 0, 0) and "nearest mode (5, 0, 0)" in note and "0.2454" in note
    kf = SETUP.k_fundamental
    assert resolve_mode(5 * kf, SETUP) == ((5, 0, 0), None)
    assert resolve_mode([0.1, -0.1, 0.0], SETUP)[0] == (2, -2, 0)
    with pytest.raises(InputError, match=r"not on the grid of modes.*nearest mode \(5, 0, 0\)"):
        resolve_mode(0.25, SETUP, exact=True)
    with pytest.raises(InputError, match="above the mesh Nyquist frequency k_N = pi nc / L = 0.7854"):
        resolve_mode(0.8, SETUP)
    with pytest.raises(InputError, match="at or above the mesh Nyquist"):
        resolve_mode(15.6 * kf, SETUP)          # rounds to the Nyquist mode 16
    with pytest.raises(InputError, match="below the box's fundamental mode"):
        resolve_mode(0.01, SETUP)


def test_cube_orbits():
    assert cube_orbit((5, 0, 0), "axes") == [(5, 0, 0), (0, 5, 0), (0, 0, 5)]
    assert len(cube_orbit((5, 0, 0), "all")) == 6
    assert len(cube_orbit((2, 2, 0), "all")) == 12
    assert len(cube_orbit((3, 2, 1), "all")) == 48
    shell = cube_orbit((5, 0, 0), "shell")
    assert len(shell) == 30 and (3, 4, 0) in shell and shell[0] == (5, 0, 0)
    assert all(sum(x * x for x in m) == 25 for m in shell)


# --------------------------------------------------------------------------- planewave
@pytest.mark.parametrize("cast", [np.float64, np.float32])
def test_identity_keeps_all_power_at_the_injected_mode(cast):
    rep = probe_planewave(lambda d: d.astype(cast), SETUP, (5, 0, 0), 1.0, 0.3)
    kept = rep["kept"]
    assert kept["transfer"] == pytest.approx(1.0, abs=1e-7)
    assert kept["r"] == pytest.approx(1.0, abs=1e-12) and abs(kept["phase_shift"]) < 1e-7
    assert kept["fraction_of_total"] == pytest.approx(1.0, abs=1e-12)
    assert kept["off_mode_fraction"] < 1e-10
    disp = rep["fields"]["model"]["displacement"]
    assert disp["main"]["variance"] == pytest.approx(0.5, rel=1e-7)          # A^2 / 2
    assert disp["largest_other"]["ratio_to_main"] < 1e-10
    assert all(h["ratio_to_main"] < 1e-10 for h in disp["harmonics"])
    assert [h["order"] for h in disp["harmonics"]] == [2, 3]                  # 20 k_f is above Nyquist (16)
    assert disp["longitudinal_fraction"] == pytest.approx(1.0, abs=1e-12)
    assert disp["other_bins_max_ratio"] < 1e-10
    # the identity's response to a zero input is zero
    assert rep["zero_input"]["rms_about_mean"] == 0.0


def test_density_of_a_za_plane_wave_is_bessel():
    """delta(m k) = <exp(-i m k.(q + psi))> = (-i)^m J_m(m k A) e^{i m phi}: exact sums over particles."""
    amp, mode = 3.0, (5, 0, 0)
    rep = probe_planewave(identity, SETUP, mode, amp, 0.4)
    z = np.linalg.norm(mode) * SETUP.k_fundamental * amp
    dens = rep["fields"]["input"]["density"]
    assert dens["main"]["variance"] == pytest.approx(2 * jv(1, z) ** 2, rel=1e-10)
    for h in dens["harmonics"]:
        m = h["order"]
        assert h["ratio_to_main"] == pytest.approx((jv(m, m * z) / jv(1, z)) ** 2, rel=1e-8)


def test_fourier_filter_transfer_is_w_squared():
    """A fixed filter W(k) keeps W(k)^2 of the variance (a power ratio), in any direction."""
    w_of_k = lambda k: np.exp(-(k / 0.3) ** 2)                          # noqa: E731
    predict = fourier_filter(w_of_k)
    for mode in ((5, 0, 0), (3, 4, 0), (0, -4, 3)):
        rep = probe_planewave(predict, SETUP, mode, 1.0, 0.1)
        assert rep["kept"]["transfer"] == pytest.approx(w_of_k(rep["k"]) ** 2, rel=1e-10)
        assert rep["kept"]["off_mode_fraction"] < 1e-10


def test_pointwise_square_makes_the_second_harmonic():
    """psi_x + b psi_x^2 with psi_x = A cos(theta): the 2nd harmonic has amplitude b A^2 / 2,
    so its variance over the main mode's is b^2 A^2 / 4; a pointwise map is translation
    invariant, so the phase probe sees no spread."""
    b, amp = 0.3, 1.5
    predict = lambda d: d + b * d ** 2                                   # noqa: E731
    rep = probe_planewave(predict, SETUP, (4, 0, 0), amp, 0.2)
    h = rep["fields"]["model"]["displacement"]["harmonics"]
    assert h[0]["order"] == 2 and h[0]["ratio_to_main"] == pytest.approx(b ** 2 * amp ** 2 / 4, rel=1e-10)
    assert h[1]["ratio_to_main"] < 1e-20
    ph = probe_phase(predict, SETUP, (4, 0, 0), amp, SEED_PHASES)
    assert ph["spread"]["main_mode"] < 1e-12 and ph["spread"]["harmonics"][0] < 1e-12
    assert ph["spread"]["harmonics"][1] is None          # no 3rd harmonic: no spread to speak of


# --------------------------------------------------------------------------- rotation, phase
@pytest.mark.parametrize("symmetries", ["axes", "all", "shell"])
def test_rotation_probe_catches_an_axis_dependent_operator(symmetries):
    """x component times (1 + e): a mode along k_hat keeps (1 + e)^2 k_x^2/k^2 + (k_y^2 + k_z^2)/k^2
    of its variance; the spread over orientations is that of these factors."""
    e = 0.2
    gain = np.array([1 + e, 1.0, 1.0])
    predict = lambda d: d * gain[:, None, None, None]                    # noqa: E731
    rep = probe_rotation(predict, SMALL, (5, 0, 0), 1.0, 0.0, symmetries)
    modes = cube_orbit((5, 0, 0), symmetries)
    factors = [float(np.sum((np.asarray(m) / 5.0) ** 2 * gain ** 2)) for m in modes]
    expect = population_spread(factors)
    if symmetries == "axes":
        assert expect == pytest.approx(population_spread([(1 + e) ** 2, 1, 1]))
    assert rep["spread"]["main_mode"] == pytest.approx(expect, rel=1e-10)
    assert rep["spread"]["injected_bin"] == pytest.approx(expect, rel=1e-10)
    assert [r["transfer"] for r in rep["orientations"]] == pytest.approx(factors, rel=1e-10)
    # the identity is rotation invariant; bins without power report no spread
    ident = probe_rotation(identity, SMALL, (5, 0, 0), 1.0, 0.0, symmetries)
    assert ident["spread"]["main_mode"] < 1e-12
    assert sum(v is not None for v in ident["spread"]["displacement_per_bin"]) == 1


def test_phase_probe_catches_a_position_dependent_operator():
    """psi (1 + e cos(2 k.q)) puts (A^2 / 2)(1 + e^2 / 4 + e cos 2 phi) into the main mode."""
    e, amp, mode = 0.3, 1.0, (5, 0, 0)
    q = np.arange(SETUP.nc) * SETUP.box / SETUP.nc
    mask = 1 + e * np.cos(2 * 5 * SETUP.k_fundamental * q)[:, None, None]
    rep = probe_phase(lambda d: d * mask[None], SETUP, mode, amp, SEED_PHASES)
    expect = [amp ** 2 / 2 * (1 + e ** 2 / 4 + e * math.cos(2 * p)) for p in SEED_PHASES]
    assert [c["main_variance"] for c in rep["cases"]] == pytest.approx(expect, rel=1e-10)
    assert rep["spread"]["main_mode"] == pytest.approx(population_spread(expect), rel=1e-10)
    assert rep["shift_cells"][1] == pytest.approx((math.pi / 6) / (5 * SETUP.k_fundamental) / 4.0)
    # the identity (and a pure translation of the grid) shows none
    assert probe_phase(identity, SETUP, mode, amp, SEED_PHASES)["spread"]["main_mode"] < 1e-12


def test_amplitude_probe_of_the_identity_is_za_against_fastpm():
    """The identity "model" returns its ZA input, so its error against FastPM is ZA's."""
    setup = ProbeSetup(nc=16, box=64.0, steps=2)
    rep = probe_amplitude(identity, setup, (2, 0, 0), [0.5, 2.0], tolerance=0.5)
    for row in rep["rows"]:
        assert row["error_model"] == pytest.approx(row["error_za"], rel=1e-12)
        assert row["transfer_model"] == pytest.approx(row["transfer_za"], rel=1e-12)
        assert row["error_model_vs_za"] == 0.0
    assert rep["shell_crossing_amplitude"] == pytest.approx(1 / (2 * setup.k_fundamental))


# --------------------------------------------------------------------------- cosmology
@pytest.fixture(scope="module")
def cosmo_campaign(tmp_path_factory):
    """12 test pairs (2 per cosmology) of configs/d3m_cosmo_test.yaml, one process."""
    out = tmp_path_factory.mktemp("cosmo") / "pairs"
    proc = subprocess.run([cosmonet_exe(), "simulate", os.path.join(ROOT, "configs", "d3m_cosmo_test.yaml"),
                           "--out", out, "--quiet", "--set", "n_sims=12", "--set", "shard_size=6"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_cosmology_probe_with_known_operators(cosmo_campaign):
    setup = ProbeSetup()
    rep = probe_cosmology(identity, cosmo_campaign, setup, max_boxes=1)
    labels = [c["label"] for c in rep["cosmologies"]]
    assert labels == ["A_s x 0.2", "A_s x 0.8", "A_s x 1.2", "A_s x 1.8", "Omega_m = 0.25", "Omega_m = 0.35"]
    for c in rep["cosmologies"]:       # the identity is ZA
        assert c["displacement_error"]["model"] == pytest.approx(c["displacement_error"]["za"], rel=1e-6)
        for sec in ("density", "displacement"):
            np.testing.assert_allclose(c[sec]["T_model"], c[sec]["T_za"], rtol=1e-6)
    # a filter constant on each k bin, w_j: T_model / T_za = w_j^2 for the displacement
    pm = ParticleMesh(32, 128.0, MPI.COMM_SELF, dtype=np.float64)
    edges = k_edges(pm)
    w = 1.0 + 0.4 * np.sin(np.arange(len(edges) + 1))

    def bin_weight(k):
        return w[np.digitize(k, edges) - 1]

    rep = probe_cosmology(fourier_filter(bin_weight), cosmo_campaign, setup, max_boxes=1)
    for c in rep["cosmologies"][:2]:
        k = np.asarray(c["k"])
        ratio = np.asarray(c["displacement"]["T_model"]) / np.asarray(c["displacement"]["T_za"])
        np.testing.assert_allclose(ratio, bin_weight(k) ** 2, rtol=1e-5)


def test_cosmology_labels():
    ref = dict(Omega_m=0.3089, Omega_b=0.0486, h=0.6774, n_s=0.9667, sigma8=0.8159, A_s=None)
    assert cosmology_label(dict(ref), ref) == "training cosmology"
    assert cosmology_label(dict(ref, sigma8=0.8159 * math.sqrt(1.8)), ref) == "A_s x 1.8"
    assert cosmology_label(dict(ref, Omega_m=0.25), ref) == "Omega_m = 0.25"


# --------------------------------------------------------------------------- command line, bad input
def run_cli(argv, capsys):
    """``cosmonet`` in this process: a CompletedProcess-like result for assert_clean_error."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=cap.out, stderr=cap.err)


SMALL_CAMPAIGN = """n_sims: 4
nc: 16
box: 64.0
steps: 2
cosmology: planck15
fields: [za/disp, lpt2/disp, fastpm/disp]
splits: {train: 2, test: 2}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random (untrained) 3 -> 3 U-Net checkpoint whose training campaign is 16^3 in 64 Mpc/h,
    a checkpoint of another model, and a campaign that lacks lpt2/disp."""
    d = tmp_path_factory.mktemp("tiny")
    camp = d / "campaign"
    camp.mkdir()
    (camp / "campaign.yaml").write_text(SMALL_CAMPAIGN)
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2, norm="batch", residual=True)
    config = {"data": {"root": str(camp), "input": "za/disp", "target": "fastpm/disp", "test_split": "test"}}
    good = save_checkpoint(str(d / "good"), {"model": model.state_dict(), "model_signature": model_signature(model),
                                             "step": 1, "normalization": {"scale": 5.0}, "config": config})
    other = save_checkpoint(str(d / "other"), {"model": {}, "step": 1, "normalization": {},
                                               "model_signature": {"name": "paramnet",
                                                                   "kwargs": {"in_channels": 1, "out_channels": 2}},
                                               "config": {"data": {"root": str(camp)}}})
    dens = build_model("unet", in_channels=1, out_channels=1, base_channels=4, depth=2)
    density = save_checkpoint(str(d / "density"), {"model": dens.state_dict(), "model_signature": model_signature(dens),
                                                   "step": 1, "normalization": {"scale": 1.0}, "config": config})
    nolpt = d / "nolpt"
    proc = subprocess.run([cosmonet_exe(), "simulate", camp / "campaign.yaml", "--out", nolpt, "--quiet",
                           "--set", "n_sims=2", "--set", "splits={}", "--set", "fields=[za/disp, fastpm/disp]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(good=good, other=other, density=density, campaign=camp, nolpt=nolpt, dir=d)


def test_probe_command_on_a_tiny_checkpoint(tiny, tmp_path):
    """The whole command (subprocess): JSON + PNG, the nearest mode named on stderr, FastPM."""
    out = tmp_path / "pw"
    proc = subprocess.run([cosmonet_exe(), "probe", "planewave", "--checkpoint", tiny.good, "--out", out,
                           "--k", "0.25", "--with-nbody"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "nearest mode (3, 0, 0)" in proc.stderr        # k_f = 0.0982 h/Mpc in 64 Mpc/h
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    rep = json.loads((out / "planewave.json").read_text())
    assert rep["mode"] == [3, 0, 0] and rep["setup"]["nc"] == 16 and rep["units"]["k"] == "h/Mpc"
    assert rep["za_engine_max_abs_difference"] < 1e-6 and "fastpm" in rep["fields"]
    assert any("nearest mode" in n for n in rep["notes"]) and line["transfer"] == rep["kept"]["transfer"]
    assert (out / "planewave.png").stat().st_size > 10_000


def test_bad_input_is_one_clear_line(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["probe", "planewave", "--checkpoint", tiny.good, "--out", out]
    assert_clean_error(run_cli(base + ["--k", "0.9"], capsys), "above the mesh Nyquist", "0.7854")
    assert_clean_error(run_cli(base + ["--k", "0.25", "--exact"], capsys), "not on the grid of modes",
                       "nearest mode (3, 0, 0)")
    assert_clean_error(run_cli(base + ["--mode", "0,0,0"], capsys), "k = 0")
    assert_clean_error(run_cli(base + ["--mode", "8,0,0"], capsys), "Nyquist")
    assert_clean_error(run_cli(base + ["--amplitude", "-1"], capsys), "--amplitude must be > 0")
    assert_clean_error(run_cli(base + ["--phase", "1,2"], capsys), "--phase must be one angle")
    assert_clean_error(run_cli(base + ["--train-data", tmp_path / "nowhere"], capsys), "--train-data")
    for ckpt in (tiny.other, tiny.density):
        assert_clean_error(run_cli(["probe", "rotation", "--checkpoint", ckpt, "--out", out], capsys),
                           "not a displacement emulator")
    assert_clean_error(run_cli(["probe", "phase", "--checkpoint", tmp_path / "none.pt", "--out", out], capsys),
                       "does not exist")
    assert_clean_error(run_cli(["probe", "phase", "--checkpoint", tiny.good, "--out", out, "--phases", "0,pie"],
                               capsys), "--phases")
    cos = ["probe", "cosmology", "--checkpoint", tiny.good, "--out", out]
    assert_clean_error(run_cli(cos, capsys), "needs --data")
    assert_clean_error(run_cli(cos + ["--data", tiny.nolpt], capsys), "lpt2/disp")
    assert_clean_error(run_cli(cos + ["--data", tmp_path], capsys), "not a campaign directory")
    # the same contract through a real process
    proc = subprocess.run([cosmonet_exe()] + [str(a) for a in base + ["--k", "1.5"]], capture_output=True,
                          text=True, timeout=120)
    assert_clean_error(proc, "Nyquist")
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- the trained checkpoint
@pytest.mark.slow
def test_every_probe_on_the_trained_checkpoint(trained_d3m, cosmo_campaign, tmp_path):
    """All five probes through the command line on the session's trained U-Net (JSON + PNG)."""
    runs = {
        "planewave": ["--with-nbody"],
        "rotation": ["--with-nbody"],
        "phase": [],
        "cosmology": ["--data", cosmo_campaign, "--max-boxes", "2"],
        "amplitude": ["--amplitudes", "0.4,2,4,6"],
    }
    reports = {}
    for kind, extra in runs.items():
        out = tmp_path / kind
        proc = subprocess.run([cosmonet_exe(), "probe", kind, "--checkpoint", trained_d3m.checkpoint, "--out", out]
                              + [str(a) for a in extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"probe {kind}:" in proc.stderr                  # progress lines
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        reports[kind] = json.loads((out / f"{kind}.json").read_text())
        for png in line["plots"]:
            assert os.path.getsize(png) > 10_000
        print(kind, json.dumps({k: v for k, v in line.items() if k not in ("json", "plots")})[:600])
    pw = reports["planewave"]
    # the network keeps the injected mode (within a factor 2 of its power, in phase)
    assert 0.5 < pw["kept"]["transfer"] < 2 and pw["kept"]["r"] > 0.95
    assert pw["fields"]["fastpm"]["displacement"]["main"]["fraction_of_total"] > 0.95
    # trained with the 48 cube symmetries: orientations agree to well under the main mode's size
    assert reports["rotation"]["spread"]["main_mode"] < 0.3
    assert reports["rotation"]["fastpm"]["spread"]["main_mode"] < 1e-4       # FastPM is cube-symmetric
    assert reports["phase"]["spread"]["main_mode"] < 0.1
    cos = {c["label"]: c for c in reports["cosmology"]["cosmologies"]}
    assert len(cos) == 7 and cos["training cosmology"]["n_boxes"] == 2
    ref = cos["training cosmology"]["displacement_error"]
    assert ref["model"] < ref["lpt2"]
    amp = reports["amplitude"]
    assert len(amp["rows"]) == 4 and all(r["error_za"] > 0 for r in amp["rows"])
