"""Long-range particle-mesh gravity for a batch of boxes on one force mesh.

As :class:`cosmonet.sim.fastpm.GravitySolver`: the density contrast delta of the
particles (CIC, count per cell / mean count), then F(k) = i D(k) / k^2 delta(k) with the
exact inverse Laplacian and the gradient ``D`` of
:func:`cosmonet.sim.fastpm.gradient_wavenumber` (``"fd4"``, the 4-point finite
difference, by default), read out at the particles with CIC. With the default FD4 gradient, as in the MPI
engine, the gradient is taken in real space on the potential: one force costs one batched
forward FFT and one batched inverse FFT of one component (not three).

Memory per box of the batch (N^3 float32 cells = 4 N^3 bytes, one "mesh"): the stencil
(48 bytes per particle), then at most three meshes at a time -- the density and its
transform during the forward FFT; the potential's transform, torch's copy of it (a c2r
transform overwrites its input) and the potential during the inverse FFT; the potential,
one gradient component and one difference during the gradient. (Torch's batched inverse
FFT on the CPU makes two more copies: ``run_batch`` passes one box at a time there.)
"""
import torch

from ..sim.fastpm import gradient_wavenumber
from . import batch_cic as cic
from .device_timing import device_timer


def periodic_difference(field, dim, shift, out):
    """``out[i] = field[i + shift] - field[i - shift]`` along ``dim``, periodically, written
    into ``out`` (same shape) without temporaries -- ``torch.roll(field, -shift, dim) -
    torch.roll(field, shift, dim)`` bit for bit (which it uses when ``2 shift > N``)."""
    N = field.shape[dim]
    s = int(shift)
    if 2 * s > N:
        return out.copy_(torch.roll(field, -s, dim) - torch.roll(field, s, dim))

    def sub(lo, n, plus, minus):   # out[lo:lo+n] = field[plus:plus+n] - field[minus:minus+n]
        if n > 0:
            torch.sub(field.narrow(dim, plus, n), field.narrow(dim, minus, n), out=out.narrow(dim, lo, n))

    sub(0, s, s, N - s)                 # i < s: i - s wraps
    sub(s, N - 2 * s, 2 * s, 0)         # no wrap
    sub(N - s, s, 0, N - 2 * s)         # i >= N - s: i + s wraps
    return out


class BatchGravity:
    """F at the particles of every box of a batch; ``mesh`` is a :class:`BatchMesh`.

    ``gradient="fd4"`` (default): the potential delta(k) / k^2 is brought to the mesh by
    ONE batched inverse FFT and differentiated in real space with the 4-point stencil
    (8 (phi[i+1] - phi[i-1]) - (phi[i+2] - phi[i-2])) / 12H (periodic differences written
    in place), whose transform is the k-space FD4 kernel; each component is read out
    before the next is formed. ``"fd2"``/``"exact"``: three k-space kernels, three inverse
    FFTs. The one stored kernel is 1 / (nbar k^2) (exact inverse Laplacian, 0 at k = 0),
    computed in float64 and kept in the mesh's dtype: N^2 (N/2+1) values shared by the batch.
    """

    def __init__(self, mesh, n_particles, gradient="fd4"):
        self.mesh = mesh
        self.gradient = gradient
        self.nbar = n_particles / mesh.Nmesh ** 3
        gradient_wavenumber(mesh.k[0], mesh.cell_size, gradient)      # validates ``gradient``
        dev = mesh.device
        kx, ky, kz = (torch.as_tensor(k, dtype=torch.float64, device=dev) for k in mesh.k)
        k2 = kx * kx + ky * ky + kz * kz
        inv = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
        self._inverse_k2 = (inv * (1.0 / self.nbar)).to(mesh.dtype)

    def force(self, pos):
        """F (B, 3, n) at particle positions ``pos`` (B, 3, n) in [0, L), Mpc/h."""
        with device_timer(self.mesh.timers, "paint", self.mesh.device):
            stencil = cic.Stencil(pos, self.mesh.Nmesh, self.mesh.BoxSize)
        return self._force(stencil)

    def force_at(self, q, disp):
        """F (B, 3, n) at the particles q + disp (q (3, n), disp (B, 3, n), Mpc/h), wrapped
        into [0, L) here; the positions are dropped once the stencil is built."""
        mesh = self.mesh
        with device_timer(mesh.timers, "paint", mesh.device):
            pos = torch.add(q, disp)
            wrap_positions(pos, mesh.BoxSize)
            stencil = cic.Stencil(pos, mesh.Nmesh, mesh.BoxSize)
            del pos
        return self._force(stencil)

    def _force(self, stencil):
        mesh = self.mesh
        timers, dev = mesh.timers, mesh.device
        B, n, N = stencil.B, stencil.n, mesh.Nmesh
        with device_timer(timers, "paint", dev):
            rho = cic.paint(stencil, out=torch.empty(B, N ** 3, dtype=mesh.dtype, device=dev))
        psi_k = mesh.r2c(rho)
        del rho
        psi_k *= self._inverse_k2
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
        out = torch.empty(B, 3, n, dtype=mesh.dtype, device=dev)
        g = torch.empty_like(psi)
        far = torch.empty_like(psi)
        with device_timer(timers, "readout", dev):
            for d in range(3):
                dim = d + 1
                periodic_difference(psi, dim, 1, g)
                g *= c1
                periodic_difference(psi, dim, 2, far)
                far *= c2
                g -= far
                out[:, d] = cic.readout(stencil, g.unsqueeze(1))[:, 0]
        return out


def wrap_positions(x, box):
    """Wrap positions ``x`` (Mpc/h) into [0, box) in place: the remainder, with a value
    that rounds up to ``box`` set to 0."""
    torch.remainder(x, box, out=x)
    return x.masked_fill_(x >= box, 0.0)
