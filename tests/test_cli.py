"""Command-line tests of ``cosmonet run-sim`` and ``cosmonet power``, run as subprocesses.

Every command runs as its own process (``python -m cosmonet.cli``). Process start-up
(numpy, mpi4py, h5py, pyccl imports) dominates the cost of these tiny runs, so the
independent commands of each group are started together by module-scoped fixtures and
each test only inspects its command's result.

Contract checked for bad input: exit code 2, exactly one line on stderr of the form
``cosmonet: error: ...`` that names the problem, nothing on stdout, no traceback, and no
file left behind (neither the output nor a temporary file).
"""
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from cosmonet.cosmology import Cosmology
from cli_util import assert_clean_error as _assert_clean_error  # noqa: E402
from cli_util import describe as _describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cosmonet.cli"]

NC = 8
BOX = 64.0
SEED = 42
FIELDS = ("za/disp", "lpt2/disp", "fastpm/disp", "fastpm/vel")


# --------------------------------------------------------------------------- helpers
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Several small runs share the CPUs: keep each one single-threaded.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(args, cwd):
    return subprocess.run(CLI + [str(a) for a in args], cwd=str(cwd), env=_env(),
                          capture_output=True, text=True, timeout=300)


def _run_all(jobs):
    """Run ``{name: (args, cwd)}`` concurrently; returns ``{name: CompletedProcess}``."""
    # Mostly import time: oversubscribing the CPUs a little still shortens the batch.
    workers = max(1, min(len(jobs), 3 * (os.cpu_count() or 2)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(_run, args, cwd) for name, (args, cwd) in jobs.items()}
        return {name: fut.result() for name, fut in futures.items()}


def _listing(*dirs):
    """Every path under ``dirs`` (recursively), hidden files included."""
    out = set()
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            out |= {str(p) for p in d.rglob("*")}
    return out




def _assert_ok(proc):
    assert proc.returncode == 0, _describe(proc)
    assert "Traceback" not in proc.stderr, _describe(proc)




def _load_json(path):
    with open(path) as fh:
        return json.load(fh)


def _float_list(obj, key):
    vals = obj[key]
    assert isinstance(vals, list), f"{key} is not a list"
    assert all(isinstance(v, float) for v in vals), f"{key} holds non-floats: {vals}"
    assert all(math.isfinite(v) for v in vals), f"{key} holds non-finite values: {vals}"
    return np.array(vals, dtype=float)


def _plane_wave(nc, amplitude=0.01):
    """Real-space delta_lin = A cos(2 pi i / nc) along x on the nc^3 grid."""
    i = np.arange(nc)
    return amplitude * np.cos(2 * np.pi * i / nc)[:, None, None] * np.ones((nc, nc, nc))


# --------------------------------------------------------------------------- bad input: cases
def _setup_bad(case, d, sim):
    """Prepare ``d`` for one bad-input case; returns (args, needles, extra dirs to watch)."""
    out = d / "sim.h5"
    small = ["--nc", NC, "--box", BOX, "--steps", 2]
    if case == "cosmology_unknown_key":
        return ["run-sim", *small, "--cosmology", "Omega_x=0.3", "--out", out], ["Omega_x"], []
    if case == "cosmology_no_items":
        return ["run-sim", *small, "--cosmology", ",", "--out", out], ["cosmology"], []
    if case == "nc_1":
        return ["run-sim", "--nc", 1, "--box", BOX, "--steps", 2, "--out", out], ["nc"], []
    if case == "nc_not_int":
        return ["run-sim", "--nc", "eight", "--box", BOX, "--out", out], ["--nc", "eight"], []
    if case == "box_0":
        return ["run-sim", "--nc", NC, "--box", 0, "--steps", 2, "--out", out], ["box"], []
    if case == "steps_0":
        return ["run-sim", "--nc", NC, "--box", BOX, "--steps", 0, "--out", out], ["steps"], []
    if case == "linear_field_missing":
        return (["run-sim", *small, "--linear-field", d / "nope.npy", "--out", out],
                ["--linear-field", "nope.npy"], [])
    if case == "linear_field_wrong_shape":
        np.save(d / "delta.npy", np.zeros((NC, NC, NC + 1)))
        return (["run-sim", *small, "--linear-field", d / "delta.npy", "--out", out],
                ["--linear-field", "shape"], [])
    if case == "linear_field_empty_file":
        (d / "delta.npy").write_bytes(b"")
        return (["run-sim", *small, "--linear-field", d / "delta.npy", "--out", out],
                ["--linear-field", "delta.npy"], [])
    if case == "linear_field_npz":
        np.savez(d / "delta.npz", delta=np.zeros((NC, NC, NC)))
        return (["run-sim", *small, "--linear-field", d / "delta.npz", "--out", out],
                ["--linear-field", "delta.npz"], [])
    if case == "out_dir_missing":
        return (["run-sim", *small, "--out", d / "no_such_dir" / "sim.h5"], ["no_such_dir"], [])
    if case == "out_parent_is_file":
        (d / "plain").write_text("not a directory\n")
        return ["run-sim", *small, "--out", d / "plain" / "sim.h5"], ["plain"], []
    if case == "out_dir_unwritable_proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        assert not Path("/proc/cosmonet-cli-test.h5").exists()
        return ["run-sim", *small, "--out", "/proc/cosmonet-cli-test.h5"], ["/proc"], []
    if case == "out_is_directory":
        (d / "target").mkdir()
        return ["run-sim", *small, "--out", d / "target"], ["target"], [d / "target"]
    if case == "power_missing_file":
        return (["power", d / "missing.h5", "--json", d / "out.json"], ["missing.h5"], [])
    if case == "power_unknown_field":
        return (["power", sim, "--field", "pmwd", "--json", d / "out.json"], ["pmwd"],
                [sim.parent])
    if case == "power_unknown_second":
        return (["power", sim, "--field", "fastpm", "--second", "lpt3", "--json", d / "out.json"],
                ["lpt3"], [sim.parent])
    if case == "power_json_dir_missing":
        return (["power", sim, "--json", d / "no_such_dir" / "out.json"], ["no_such_dir"],
                [sim.parent])
    if case == "power_not_a_simulation":
        # A valid HDF5 file with a fastpm/disp dataset but none of run-sim's attributes.
        with h5py.File(d / "other.h5", "w") as f:
            f["fastpm/disp"] = np.zeros((3, 4, 4, 4), dtype=np.float32)
        return ["power", d / "other.h5", "--json", d / "out.json"], ["other.h5"], []
    raise AssertionError(case)


RUN_SIM_BAD = [
    "cosmology_unknown_key", "cosmology_no_items", "nc_1", "nc_not_int", "box_0", "steps_0",
    "linear_field_missing", "linear_field_wrong_shape", "linear_field_empty_file",
    "linear_field_npz", "out_dir_missing", "out_parent_is_file", "out_dir_unwritable_proc",
    "out_is_directory",
]
POWER_BAD = [
    "power_missing_file", "power_unknown_field", "power_unknown_second",
    "power_json_dir_missing", "power_not_a_simulation",
]
BAD_CASES = RUN_SIM_BAD + POWER_BAD


def _prepare_bad(cases, root, sim):
    """Set up ``cases`` under ``root``: ({case: (args, cwd, needles, dirs, before)}, skipped)."""
    prepared, skipped = {}, {}
    for case in cases:
        d = root / case
        d.mkdir()
        try:
            args, needles, watch = _setup_bad(case, d, sim)
        except pytest.skip.Exception as exc:
            skipped[case] = str(exc)
            continue
        dirs = [d, *watch]
        prepared[case] = (args, d, needles, dirs, _listing(*dirs))
    return prepared, skipped


def _bad_results(prepared, procs):
    return {case: (procs[case], needles, before, _listing(*dirs))
            for case, (_, _, needles, dirs, before) in prepared.items()}


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Every run-sim command, good and bad input, started together."""
    root = tmp_path_factory.mktemp("runsim")
    dirs = {name: root / name for name in ("base", "options", "nc2")}
    for d in dirs.values():
        d.mkdir()
    np.save(dirs["options"] / "delta.npy", _plane_wave(NC))
    common = ["--nc", NC, "--box", BOX, "--steps", 2, "--seed", SEED]
    good = {
        "base": (["run-sim", *common, "--boost", 2, "--out", "sim.h5"], dirs["base"]),
        "options": (["run-sim", *common, "--boost", 1.5, "--a-start", 0.05,
                     "--cosmology", "Omega_m=0.3,sigma8=0.8",
                     "--linear-field", "delta.npy", "--out", "sim.h5"], dirs["options"]),
        # nc = 2 is the smallest size that SimConfig accepts.
        "nc2": (["run-sim", "--nc", 2, "--box", BOX, "--steps", 2, "--out", "sim.h5"], dirs["nc2"]),
    }
    bad_root = root / "bad"
    bad_root.mkdir()
    prepared, skipped = _prepare_bad(RUN_SIM_BAD, bad_root, None)
    jobs = {f"good:{name}": job for name, job in good.items()}
    jobs.update({f"bad:{case}": (p[0], p[1]) for case, p in prepared.items()})
    procs = _run_all(jobs)
    sims = {name: (procs[f"good:{name}"], dirs[name]) for name in good}
    bad = _bad_results(prepared, {case: procs[f"bad:{case}"] for case in prepared})
    return sims, bad, skipped


@pytest.fixture(scope="module")
def sims(stage1):
    return stage1[0]


@pytest.fixture(scope="module")
def base_sim(sims):
    proc, d = sims["base"]
    _assert_ok(proc)
    return d / "sim.h5"


@pytest.fixture(scope="module")
def stage2(base_sim, tmp_path_factory):
    """Every power command on the base simulation, good and bad input, started together."""
    root = tmp_path_factory.mktemp("power")
    good = {
        "auto": ["power", base_sim, "--field", "fastpm", "--json", "auto.json"],
        "cross": ["power", base_sim, "--field", "fastpm", "--second", "lpt2", "--json", "cross.json"],
        "nmesh": ["power", base_sim, "--field", "za", "--nmesh", 2 * NC, "--json", "nmesh.json"],
    }
    bad_root = root / "bad"
    bad_root.mkdir()
    prepared, skipped = _prepare_bad(POWER_BAD, bad_root, base_sim)
    jobs = {f"good:{name}": (args, root) for name, args in good.items()}
    jobs.update({f"bad:{case}": (p[0], p[1]) for case, p in prepared.items()})
    procs = _run_all(jobs)
    powers = {name: (procs[f"good:{name}"], root / f"{name}.json") for name in good}
    bad = _bad_results(prepared, {case: procs[f"bad:{case}"] for case in prepared})
    return (powers, root), bad, skipped


@pytest.fixture(scope="module")
def powers(stage2):
    return stage2[0]


# --------------------------------------------------------------------------- run-sim, good input
def test_run_sim_writes_file_and_nothing_else(sims):
    proc, d = sims["base"]
    _assert_ok(proc)
    assert sorted(p.name for p in d.iterdir()) == ["sim.h5"], "temporary files left behind"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["nc"] == NC and summary["steps"] == 2


def test_run_sim_hdf5_layout(base_sim):
    with h5py.File(base_sim, "r") as f:
        for name in FIELDS:
            assert name in f, f"dataset {name} missing"
            ds = f[name]
            assert ds.dtype == np.float32, f"{name}: dtype {ds.dtype}"
            assert ds.shape == (3, NC, NC, NC), f"{name}: shape {ds.shape}"
            data = ds[...]
            assert np.all(np.isfinite(data)), f"{name} has non-finite values"
            assert np.any(data != 0), f"{name} is all zeros"
        # Displacements are minimum images, |disp| <= L/2.
        for name in ("za/disp", "lpt2/disp", "fastpm/disp"):
            assert np.abs(f[name][...]).max() <= BOX / 2 + 1e-3
        assert not np.array_equal(f["za/disp"][...], f["fastpm/disp"][...])
        attrs = dict(f.attrs)
    assert float(attrs["box_size"]) == BOX
    assert int(attrs["nc"]) == NC
    assert float(attrs["a_final"]) == 1.0
    assert int(attrs["seed"]) == SEED
    for key, val in Cosmology.planck15().to_dict().items():
        assert key in attrs, f"cosmology attribute {key} missing"
        if isinstance(val, str):
            got = attrs[key].decode() if isinstance(attrs[key], bytes) else attrs[key]
            assert got == val
        else:
            assert float(attrs[key]) == pytest.approx(val, rel=1e-12), key


def test_run_sim_options_cosmology_a_start_linear_field(sims):
    proc, d = sims["options"]
    _assert_ok(proc)
    assert sorted(p.name for p in d.iterdir()) == ["delta.npy", "sim.h5"]
    path = d / "sim.h5"
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        disp = {name: f[name][...] for name in FIELDS}
    # --cosmology overrides are applied on top of planck15.
    expected = Cosmology.planck15().to_dict()
    expected.update(Omega_m=0.3, sigma8=0.8)
    for key in ("Omega_m", "Omega_b", "h", "n_s", "sigma8"):
        assert float(attrs[key]) == pytest.approx(expected[key], rel=1e-12), key
    assert float(attrs["a_start"]) == pytest.approx(0.05)
    for name in FIELDS:
        assert disp[name].shape == (3, NC, NC, NC) and disp[name].dtype == np.float32
    # The linear field replaces the seed: a plane wave along x moves particles along x only,
    # and ZA at a = 1 (D1 = 1) gives psi_x = -A L / (2 pi) sin(2 pi q_x / L).
    za = disp["za/disp"]
    assert np.abs(za[1:]).max() < 1e-6
    i = np.arange(NC)
    psi_x = -0.01 * BOX / (2 * np.pi) * np.sin(2 * np.pi * i / NC)
    np.testing.assert_allclose(za[0], np.broadcast_to(psi_x[:, None, None], za[0].shape),
                               rtol=1e-4, atol=1e-6)
    fp = disp["fastpm/disp"]
    assert np.abs(fp[1:]).max() < 1e-5
    assert np.all(np.sign(fp[0, 1:NC // 2, 0, 0]) == np.sign(psi_x[1:NC // 2]))


def test_run_sim_smallest_nc(sims):
    """nc = 2 passes validation (nc >= 2), so it must run (it crashed in mpi4py_fft once)."""
    proc, d = sims["nc2"]
    assert "Traceback" not in proc.stderr, _describe(proc)
    _assert_ok(proc)
    with h5py.File(d / "sim.h5", "r") as f:
        for name in FIELDS:
            assert f[name].shape == (3, 2, 2, 2)


# --------------------------------------------------------------------------- power, good input
def _check_spectrum(obj, box, nmesh):
    k = _float_list(obj, "k")
    power = _float_list(obj, "power")
    modes = _float_list(obj, "modes")
    assert len(k) > 0
    assert len(k) == len(power) == len(modes)
    assert np.all(np.diff(k) > 0), "k not increasing"
    assert np.all(modes > 0)
    assert np.all(modes == np.round(modes)), "mode counts are not whole numbers"
    assert np.all(power > 0)
    kf, knyq = 2 * np.pi / box, np.pi * nmesh / box
    assert k[0] >= kf * (1 - 1e-9)
    assert k[-1] < knyq + 0.5 * kf
    # First bin [kf, 2 kf): the 6 + 12 + 8 grid modes with |n|^2 = 1, 2, 3.
    assert modes[0] == 26
    return k, power, modes


def test_power_auto(powers):
    runs, root = powers
    proc, path = runs["auto"]
    _assert_ok(proc)
    obj = _load_json(path)
    _check_spectrum(obj, BOX, NC)
    assert "cross" not in obj and "T" not in obj and "r" not in obj
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("auto")) == ["auto.json"]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_power_cross_T_r(powers):
    runs, _ = powers
    proc, path = runs["cross"]
    _assert_ok(proc)
    obj = _load_json(path)
    k, power, _ = _check_spectrum(obj, BOX, NC)
    for key in ("cross", "T", "r"):
        assert key in obj, f"key {key} missing"
        assert len(_float_list(obj, key)) == len(k)
    cross, T, r = (np.array(obj[key]) for key in ("cross", "T", "r"))
    assert "power_second" in obj
    power2 = _float_list(obj, "power_second")
    assert np.all(power2 > 0)
    np.testing.assert_allclose(T, power / power2, rtol=1e-10)
    np.testing.assert_allclose(r, cross / np.sqrt(power * power2), rtol=1e-10)
    assert np.all(np.abs(r) <= 1 + 1e-6)
    # fastpm and 2LPT of the same ICs are strongly correlated on the largest scales.
    assert r[0] > 0.9
    # The auto power of the first field is the same as without --second.
    auto_proc, auto_path = runs["auto"]
    _assert_ok(auto_proc)
    auto = _load_json(auto_path)
    np.testing.assert_allclose(power, auto["power"], rtol=1e-10)
    np.testing.assert_allclose(k, auto["k"], rtol=1e-12)


def test_power_nmesh(powers):
    runs, _ = powers
    proc, path = runs["nmesh"]
    _assert_ok(proc)
    obj = _load_json(path)
    k, _, _ = _check_spectrum(obj, BOX, 2 * NC)
    auto = _load_json(runs["auto"][1])
    assert len(k) > len(auto["k"]), "--nmesh 16 should reach beyond the nc = 8 Nyquist"
    assert k[-1] > np.pi * NC / BOX


# --------------------------------------------------------------------------- bad input: tests
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_exit_2_no_file(request, case):
    _, results, skipped = request.getfixturevalue("stage2" if case in POWER_BAD else "stage1")
    if case in skipped:
        pytest.skip(skipped[case])
    proc, needles, before, after = results[case]
    _assert_clean_error(proc, *needles)
    assert after == before, f"files left behind: {sorted(after - before)}"


def test_out_dir_read_only_for_non_root(tmp_path):
    """Permissions only stop writes for a non-root user."""
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (covered by the /proc case)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = _run(["run-sim", "--nc", NC, "--box", BOX, "--steps", 2, "--out", ro / "sim.h5"],
                    tmp_path)
        _assert_clean_error(proc, str(ro))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
