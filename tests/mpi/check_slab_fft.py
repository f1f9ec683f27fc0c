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

# the same checks with the 1-D transforms along x in blocks of y-rows (slabs above
# XBLOCK_MIN_BYTES): thresholds lowered so that N = 30 takes blocks of 4 rows (and a
# remainder block of fewer rows)
from cosmonet.mesh import fft as fft_module, slab as slab_module
saved = slab_module.XBLOCK_MIN_BYTES, slab_module.XBLOCK_BYTES
blocked = []
for dtype in (np.float32, np.float64):
    N = 30
    csize = np.result_type(dtype, np.complex64).itemsize
    slab_module.XBLOCK_MIN_BYTES, slab_module.XBLOCK_BYTES = 0, 4 * N * (N // 2 + 1) * csize
    fft_module.clear_cache(comm)
    full = np.random.default_rng(N).standard_normal((N, N, N))
    ref = np.fft.rfftn(full) / N ** 3
    f = SlabFFT(comm, N, dtype)
    by = f._slab._along_x.by
    f.fwd_in[...] = full[f.real_slice]
    f.forward()
    fwd = np.abs(f.fwd_out - ref[f.complex_slice]).max() / np.abs(ref).max()
    f.backward()
    back = np.abs(f.bwd_out - full[f.real_slice]).max() / np.abs(full).max()
    blocked.append((csize // 2, N, comm.allreduce(fwd, op=MPI.MAX), comm.allreduce(back, op=MPI.MAX),
                    comm.allreduce(by, op=MPI.MIN)))
slab_module.XBLOCK_MIN_BYTES, slab_module.XBLOCK_BYTES = saved
fft_module.clear_cache(comm)
out["fft_blocked"] = np.array(blocked, dtype=np.float64)

# a rank without particles: paint, readout and the force (positions and lattice state)
# match one rank's to round-off
from cosmonet.mesh import ParticleMesh
from cosmonet.sim.fastpm import GravitySolver, ParticleState
nc, L = 6, 20.0
rng = np.random.default_rng(3)
disp_all = rng.normal(0.0, 1.5, (nc ** 3, 3)).astype(np.float32)
pos_all = rng.uniform(0.0, L, (200, 3))
mine = comm.rank == 0
pm, pm1 = ParticleMesh(12, L, comm), ParticleMesh(12, L, MPI.COMM_SELF)
rho = pm.paint(pos_all if mine else pos_all[:0])
state = ParticleState(disp=disp_all if mine else disp_all[:0], mom=np.zeros((nc ** 3 if mine else 0, 3)),
                      a=0.5, lattice=(nc, 0, L))
forces = (GravitySolver(pm, 200).force(pos_all if mine else pos_all[:0]),
          GravitySolver(pm, nc ** 3).force_state(state))
full = pm.gather_real(rho)
if comm.rank == 0:
    ref = (GravitySolver(pm1, 200).force(pos_all),
           GravitySolver(pm1, nc ** 3).force_state(ParticleState(disp=disp_all, mom=np.zeros((nc ** 3, 3)),
                                                                 a=0.5, lattice=(nc, 0, L))))
    out["empty_rank_paint"] = np.abs(full - pm1.paint(pos_all)).max()
    out["empty_rank_force"] = max(np.abs(f - r).max() / np.abs(r).max() for f, r in zip(forces, ref))
else:
    assert forces[0].shape == (0, 3) and forces[1].shape == (0, 3)

# routing lattice particles whose global index exceeds int32 (nc^3 > 2^31: float64
# positions are routed): each owned row is its particle's lattice point plus displacement
nc_big, n_big = 2048, 64
start = 2 ** 32 + 12345 + comm.rank * n_big
disp_big = rng.normal(0.0, 1.5, (n_big, 3)).astype(np.float32)
layout, routed, index = pm.route_lattice(disp_big, nc_big, start)
g = start + np.arange(n_big, dtype=np.int64)
q = np.stack([g // nc_big ** 2, (g // nc_big) % nc_big, g % nc_big], axis=1) * (L / nc_big)
expected = layout.exchange(q + disp_big.astype(np.float64))
out["big_index_route"] = comm.allreduce(float(np.abs(routed - expected).max()) if len(routed) else 0.0,
                                        op=MPI.MAX)
out["big_index_none"] = comm.allreduce(index is None, op=MPI.LAND)

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
