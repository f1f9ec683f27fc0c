"""Long-range particle-mesh gravity for a batch of boxes on one force mesh.

As :class:`cosmonet.sim.fastpm.GravitySolver`: the density contrast delta of the
particles (CIC, count per cell / mean count), then F(k) = i D(k) / k^2 delta(k) with the
exact inverse Laplacian and the gradient ``D`` of
:func:`cosmonet.sim.fastpm.gradient_wavenumber` (``"fd4"``, the 4-point finite
difference, by default), read out at the particles with CIC. The kernels are built in
float64 from the same wavevectors and cast to the mesh's complex dtype, as the MPI
engine's. One force costs one batched forward FFT and one batched inverse FFT of the 3
components.
"""
import torch

from ..sim.fastpm import gradient_wavenumber
from . import batch_cic as cic
from .device_timing import device_timer


class BatchGravity:
    """F at the particles of every box of a batch; ``mesh`` is a :class:`BatchMesh`."""

    def __init__(self, mesh, n_particles, gradient="fd4"):
        self.mesh = mesh
        self.nbar = n_particles / mesh.Nmesh ** 3
        inv_k2 = mesh.inverse_laplacian()
        kernels = [gradient_wavenumber(mesh.gradient_k(d), mesh.cell_size, gradient) * inv_k2 for d in range(3)]
        #: i D_d(k) / k^2, (3, N, N, N//2+1) complex
        self.kernels = 1j * mesh.stack(kernels).to(mesh.cdtype)
        self._rho = None

    def force(self, pos):
        """F (B, 3, n) at particle positions ``pos`` (B, 3, n) in [0, L), Mpc/h."""
        mesh = self.mesh
        timers, dev = mesh.timers, mesh.device
        with device_timer(timers, "paint", dev):
            stencil = cic.Stencil(pos, mesh.Nmesh, mesh.BoxSize)
            if self._rho is None or self._rho.shape[0] != pos.shape[0]:
                self._rho = torch.empty(pos.shape[0], mesh.Nmesh ** 3, dtype=mesh.dtype, device=dev)
            rho = cic.paint(stencil, out=self._rho)
        delta_k = mesh.r2c(rho) * (1.0 / self.nbar)
        forces = mesh.c2r(self.kernels * delta_k.unsqueeze(1))
        with device_timer(timers, "readout", dev):
            return cic.readout(stencil, forces)
