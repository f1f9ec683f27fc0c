"""The distributed mesh on one rank: FFT normalisation, CIC paint/readout adjointness."""
import numpy as np
import pytest
from mpi4py import MPI

from cosmonet.errors import InputError
from cosmonet.mesh import ParticleMesh


@pytest.fixture(scope="module")
def pm():
    return ParticleMesh(16, 100.0, MPI.COMM_SELF, dtype=np.float64)


def test_fft_roundtrip_and_normalisation(pm):
    rng = np.random.default_rng(1)
    f = rng.standard_normal(pm.real_shape)
    fk = pm.r2c(f)
    np.testing.assert_allclose(pm.c2r(fk), f, atol=1e-12)
    # nbodykit convention: delta_k = (1/N^3) sum delta(x) exp(-i k x)
    np.testing.assert_allclose(fk, np.fft.rfftn(f) / 16 ** 3, atol=1e-14)


def test_kvectors_match_numpy(pm):
    kf = 2 * np.pi / 100.0
    np.testing.assert_allclose(pm.k[0].ravel(), np.fft.fftfreq(16, 1 / 16) * kf)
    np.testing.assert_allclose(pm.k[2].ravel(), np.fft.rfftfreq(16, 1 / 16) * kf)
    assert pm.k_nyquist == pytest.approx(np.pi * 16 / 100.0)


def test_paint_conserves_mass_and_hits_right_cells(pm):
    pos = np.array([[0.0, 0.0, 0.0], [6.25 * 3, 6.25 * 5, 6.25 * 15]])  # on cell corners
    f = pm.paint(pos)
    assert f.sum() == pytest.approx(2.0)
    assert f[0, 0, 0] == pytest.approx(1.0) and f[3, 5, 15] == pytest.approx(1.0)
    # half-way between cells 15 and 0 along z (periodic wrap)
    f = pm.paint(np.array([[0.0, 0.0, 6.25 * 15.5]]))
    assert f[0, 0, 15] == pytest.approx(0.5) and f[0, 0, 0] == pytest.approx(0.5)


def test_paint_readout_adjoint(pm):
    rng = np.random.default_rng(2)
    pos = rng.uniform(0, 100.0, (500, 3))
    m = rng.standard_normal(500)
    g = rng.standard_normal(pm.real_shape)
    lhs = np.sum(pm.paint(pos, m) * g)
    rhs = np.sum(m * pm.readout(g, pos))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_readout_of_linear_field_is_exact_inside_cells(pm):
    # CIC interpolates linearly between cell corners: exact for a plane that is linear in x
    x, y, z = pm.real_coords()
    g = np.broadcast_to(3.0 * y + 0.0 * x + 0.0 * z, pm.real_shape).copy()
    pos = np.array([[10.0, 20.3, 30.0], [50.0, 7.7, 99.0]])
    np.testing.assert_allclose(pm.readout(g, pos), 3.0 * pos[:, 1], rtol=1e-12)


def test_too_small_mesh_is_an_input_error():
    with pytest.raises(InputError):
        ParticleMesh(1, 100.0, MPI.COMM_SELF)
    with pytest.raises(InputError):
        ParticleMesh(8, -1.0, MPI.COMM_SELF)
