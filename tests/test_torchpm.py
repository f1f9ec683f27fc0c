"""The batched torch engine (cosmonet.torchpm) against the MPI engine, on the CPU.

From the same seed, the torch engine (float32 particle mesh) and the MPI engine (one rank,
in-process) must agree to 1e-3 Mpc/h rms in displacement and 1e-4 relative in P(k) for
ZA, 2LPT and FastPM, at 16^3 particles with boost 1, 2, 3 and at 32^3 with boost 2 (the
D3M configuration). Measured (seed 11, see docs/physics.md): ZA and 2LPT equal to float32
rounding (< 1e-6 Mpc/h), FastPM 2e-6 to 6e-6 Mpc/h rms.
"""
import subprocess
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpi_util import cosmonet_exe, mpi_env
from cosmonet.analysis.power import binned_power, density_k
from cosmonet.cli import _run_sim_torch, main
from cosmonet.errors import InputError
from cosmonet.io.simfile import write_simulation
from cosmonet.sim.simulation import SimConfig, density_contrast, lagrangian_positions, run_simulation
from cosmonet.torchpm import batch_cic as cic, run_batch
from cosmonet.torchpm.batch_mesh import BatchMesh
from cosmonet.torchpm.simulate import resolve_device

COMM = MPI.COMM_SELF
SEEDS = (11, 12)
CASES = [(16, 1, 5), (16, 2, 5), (16, 3, 5), (32, 2, 10)]   # (nc, boost, steps)
KINDS = ("za", "lpt2", "fastpm")


def _wrap(d, box):
    return np.mod(d + 0.5 * box, box) - 0.5 * box


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"nc{c[0]}-boost{c[1]}-steps{c[2]}")
def pair(request):
    """(config, MPI engine fields per seed, MPI result of the first seed, torch batch fields)."""
    nc, boost, steps = request.param
    cfg = SimConfig(nc=nc, box=128.0, steps=steps, boost=boost)
    mpi = [run_simulation(SimConfig(nc=nc, box=128.0, steps=steps, boost=boost, seed=s), COMM) for s in SEEDS]
    out = run_batch(cfg, SEEDS)
    return cfg, [m.fields for m in mpi], mpi[0], out


@pytest.mark.parametrize("kind", KINDS)
def test_displacement_equals_mpi_engine(pair, kind):
    cfg, mpi, _, out = pair
    assert out[f"{kind}/disp"].shape == (len(SEEDS), 3) + (cfg.nc,) * 3
    assert out[f"{kind}/disp"].dtype == np.float32
    for b in range(len(SEEDS)):
        ref = mpi[b][f"{kind}/disp"]
        rms = np.sqrt(np.mean(_wrap(out[f"{kind}/disp"][b] - ref, cfg.box) ** 2))
        assert rms <= 1e-3, (kind, b, rms)
        assert np.sqrt(np.mean(ref ** 2)) > 1.0      # a real displacement field, not zeros
        vel_ref = mpi[b][f"{kind}/vel"]
        vrel = np.sqrt(np.mean((out[f"{kind}/vel"][b] - vel_ref) ** 2) / np.mean(vel_ref ** 2))
        assert vrel <= 1e-5, (kind, b, vrel)


@pytest.mark.parametrize("kind", KINDS)
def test_power_equals_mpi_engine(pair, kind):
    cfg, mpi, res, out = pair
    pm = res.pm
    q = lagrangian_positions(pm)

    def power(disp):
        pos = np.mod(q + disp.reshape(3, -1).T, cfg.box)
        return binned_power(pm, density_k(pm, pos, cfg.nc ** 3))["power"]

    p_mpi = power(mpi[0][f"{kind}/disp"])
    p_torch = power(out[f"{kind}/disp"][0])
    rel = np.max(np.abs(p_torch / p_mpi - 1))
    assert rel <= 1e-4, (kind, rel)


