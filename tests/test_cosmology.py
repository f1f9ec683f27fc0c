import math

import numpy as np
import pyccl as ccl
import pytest
from scipy.integrate import simpson

from cosmonet.cosmology import Cosmology, parse_cosmology
from cosmonet.errors import InputError
from cosmonet.cosmology import growth_for

P15 = dict(Omega_m=0.3089, Omega_b=0.0486, h=0.6774, n_s=0.9667, sigma8=0.8159, transfer="eisenstein_hu")


def test_planck15_preset():
    c = Cosmology.planck15()
    assert c.to_dict() == P15
    assert c.A_s is None
    assert Cosmology.from_string("planck15") == c == Cosmology.from_string(" Planck15 ")


def test_from_string_overrides():
    c = Cosmology.from_string("Omega_m=0.3,sigma8=0.8,h=0.7")
    assert (c.Omega_m, c.sigma8, c.h) == (0.3, 0.8, 0.7)
    assert (c.Omega_b, c.n_s, c.transfer) == (0.0486, 0.9667, "eisenstein_hu")
    assert Cosmology.from_string("planck15, Omega_m=0.3") == Cosmology.planck15().with_params(Omega_m=0.3)
    assert Cosmology.from_string("omega_m=0.25").Omega_m == 0.25  # keys are case-insensitive


def test_A_s_clears_sigma8_and_back():
    c = Cosmology.from_string("planck15,transfer=boltzmann_camb,A_s=2.1e-9")
    assert c.A_s == 2.1e-9 and c.sigma8 is None and c.transfer == "boltzmann_camb"
    assert "sigma8" not in c.to_dict()
    c2 = c.with_params(sigma8=0.8)
    assert c2.sigma8 == 0.8 and c2.A_s is None
    with pytest.raises(InputError, match="sigma8.*A_s"):
        Cosmology.from_string("transfer=boltzmann_camb,A_s=2e-9,sigma8=0.8")


def test_A_s_needs_boltzmann_transfer():
    # pyccl cannot normalise analytic (Eisenstein-Hu) spectra by A_s
    with pytest.raises(InputError, match="A_s"):
        Cosmology.from_string("A_s=2.1e-9")


@pytest.mark.parametrize("text, key", [
    ("Omega_x=0.3", "Omega_x"),
    ("planck15,foo=1", "foo"),
    ("Omega_m=abc", "Omega_m"),
    ("h=nan", "h"),
    ("Omega_m=1.2", "Omega_m"),
    ("Omega_m=0", "Omega_m"),
    ("Omega_b=0.4", "Omega_b"),  # > Omega_m
    ("Omega_b=-0.01", "Omega_b"),
    ("h=2.5", "h"),
    ("h=0", "h"),
    ("sigma8=-0.8", "sigma8"),
    ("transfer=boltzmann_camb,A_s=0", "A_s"),
    ("transfer=camb", "transfer"),
    ("wmap9", "wmap9"),
    ("Omega_m", "Omega_m"),
    ("h=0.7,h=0.6", "h"),
])
def test_from_string_errors_name_the_key(text, key):
    with pytest.raises(InputError) as err:
        Cosmology.from_string(text)
    msg = str(err.value)
    assert key in msg and "\n" not in msg
    if text.startswith("Omega_x"):
        assert "known:" in msg and "Omega_m" in msg


def test_with_params_validates():
    with pytest.raises(InputError, match="Omega_b"):
        Cosmology.planck15().with_params(Omega_b=0.5)
    with pytest.raises(InputError, match="Omega_q"):
        Cosmology.planck15().with_params(Omega_q=0.5)


def test_dict_round_trip_and_types():
    c = Cosmology.planck15().with_params(h=0.7)
    d = c.to_dict()
    assert all(type(v) in (float, str) for v in d.values())
    assert Cosmology.from_dict(d) == c
    # HDF5-style attributes: numpy scalars and bytes
    d2 = {k: (np.float64(v) if isinstance(v, float) else v.encode()) for k, v in d.items()}
    c2 = Cosmology.from_dict(d2)
    assert c2 == c and type(c2.h) is float and type(c2.transfer) is str
    assert hash(c2) == hash(c)
    with pytest.raises(InputError, match="Omega_b"):
        Cosmology.from_dict({k: v for k, v in d.items() if k != "Omega_b"})


