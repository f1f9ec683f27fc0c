"""Long-range particle-mesh gravity for a batch of boxes on one force mesh.

As :class:`cosmonet.sim.fastpm.GravitySolver`: the density contrast delta of the
particles (CIC, count per cell / mean count), then F(k) = i D(k) / k^2 delta(k) with the
exact inverse Laplacian and the gradient ``D`` of
:func:`cosmonet.sim.fastpm.gradient_wavenumber` (``"fd4"``, the 4-point finite
difference, by default), read out at the particles with CIC. With the default FD4 gradient, as in the MPI
engine, the gradient is taken in real space on the potential: one force costs one batched
forward FFT and one batched inverse FFT of one component (not three).
"""
import torch

from ..sim.fastpm import gradient_wavenumber
from . import batch_cic as cic
from .device_timing import device_timer


class BatchGravity:
    """F at the particles of every box of a batch; ``mesh`` is a :class:`BatchMesh`.

    ``gradient="fd4"`` (default): the potential delta(k) / k^2 is brought to the mesh by
    ONE batched inverse FFT and differentiated in real space with the 4-point stencil
    (8 (phi[i+1] - phi[i-1]) - (phi[i+2] - phi[i-2])) / 12H (periodic rolls), whose
    transform is the k-space FD4 kernel; each component is read out and dropped before
    the next is formed. ``"fd2"``/``"exact"``: three k-space kernels, three inverse FFTs.
    Only 1-D wavevectors are kept; 1 / k^2 is formed on the fly (float64, then the
    mesh's dtype), so the solver keeps no full-size kernel.
    """

    def __init__(self, mesh, n_particles, gradient="fd4"):
        self.mesh = mesh
        self.gradient = gradient
        self.nbar = n_particles / mesh.Nmesh ** 3
        gradient_wavenumber(mesh.k[0], mesh.cell_size, gradient)      # validates ``gradient``
        dev = mesh.device
        self._k1 = [torch.as_tensor(k, dtype=torch.float64, device=dev) for k in mesh.k]
        self._rho = None

    def _inverse_k2(self):
        """(N, N, N//2+1) tensor 1 / (nbar k^2), 0 at k = 0, in the mesh's real dtype."""
        kx, ky, kz = self._k1
        k2 = kx * kx + ky * ky + kz * kz
        inv = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
        return (inv * (1.0 / self.nbar)).to(self.mesh.dtype)

    def force(self, pos):
        """F (B, 3, n) at particle positions ``pos`` (B, 3, n) in [0, L), Mpc/h."""
        mesh = self.mesh
        timers, dev = mesh.timers, mesh.device
        with device_timer(timers, "paint", dev):
            stencil = cic.Stencil(pos, mesh.Nmesh, mesh.BoxSize)
            if self._rho is None or self._rho.shape[0] != pos.shape[0]:
                self._rho = torch.empty(pos.shape[0], mesh.Nmesh ** 3, dtype=mesh.dtype, device=dev)
            rho = cic.paint(stencil, out=self._rho)
        psi_k = mesh.r2c(rho)
        psi_k *= self._inverse_k2()
        if self.gradient != "fd4":
            kernels = [gradient_wavenumber(mesh.gradient_k(d), mesh.cell_size, self.gradient) for d in range(3)]
            kernels = 1j * mesh.stack(kernels).to(mesh.cdtype)
            forces = mesh.c2r(kernels * psi_k.unsqueeze(1))
            with device_timer(timers, "readout", dev):
                return cic.readout(stencil, forces)
        psi = mesh.c2r(psi_k)
        del psi_k
        c1 = 8.0 / (12.0 * mesh.cell_size)
        c2 = 1.0 / (12.0 * mesh.cell_size)
        out = torch.empty(pos.shape, dtype=mesh.dtype, device=dev)
        with device_timer(timers, "readout", dev):
            for d in range(3):
                dim = d + 1
                g = torch.roll(psi, -1, dim) - torch.roll(psi, 1, dim)
                g *= c1
                g -= c2 * (torch.roll(psi, -2, dim) - torch.roll(psi, 2, dim))
                out[:, d] = cic.readout(stencil, g.unsqueeze(1))[:, 0]
                del g
        return out
