"""Gaussian white noise that is the same field whatever the number of ranks.

Each x-plane of the mesh draws from its own generator seeded by ``(seed, plane)``, so a
rank produces exactly its planes of the global field: 1, 2 or 4 ranks (or any
``ranks_per_sim``) give identical noise, bit for bit.
"""
import numpy as np


def white_noise(pm, seed):
    """Unit-variance Gaussian white noise on the local real slab of ``pm`` (float64)."""
    N = pm.Nmesh
    out = np.empty((pm.x1 - pm.x0, N, N), dtype=np.float64)
    for i, plane in enumerate(range(pm.x0, pm.x1)):
        rng = np.random.Generator(np.random.PCG64([int(seed), plane]))
        out[i] = rng.standard_normal((N, N))
    return out
