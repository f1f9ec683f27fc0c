import time

import numpy as np
import pyccl as ccl
import pytest
from scipy.special import hyp2f1

from cosmonet.cosmology import Cosmology
from cosmonet.errors import InputError
from cosmonet.cosmology import growth_for
from cosmonet.growth import Growth

P15 = Cosmology.planck15()
OTHER = Cosmology.from_string("Omega_m=0.2,Omega_b=0.04,h=0.7,sigma8=0.8")


def ccl_no_radiation(c):
    return ccl.Cosmology(Omega_c=c.Omega_m - c.Omega_b, Omega_b=c.Omega_b, h=c.h, n_s=c.n_s, sigma8=c.sigma8,
                         T_CMB=0.0, Neff=0.0, transfer_function="eisenstein_hu")


@pytest.mark.parametrize("cosmo", [P15, OTHER])
def test_D1_f1_against_pyccl_without_radiation(cosmo):
    g = Growth(cosmo)
    cc = ccl_no_radiation(cosmo)
    a = np.linspace(0.1, 1.0, 46)
    # measured (pyccl 3.3, Planck15): |dD/D| = 4.0e-7, |df/f| = 9e-8 -- pyccl's own accuracy
    np.testing.assert_allclose(g.D1(a), ccl.growth_factor(cc, a), rtol=2e-6, atol=0)
    np.testing.assert_allclose(g.f1(a), ccl.growth_rate(cc, a), rtol=1e-6, atol=0)


def test_D1_with_radiation_differs_as_expected():
    # pyccl's default cosmology has photons + massless neutrinos; our E(a) has none (as FastPM).
    # measured max over a in [0.1, 1]: 1.6e-3 in D1, 2.0e-3 in f1.
    g = Growth(P15)
    a = np.linspace(0.1, 1.0, 46)
    dD = np.abs(g.D1(a) / ccl.growth_factor(P15.ccl(), a) - 1).max()
    assert 5e-4 < dD < 3e-3


@pytest.mark.parametrize("cosmo", [P15, OTHER])
def test_D1_exact_hypergeometric(cosmo):
    # flat LCDM without radiation: D1 ∝ a 2F1(1/3, 1; 11/6; -a^3 (1-Om)/Om); f1 from d2F1/dz
    g = Growth(cosmo)
    r = (1 - cosmo.Omega_m) / cosmo.Omega_m
    a = np.geomspace(1e-4, 4.0, 300)
    z = -r * a**3
    u = hyp2f1(1 / 3, 1, 11 / 6, z)
    D = a * u / hyp2f1(1 / 3, 1, 11 / 6, -r)
    f = 1 + (2 / 11) * hyp2f1(4 / 3, 2, 17 / 6, z) * 3 * z / u
    np.testing.assert_allclose(g.D1(a), D, rtol=1e-10, atol=0)  # measured ~1e-12
    np.testing.assert_allclose(g.f1(a), f, rtol=1e-9, atol=0)
    assert g.D1(1.0) == pytest.approx(1.0, abs=1e-14)


def test_D2_early_times_and_f2():
    g = Growth(P15)
    assert g.D2(1e-3) / g.D1(1e-3) ** 2 == pytest.approx(-3 / 7, rel=1e-8)
    assert g.f2(1e-3) == pytest.approx(2.0, abs=1e-8)
    # today D2/D1^2 is slightly less negative than -3/7 (-0.4322 for Planck15; ~ -3/7 Om^(-1/143))
    assert g.D2(1.0) == pytest.approx(-3 / 7 * 0.3089 ** (-1 / 143), rel=1e-3)
    a = np.array([0.2, 0.5, 1.0])
    np.testing.assert_allclose(g.f2(a), 2 * P15.Omega_m_a(a) ** (6 / 11), rtol=5e-3)


