"""Installs without root and offline; the core install without the extras (issue 17).

* The numpy kernels and numpy FFT that stand in for numba and FFTW (no ``[mpi]`` extra)
  against the compiled ones.
* The commands in a Python where mpi4py, mpi4py-fft, numba and Horovod cannot be imported
  (tests/no_extras/sitecustomize.py makes their import fail as a missing package does):
  run-sim (both engines, one process), train, evaluate, emulate, probe and power work and
  load none of them; the torch engine's linear field is the MPI engine's; simulate, and any
  command under mpirun, say in one line which extra they need.
* ``scripts/setup_env.sh --check`` as a non-root user: the system's MPI and FFTW are found
  without apt-get (FFTW also from FFTW_ROOT); a missing one is one line saying what to load.
* The real thing: ``setup_env.sh --wheelhouse`` (make wheelhouse) writes the wheels, then a
  non-root user, in a network namespace without network, runs ``make setup WHEELHOUSE=..
  EXTRAS=`` (the core alone) into a fresh venv, runs run-sim -> train -> evaluate -> emulate
  there (a venv that truly lacks mpi4py, numba and mpi4py-fft), installs the [mpi,test]
  extras from the wheelhouse on the system's MPI and FFTW, and runs the MPI engine on 2 ranks.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from cli_util import describe
from mpi_util import mpi_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = os.path.join(ROOT, "tests", "no_extras")
EXTRA_MODULES = ("mpi4py", "mpi4py_fft", "numba", "llvmlite", "horovod")
USER = "cosmonet-test"


def blocked_env(**extra):
    """The environment of a Python without the extras' packages (and with this checkout)."""
    env = mpi_env()
    env.update(PYTHONPATH=os.pathsep.join([BLOCKER, ROOT]), OMP_NUM_THREADS="1", **extra)
    return env


# --------------------------------------------------------------------------- kernels
KERNEL_ROOT = os.path.join(ROOT, "cosmonet")
PAD, SENTINEL = 8, -12345


def _njit_functions():
    """(module, name) -> inline? for every function under cosmonet/ decorated with ``njit``
    (read from the source, so a kernel in a new module counts too)."""
    import ast
    found = {}
    for folder, _, files in os.walk(KERNEL_ROOT):
        for fname in files:
            if not fname.endswith(".py"):
                continue
            path = os.path.join(folder, fname)
            module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".").removesuffix(".__init__")
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef):
                    continue
                for dec in node.decorator_list:
                    call = dec if isinstance(dec, ast.Call) else None
                    target = call.func if call else dec
                    if getattr(target, "attr", getattr(target, "id", None)) != "njit":
                        continue
                    inline = any(k.arg == "inline" and getattr(k.value, "value", None) == "always"
                                 for k in (call.keywords if call else ()))
                    found[(module, node.name)] = inline
    return found


def test_every_numba_kernel_has_a_numpy_version():
    """Without numba, a kernel with no numpy version would run as a pure-Python loop: every
    njit function that is not an inline helper must be in KERNELS, and nothing else."""
    import importlib

    from cosmonet.numpy_kernels import KERNELS
    njit = _njit_functions()
    kernels = {key for key, inline in njit.items() if not inline}
    assert len(kernels) >= 11 and {key for key, inline in njit.items() if inline} >= {("cosmonet.mesh.cic", "_cell")}
    assert set(KERNELS) == kernels, (sorted(kernels - set(KERNELS)), sorted(set(KERNELS) - kernels))
    for module in {m for m, _ in njit}:                  # the same from the compiled modules
        mod = importlib.import_module(module)
        dispatchers = {(module, name): obj.targetoptions.get("inline") == "always"
                       for name, obj in vars(mod).items()
                       if hasattr(obj, "py_func") and getattr(obj, "__module__", None) == module}
        assert dispatchers == {k: v for k, v in njit.items() if k[0] == module}, module
    for (module, name), fn in KERNELS.items():
        assert callable(fn) and fn.__module__ == "cosmonet.numpy_kernels", (module, name)


