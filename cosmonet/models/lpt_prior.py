"""The second-order (2LPT) displacement computed from a Zel'dovich displacement field, in torch.

The emulator's input is the ZA displacement ``u = D1 psi_1`` on the particle grid. The
2LPT correction is a fixed, cheap, quadratic function of it (``cosmonet.sim.lpt``):

    u_2(k) = C * (-i g / g^2) S(k),   S = sum_{i<j} [u_i,i u_j,j - u_i,j u_j,i],

with derivatives taken spectrally in *grid units* (``g = 2 pi m / n`` radians per cell,
zero on the Nyquist plane of its own axis, as the engine does) and ``u`` in the network's
units (Mpc/h divided by ``data.scale``). Since ``u_i,j = -D1 phi_,ij`` this is the engine's
``D2 psi_2`` when

    C = (D2 / D1^2)(a_final) * scale / cell,     cell = box / nc  (Mpc/h per cell),

about -3/7 x 6 / 4 = -0.64 for the D3M set-up (128 Mpc/h, 32^3, scale 6). It is exact on
any input (a rotated, phase-shifted or rescaled ZA field gets its own 2LPT term), commutes
with periodic translations and the cube's symmetries, and vanishes for a zero input.
Computed in float32 with autocast off (FFTs have no bfloat16 kernels on CPU).
"""
from __future__ import annotations

import math

import torch


def lpt2_coefficient(cosmology, a_final, box, nc, scale):
    """``C`` of the module docstring for a campaign: (D2/D1^2)(a_final) * scale / (box / nc)."""
    from ..cosmology import growth_for
    growth = growth_for(cosmology)
    ratio = float(growth.D2(a_final)) / float(growth.D1(a_final)) ** 2
    return ratio * float(scale) / (float(box) / int(nc))


def _wavenumbers(shape, device):
    """``(g, k2)`` of an rfftn over the last three axes: the derivative wavenumbers ``g``
    (radians per cell, each zero on its own Nyquist plane, broadcastable to
    (n0, n1, n2 // 2 + 1)) and ``k2``, the squared wavenumber with the Nyquist modes kept
    (the engine's inverse Laplacian)."""
    g, k2 = [], 0.0
    for axis, n in enumerate(shape):
        k = 2 * math.pi * (torch.fft.rfftfreq(n, device=device) if axis == 2 else torch.fft.fftfreq(n, device=device))
        view = [1, 1, 1]
        view[axis] = -1
        k = k.reshape(view)
        k2 = k2 + k ** 2
        g.append(torch.where(torch.isclose(k.abs(), torch.tensor(math.pi, device=device)), torch.zeros_like(k), k))
    return g, k2


def second_order_displacement(u, coefficient):
    """The 2LPT correction ``u_2`` (same shape and units as ``u``) of a ZA displacement
    ``u`` of shape (N, 3, n0, n1, n2), float32; see the module docstring."""
    if u.dim() != 5 or u.shape[1] != 3:
        raise ValueError(f"second_order_displacement: expected (N, 3, n, n, n), got {tuple(u.shape)}")
    shape = tuple(u.shape[2:])
    with torch.autocast(u.device.type, enabled=False):
        u = u.float()
        uk = torch.fft.rfftn(u, dim=(-3, -2, -1))
        g, k2 = _wavenumbers(shape, u.device)
        # d_j u_i in real space: (N, 3, 3, n0, n1, n2), index [i][j]
        grad = [[torch.fft.irfftn(1j * g[j] * uk[:, i], s=shape, dim=(-3, -2, -1)) for j in range(3)]
                for i in range(3)]
        source = torch.zeros_like(u[:, 0])
        for i, j in ((0, 1), (0, 2), (1, 2)):
            source = source + grad[i][i] * grad[j][j] - grad[i][j] * grad[j][i]
        sk = torch.fft.rfftn(source, dim=(-3, -2, -1))
        inv = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
        out = [torch.fft.irfftn(-1j * g[d] * inv * sk, s=shape, dim=(-3, -2, -1)) for d in range(3)]
        return float(coefficient) * torch.stack(out, dim=1)