def test_density_equals_mpi_engine():
    cfg = SimConfig(nc=16, box=128.0, steps=3, boost=2, seed=SEEDS[0])
    res = run_simulation(cfg, COMM, fields={"fastpm/disp"})
    ref = density_contrast(res, 32)
    out = run_batch(cfg, [cfg.seed], fields=["fastpm/disp"], density_nmesh=32)
    assert set(out) == {"fastpm/disp", "density"}
    assert out["density"].shape == (1, 1, 32, 32, 32)
    diff = out["density"][0] - ref          # measured: rms 7.5e-6, max 1.0e-4 (of up to 85)
    assert np.sqrt(np.mean(diff ** 2)) < 5e-5 and np.max(np.abs(diff)) < 5e-4
    assert np.std(ref) > 0.3


def test_batch_equals_members_one_by_one():
    """Three boxes of three cosmologies in one batch = each box alone (to float32 rounding),
    and each = the MPI engine with that cosmology."""
    cfg = SimConfig(nc=16, box=128.0, steps=4, boost=2)
    base = cfg.cosmology
    cosmos = [base, base.with_params(Omega_m=0.25), base.with_params(sigma8=0.9)]
    seeds = [3, 4, 5]
    batch = run_batch(cfg, seeds, cosmologies=cosmos)
    for b, (s, c) in enumerate(zip(seeds, cosmos)):
        one = run_batch(SimConfig(nc=16, box=128.0, steps=4, boost=2, cosmology=c), [s])
        for name, arr in batch.items():
            np.testing.assert_allclose(arr[b], one[name][0], rtol=0, atol=2e-6 * np.abs(arr).max() + 1e-6)
    ref = run_simulation(SimConfig(nc=16, box=128.0, steps=4, boost=2, seed=seeds[1], cosmology=cosmos[1]),
                         COMM).fields["fastpm/disp"]
    assert np.sqrt(np.mean(_wrap(batch["fastpm/disp"][1] - ref, cfg.box) ** 2)) < 1e-4
    # the boxes differ: different seeds and cosmologies are not silently merged
    assert np.abs(batch["fastpm/disp"][1] - batch["fastpm/disp"][0]).max() > 1.0


def test_linear_field_equals_mpi_engine(tmp_path):
    rng = np.random.default_rng(0)
    delta = 0.2 * rng.standard_normal((16, 16, 16))
    np.save(tmp_path / "lin.npy", delta)
    cfg = SimConfig(nc=16, box=128.0, steps=3, boost=2)
    ref = run_simulation(cfg, COMM, linear_field=delta).fields
    out = run_batch(cfg, linear_fields=delta[None])
    for kind in KINDS:
        rms = np.sqrt(np.mean(_wrap(out[f"{kind}/disp"][0] - ref[f"{kind}/disp"], cfg.box) ** 2))
        assert rms < 1e-4, (kind, rms)
    as_tensor = run_batch(cfg, linear_fields=torch.from_numpy(delta[None]), fields=["za/disp"], as_numpy=False)
    assert list(as_tensor) == ["za/disp"] and as_tensor["za/disp"].dtype == torch.float32
    np.testing.assert_array_equal(as_tensor["za/disp"].numpy(), out["za/disp"])


def test_white_noise_is_the_mpi_engines_in_worker_processes_too():
    from cosmonet.mesh import get_mesh
    from cosmonet.sim.whitenoise import white_noise
    from cosmonet.torchpm.noise import white_noise_batch
    pm = get_mesh(8, 128.0, COMM, dtype=np.float64)
    ref = np.stack([white_noise(pm, s) for s in (1, 2, 3)])
    np.testing.assert_array_equal(white_noise_batch(8, [1, 2, 3]), ref)
    np.testing.assert_array_equal(white_noise_batch(8, [1, 2, 3], workers=2), ref)