class _Guard:
    """Copies of arrays inside larger buffers whose margins must stay untouched."""

    def __init__(self):
        self.buffers = []

    def __call__(self, a):
        a = np.asarray(a)
        buf = np.full(a.size + 2 * PAD, SENTINEL, a.dtype)
        view = buf[PAD:PAD + a.size].reshape(a.shape)
        view[...] = a
        self.buffers.append(buf)
        return view

    def intact(self):
        return all((b[:PAD] == SENTINEL).all() and (b[-PAD:] == SENTINEL).all() for b in self.buffers)


class _Both:
    """Runs a numba kernel and its numpy version (KERNELS) on fresh copies of the same
    arguments: return values and every array argument after the call (outputs, scratch and
    the untouched inputs) must be the same bit for bit, NaN where NaN, dtypes equal, and
    no write beyond an array (guard margins)."""

    def __init__(self):
        from cosmonet.numpy_kernels import KERNELS
        self.kernels, self.compared = KERNELS, set()

    def __call__(self, module, name, make):
        runs = []
        for fn in (getattr(module, name), self.kernels[(module.__name__, name)]):
            guard = _Guard()
            args = make(guard)
            ret = fn(*args)
            assert guard.intact(), (name, fn.__module__)
            runs.append((ret, args))
        (r1, a1), (r2, a2) = runs
        if r1 is not None:
            assert r2.dtype == r1.dtype
            np.testing.assert_array_equal(r2, r1)
        for x, y in zip(a1, a2):
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype, name
                np.testing.assert_array_equal(y, x, err_msg=name)
        self.compared.add((module.__name__, name))
        return a1

    def raise_alike(self, module, name, make):
        for fn in (getattr(module, name), self.kernels[(module.__name__, name)]):
            with pytest.raises(ValueError, match="a particle lies outside this rank's slab"):
                fn(*make(_Guard()))


def _hostile_positions(rng, box, n_p):
    """Positions in the box, with edge cells (0, just below the box, the box itself, tiny
    negatives that wrap to the last cell) and a few NaN, inf and beyond-int64 coordinates."""
    pos = rng.uniform(0, box, (n_p, 3))
    pos[:8, 0] = box * (0.6 + 0.05 * np.arange(8))       # on the planes 7 .. 11 of a 12^3 mesh
    pos[:8, 1:] = [[0.0, box * (1 - 1e-16)], [box, -1e-300], [-1e-12, box * (1 + 1e-15)],
                   [np.nan, 1.0], [2.0, np.inf], [-np.inf, 3.0], [1e300, -4e19], [5e18, 3.0]]
    pos[8:12, 0] = [np.nan, np.inf, -np.inf, 1e300]      # x: cell 0 (rank 0's first plane)
    pos[12:16, 0] = [0.0, box, -1e-300, box * (1 - 1e-16)]
    return pos


