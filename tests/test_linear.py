"""The linear field: P(k) against its input, white noise, amplitude conventions."""
import numpy as np
import pytest
from mpi4py import MPI

from cosmonet.analysis.power import binned_power
from cosmonet.cosmology import Cosmology
from cosmonet.mesh import ParticleMesh
from cosmonet.sim.linear import linear_density_k, power_on_mesh
from cosmonet.sim.whitenoise import white_noise


def _chi2_against_input(pm, delta_k, cosmo):
    meas = binned_power(pm, delta_k)
    # the model averaged over exactly the modes of each bin (no binning bias)
    model = binned_power(pm, np.sqrt(power_on_mesh(pm, cosmo.linear_power) / pm.BoxSize ** 3) + 0j,
                         edges=meas["edges"])
    sigma = model["power"] / np.sqrt(meas["modes"] / 2)        # k and -k are one complex mode
    chi2 = np.sum(((meas["power"] - model["power"]) / sigma) ** 2)
    return chi2 / len(meas["k"]), meas, model


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_linear_power_matches_input(seed):
    cosmo = Cosmology.planck15()
    pm = ParticleMesh(64, 500.0, MPI.COMM_SELF, dtype=np.float64)
    red_chi2, meas, model = _chi2_against_input(pm, linear_density_k(pm, seed, cosmo.linear_power), cosmo)
    assert red_chi2 < 1.5, red_chi2
    # and the test can fail: a 10% amplitude error is caught
    bad, _, _ = _chi2_against_input(pm, 1.05 * linear_density_k(pm, seed, cosmo.linear_power), cosmo)
    assert bad > 1.5


def test_power_table_interpolation_is_accurate():
    cosmo = Cosmology.planck15()
    pm = ParticleMesh(32, 300.0, MPI.COMM_SELF, dtype=np.float64)
    p = power_on_mesh(pm, cosmo.linear_power)
    k = np.sqrt(pm.k2)
    sel = k > 0
    np.testing.assert_allclose(p[sel], cosmo.linear_power(k[sel]), rtol=2e-4)
    assert p[~sel].max() == 0.0


def test_white_noise_statistics_and_determinism():
    pm = ParticleMesh(32, 100.0, MPI.COMM_SELF, dtype=np.float64)
    w = white_noise(pm, 5)
    assert abs(w.mean()) < 4 / np.sqrt(w.size) and w.std() == pytest.approx(1.0, abs=0.01)
    np.testing.assert_array_equal(w, white_noise(pm, 5))
    assert not np.array_equal(w, white_noise(pm, 6))
