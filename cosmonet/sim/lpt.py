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


def _inverse_laplacian(pm):
    k2 = pm.k2
    with np.errstate(divide="ignore"):
        return np.where(k2 > 0, 1.0 / k2, 0.0)


def za_displacement(pm, delta_k):
    """psi_1 on the local real slab, shape (3, nx, N, N), Mpc/h, for D1 = 1."""
    phi_k = delta_k * _inverse_laplacian(pm)          # = -phi(k)
    return np.stack([pm.c2r(1j * pm.gradient_k(d) * phi_k) for d in range(3)])


def lpt2_source_k(pm, delta_k):
    """S(k): Fourier transform of sum_{i<j} [phi_,ii phi_,jj - phi_,ij^2]."""
    minus_phi_k = delta_k * _inverse_laplacian(pm)
    # phi_,ij(k) = -k_i k_j phi(k) = k_i k_j * minus_phi_k
    diag = [pm.c2r(pm.k[d] ** 2 * minus_phi_k) for d in range(3)]
    source = diag[0] * diag[1] + diag[0] * diag[2] + diag[1] * diag[2]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        off = pm.c2r(pm.gradient_k(i) * pm.gradient_k(j) * minus_phi_k)
        source -= off * off
    return pm.r2c(source)


def lpt2_displacement(pm, delta_k):
    """psi_2 on the local real slab, shape (3, nx, N, N), Mpc/h (multiply by D2)."""
    s_k = lpt2_source_k(pm, delta_k) * _inverse_laplacian(pm)
    return np.stack([pm.c2r(-1j * pm.gradient_k(d) * s_k) for d in range(3)])


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