def test_numpy_kernels_equal_the_numba_kernels():
    from cosmonet.mesh import cic, layout
    from cosmonet.sim import fastpm
    both = _Both()
    rng = np.random.default_rng(1)
    n, box = 12, 50.0
    pos = _hostile_positions(rng, box, 3000)

    planes = both(cic, "owner_plane", lambda g: (pos[:, 0].copy(), box, n, g(np.zeros(len(pos), np.int64))))[3]
    assert planes.min() >= 0 and planes.max() < n and set(planes[8:12]) == {0} and planes[14] == n - 1
    nc, start = 6, 17                                     # a lattice rank's particles, float32
    disp = (rng.standard_normal((150, 3)) * 4).astype(np.float32)
    disp[:3] = [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -3e30]]
    both(cic, "lattice_positions", lambda g: (disp, nc, start, box / nc, g(np.zeros((len(disp), 3)))))

    # paint: absolute positions with masses on a slab at the top (ghost plane wraps to 0) and
    # at the bottom (NaN/inf x), and lattice displacements with unit mass on the whole mesh
    cases = []
    for x0, nx, dtype in ((7, 5, np.float64), (0, 5, np.float32)):
        mine = pos[(planes >= x0) & (planes < x0 + nx)]
        mass = rng.uniform(0.5, 2.0, len(mine))
        mass[-1] = np.nan
        cases.append((mine, 0, 0, 0.0, mass, x0, nx, dtype))
    cases.append((disp, nc, start, box / nc, np.empty(0), 0, n, np.float32))
    cases.append((np.empty((0, 3)), 0, 0, 0.0, np.empty(0), 2, 3, np.float64))
    for arr, c, st, sp, mass, x0, nx, dtype in cases:
        o = both(cic, "plane_order", lambda g: (arr, c, st, sp, x0, nx, box, n,
                                                 g(np.zeros(len(arr), np.int32)), g(np.zeros(nx + 1, np.int64))))
        order, first = o[8], o[9]
        assert first[-1] == len(arr) and sorted(order) == list(range(len(arr)))
        p = both(cic, "paint_ghost", lambda g: (arr, c, st, sp, mass, order, first, g(np.ones((nx, n, n), dtype)),
                                                g(np.ones((2, n, n), dtype)), g(np.ones((n, n), dtype)), x0, box))
        assert len(arr) == 0 or (np.isnan(p[7]).any() and np.isfinite(p[7]).mean() > 0.5)   # NaN shows
    outside = pos[planes == 2][:5]
    both.raise_alike(cic, "plane_order", lambda g: (outside, 0, 0, 0.0, 3, 4, box, n,
                                                    g(np.zeros(5, np.int32)), g(np.zeros(5, np.int64))))

    # readouts: the FD4 gradient over halos on a thin and a full slab, absolute positions
    # (float64 out) and lattice displacements (float32 phi and out); CIC on a slab with ghost
    for arr, c, st, sp, x0, nx, dtype in ((pos[(planes >= 3) & (planes < 8)], 0, 0, 0.0, 3, 5, np.float64),
                                          (pos[planes < n], 0, 0, 0.0, 0, n, np.float64),
                                          (disp, nc, start, box / nc, 0, n, np.float32)):
        phi, lo, hi = (rng.standard_normal((m, n, n)).astype(dtype) for m in (nx, 2, 3))
        both(cic, "readout_fd4_gradient", lambda g: (arr, c, st, sp, phi, lo, hi, x0, box,
                                                     g(np.zeros((len(arr), 3), dtype))))
    both.raise_alike(cic, "readout_fd4_gradient",
                     lambda g: (outside, 0, 0, 0.0, phi[:4], lo, hi, 3, box, np.zeros((5, 3), phi.dtype)))
    x0, nx = 7, 5
    mine = pos[(planes >= x0) & (planes < x0 + nx)]
    fields = [rng.standard_normal((nx, n, n)) for _ in range(3)]
    ghosts = [rng.standard_normal((n, n)) for _ in range(3)]
    r = both(cic, "readout_slab", lambda g: (mine, fields[0], ghosts[0], x0, box, g(np.zeros(len(mine)))))[5]
    assert np.isnan(r).any() and np.isfinite(r).sum() > len(r) - 10
    both(cic, "readout_slab3", lambda g: (mine, *fields, *ghosts, x0, box, g(np.zeros((len(mine), 3)))))
    both.raise_alike(cic, "readout_slab", lambda g: (outside, fields[0], ghosts[0], 3, box, np.zeros(5)))

    # particle routing and the FastPM updates (float32 state, float64 arithmetic)
    for dest in (rng.integers(0, 4, 1000), rng.integers(0, 3, 700).astype(np.int32), np.zeros(0, np.int64)):
        both(layout, "_counting_order", lambda g: (dest, 4, g(np.zeros(len(dest), np.int32))))
    idx = rng.permutation(150)[:90].astype(np.int32)      # lean routed rows of a lattice rank's particles
    both(layout, "lattice_rows", lambda g: (disp, idx, 17, g(np.zeros((90, 4), np.float32)),
                                            g(np.zeros(90, np.int32))))
    mom = (rng.standard_normal((500, 3)) * 30).astype(np.float32)
    d32 = (rng.standard_normal((500, 3)) * 3).astype(np.float32)
    force = rng.standard_normal((500, 3))
    both(fastpm, "drift_disp", lambda g: (g(d32), mom, 0.7123))
    both(fastpm, "kick_mom", lambda g: (g(mom), 1.5 * 0.31 * 0.4567, force))
    some = rng.permutation(500)[:200].astype(np.int32)     # a round of forces coming home
    both(fastpm, "kick_mom_at", lambda g: (g(mom), some, 1.5 * 0.31 * 0.4567, force[:200].astype(np.float32)))
    k = [np.fft.fftfreq(8, 0.5) * 2 * np.pi, np.fft.fftfreq(8, 0.5) * 2 * np.pi, np.fft.rfftfreq(8, 0.5) * 2 * np.pi]
    for ctype in (np.complex64, np.complex128):
        c = (rng.standard_normal((8, 8, 5)) + 1j * rng.standard_normal((8, 8, 5))).astype(ctype)
        out = both(fastpm, "scale_by_inverse_k2", lambda g: (g(c), *k, 1.0 / 0.7))[0]
        assert out[0, 0, 0] == 0 and np.count_nonzero(out) == out.size - 1
    # LPT/FastPM outputs: float64 combination, minimum image with np.mod's semantics
    from cosmonet.sim import lpt
    vals = np.concatenate([rng.standard_normal(300) * 300, [0.0, -0.0, 64.0, -64.0, 128.0, -128.0, 192.0,
                                                           -192.0, 1e300, -1e300, np.inf, -np.inf, np.nan]])
    for box in (128.0, 1e-3, -128.0):
        both(lpt, "combine_into", lambda g: (vals, vals[::-1].copy(), 0.7, -0.3, 1.5, box, True, True, True,
                                             g(np.zeros(len(vals), np.float32))))
    with np.errstate(over="ignore"):
        vals32 = vals.astype(np.float32)                 # +-1e300 -> +-inf
    both(lpt, "combine_into", lambda g: (vals32, np.empty(0), 2.5, 0.0, 1.0, 128.0, False, False, False,
                                         g(np.zeros(len(vals), np.float32))))
    assert both.compared == set(both.kernels), sorted(set(both.kernels) - both.compared)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_numpy_fft_equals_fftw(dtype, tol):
    from cosmonet.extras import SERIAL
    from cosmonet.mesh.fft import SlabFFT
    n = 10
    fftw, plain = SlabFFT(SERIAL, n, dtype), SlabFFT(SERIAL, n, dtype)
    plain._numpy_transforms(n)
    field = np.random.default_rng(2).standard_normal((n, n, n)).astype(dtype)
    spectra = []
    for f in (fftw, plain):
        f.fwd_in[...] = field
        f.forward()
        spectra.append(f.fwd_out.copy())     # the backward transform may destroy its input
        f.backward()
    assert spectra[1].dtype == spectra[0].dtype
    scale = np.abs(spectra[0]).max()
    assert scale > 0 and np.abs(spectra[1] - spectra[0]).max() <= tol * scale
    np.testing.assert_allclose(plain.bwd_out, field, rtol=0, atol=tol * 10)
    np.testing.assert_allclose(fftw.bwd_out, field, rtol=0, atol=tol * 10)