def test_einstein_de_sitter_exact():
    g = Growth(Cosmology.from_string("Omega_m=1.0"))
    a = np.geomspace(1e-3, 2.0, 50)
    np.testing.assert_allclose(g.D1(a), a, rtol=1e-12)
    np.testing.assert_allclose(g.D2(a), -3 / 7 * a**2, rtol=1e-12)
    np.testing.assert_allclose(g.f1(a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(g.f2(a), 2.0, rtol=1e-12)


@pytest.mark.parametrize("cosmo", [P15, OTHER])
def test_derivatives_consistent(cosmo):
    g = Growth(cosmo)
    a = np.array([0.02, 0.1, 0.3, 0.7, 1.0, 1.5, 3.9])
    h = 1e-4 * a
    dGf = (g.Gf(a + h) - g.Gf(a - h)) / (2 * h)
    np.testing.assert_allclose(g.gf(a), dGf, rtol=1e-5)  # measured ~1e-9
    dD = (g.D1(a + h) - g.D1(a - h)) / (2 * h)
    np.testing.assert_allclose(g.gp(a), dD, rtol=1e-7)
    np.testing.assert_allclose(g.Gf(a), a**2 * cosmo.E(a) * g.D1(a) * g.f1(a), rtol=1e-13)
    np.testing.assert_allclose(g.Gp(a), g.D1(a), rtol=0)
    dD2 = (g.D2(a + h) - g.D2(a - h)) / (2 * h)
    np.testing.assert_allclose(g.f2(a), dD2 * a / g.D2(a), rtol=1e-7)


@pytest.mark.parametrize("cosmo", [P15, OTHER])
def test_kick_drift_reproduce_zeldovich(cosmo):
    g = Growth(cosmo)
    om = cosmo.Omega_m
    psi = np.array([0.3, -1.7, 2.5])
    a_i, a_c, a_f = 0.1, 0.55, 1.0
    x_i, p_i = g.D1(a_i) * psi, g.Gf(a_i) * psi
    p_f = p_i + 1.5 * om * (g.D1(a_c) * psi) * g.kick_factor(a_i, a_c, a_f)
    np.testing.assert_allclose(p_f, g.Gf(a_f) * psi, rtol=1e-12)
    x_f = x_i + (g.Gf(a_c) * psi) * g.drift_factor(a_i, a_c, a_f)
    np.testing.assert_allclose(x_f, g.D1(a_f) * psi, rtol=1e-12)


def test_kick_drift_values_and_arrays():
    g = Growth(Cosmology.from_string("Omega_m=1.0"))
    # EdS: Gf = a^1.5, gf = 1.5 a^0.5, E = a^-1.5: kick = (af^1.5 - ai^1.5) / (1.5 ac^0.5 * ac^0.5)
    k = g.kick_factor(0.5, 0.6, 0.7)
    assert k == pytest.approx((0.7**1.5 - 0.5**1.5) / (1.5 * 0.6), rel=1e-12)
    # drift: (af - ai) / (1 * ac^1.5)
    assert g.drift_factor(0.5, 0.6, 0.7) == pytest.approx(0.2 / 0.6**1.5, rel=1e-12)
    ai = np.array([0.1, 0.2, 0.3])
    arr = g.kick_factor(ai, ai + 0.05, ai + 0.1)
    assert arr.shape == (3,)
    assert arr[1] == pytest.approx(g.kick_factor(0.2, 0.25, 0.3))


def test_scalar_and_array_semantics():
    g = growth_for(P15)
    for fn in (g.D1, g.D2, g.f1, g.f2, g.Gp, g.gp, g.Gf, g.gf):
        assert isinstance(fn(0.5), float)
        out = fn(np.full((2, 3), 0.5))
        assert out.shape == (2, 3) and out[1, 2] == fn(0.5)


def test_below_table_and_out_of_range():
    g = Growth(P15)
    assert g.D1(1e-6) / 1e-6 == pytest.approx(g.D1(1e-3) / 1e-3, rel=1e-8)
    assert g.D2(1e-6) / 1e-12 == pytest.approx(g.D2(1e-3) / 1e-6, rel=1e-8)
    assert g.f1(1e-6) == pytest.approx(1.0, abs=1e-15)
    # continuous across the table start (a_min = 1e-3)
    a = np.array([1e-3 * (1 - 1e-12), 1e-3 * (1 + 1e-12)])
    for fn in (g.D1, g.D2, g.f1, g.f2, g.gf, g.Gf):
        v = fn(a)
        assert v[0] == pytest.approx(v[1], rel=1e-10)
    for bad in (0.0, -0.1, 4.5, np.nan):
        with pytest.raises(InputError, match="scale factor"):
            g.D1(bad)
    with pytest.raises(InputError, match="a_min"):
        Growth(P15, a_min=2.0)


def test_growth_for_is_cached():
    assert growth_for(P15) is growth_for(Cosmology.planck15()) is growth_for("planck15")
    assert growth_for(OTHER) is not growth_for(P15)


def test_construction_time():
    Growth(OTHER)
    best = min(_timed(lambda: Growth(P15)) for _ in range(5))
    # measured ~3 ms; hot setup path of every simulation
    assert best < 0.05


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
