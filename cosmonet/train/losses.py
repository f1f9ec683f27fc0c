"""Training losses: MSE on displacement (or each sample's MSE relative to its own mean
square, ``train.loss: relative``), optionally plus a density term.

The density term paints the particles at q + psi with a differentiable cloud-in-cell
(CIC) assignment on the particles' own nc^3 grid and compares the density contrasts of
prediction and truth (MSE). The gradient flows through the CIC weights (the fractional
positions), as in a particle-mesh code's adjoint.
"""
import torch


def cic_density(disp, box):
    """CIC density contrast (B, 1, n, n, n) of particles displaced by ``disp`` (B, 3, n, n, n).

    ``disp`` in Mpc/h; particle (i, j, k) starts at q = (i, j, k) box / n; periodic box.
    Matches :meth:`cosmonet.mesh.ParticleMesh.paint` (divided by the mean, minus 1).
    """
    B, _, n = disp.shape[:3]
    cell = box / n
    idx = torch.arange(n, dtype=disp.dtype, device=disp.device)
    q = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"))          # (3, n, n, n)
    pos = torch.remainder(q[None] + disp / cell, n).reshape(B, 3, -1)     # cell units
    i0 = torch.floor(pos)
    frac = pos - i0
    i0 = i0.long()
    out = torch.zeros(B, n ** 3, dtype=disp.dtype, device=disp.device)
    for ox in (0, 1):
        wx = frac[:, 0] if ox else 1 - frac[:, 0]
        ix = (i0[:, 0] + ox) % n
        for oy in (0, 1):
            wy = frac[:, 1] if oy else 1 - frac[:, 1]
            iy = (i0[:, 1] + oy) % n
            for oz in (0, 1):
                wz = frac[:, 2] if oz else 1 - frac[:, 2]
                iz = (i0[:, 2] + oz) % n
                out = out.scatter_add(1, (ix * n + iy) * n + iz, wx * wy * wz)
    return (out - 1.0).reshape(B, 1, n, n, n)


def relative_mse(pred, target):
    """Mean over the batch of each sample's MSE divided by the mean square of its target
    (dimensionless). Plain MSE weights a box by the square of its displacements, so on
    pairs of several amplitudes the low-amplitude boxes (A_s x 0.1: a tenth of the
    fiducial power) hardly count; this weights every box by its relative error, the
    quantity ``evaluate`` reports."""
    dims = tuple(range(1, target.dim()))
    err = torch.mean((pred - target) ** 2, dim=dims)
    norm = torch.mean(target ** 2, dim=dims).clamp_min(torch.finfo(target.dtype).tiny)
    return torch.mean(err / norm)


def displacement_loss(pred, target, scale, box, density_weight=0.0, relative=False):
    """MSE of the (normalised) displacements (:func:`relative_mse` with ``relative``), plus
    ``density_weight`` x MSE of the CIC density contrasts of q + scale * pred and
    q + scale * target."""
    loss = relative_mse(pred, target) if relative else torch.mean((pred - target) ** 2)
    if density_weight > 0:
        d_pred = cic_density(pred * scale, box)
        d_true = cic_density(target * scale, box)
        loss = loss + density_weight * torch.mean((d_pred - d_true) ** 2)
    return loss
