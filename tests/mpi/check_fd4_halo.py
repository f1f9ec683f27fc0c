"""The real-space FD4 force on several ranks, including slabs one plane thick; run as
``mpirun -np N python check_fd4_halo.py OUT.npz``.

Each rank computes the force at its share of 3000 particles with the default (one
inverse FFT, real-space gradient, halo exchange) solver on a 6^3 float64 mesh split over
the ranks (4 ranks: slabs of 2, 2, 1, 1 planes), and with the k-space FD4 kernel on its
own one-rank mesh and on the split mesh; rank 0 writes all three, gathered in the global particle order.
"""
import sys

import numpy as np
from mpi4py import MPI

from cosmonet.mesh import ParticleMesh
from cosmonet.sim.fastpm import GravitySolver

comm = MPI.COMM_WORLD
rng = np.random.default_rng(5)
pos_all = rng.uniform(0, 50.0, (3000, 3))
mine = np.arange(3000) % comm.size == comm.rank
pm = ParticleMesh(6, 50.0, comm, dtype=np.float64)
real = GravitySolver(pm, 3000).force(pos_all[mine])
ref = GravitySolver(ParticleMesh(6, 50.0, MPI.COMM_SELF, dtype=np.float64), 3000,
                    method="kspace").force(pos_all)
kmpi = GravitySolver(pm, 3000, method="kspace").force(pos_all[mine])
out = np.zeros((3000, 3))
out[mine] = real
out = comm.allreduce(out)
kout = np.zeros((3000, 3))
kout[mine] = kmpi
kout = comm.allreduce(kout)
thickness = comm.gather(pm.real_shape[0])
if comm.rank == 0:
    np.savez(sys.argv[1], real=out, kspace=ref, kspace_ranks=kout, thickness=np.array(thickness))
