"""Forces of lattice particles on 2 ranks against one rank; run as
``mpirun -np 2 python check_d3m_readout.py OUT.npz``.

An nc 16 lattice, displaced at random, in a 64 Mpc/h box; float32 force meshes of 32^3
(the readout's gradient planes fit in the local complex FFT buffer) and 16^3 (they do not:
the solver allocates them). Each rank computes the forces of its x-slab of the lattice;
rank 0 also computes all of them on its own one-rank mesh and writes both, gathered in
lattice order, and whether the scratch was a view of the complex buffer. Also the momenta
after ``kick_state`` (forces read out over the routed rows, kicking as they come home) and
after ``force_state`` + ``kick_mom``, both on 2 ranks, gathered.
"""
import sys

import numpy as np
from mpi4py import MPI

from cosmonet.mesh import ParticleMesh
from cosmonet.sim.fastpm import GravitySolver, ParticleState, kick_mom

comm = MPI.COMM_WORLD
nc, box = 16, 64.0
disp = np.random.default_rng(7).normal(0.0, 2.5, (nc ** 3, 3)).astype(np.float32)
per = nc ** 3 // comm.size                     # nc divisible by the ranks: x-slabs of the lattice
lo = comm.rank * per
out = {}
views = []
for n in (32, 16):
    pm = ParticleMesh(n, box, comm, dtype=np.float32)
    solver = GravitySolver(pm, nc ** 3)
    views.append(bool(np.shares_memory(solver._gradient_planes(), pm.complex_workspace)))
    mine = solver.force_state(ParticleState(disp=disp[lo:lo + per], mom=np.zeros((per, 3)), a=0.5,
                                            lattice=(nc, lo, box)))
    parts = comm.gather(mine)
    mom = np.random.default_rng(8).normal(0.0, 30.0, (nc ** 3, 3)).astype(np.float32)[lo:lo + per]
    fused, apart = mom.copy(), mom.copy()
    solver.kick_state(ParticleState(disp=disp[lo:lo + per].copy(), mom=fused, a=0.5, lattice=(nc, lo, box)), 0.37)
    kick_mom(apart, 0.37, solver.force_state(ParticleState(disp=disp[lo:lo + per].copy(), mom=mom, a=0.5,
                                                           lattice=(nc, lo, box))))
    fused, apart = comm.gather(fused), comm.gather(apart)
    if comm.rank == 0:
        out[f"fused_{n}"], out[f"apart_{n}"] = np.concatenate(fused), np.concatenate(apart)
    if comm.rank == 0:
        one = GravitySolver(ParticleMesh(n, box, MPI.COMM_SELF, dtype=np.float32), nc ** 3).force_state(
            ParticleState(disp=disp, mom=np.zeros((nc ** 3, 3)), a=0.5, lattice=(nc, 0, box)))
        out[f"one_{n}"], out[f"two_{n}"] = one, np.concatenate(parts)
views = comm.gather(views)
if comm.rank == 0:
    out["view"] = np.array([all(v[i] for v in views) for i in range(2)])
    np.savez(sys.argv[1], **out)