# --------------------------------------------------------------------------- no extras
DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from cosmonet.cli import main
    work, pairs = sys.argv[1], sys.argv[2]
    ck = f"{work}/run/checkpoints/latest"
    sim = ["--nc", "8", "--box", "32", "--steps", "2", "--quiet"]
    cmds = {
        "run-sim torch": ["run-sim", "--engine", "torch", *sim, "--out", f"{work}/torch.h5"],
        "run-sim mpi": ["run-sim", *sim, "--out", f"{work}/mpi.h5"],
        "power": ["power", f"{work}/mpi.h5", "--json", f"{work}/power.json"],
        "train": ["train", f"{work}/train.yaml"],
        "evaluate": ["evaluate", f"{work}/train.yaml", "--checkpoint", ck, "--json", f"{work}/eval.json"],
        "emulate": ["emulate", "--checkpoint", ck, "--input", f"{work}/torch.h5", "--out", f"{work}/emu.h5"],
        "probe": ["probe", "amplitude", "--checkpoint", ck, "--out", f"{work}/probe", "--quiet",
                  "--amplitudes", "0.5,1"],
    }
    rc = {name: main(args) for name, args in cmds.items()}
    from cosmonet.cosmology import Cosmology
    from cosmonet.torchpm.batch_linear import linear_density_k
    from cosmonet.torchpm.batch_mesh import BatchMesh
    from cosmonet.torchpm.noise import white_noise_batch
    import torch
    mesh = BatchMesh(16, 100.0, "cpu", torch.float64)
    dk = linear_density_k(mesh, white_noise_batch(16, [7]), [Cosmology.planck15()])
    np.save(f"{work}/linear_k.npy", dk[0].numpy())
    import importlib
    from cosmonet.numpy_kernels import KERNELS
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(sys.argv[3].split(",")))
    compiled = sorted(f"{m}.{n}" for (m, n), f in KERNELS.items() if getattr(importlib.import_module(m), n) is not f)
    print(json.dumps({"rc": rc, "loaded": loaded, "not_numpy": compiled, "kernels": len(KERNELS)}))