def test_cic_adjoint_and_mass():
    """<paint(m), f> = <m, readout(f)> for random m, f, and paint conserves mass, with
    particles on cell faces, the box edge and everywhere else, at a batch of 2."""
    g = torch.Generator().manual_seed(1)
    N, L, n = 8, 10.0, 500
    pos = torch.rand(2, 3, n, generator=g, dtype=torch.float64) * L
    pos[:, :, :20] = torch.tensor([0.0, L * (1 - 1e-16), 2.5])[torch.randint(0, 3, (2, 3, 20), generator=g)]
    mass = torch.rand(2, n, generator=g, dtype=torch.float64)
    field = torch.randn(2, 1, N, N, N, generator=g, dtype=torch.float64)
    st = cic.Stencil(pos, N, L)
    rho = cic.paint(st, mass)
    lhs = (rho * field[:, 0]).sum(dim=(1, 2, 3))
    rhs = (mass * cic.readout(st, field)[:, 0]).sum(dim=1)
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(rho.sum(dim=(1, 2, 3)).numpy(), mass.sum(dim=1).numpy(), rtol=1e-12, atol=0)
    # a particle at a cell corner puts all its mass there; readout of a linear ramp is linear
    one = cic.paint(cic.Stencil(torch.tensor([[[2.5], [5.0], [0.0]]], dtype=torch.float64), N, L))
    assert one[0, 2, 4, 0] == 1.0 and one.sum() == 1.0
    ramp = torch.arange(N, dtype=torch.float64).view(1, 1, N, 1, 1).expand(1, 1, N, N, N)
    x = torch.tensor([[[3.1], [7.7], [9.9]]], dtype=torch.float64)
    assert cic.readout(cic.Stencil(x, N, L), ramp).item() == pytest.approx(3.1 * N / L, abs=1e-12)


def test_mesh_fft_roundtrip_and_normalisation():
    mesh = BatchMesh(8, 100.0, dtype=torch.float64)
    f = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    fk = mesh.r2c(f)
    np.testing.assert_allclose(fk[:, 0, 0, 0].real.numpy(), f.mean(dim=(1, 2, 3)).numpy(), rtol=1e-12)  # 1/N^3
    np.testing.assert_allclose(mesh.c2r(fk).numpy(), f.numpy(), rtol=0, atol=1e-12)


def test_cli_torch_engine_writes_the_mpi_file(tmp_path):
    """run-sim --engine torch writes the MPI engine's file (same datasets and attributes;
    the MPI file is written in-process by the same writer, process start-up being most of
    the cost of a command)."""
    args = ["run-sim", "--nc", "16", "--steps", "3", "--seed", "9", "--quiet", "--engine", "torch",
            "--out", str(tmp_path / "torch.h5")]
    proc = subprocess.Popen([cosmonet_exe()] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env())
    cfg = SimConfig(nc=16, box=128.0, steps=3, seed=9)
    write_simulation(str(tmp_path / "mpi.h5"), run_simulation(cfg, COMM),
                     extra_attrs={"linear_field": "", "n_ranks": 1, "engine": "mpi"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    with h5py.File(tmp_path / "mpi.h5") as a, h5py.File(tmp_path / "torch.h5") as b:
        assert sorted(a) == sorted(b)
        assert set(a.attrs) == set(b.attrs)
        assert b.attrs["engine"] == "torch" and b.attrs["seed"] == 9
        for name in ("za/disp", "lpt2/disp", "fastpm/disp"):
            assert a[name].shape == b[name].shape == (3, 16, 16, 16)
            d = _wrap(a[name][...] - b[name][...], 128.0)
            assert np.sqrt(np.mean(d ** 2)) < 1e-4, name


def test_cli_torch_engine_refuses_cuda_without_cuda_and_many_ranks(tmp_path, capsys):
    """One-line errors (``cosmonet: error: ...``, exit 2, no file): CUDA asked for but absent,
    --device with the MPI engine, and the torch engine on more than one rank."""
    base = ["run-sim", "--nc", "4", "--steps", "1", "--quiet", "--out", str(tmp_path / "x.h5")]
    cases = [(["--engine", "mpi", "--device", "cuda:0"], "--device cuda:0 needs --engine torch")]
    if not torch.cuda.is_available():
        cases.append((["--engine", "torch", "--device", "cuda"], "--device cuda: CUDA is not available"))
    for extra, needle in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cosmonet: error: ") and needle in err[0], err
        assert not (tmp_path / "x.h5").exists()
    with pytest.raises(InputError, match="runs whole boxes on one rank .got 2 ranks"):
        _run_sim_torch(SimConfig(nc=4, steps=1), SimpleNamespace(size=2, rank=0),
                       SimpleNamespace(device="cpu", linear_field=None))
    with pytest.raises(InputError, match="only cpu and cuda"):
        resolve_device("meta")
