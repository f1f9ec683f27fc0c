"""The differentiable CIC density of the optional density loss."""
import numpy as np
import torch
from mpi4py import MPI

from cosmonet.mesh import ParticleMesh
from cosmonet.train.losses import cic_density, displacement_loss


def test_cic_density_matches_the_mesh_paint():
    n, box = 8, 32.0
    disp = torch.randn(2, 3, n, n, n, dtype=torch.float64) * 3.0
    dens = cic_density(disp, box)
    pm = ParticleMesh(n, box, MPI.COMM_SELF, dtype=np.float64)
    g = np.arange(n) * box / n
    q = np.stack(np.meshgrid(g, g, g, indexing="ij"))
    for b in range(2):
        pos = np.mod(q + disp[b].numpy(), box).reshape(3, -1).T
        np.testing.assert_allclose(dens[b, 0].numpy(), pm.paint(pos) - 1.0, atol=1e-10)
    assert abs(float(dens.mean())) < 1e-12


def test_density_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    n, box, scale = 4, 16.0, 2.0
    target = torch.randn(1, 3, n, n, n, dtype=torch.float64)
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    loss = displacement_loss(pred, target, scale, box, density_weight=0.5)
    loss.backward()
    i = (0, 1, 2, 1, 3)
    h = 1e-6
    up, down = pred.detach().clone(), pred.detach().clone()
    up[i] += h
    down[i] -= h
    fd = (displacement_loss(up, target, scale, box, 0.5) - displacement_loss(down, target, scale, box, 0.5)) / (2 * h)
    assert abs(float(pred.grad[i]) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))
    # without the density term the loss is the plain MSE
    assert float(displacement_loss(pred, target, scale, box, 0.0)) == float(torch.mean((pred - target) ** 2))
