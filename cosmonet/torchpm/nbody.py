"""FastPM kick-drift-kick (Feng et al. 2016) for a batch of boxes.

The scheme of :func:`cosmonet.sim.fastpm.run_fastpm`: steps uniform in a, kick and drift
factors from :class:`cosmonet.growth.Growth` (exact for linear growth), computed once on
the host in float64 for each box's cosmology and moved to the device before the loop,
which then never synchronises with the host. The state is the displacement x - q (not
wrapped; float32 keeps it to ~1e-6 Mpc/h where a position near L = 128 would keep only
~1e-5) and the momentum p = a^2 dx/dt / H0, both (B, 3, n) in Mpc/h; positions for the
force are (q + x - q) wrapped into [0, L).
"""
from dataclasses import dataclass

import numpy as np
import torch

from ..cosmology import growth_for
from ..sim.fastpm import time_steps


@dataclass
class BatchState:
    """Displacements and momenta (B, 3, n) Mpc/h of every box, at scale factor ``a``."""

    disp: torch.Tensor
    mom: torch.Tensor
    a: float


def kdk_coefficients(cosmologies, a_start, a_end, steps):
    """Per-box scalars of the KDK loop, (numpy float64): ``first`` (B,), the opening kick
    1.5 Omega_m kick_factor(a_0, a_0, a_1/2); ``drift`` (steps, B); ``closing`` (steps, B),
    the closing kick of step n merged with the opening kick of step n + 1 (they share
    F(a_{n+1})), each times 1.5 Omega_m -- exactly the MPI engine's factors."""
    a = time_steps(a_start, a_end, steps)
    a0, a1 = a[:-1], a[1:]
    ah = 0.5 * (a0 + a1)
    per = {}   # once per distinct cosmology (a batch usually has one)
    for cosmo in dict.fromkeys(cosmologies):
        g = growth_for(cosmo)
        c = 1.5 * cosmo.Omega_m
        fk = np.asarray(g.kick_factor(a0, a0, ah))
        sk = np.asarray(g.kick_factor(ah, a1, a1))
        per[cosmo] = (c * fk[0], np.asarray(g.drift_factor(a0, ah, a1)), c * (sk + np.append(fk[1:], 0.0)))
    rows = [per[c] for c in cosmologies]
    return (np.array([r[0] for r in rows]), np.stack([r[1] for r in rows], axis=1),
            np.stack([r[2] for r in rows], axis=1))


def run_fastpm(state, gravity, q, cosmologies, a_end, steps):
    """Evolve ``state`` in place from ``state.a`` to ``a_end`` in ``steps`` KDK steps.

    ``gravity``: a :class:`~cosmonet.torchpm.gravity.BatchGravity`; ``q`` (3, n) the
    Lagrangian positions; ``cosmologies``: one per box.
    """
    mesh = gravity.mesh
    first, drift, closing = (torch.as_tensor(x, dtype=mesh.dtype, device=mesh.device)
                             for x in kdk_coefficients(cosmologies, state.a, a_end, steps))

    state.mom.add_(first.view(-1, 1, 1) * gravity.force_at(q, state.disp))
    for n in range(steps):
        state.disp.add_(drift[n].view(-1, 1, 1) * state.mom)
        state.mom.add_(closing[n].view(-1, 1, 1) * gravity.force_at(q, state.disp))
    state.a = float(a_end)
    return state
