"""``cosmonet export``: Gadget HDF5 snapshots read back by an independent reader (pynbody).

The particles of a run-sim file, of one simulation of a campaign shard and of an emulate
output are written with ``cosmonet export`` and loaded with pynbody's Gadget-HDF reader;
positions (comoving, converted by pynbody from kpc/h or Mpc/h), velocities (pynbody undoes
Gadget's 1/sqrt(a) itself), IDs, particle mass and the cosmology must equal what cosmonet
stored. Bad inputs give one error line and no file.
"""
import contextlib
import io
import os
import subprocess
import json

import h5py
import numpy as np
import pytest

from cli_util import assert_clean_error
from mpi_util import cosmonet_exe, mpi_env

pynbody = pytest.importorskip("pynbody", reason="pynbody (the independent Gadget reader, in setup.py's test "
                                                 "extra) is not installed")

NC, BOX, A_FINAL = 8, 32.0, 0.5
# pynbody's notes on a file without per-dataset EAGLE unit descriptions: it uses the units we state
pytestmark = pytest.mark.filterwarnings("ignore:Masses are either stored in the header",
                                        "ignore:Unable to infer units from HDF attributes")


def _main(args):
    from cosmonet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A run-sim file (8^3, a = 0.5, with velocities), a 2-simulation shard with
    fastpm/vel, and an emulate output made from the run-sim file."""
    from mpi4py import MPI

    from cosmonet.campaign.config import validate
    from cosmonet.campaign.runner import prepare_directory, run_campaign
    from cosmonet.cosmology import Cosmology
    from cosmonet.io.simfile import read_displacements, write_emulated, write_simulation
    from cosmonet.sim.simulation import SimConfig, run_simulation
    d = tmp_path_factory.mktemp("export")
    cosmo = Cosmology.from_string("Omega_m=0.27,h=0.7")
    cfg = SimConfig(nc=NC, box=BOX, steps=2, boost=2, seed=5, a_start=0.1, a_final=A_FINAL, cosmology=cosmo)
    sim = str(d / "sim.h5")
    write_simulation(sim, run_simulation(cfg, MPI.COMM_SELF))
    camp = d / "camp"
    ccfg = validate({"n_sims": 2, "nc": NC, "box": BOX, "steps": 1, "shard_size": 2, "seed": 3,
                     "a_final": A_FINAL, "fields": ["za/disp", "fastpm/disp", "fastpm/vel"],
                     "splits": {"train": 2}, "out": str(camp)})
    prepare_directory(ccfg)
    run_campaign(ccfg, MPI.COMM_SELF, show_progress=False)
    za, attrs, others = read_displacements(sim)
    emulated = (others["fastpm"] + 0.01 * za).astype(np.float32)   # any field unlike the others
    emu = str(d / "emu.h5")
    write_emulated(emu, emulated, attrs, dict(others, za=za), sim, sim)
    return {"dir": d, "sim": sim, "shard": str(camp / "shards" / "shard_000000.h5"), "emu": emu}


def _expected(path, name, row=None):
    """Positions (Mpc/h, wrapped), velocities (km/s, a dx/dt) and attrs straight from the file."""
    from cosmonet.io.simfile import describe_sim_file, read_positions
    pos, _ = read_positions(path, name, row=row)
    attrs, _ = describe_sim_file(path, _index_of(path, row))
    with h5py.File(path) as f:
        key = f"{name}/vel"
        vel = None if key not in f else (f[key][...] if row is None else f[key][row]).reshape(3, -1).T
    return pos, vel, attrs


def _index_of(path, row):
    if row is None:
        return None
    with h5py.File(path) as f:
        return int(f["params/index"][row])


def _check_with_pynbody(snap, pos, vel, attrs, unit="kpc"):
    s = pynbody.load(str(snap))
    n = NC ** 3
    assert len(s) == len(s.dm) == n
    a = float(attrs["a_final"])
    assert s.properties["a"] == pytest.approx(a, rel=1e-12)
    assert s.properties["h"] == pytest.approx(attrs["h"], rel=1e-12)
    assert s.properties["omegaM0"] == pytest.approx(attrs["Omega_m"], rel=1e-12)
    assert s.properties["omegaL0"] == pytest.approx(1 - attrs["Omega_m"], rel=1e-12)
    assert float(s.properties["boxsize"].in_units("Mpc a h**-1")) == pytest.approx(BOX, rel=1e-6)
    got = np.asarray(s["pos"].in_units("Mpc a h**-1"), dtype=np.float64)
    # float32 coordinates: 6e-8 of the box, or a whole box where a particle sits at the edge
    diff = np.abs(got - pos)
    diff = np.minimum(diff, BOX - diff)
    assert diff.max() < 1e-5, diff.max()
    assert got.min() >= 0 and got.max() < BOX
    np.testing.assert_array_equal(np.asarray(s["iord"]), np.arange(1, n + 1))
    # in the file's mass unit, 1e10 Msun/h with Gadget's Msun = 1.989e33 g (pynbody's Msol is 0.03% less)
    msol_g = pynbody.units.Msol.ratio("g")
    mass = np.asarray(s["mass"].in_units("1e10 Msol h**-1"), dtype=np.float64) * msol_g / 1.989e33
    rho_crit = 2.775366e11                                             # h^2 Msun / Mpc^3
    assert mass == pytest.approx(np.full(n, rho_crit * attrs["Omega_m"] * (BOX / NC) ** 3 / 1e10), rel=1e-5)
    # the masses add up to the box's mean matter density
    assert mass.sum() * 1e10 / BOX ** 3 == pytest.approx(attrs["Omega_m"] * rho_crit, rel=1e-5)
    if vel is None:
        assert "vel" not in s.loadable_keys()
    else:
        got_v = np.asarray(s["vel"].in_units("km s**-1"), dtype=np.float64)   # pynbody applies a^(1/2)
        assert np.abs(vel).max() > 1.0
        np.testing.assert_allclose(got_v, vel, rtol=1e-5, atol=1e-4 * np.abs(vel).max())
    return s


def test_run_sim_file_through_the_executable_and_pynbody(inputs):
    snap = inputs["dir"] / "sim_snap.hdf5"
    proc = subprocess.run([cosmonet_exe(), "export", inputs["sim"], "--out", str(snap)], capture_output=True,
                          text=True, env=mpi_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    summary = json.loads(proc.stdout)
    assert summary["particles"] == NC ** 3 and summary["velocities"] and summary["length_unit"] == "kpc/h"
    pos, vel, attrs = _expected(inputs["sim"], "fastpm")
    _check_with_pynbody(snap, pos, vel, attrs)
    with h5py.File(snap) as f:           # the raw file: Gadget units and header as documented
        h = f["Header"].attrs
        assert h["BoxSize"] == pytest.approx(BOX * 1e3)
        assert h["Redshift"] == pytest.approx(1 / A_FINAL - 1) and h["Time"] == pytest.approx(A_FINAL)
        assert list(h["NumPart_Total"]) == [0, NC ** 3, 0, 0, 0, 0] and h["NumFilesPerSnapshot"] == 1
        assert list(h["NumPart_Total_HighWord"]) == [0] * 6
        assert f["Parameters"].attrs["UnitLength_in_cm"] == pytest.approx(3.085678e21)
        assert f["PartType1/ParticleIDs"].dtype == np.uint64
        x = f["PartType1/Coordinates"][...]
        u = f["PartType1/Velocities"][...]
    np.testing.assert_allclose(x / 1e3, pos, atol=1e-5)                      # kpc/h
    np.testing.assert_allclose(u, vel / np.sqrt(A_FINAL), rtol=1e-5, atol=1e-3)   # v / sqrt(a)


@pytest.mark.parametrize("field", ["za", "lpt2"])
def test_lpt_fields_in_mpc(inputs, field):
    snap = inputs["dir"] / f"{field}_mpc.hdf5"
    proc = _main(["export", inputs["sim"], "--out", snap, "--field", field, "--length-unit", "Mpc"])
    assert proc.returncode == 0, proc.stderr
    pos, vel, attrs = _expected(inputs["sim"], field)
    _check_with_pynbody(snap, pos, vel, attrs, "Mpc")
    with h5py.File(snap) as f:
        assert f["Header"].attrs["BoxSize"] == pytest.approx(BOX)


def test_one_simulation_of_a_shard(inputs):
    snap = inputs["dir"] / "shard_snap.hdf5"
    proc = _main(["export", inputs["shard"], "--index", 1, "--out", snap])
    assert proc.returncode == 0, proc.stderr
    pos, vel, attrs = _expected(inputs["shard"], "fastpm", row=1)
    other, _, _ = _expected(inputs["shard"], "fastpm", row=0)
    assert np.abs(pos - other).max() > 0.1           # simulation 1, not 0
    _check_with_pynbody(snap, pos, vel, attrs)


def test_emulated_field_positions_only(inputs):
    snap = inputs["dir"] / "emu_snap.hdf5"
    proc = _main(["export", inputs["emu"], "--field", "emulated", "--out", snap])
    assert proc.returncode == 0, proc.stderr
    assert "no emulated/vel" in proc.stderr and "Velocities" in proc.stderr
    assert json.loads(proc.stdout)["velocities"] is False
    pos, vel, attrs = _expected(inputs["emu"], "emulated")
    assert vel is None
    fastpm, _, _ = _expected(inputs["emu"], "fastpm")
    assert np.abs(pos - fastpm).max() > 1e-3            # the emulated field, not FastPM's
    _check_with_pynbody(snap, pos, None, attrs)


@pytest.mark.parametrize("case, needles", [
    (lambda i: [i["sim"], "--field", "emulated"], ["has no field 'emulated'", "sim.h5"]),
    (lambda i: [i["sim"], "--field", "nbody"], ["--field", "invalid choice: 'nbody'"]),
    (lambda i: [i["shard"], "--index", 7], ["--index 7 is not in"]),
    (lambda i: [i["shard"]], ["campaign shard of 2 simulations", "--index"]),
    (lambda i: [i["shard"], "--index", -1], ["--index must be an integer >= 0"]),
    (lambda i: [i["shard"], "--index", 0, "--field", "lpt2"], ["has no field 'lpt2'"]),
    (lambda i: [i["sim"], "--index", 0], ["single simulation"]),
    (lambda i: [i["dir"] / "missing.h5"], ["missing.h5 does not exist"]),
    (lambda i: [i["sim"], "--length-unit", "pc"], ["--length-unit"]),
], ids=["no-field", "bad-field", "index-out-of-range", "shard-without-index", "negative-index",
        "field-not-in-shard", "index-on-single", "missing-input", "bad-unit"])
def test_bad_input_one_line_and_no_file(inputs, case, needles):
    out = inputs["dir"] / "bad.hdf5"
    before = sorted(os.listdir(inputs["dir"]))
    proc = _main(["export", *case(inputs), "--out", out])
    assert_clean_error(proc, *needles)
    assert sorted(os.listdir(inputs["dir"])) == before


def test_refuses_to_write_over_its_input_and_non_finite_values(inputs, tmp_path):
    proc = _main(["export", inputs["sim"], "--out", inputs["sim"]])
    assert_clean_error(proc, "refusing to write over an input")
    bad = tmp_path / "nan.h5"
    with h5py.File(inputs["sim"]) as src, h5py.File(bad, "w") as f:
        f.attrs.update(src.attrs)
        d = src["fastpm/disp"][...]
        d[0, 1, 2, 3] = np.nan
        f["fastpm/disp"] = d
    proc = _main(["export", bad, "--out", tmp_path / "nan.hdf5"])
    assert_clean_error(proc, "fastpm/disp has 1 non-finite")
    assert sorted(os.listdir(tmp_path)) == ["nan.h5"]


def test_header_counts_beyond_two_to_the_32_and_particle_mass():
    from cosmonet.io.gadget import header_attrs
    h = header_attrs({"nc": 2048, "box_size": 1000.0, "a_final": 1.0, "Omega_m": 0.3, "h": 0.7}, 2048 ** 3)
    total = int(h["NumPart_Total"][1]) + (int(h["NumPart_Total_HighWord"][1]) << 32)
    assert total == 2048 ** 3 and h["NumPart_Total_HighWord"][1] == 2
    # 0.3 rho_crit (1000 Mpc/h)^3 / 2048^3 = 0.3 * 2.775e11 * 1e9 / 2048^3 Msun/h = 9.69e9 Msun/h
    assert h["MassTable"][1] == pytest.approx(0.3 * 2.775366e11 * 1e9 / 2048 ** 3 / 1e10, rel=1e-6)
    assert h["Redshift"] == 0.0 and h["OmegaLambda"] == pytest.approx(0.7)