def test_parse_cosmology():
    c = Cosmology.planck15()
    assert parse_cosmology(c) is c
    assert parse_cosmology(None) == c
    assert parse_cosmology("planck15,h=0.7") == c.with_params(h=0.7)
    assert parse_cosmology({"Omega_m": 0.3, "sigma8": 0.8}) == c.with_params(Omega_m=0.3, sigma8=0.8)
    with pytest.raises(InputError, match="Omega_z"):
        parse_cosmology({"Omega_z": 0.3})
    with pytest.raises(InputError):
        parse_cosmology(3.0)


def test_background():
    c = Cosmology.planck15()
    assert c.E(1.0) == pytest.approx(1.0, rel=1e-15)
    a = np.array([0.01, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(c.E(a), np.sqrt(0.3089 / a**3 + 0.6911), rtol=1e-14)
    np.testing.assert_allclose(c.Omega_m_a(a), 0.3089 / a**3 / c.E(a) ** 2, rtol=1e-14)
    assert isinstance(c.E(0.5), float) and isinstance(c.Omega_m_a(0.5), float)
    assert c.Omega_m_a(1.0) == pytest.approx(0.3089)


def test_linear_power_units_against_pyccl():
    c = Cosmology.planck15()
    cc = ccl.Cosmology(Omega_c=0.3089 - 0.0486, Omega_b=0.0486, h=0.6774, n_s=0.9667, sigma8=0.8159,
                       transfer_function="eisenstein_hu", matter_power_spectrum="linear")
    k = np.geomspace(1e-4, 10.0, 50)  # h/Mpc
    ref = ccl.linear_matter_power(cc, k * 0.6774, 1.0) * 0.6774**3
    np.testing.assert_allclose(c.linear_power(k), ref, rtol=1e-10)
    # absolute sanity: EH Planck15 P(k=0.1 h/Mpc) = 5673 (Mpc/h)^3; peak ~2.4e4 near k ~ 0.02 h/Mpc
    assert c.linear_power(0.1) == pytest.approx(5673.0, rel=0.02)
    assert isinstance(c.linear_power(0.1), float)


def test_linear_power_zero_and_shape():
    c = Cosmology.planck15()
    assert c.linear_power(0.0) == 0.0
    k = np.array([[0.0, 0.1], [1.0, 0.0]])
    p = c.linear_power(k)
    assert p.shape == (2, 2) and p[0, 0] == 0.0 and p[1, 1] == 0.0 and p[0, 1] > 0


def test_linear_power_scales_with_our_growth():
    c = Cosmology.planck15()
    k = np.array([0.01, 0.1, 1.0])
    D = growth_for(c).D1(0.1)
    np.testing.assert_allclose(c.linear_power(k, a=0.1), c.linear_power(k) * D**2, rtol=1e-13)


@pytest.mark.parametrize("spec", ["planck15", "Omega_m=0.25,sigma8=0.9,n_s=0.95,h=0.72"])
def test_sigma8_from_tophat_integral(spec):
    c = Cosmology.from_string(spec)
    k = np.geomspace(1e-5, 1e3, 20000)
    x = 8.0 * k
    W = np.where(x < 1e-3, 1 - x**2 / 10, 3 * (np.sin(x) - x * np.cos(x)) / np.maximum(x, 1e-3) ** 3)
    s8 = math.sqrt(simpson(k**3 * c.linear_power(k) * W**2 / (2 * np.pi**2), x=np.log(k)))
    # measured: |s8/sigma8 - 1| ~ 2e-7
    assert s8 == pytest.approx(c.sigma8, rel=1e-4)
    assert c.sigma8_value() == c.sigma8
