"""Lagrangian perturbation theory: Zel'dovich (1LPT) and second order (2LPT).

With delta_lin the linear density at a = 1 (D1(1) = 1), a particle at Lagrangian
position q moves to

    x(q, a) = q + D1(a) psi_1(q) + D2(a) psi_2(q),

    psi_1(k) = i k / k^2 delta_lin(k)                    (so div psi_1 = -delta_lin)
    psi_2(k) = -i k / k^2 S(k),   S = sum_{i<j} [phi_,ii phi_,jj - (phi_,ij)^2]

where phi is the potential with nabla^2 phi = delta_lin and D2 ~ -3/7 D1^2 (see
:mod:`cosmonet.growth`). Displacements are in Mpc/h. The momentum used by FastPM is
p = a^2 dx/dt / H0 = a^2 E(a) [D1 f1 psi_1 + D2 f2 psi_2] (Mpc/h).
"""
import numpy as np

from ..extras import numba   # without numba: the numpy kernels of cosmonet/numpy_kernels.py


@numba.njit(cache=True, nogil=True, inline="always")
def _remainder(x, b):
    """``np.mod(x, b)`` for floats, bit for bit (numpy's ``npy_divmod``): fmod (exact)
    moved to the sign of ``b``, +0 or -0 (the sign of ``b``) for a zero remainder."""
    mod = np.fmod(x, b)
    if b == 0.0:
        return mod
    if mod != 0.0:
        if (b < 0.0) != (mod < 0.0):
            mod += b
    else:
        mod = np.copysign(0.0, b)
    return mod


@numba.njit(cache=True, nogil=True, inline="always")
def _near_remainder(x, b):
    """:func:`_remainder` for ``b > 0`` and ``-b <= x < 2b`` without fmod (exact: ``x - b``
    is exact there, Sterbenz), else NaN for the caller to redo with :func:`_remainder`.
    (An fmod in the loop, even on an untaken branch, is executed by the compiled code
    for every element: 30x slower.)"""
    if x > 0.0:
        if x < b:
            return x
        if x < 2.0 * b:
            return x - b
        return np.nan
    if x == 0.0:
        return 0.0
    if x >= -b:
        return x + b
    return np.nan


@numba.njit(cache=True, nogil=True, inline="always")
def _combined(p1, p2, i, c1, c2, factor, use_p2, use_factor):
    f = c1 * np.float64(p1[i])
    if use_p2:
        f = f + c2 * np.float64(p2[i])
    if use_factor:
        f = factor * f
    return f


@numba.njit(cache=True, nogil=True)
def combine_into(p1, p2, c1, c2, factor, box, use_p2, use_factor, wrap, out):
    """``out[i] = float32(w(factor * (c1 p1[i] + c2 p2[i])))`` over 1-D arrays, in float64:
    the ``c2`` term only when ``use_p2``, ``factor`` only when ``use_factor``, and ``w`` the
    minimum image ``mod(f + box/2, box) - box/2`` (``np.mod`` semantics) only when ``wrap``.
    The arithmetic of the numpy expressions it replaces, one element at a time (Mpc/h or
    km/s, as the inputs)."""
    h = 0.5 * box
    near = box > 0.0
    rare = not near
    for i in range(p1.shape[0]):
        f = _combined(p1, p2, i, c1, c2, factor, use_p2, use_factor)
        if wrap:
            r = _near_remainder(f + h, box)
            rare |= r != r
            f = r - h
        out[i] = f
    if wrap and rare:                        # far outside the box, NaN, inf, box <= 0: fmod
        for i in range(p1.shape[0]):
            x = _combined(p1, p2, i, c1, c2, factor, use_p2, use_factor) + h
            r = _near_remainder(x, box)
            if not near or r != r:
                out[i] = _remainder(x, box) - h


def _minus_phi_k(pm, delta_k):
    """delta(k) / k^2 (= -phi(k), 0 at k = 0), a new array; k^2 from 1-D factors."""
    from .fastpm import scale_by_inverse_k2
    out = np.array(delta_k, dtype=np.result_type(delta_k.dtype, np.complex64), copy=True)
    kx, ky, kz = (np.ascontiguousarray(np.asarray(k, dtype=np.float64).ravel()) for k in pm.k)
    scale_by_inverse_k2(out, kx, ky, kz, 1.0)
    return out


def _gradient(pm, potential_k, sign):
    """sign * i k_d potential(k) brought to the real slab, (3, nx, N, N): three inverse
    FFTs with a 1-D kernel each (no full-size temporaries)."""
    out = np.empty((3,) + pm.real_shape, dtype=pm.dtype)
    for d in range(3):
        pm.c2r(potential_k, out=out[d], kernel=sign * 1j * pm.gradient_k(d))
    return out


def za_displacement(pm, delta_k):
    """psi_1 on the local real slab, shape (3, nx, N, N), Mpc/h, for D1 = 1."""
    return _gradient(pm, _minus_phi_k(pm, delta_k), 1.0)


def lpt2_source_k(pm, delta_k):
    """S(k): Fourier transform of sum_{i<j} [phi_,ii phi_,jj - phi_,ij^2]."""
    minus_phi_k = _minus_phi_k(pm, delta_k)
    # phi_,ij(k) = -k_i k_j phi(k) = k_i k_j * minus_phi_k
    diag = np.empty((3,) + pm.real_shape, dtype=pm.dtype)
    for d in range(3):
        pm.c2r(minus_phi_k, out=diag[d], kernel=pm.k[d] ** 2)
    source = diag[0] * diag[1]
    source += diag[0] * diag[2]
    source += diag[1] * diag[2]
    off = diag[0]                      # reused as scratch once the products are formed
    del diag
    for i, j in ((0, 1), (0, 2), (1, 2)):
        pm.c2r(minus_phi_k, out=off, kernel=pm.gradient_k(i) * pm.gradient_k(j))
        source -= off * off
    return pm.r2c(source)


def lpt2_displacement(pm, delta_k):
    """psi_2 on the local real slab, shape (3, nx, N, N), Mpc/h (multiply by D2)."""
    s_k = lpt2_source_k(pm, delta_k)
    kx, ky, kz = (np.ascontiguousarray(np.asarray(k, dtype=np.float64).ravel()) for k in pm.k)
    from .fastpm import scale_by_inverse_k2
    scale_by_inverse_k2(s_k, kx, ky, kz, 1.0)
    return _gradient(pm, s_k, -1.0)


def lpt_displacement(psi1, psi2, growth, a):
    """x - q at scale factor ``a``: D1 psi_1 (+ D2 psi_2 when ``psi2`` is given)."""
    disp = growth.D1(a) * psi1
    if psi2 is not None:
        disp = disp + growth.D2(a) * psi2
    return disp


def lpt_momentum(psi1, psi2, growth, cosmo, a):
    """FastPM momentum p = a^2 E(a) [D1 f1 psi_1 + D2 f2 psi_2] in Mpc/h (H0 = 1 units)."""
    p = growth.D1(a) * growth.f1(a) * psi1
    if psi2 is not None:
        p = p + growth.D2(a) * growth.f2(a) * psi2
    return a ** 2 * cosmo.E(a) * p
