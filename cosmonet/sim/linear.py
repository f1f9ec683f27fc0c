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
    k = np.sqrt(pm.k2)
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


def open_linear_field(path, nc):
    """Memory-map a user's real-space delta_lin at a = 1 and check it: a ``.npy`` float
    array of shape (nc, nc, nc). Raises :class:`InputError` with one line otherwise."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"--linear-field {path}: cannot read as a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"--linear-field {path}: not a single .npy array (an .npz archive?)")
    if arr.shape != (nc, nc, nc):
        raise InputError(f"--linear-field {path}: shape {arr.shape}, expected ({nc}, {nc}, {nc}) "
                         "(real-space delta_lin at a = 1 on the nc^3 particle grid)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"--linear-field {path}: dtype {arr.dtype}, expected a float array")
    return arr


def load_linear_field(path, pm):
    """Read a user's real-space delta_lin at a = 1 (``.npy``, shape (nc, nc, nc)).

    Each rank reads only its slab (memory-mapped). Returns the local complex slab.
    """
    arr = open_linear_field(path, pm.Nmesh)
    local = np.asarray(arr[pm.x0:pm.x1], dtype=np.float64)
    if not np.all(np.isfinite(local)):
        raise InputError(f"--linear-field {path}: contains NaN or infinite values")
    return pm.r2c(local)