""")


def _train_config(path, pairs, out):
    import yaml
    path.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group", "residual": True},
        "data": {"root": str(pairs), "scale": 4.0, "augment": True, "num_workers": 0, "val_split": ""},
        "train": {"batch_size": 4, "base_batch": 4, "lr": 1e-3, "epochs": 1, "checkpoint_every": 2,
                  "log_every": 1, "seed": 5, "precision": "fp32"},
        "out": str(out)}))
    return path


def test_commands_run_without_the_extras(tiny_pairs, tmp_path):
    """train, evaluate, emulate, probe, power and run-sim (one process) with none of the
    extras' packages importable; the outputs are those of the full install."""
    _train_config(tmp_path / "train.yaml", tiny_pairs, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), str(tiny_pairs), ",".join(EXTRA_MODULES)],
                          env=blocked_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == {k: 0 for k in report["rc"]}, describe(proc)
    assert report["loaded"] == [], report                     # none of the extras was imported
    assert report["not_numpy"] == [] and report["kernels"] >= 11   # without numba: every kernel's numpy version
    for name in ("torch.h5", "mpi.h5", "power.json", "eval.json", "emu.h5", "probe/amplitude.json"):
        assert (tmp_path / name).is_file(), name

    # the same commands with the extras: the torch engine's output is the same field, the MPI
    # engine's (numpy FFT and kernels instead of FFTW and numba) equal to rounding
    from cosmonet.cli import main
    sim = ["--nc", "8", "--box", "32", "--steps", "2", "--quiet"]
    assert main(["run-sim", "--engine", "torch", *sim, "--out", str(tmp_path / "torch_full.h5")]) == 0
    assert main(["run-sim", *sim, "--out", str(tmp_path / "mpi_full.h5")]) == 0
    for a, b, tol in (("torch.h5", "torch_full.h5", 0.0), ("mpi.h5", "mpi_full.h5", 1e-5)):
        with h5py.File(tmp_path / a, "r") as fa, h5py.File(tmp_path / b, "r") as fb:
            for field in ("za/disp", "lpt2/disp", "fastpm/disp"):
                x, y = fa[field][...], fb[field][...]
                assert np.abs(x - y).max() <= tol * np.abs(y).max(), (a, field, np.abs(x - y).max())

    # the torch engine's linear field without MPI is the MPI engine's (mpi4py-fft's FFTW) to 1e-6
    from mpi4py import MPI

    from cosmonet.cosmology import Cosmology
    from cosmonet.mesh import ParticleMesh
    from cosmonet.sim.linear import linear_density_k
    pm = ParticleMesh(16, 100.0, MPI.COMM_SELF, dtype=np.float64)
    ref = linear_density_k(pm, 7, Cosmology.planck15().linear_power)
    got = np.load(tmp_path / "linear_k.npy")
    assert got.shape == ref.shape and np.abs(ref).max() > 0
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_what_needs_an_extra_says_so_in_one_line(tmp_path):
    """simulate needs mpi4py; so does every command under mpirun: one line naming [mpi]."""
    code = "import sys; from cosmonet.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "simulate", os.path.join(ROOT, "configs", "demo.yaml"),
                           "--out", str(tmp_path / "camp")], env=blocked_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosmonet: error: "), describe(proc)
    assert "simulate" in lines[0] and "mpi4py" in lines[0] and "[mpi]" in lines[0], describe(proc)
    assert not (tmp_path / "camp").exists()
    proc = subprocess.run([shutil.which("mpirun"), "-np", "2", "--oversubscribe", sys.executable, "-c", code,
                           "run-sim", "--nc", "8", "--out", str(tmp_path / "s.h5")],
                          env=blocked_env(), capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("cosmonet: error: ")]
    assert proc.returncode != 0 and len(errors) == 1, describe(proc)
    assert "2 processes" in errors[0] and "[mpi]" in errors[0] and "Traceback" not in proc.stderr, describe(proc)
    assert not (tmp_path / "s.h5").exists()


