"""Zel'dovich (1LPT) and second-order (2LPT) displacements for a batch of boxes.

The conventions of :mod:`cosmonet.sim.lpt`, with a leading batch axis: for delta_lin(k) at
a = 1 (D1(1) = 1),

    psi_1(k) = i k / k^2 delta_lin(k),    psi_2(k) = -i k / k^2 S(k),
    S = sum_{i<j} [phi_,ii phi_,jj - (phi_,ij)^2],   nabla^2 phi = delta_lin,

spectral derivatives with the Nyquist plane of the derivative's axis zeroed (the diagonal
second derivatives use k_i^2, as the MPI engine). Displacements in Mpc/h, (B, 3, N, N, N).
"""


def za_displacement(mesh, delta_k):
    """psi_1 (B, 3, N, N, N) in Mpc/h, for D1 = 1."""
    minus_phi_k = delta_k * mesh.to_device(mesh.inverse_laplacian())
    grad = mesh.stack([mesh.gradient_k(d) for d in range(3)])
    return mesh.c2r(1j * grad * minus_phi_k.unsqueeze(1))


def lpt2_source_k(mesh, delta_k):
    """S(k), (B, N, N, N//2+1): the transform of sum_{i<j} [phi_,ii phi_,jj - phi_,ij^2]."""
    minus_phi_k = delta_k * mesh.to_device(mesh.inverse_laplacian())
    k, g = mesh.k, mesh.gradient_k
    diag = mesh.c2r(mesh.stack([k[d] ** 2 for d in range(3)]) * minus_phi_k.unsqueeze(1))
    off = mesh.c2r(mesh.stack([g(i) * g(j) for i, j in ((0, 1), (0, 2), (1, 2))]) * minus_phi_k.unsqueeze(1))
    source = (diag[:, 0] * diag[:, 1] + diag[:, 0] * diag[:, 2] + diag[:, 1] * diag[:, 2]
              - (off * off).sum(dim=1))
    return mesh.r2c(source)


def lpt2_displacement(mesh, delta_k):
    """psi_2 (B, 3, N, N, N) in Mpc/h (multiply by D2)."""
    s_k = lpt2_source_k(mesh, delta_k) * mesh.to_device(mesh.inverse_laplacian())
    grad = mesh.stack([mesh.gradient_k(d) for d in range(3)])
    return mesh.c2r(-1j * grad * s_k.unsqueeze(1))
