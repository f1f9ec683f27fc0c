"""How non-linear a simulation's initial field is on its grid: the rms of the linear
density contrast on the nc^3 particle grid at a_final, from the power spectrum alone
(no simulation, milliseconds).

With the generator's normalisation (:mod:`cosmonet.sim.linear`: ``<|delta_k|^2> = P(k)/V``
on every mode of the nc^3 FFT grid but k = 0), the variance of the linear field on the
grid is exactly

    sigma^2(a) = D1(a)^2 / V * sum_{n != 0, n in [-nc/2, nc/2)^3} P_lin(|n| k_f),

k_f = 2 pi / L (h/Mpc), V = L^3 ((Mpc/h)^3). :func:`grid_sigma` sums the modes with
max|n_i| <= 24 one by one and the rest as an integral (one mode per k_f^3; the shells
between two cubes as a radial integral times the fraction of each sphere inside the cube),
which agrees with the full sum to better than 0.1% (tested at nc = 128).

The thresholds (docs/physics.md). The training set-ups this project ships have 1.8 to 2.5
(D3M: 128 Mpc/h with 32^3 or 64^3 particles; 1 Gpc/h with 512^3): the field is mildly
non-linear on the cell scale at z = 0, as every PM emulator training set is. Above
:data:`WARN_SIGMA` = 3 a cell's linear contrast is routinely beyond 3, shell crossing
happens within a cell long before a_final, and the Zel'dovich and 2LPT fields are far
from FastPM's: legitimate for tests and studies of small cells, so it is a warning (on
stderr, the run goes on). Above :data:`REFUSE_SIGMA` = 10 (e.g. 32^3 particles in a
1 Mpc/h box: 7; 2048^3 in 1 Mpc/h: 15) linear theory says nothing about the cell scale,
the particle mesh's force resolution is far coarser than the structures it would have to
follow, and the run would not be a cosmological simulation of that box: it is refused.
"""
import functools

import numpy as np

from ..cosmology import growth_for

#: a run whose grid sigma exceeds this is warned about (strongly non-linear on the cell scale)
WARN_SIGMA = 3.0
#: a run whose grid sigma exceeds this is refused
REFUSE_SIGMA = 10.0
#: modes with max|n_i| <= this are summed one by one (the rest as an integral)
EXACT_HALF = 24


def _power_table(cosmo, kmin, kmax):
    """P_lin(k) at a = 1 as a function of k (h/Mpc), interpolated in log-log from 512
    values, as :func:`cosmonet.sim.linear.power_on_mesh` does."""
    ktab = np.geomspace(kmin, kmax, 512)
    logp = np.log(np.maximum(np.asarray(cosmo.linear_power(ktab), dtype=np.float64), 1e-300))
    logk = np.log(ktab)

    def power(k):
        return np.exp(np.interp(np.log(k), logk, logp))
    return power


def _mode_sum(power, kf, lo, hi):
    """sum of power(|n| kf) over the integer n in [lo, hi]^3, n != 0."""
    n = np.arange(lo, hi + 1, dtype=np.float64)
    total = 0.0
    for nx in n:                                   # one plane at a time: (hi-lo+1)^2 values
        n2 = nx * nx + n[:, None] ** 2 + n[None, :] ** 2
        k = kf * np.sqrt(n2[n2 > 0])
        total += float(np.sum(power(k)))
    return total


@functools.lru_cache(maxsize=1)
def _cube_fraction():
    """(u, F(u)): the fraction of a sphere of radius u inside the cube max|x_i| <= 1, on a
    grid of u in [1, sqrt 3] (F = 1 below 1), from 1.4 million directions of one octant
    (cos theta and phi on midpoint grids, equal-area: cos theta of a uniform direction is
    uniform)."""
    m = 1200
    z = (np.arange(m) + 0.5) / m
    phi = (np.arange(m) + 0.5) / m * (np.pi / 2)
    s = np.sqrt(1 - z ** 2)[:, None]
    biggest = np.maximum(np.maximum(s * np.cos(phi)[None, :], s * np.sin(phi)[None, :]), z[:, None]).ravel()
    biggest.sort()                               # a sphere of radius u: inside iff u * max|x_i| <= 1
    u = np.linspace(1.0, np.sqrt(3.0), 2001)
    frac = np.searchsorted(biggest, 1.0 / u, side="right") / biggest.size
    return u, frac


def _fraction_inside(r, half):
    u, frac = _cube_fraction()
    return np.interp(r / half, u, frac, left=1.0, right=0.0)


def _shell_integral(power, kf, inner, outer):
    """integral of power(|n| kf) d^3n over the cube max|n_i| <= outer minus the cube
    max|n_i| <= inner (half sides in units of k_f)."""
    r = np.geomspace(inner, np.sqrt(3.0) * outer, 20000)
    weight = _fraction_inside(r, outer) - _fraction_inside(r, inner)
    y = 4 * np.pi * r ** 2 * weight * power(kf * r)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(r)))


def grid_sigma(cosmo, nc, box, a=1.0, exact_half=EXACT_HALF):
    """rms of the linear density contrast on the nc^3 grid of a box of side ``box`` Mpc/h
    at scale factor ``a`` (dimensionless; the k = 0 mode excluded, as in the simulation)."""
    nc, box = int(nc), float(box)
    kf = 2 * np.pi / box
    power = _power_table(cosmo, 0.5 * kf, kf * nc / 2 * np.sqrt(3) * 1.01)
    half = nc // 2
    if half <= exact_half:
        total = _mode_sum(power, kf, -half, nc - half - 1)
    else:
        total = _mode_sum(power, kf, -exact_half, exact_half)
        total += _shell_integral(power, kf, exact_half + 0.5, nc / 2)
    d = float(growth_for(cosmo).D1(a))
    return d * np.sqrt(total / box ** 3)


def exact_grid_sigma(cosmo, nc, box, a=1.0):
    """:func:`grid_sigma` summing every mode one by one (nc^3 values; for tests)."""
    return grid_sigma(cosmo, nc, box, a, exact_half=nc)


def judge(sigma, nc, box, a, what):
    """The warning line for a grid sigma above :data:`WARN_SIGMA` (None below it); an
    InputError above :data:`REFUSE_SIGMA`. ``what`` names the run, e.g. ``"run-sim"`` or
    ``"config"`` (with the cosmology when it matters)."""
    from ..errors import InputError
    words = f"linear density rms {sigma:.3g} on the grid at a_final {a:g} (cell {box / nc:.3g} Mpc/h)"
    if sigma > REFUSE_SIGMA:
        raise InputError(f"{what}: {words} is above {REFUSE_SIGMA:g}: not a cosmological simulation of this box; "
                         f"use a larger box or fewer particles (docs/physics.md)")
    if sigma > WARN_SIGMA:
        return (f"{what}: warning: {words} is above {WARN_SIGMA:g}: strongly non-linear on the cell scale "
                f"(docs/physics.md)")
    return None