# --------------------------------------------------------------------------- non-root set-up
def _user():
    """A non-root user for the set-up tests (created once, without a home directory)."""
    if os.geteuid() != 0:
        return None                                       # already not root: run as ourselves
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", USER], check=True)
    return USER


def _as_user(cmd, env, offline=False, **kw):
    """Run ``cmd`` as the non-root user with exactly ``env``; ``offline``: in a network
    namespace of its own (loopback only) where the machine allows one."""
    user = _user()
    cmd = ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + list(cmd)
    if user is not None:
        cmd = ["runuser", "-u", user, "--"] + cmd
    if offline and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


@pytest.fixture
def user_tmp():
    """A directory that the non-root user can reach (pytest's tmp_path lies under a 0700
    directory of root's), removed afterwards."""
    import tempfile
    path = tempfile.mkdtemp(prefix="cosmonet-install-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _user_dir(path):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)
    if _user() is not None:
        shutil.chown(path, _user())
    return path


def _base_env(home, **extra):
    return dict(PATH="/usr/local/bin:/usr/bin:/bin", HOME=home, LANG="C.UTF-8", **extra)


def _check(home, **env):
    return _as_user(["bash", os.path.join(_readable_checkout(home), "scripts", "setup_env.sh"), "--check"],
                    _base_env(home, **env), timeout=60)


def _readable_checkout(home):
    """A copy of the checkout's set-up files that the non-root user can read and write."""
    src = os.path.join(home, "src")
    if not os.path.isdir(src):
        _user_dir(src)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for name in ("cosmonet", "scripts", "configs"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name), ignore=ignore)
        for name in ("setup.py", "Makefile"):
            shutil.copy(os.path.join(ROOT, name), src)
        if _user() is not None:
            subprocess.run(["chown", "-R", _user(), src], check=True)
    return src


