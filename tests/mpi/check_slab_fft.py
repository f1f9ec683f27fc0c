"""The multi-rank slab FFT against numpy, and the traced memory of a simulation; run as
``mpirun -np P python check_slab_fft.py OUT.npz [--memory]``.

For several mesh sizes (even, odd, uneven splits over P) and float32/float64, each rank
transforms its x-slab of one random field with :class:`cosmonet.mesh.fft.SlabFFT`;
rank 0 writes the largest forward error against numpy's float64 ``rfftn / N^3`` (relative
to the largest |mode|), the largest round-trip error (relative to the largest |value|),
and whether a second forward transform of the same input gave the same bits.
``--memory``: also the traced (tracemalloc: numpy) peak allocation of a fresh nc 32,
boost 2 simulation with all six outputs, per local particle, the maximum over ranks,
and the bytes of the force mesh's FFT buffers per local cell.
"""
import sys
import tracemalloc

import numpy as np
from mpi4py import MPI

from cosmonet.mesh import clear_mesh_cache
from cosmonet.mesh.fft import SlabFFT

comm = MPI.COMM_WORLD
SIZES = (9, 16, 30)
rows = []
for dtype in (np.float32, np.float64):
    for N in SIZES:
        full = np.random.default_rng(N).standard_normal((N, N, N))
        ref = np.fft.rfftn(full) / N ** 3
        f = SlabFFT(comm, N, dtype)
        f.fwd_in[...] = full[f.real_slice]
        f.forward()
        spec = f.fwd_out.copy()
        fwd = np.abs(spec - ref[f.complex_slice]).max() / np.abs(ref).max()
        f.fwd_in[...] = full[f.real_slice]
        f.forward()
        same = bool(np.array_equal(spec, f.fwd_out))
        f.backward()
        back = np.abs(f.bwd_out - full[f.real_slice]).max() / np.abs(full).max()
        rows.append((np.dtype(dtype).itemsize, N, comm.allreduce(fwd, op=MPI.MAX),
                     comm.allreduce(back, op=MPI.MAX), comm.allreduce(same, op=MPI.LAND)))
out = {"fft": np.array(rows, dtype=np.float64), "ranks": comm.size}

if "--memory" in sys.argv:
    from cosmonet.sim.simulation import SimConfig, run_simulation
    from cosmonet.mesh.pm import get_mesh
    run_simulation(SimConfig(nc=8, box=32.0, steps=1, seed=0), comm)     # numba, tables
    clear_mesh_cache(comm)
    cfg = SimConfig(nc=32, box=128.0, steps=2, boost=2, seed=3)
    tracemalloc.start()
    res = run_simulation(cfg, comm)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n_local = res.fields["fastpm/disp"][0].size
    out["traced_bytes_per_particle"] = comm.allreduce(peak / n_local, op=MPI.MAX)
    fft = get_mesh(cfg.force_nmesh, cfg.box, comm, dtype=np.float32).fft
    bufs = {id(a): a.nbytes for a in (fft.fwd_in, fft.fwd_out, fft.bwd_in, fft.bwd_out)}
    for name in ("_chunk", "_packed"):
        if hasattr(getattr(fft, "_slab", None), name):
            bufs[name] = getattr(fft._slab, name).nbytes
    out["fft_bytes_per_cell"] = comm.allreduce(sum(bufs.values()) / fft.fwd_in.size, op=MPI.MAX)
    clear_mesh_cache(comm)

if comm.rank == 0:
    np.savez(sys.argv[1], **out)
