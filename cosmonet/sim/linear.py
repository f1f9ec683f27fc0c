"""The linear density field delta_lin(k) at a = 1.

Normalisation as nbodykit: with the forward FFT normalised by 1/N^3,
``<|delta_k|^2> = P_lin(k) / V`` (V = BoxSize^3 in (Mpc/h)^3). The k = 0 mode is zero.
"""
import numpy as np

from ..errors import InputError
from .whitenoise import white_noise


def power_on_mesh(pm, power):
    """Evaluate ``power(k)`` ((Mpc/h)^3, k in h/Mpc) on the local complex slab.

    ``power`` is tabulated on 512 log-spaced k and interpolated in log-log, which is
    exact to 1e-5 for smooth spectra and avoids calling pyccl per mode.
    """
    k = np.sqrt(pm.k[0] ** 2 + pm.k[1] ** 2 + pm.k[2] ** 2)    # not pm.k2: nothing full-size is cached
    kmin = pm.k_fundamental * 0.5
    kmax = pm.k_nyquist * np.sqrt(3) * 1.01
    ktab = np.geomspace(kmin, kmax, 512)
    ptab = np.asarray(power(ktab), dtype=np.float64)
    if np.any(~np.isfinite(ptab)) or np.any(ptab < 0):
        raise InputError("linear power spectrum has negative or non-finite values")
    out = np.zeros(k.shape)
    nz = k > 0
    out[nz] = np.exp(np.interp(np.log(k[nz]), np.log(ktab), np.log(np.maximum(ptab, 1e-300))))
    return out


def linear_density_k(pm, seed, power):
    """Gaussian delta_lin(k) at a = 1 from white noise of ``seed`` and ``power(k)``."""
    noise_k = pm.r2c(white_noise(pm, seed))
    volume = pm.BoxSize ** 3
    amplitude = np.sqrt(power_on_mesh(pm, power) * pm.Nmesh ** 3 / volume)
    return noise_k * amplitude


def linear_density_from_field(pm, delta):
    """delta_lin(k) of a given real-space linear density contrast at a = 1.

    delta: the full (nc, nc, nc) float array (dimensionless) on the particle grid, e.g. a
    memory-mapped ``.npy``; each rank reads only its x-slab. Returns the local complex slab.
    """
    n = pm.Nmesh
    if tuple(np.shape(delta)) != (n, n, n):
        raise InputError(f"linear field has shape {tuple(np.shape(delta))}, expected ({n}, {n}, {n})")
    local = np.asarray(delta[pm.x0:pm.x1], dtype=np.float64)
    if not np.all(np.isfinite(local)):
        raise InputError("linear field contains NaN or infinite values")
    return pm.r2c(local)
