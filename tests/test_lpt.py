"""LPT on exact inputs: ZA of a plane wave is exact; 2LPT source of two crossed waves."""
import numpy as np
import pytest
from mpi4py import MPI

from cosmonet.cosmology import growth_for
from cosmonet.mesh import ParticleMesh
from cosmonet.sim.lpt import lpt2_displacement, lpt2_source_k, za_displacement
from cosmonet.sim.simulation import SimConfig, lagrangian_positions, run_simulation

L, N = 128.0, 32


@pytest.fixture(scope="module")
def pm():
    return ParticleMesh(N, L, MPI.COMM_SELF, dtype=np.float64)


def test_za_of_plane_wave_is_exact(pm):
    kvec = 2 * np.pi / L * np.array([3, 2, 0])
    amp, phase = 0.7, 0.4
    x, y, z = pm.real_coords()
    delta = amp * np.cos(kvec[0] * x + kvec[1] * y + kvec[2] * z + phase) * np.ones(pm.real_shape)
    psi = za_displacement(pm, pm.r2c(delta))
    # div psi = -delta  =>  psi = -amp k / k^2 sin(k.q + phase)
    s = np.sin(kvec[0] * x + kvec[1] * y + kvec[2] * z + phase)
    for d in range(3):
        expect = -amp * kvec[d] / kvec.dot(kvec) * s * np.ones(pm.real_shape)
        np.testing.assert_allclose(psi[d], expect, atol=1e-12 * np.abs(expect).max() + 1e-14)


def test_za_of_plane_wave_through_whole_simulation(tmp_path):
    """`--linear-field` path: the za/disp dataset equals D1(a) psi to float32 precision."""
    kvec = 2 * np.pi / L * np.array([0, 0, 5])
    q = np.arange(N) * L / N
    delta = 0.2 * np.cos(kvec[2] * q)[None, None, :] * np.ones((N, N, N))
    path = tmp_path / "plane.npy"
    np.save(path, delta)
    cfg = SimConfig(nc=N, box=L, steps=1, seed=0, a_final=0.8)
    res = run_simulation(cfg, MPI.COMM_SELF, linear_field=np.load(path), fields={"za/disp", "lpt2/disp"})
    D1 = growth_for(cfg.cosmology).D1(0.8)
    expect = -0.2 * D1 / kvec[2] * np.sin(kvec[2] * q)
    got = res.fields["za/disp"]
    np.testing.assert_allclose(got[2], np.broadcast_to(expect, (N, N, N)), atol=2e-7 * np.abs(expect).max())
    assert np.abs(got[:2]).max() == 0.0
    # a single plane wave has no second-order source: 2LPT == ZA
    np.testing.assert_allclose(res.fields["lpt2/disp"], got, atol=1e-6)


def test_lpt2_source_of_crossed_waves(pm):
    # phi = A cos(kx x) + B cos(ky y) => S = phi_xx phi_yy = A B kx^2 ky^2 cos(kx x) cos(ky y)
    kx, ky = 2 * np.pi / L * 2, 2 * np.pi / L * 3
    A, B = 1.5, -0.8
    x, y, z = pm.real_coords()
    phi = (A * np.cos(kx * x) + B * np.cos(ky * y)) * np.ones(pm.real_shape)
    delta = -(A * kx ** 2 * np.cos(kx * x) + B * ky ** 2 * np.cos(ky * y)) * np.ones(pm.real_shape)
    src = pm.c2r(lpt2_source_k(pm, pm.r2c(delta)))
    expect = A * B * kx ** 2 * ky ** 2 * np.cos(kx * x) * np.cos(ky * y) * np.ones(pm.real_shape)
    np.testing.assert_allclose(src, expect, atol=1e-10 * np.abs(expect).max())
    # psi_2 = grad phi_2, nabla^2 phi_2 = S  =>  div psi_2 = S
    psi2 = lpt2_displacement(pm, pm.r2c(delta))
    div = sum(pm.c2r(1j * pm.k[d] * pm.r2c(psi2[d])) for d in range(3))
    np.testing.assert_allclose(div, expect, atol=1e-10 * np.abs(expect).max())
    del phi


def test_lagrangian_grid(pm):
    q = lagrangian_positions(pm)
    assert q.shape == (N ** 3, 3)
    np.testing.assert_allclose(q[1], [0, 0, L / N])
    np.testing.assert_allclose(q[N * N], [L / N, 0, 0])
