"""A periodic N^3 mesh for a batch of boxes on one torch device.

Conventions as :class:`cosmonet.mesh.ParticleMesh` (pmesh / nbodykit): ``Nmesh`` cells of
``BoxSize / Nmesh`` Mpc/h per side, cell i at x = i H; fields carry a leading batch axis,
real fields ``(..., N, N, N)``, complex fields ``(..., N, N, N // 2 + 1)``; the forward
transform is normalised by 1/N^3 (so ``<|delta_k|^2> = P(k) / V``), the inverse is not,
and ``c2r(r2c(f)) == f``. The wavevectors are computed in float64 with numpy exactly as
the MPI mesh computes them, so kernels built from them are the MPI engine's kernels.
"""
import numpy as np
import torch

from ..errors import InputError
from .device_timing import device_timer

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class BatchMesh:
    """Wavevectors and batched FFTs of an ``Nmesh^3`` box of side ``BoxSize`` (Mpc/h).

    ``dtype`` is the real dtype of the fields (torch.float32 or torch.float64);
    ``timers`` (a :class:`cosmonet.timing.Timers` or None) collects the FFT time.
    """

    def __init__(self, Nmesh, BoxSize, device="cpu", dtype=torch.float32, timers=None):
        self.Nmesh = int(Nmesh)
        self.BoxSize = float(BoxSize)
        if self.Nmesh < 2:
            raise InputError(f"mesh needs at least 2 cells per side (got {Nmesh})")
        if not self.BoxSize > 0:
            raise InputError(f"box size must be > 0 Mpc/h (got {BoxSize})")
        if dtype not in _COMPLEX:
            raise ValueError(f"dtype must be torch.float32 or torch.float64 (got {dtype})")
        self.device = torch.device(device)
        self.dtype = dtype
        self.cdtype = _COMPLEX[dtype]
        self.timers = timers
        N = self.Nmesh
        kf = 2 * np.pi / self.BoxSize
        full = np.fft.fftfreq(N, 1.0 / N) * kf
        half = np.fft.rfftfreq(N, 1.0 / N) * kf
        #: k_x, k_y, k_z in h/Mpc (float64 numpy, broadcastable to the complex shape)
        self.k = [full.reshape(-1, 1, 1), full.reshape(1, -1, 1), half.reshape(1, 1, -1)]

    # ------------------------------------------------------------------ geometry
    @property
    def cell_size(self):
        """Mesh spacing in Mpc/h."""
        return self.BoxSize / self.Nmesh

    @property
    def k_nyquist(self):
        """pi Nmesh / BoxSize in h/Mpc."""
        return np.pi * self.Nmesh / self.BoxSize

    @property
    def shape(self):
        return (self.Nmesh,) * 3

    @property
    def complex_shape(self):
        return (self.Nmesh, self.Nmesh, self.Nmesh // 2 + 1)

    @property
    def k2(self):
        """|k|^2 in (h/Mpc)^2, float64 numpy of the complex shape."""
        return self.k[0] ** 2 + self.k[1] ** 2 + self.k[2] ** 2

    def inverse_laplacian(self):
        """1 / k^2 with the k = 0 mode set to 0 (float64 numpy): the exact inverse of
        -nabla^2, as the MPI engine's."""
        k2 = self.k2
        with np.errstate(divide="ignore"):
            return np.where(k2 > 0, 1.0 / k2, 0.0)

    def gradient_k(self, axis):
        """k_i of the spectral derivative, zero on the Nyquist plane of that axis
        (float64 numpy; as :meth:`cosmonet.mesh.ParticleMesh.gradient_k`)."""
        k = self.k[axis].copy()
        k[np.isclose(np.abs(k), self.k_nyquist)] = 0.0
        return k

    def to_device(self, array, complex_=False):
        """A numpy array as a tensor of this mesh's real (or complex) dtype on its device."""
        dtype = self.cdtype if complex_ else self.dtype
        return torch.as_tensor(np.asarray(array), device=self.device).to(dtype)

    def stack(self, arrays):
        """numpy arrays broadcastable to the complex shape, stacked into one (n, N, N, N//2+1)
        tensor of the real dtype on the device (a vector of Fourier kernels)."""
        return self.to_device(np.stack([np.broadcast_to(a, self.complex_shape) for a in arrays]))

    def lattice(self, n_side):
        """Lagrangian positions q of an ``n_side^3`` particle lattice in this box,
        (3, n_side^3) in Mpc/h, C order over (i, j, k) -- the particle order of every field."""
        g = torch.arange(n_side, dtype=torch.float64, device=self.device) * (self.BoxSize / n_side)
        q = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(3, -1)
        return q.to(self.dtype)

    # ------------------------------------------------------------------ transforms
    def r2c(self, real):
        """Forward FFT over the last three axes, normalised by 1/N^3."""
        with device_timer(self.timers, "fft", self.device):
            return torch.fft.rfftn(real, dim=(-3, -2, -1), norm="forward")

    def c2r(self, cplx):
        """Inverse FFT over the last three axes (no normalisation)."""
        with device_timer(self.timers, "fft", self.device):
            return torch.fft.irfftn(cplx, s=self.shape, dim=(-3, -2, -1), norm="forward")
