"""The MPI engine's white noise for a batch of seeds, on the host, optionally in processes.

:func:`cosmonet.sim.whitenoise.white_noise` seeds one PCG64 per x-plane, which costs
0.1 - 0.4 ms of Python per plane (measured on the development VM), holding the GIL: for
32^3 boxes that is milliseconds per box, more than a GPU needs to simulate one. With
``workers`` > 1 the seeds are drawn in that many spawned processes (a pool kept for the
life of the calling process; spawned, not forked, since the parent may hold a CUDA
context). This module imports only numpy and the noise function, so that the workers
start without torch or MPI.
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np

from ..sim.whitenoise import white_noise


def noise_chunk(nc, seeds):
    """White noise of ``seeds``, (len(seeds), nc, nc, nc) float64: ``white_noise`` of a
    one-rank mesh, which reads only the mesh's size and its x-planes [0, nc)."""
    grid = SimpleNamespace(Nmesh=int(nc), x0=0, x1=int(nc))
    return np.stack([white_noise(grid, s) for s in seeds])


_POOLS = {}


def _pool(workers):
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[workers]


def white_noise_batch(nc, seeds, workers=1):
    """Unit white noise of every seed, (B, nc, nc, nc) float64 numpy: for each seed the
    field the MPI engine draws, bit for bit, whatever ``workers``."""
    seeds = [int(s) for s in seeds]
    if workers > 1 and len(seeds) > 1:
        chunks = [seeds[i::workers] for i in range(workers) if seeds[i::workers]]
        parts = list(_pool(workers).map(noise_chunk, [nc] * len(chunks), chunks))
        out = np.empty((len(seeds), nc, nc, nc), dtype=np.float64)
        for i, part in enumerate(parts):
            out[i::workers] = part
        return out
    return noise_chunk(nc, seeds)
