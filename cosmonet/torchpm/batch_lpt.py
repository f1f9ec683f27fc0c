"""Zel'dovich (1LPT) and second-order (2LPT) displacements for a batch of boxes.

The conventions of :mod:`cosmonet.sim.lpt`, with a leading batch axis: for delta_lin(k) at
a = 1 (D1(1) = 1),

    psi_1(k) = i k / k^2 delta_lin(k),    psi_2(k) = -i k / k^2 S(k),
    S = sum_{i<j} [phi_,ii phi_,jj - (phi_,ij)^2],   nabla^2 phi = delta_lin,

spectral derivatives with the Nyquist plane of the derivative's axis zeroed (the diagonal
second derivatives use k_i^2, as the MPI engine). Displacements in Mpc/h, (B, 3, N, N, N).

Every derivative is transformed one component at a time (a complex and a real mesh per
box at a time, plus the three diagonal second derivatives while S is formed); the
arithmetic is that of the whole-vector form, element for element.
"""
import torch


def _minus_phi_k(mesh, delta_k):
    return delta_k * mesh.to_device(mesh.inverse_laplacian())


def _gradient(mesh, field_k, factor):
    """c2r(factor i k_d field_k) for d = 0, 1, 2, into one (B, 3, N, N, N) tensor."""
    out = torch.empty((field_k.shape[0], 3) + mesh.shape, dtype=mesh.dtype, device=mesh.device)
    for d in range(3):
        kernel = factor * mesh.stack([mesh.gradient_k(d)])[0]
        out[:, d] = mesh.c2r(kernel * field_k)
    return out


def za_displacement(mesh, delta_k):
    """psi_1 (B, 3, N, N, N) in Mpc/h, for D1 = 1."""
    return _gradient(mesh, _minus_phi_k(mesh, delta_k), 1j)


def lpt2_source_k(mesh, delta_k):
    """S(k), (B, N, N, N//2+1): the transform of sum_{i<j} [phi_,ii phi_,jj - phi_,ij^2]."""
    minus_phi_k = _minus_phi_k(mesh, delta_k)
    k, g = mesh.k, mesh.gradient_k

    def second(kernel):
        return mesh.c2r(mesh.stack([kernel])[0] * minus_phi_k)

    xx, yy, zz = (second(k[d] ** 2) for d in range(3))
    source = xx * yy
    source += xx * zz
    source += yy * zz
    del xx, yy, zz
    off = None
    for i, j in ((0, 1), (0, 2), (1, 2)):
        phi_ij = second(g(i) * g(j))
        phi_ij *= phi_ij
        off = phi_ij if off is None else off.add_(phi_ij)
        del phi_ij
    source -= off
    del off, minus_phi_k
    return mesh.r2c(source)


def lpt2_displacement(mesh, delta_k):
    """psi_2 (B, 3, N, N, N) in Mpc/h (multiply by D2)."""
    s_k = lpt2_source_k(mesh, delta_k)
    s_k *= mesh.to_device(mesh.inverse_laplacian())
    return _gradient(mesh, s_k, -1j)