def test_setup_finds_the_systems_mpi_and_fftw_without_root(user_tmp):
    from pathlib import Path
    tmp_path = Path(user_tmp)
    home = _user_dir(str(tmp_path / "home"))
    proc = _check(home)
    assert proc.returncode == 0, describe(proc)
    assert "setup_env: MPI: " in proc.stdout and "mpicc" in proc.stdout, describe(proc)
    assert "setup_env: FFTW: headers " in proc.stdout and "apt-get" not in proc.stdout + proc.stderr
    # FFTW from a module's FFTW_ROOT, before the usual places
    fake = tmp_path / "fftw"
    (fake / "include").mkdir(parents=True)
    (fake / "lib").mkdir()
    (fake / "include" / "fftw3.h").write_text("/* stands for FFTW's header */\n")
    (fake / "lib" / "libfftw3.so.3").write_text("")
    subprocess.run(["chmod", "-R", "a+rX", str(fake)], check=True)
    proc = _check(home, FFTW_ROOT=str(fake), FFTW_PREFIXES="", PKG_CONFIG="false")
    assert proc.returncode == 0, describe(proc)
    assert f"FFTW: headers {fake}/include, library {fake}/lib" in proc.stdout, describe(proc)
    # nothing found and not root: one line that says what to load, and no apt-get
    for env, needle in ((dict(MPICC="mpicc-not-here"), "mpicc on PATH"),
                        (dict(FFTW_PREFIXES="", PKG_CONFIG="false"), "FFTW")):
        proc = _check(home, **env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, describe(proc)
        assert needle in lines[0] and "module load" in lines[0] and "EXTRAS=" in lines[0], describe(proc)
    # the core alone needs neither
    proc = _check(home, MPICC="mpicc-not-here", FFTW_PREFIXES="", PKG_CONFIG="false", EXTRAS="")
    assert proc.returncode == 0 and "MPI and FFTW not needed" in proc.stdout, describe(proc)


def _user_python():
    """A Python of this version that a non-root user may run (the test's may live in /root)."""
    exe = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    return exe if os.access(exe, os.X_OK) else None


@pytest.mark.slow     # a real install (~1.5 min); make test (and so CI) runs it, make test-fast does not
def test_offline_setup_from_a_wheelhouse_as_a_non_root_user(tiny_pairs, user_tmp):
    from pathlib import Path
    tmp_path = Path(user_tmp)
    python = _user_python()
    if python is None:
        pytest.skip(f"no /usr/bin/python{sys.version_info[0]}.{sys.version_info[1]} for a non-root user")
    # 1. on the "login node" (network allowed): the wheelhouse
    wheels = _user_dir(str(tmp_path / "wheelhouse"))
    env = dict(os.environ, VENV=sys.prefix)
    env.pop("WHEELHOUSE", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup_env.sh"), "--wheelhouse", wheels],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    names = os.listdir(wheels)
    for dist in ("torch-", "numpy-", "pyccl-", "mpi4py-", "mpi4py_fft-", "numba-", "pytest-", "setuptools-"):
        assert any(n.startswith(dist) and n.endswith(".whl") for n in names), (dist, names)
    subprocess.run(["chmod", "-R", "a+rX", wheels], check=True)

    # 2. on the "compute node", no network, not root: the core install alone
    home = _user_dir(str(tmp_path / "home"))
    src, venv = _readable_checkout(home), os.path.join(home, "venv")
    env = _base_env(home, PIP_CONFIG_FILE="/dev/null", PIP_NO_CACHE_DIR="1", OMP_NUM_THREADS="1")
    make = ["make", "-s", "-C", src, "setup", f"VENV={venv}", f"WHEELHOUSE={wheels}", f"PYTHON={python}"]
    proc = _as_user(make + ["EXTRAS="], env, offline=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    assert f"installing from {wheels} only" in proc.stdout and "apt-get" not in proc.stdout, describe(proc)
    py = os.path.join(venv, "bin", "python")
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (EXTRA_MODULES,)
    assert _as_user([py, "-c", probe], env).stdout.strip() == "[]"     # the venv truly lacks them

    # run-sim -> train -> evaluate -> emulate in that venv
    data = os.path.join(home, "pairs")
    shutil.copytree(tiny_pairs, data)
    _train_config(tmp_path / "home" / "train.yaml", data, os.path.join(home, "run"))
    if _user() is not None:
        subprocess.run(["chown", "-R", _user(), data, os.path.join(home, "train.yaml")], check=True)
    ck = os.path.join(home, "run", "checkpoints", "latest")
    chain = (f"cd {home} && cosmonet run-sim --engine torch --nc 8 --box 32 --steps 2 --quiet --out sim.h5"
             f" && cosmonet train train.yaml && cosmonet evaluate train.yaml --checkpoint {ck} --json eval.json"
             f" && cosmonet emulate --checkpoint {ck} --input sim.h5 --out emu.h5")
    cenv = dict(env, PATH=f"{venv}/bin:{env['PATH']}")
    proc = _as_user(["bash", "-c", chain], cenv, offline=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    report = json.loads((tmp_path / "home" / "eval.json").read_text())
    assert np.isfinite(report["displacement_error"]["model"]), report["displacement_error"]
    with h5py.File(tmp_path / "home" / "emu.h5", "r") as f:
        assert f["emulated/disp"].shape == (3, 8, 8, 8)

    # 3. the [mpi,test] extras from the wheelhouse, on the system's MPI and FFTW, then 2 ranks
    proc = _as_user(make + ["EXTRAS=mpi,test"], env, offline=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    assert "setup_env: MPI: " in proc.stdout and "setup_env: FFTW: " in proc.stdout, describe(proc)
    assert "apt-get" not in proc.stdout + proc.stderr, describe(proc)
    mpi = f"cd {home} && mpirun -np 2 --oversubscribe cosmonet run-sim --nc 8 --box 32 --steps 2 --quiet --out mpi.h5"
    proc = _as_user(["bash", "-c", mpi], cenv, offline=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ranks"] == 2
