"""Mesh checks that need several ranks; run as ``mpirun -np N python check_mesh.py OUT.npz``.

Writes the gathered white noise, a painted field and a binned P(k) to OUT.npz (rank 0),
so the test can compare them across rank counts; asserts adjointness and mass on the way.
"""
import sys

import numpy as np
from mpi4py import MPI

from cosmonet.analysis.power import binned_power, density_k
from cosmonet.mesh import ParticleMesh
from cosmonet.sim.whitenoise import white_noise

comm = MPI.COMM_WORLD
pm = ParticleMesh(16, 100.0, comm, dtype=np.float64)
noise = pm.gather_real(white_noise(pm, 11))

# the same 4000 global particles, split unevenly over ranks in an arbitrary way
rng = np.random.default_rng(3)
pos_all = rng.uniform(0, 100.0, (4000, 3))
mass_all = rng.standard_normal(4000)
mine = np.arange(4000) % comm.size == (comm.size - 1 - comm.rank)
pos, mass = pos_all[mine], mass_all[mine]

field = pm.paint(pos)
total = pm.allsum(field.sum())
assert abs(total - 4000) < 1e-9, total
g = pm.r2c(np.asarray(field))     # any field to read back
g = pm.c2r(g * np.exp(-pm.k2))
lhs = pm.allsum(np.sum(pm.paint(pos, mass) * g))
rhs = pm.allsum(np.sum(mass * pm.readout(g, pos)))
assert abs(lhs - rhs) < 1e-10 * abs(lhs), (lhs, rhs)
readback = np.zeros(4000)
readback[mine] = pm.readout(g, pos)
readback = comm.allreduce(readback)

pk = binned_power(pm, density_k(pm, pos, 4000))
full = pm.gather_real(field)
if comm.rank == 0:
    np.savez(sys.argv[1], noise=noise, field=full, readback=readback, power=pk["power"], modes=pk["modes"])
    print(f"check_mesh ok on {comm.size} ranks: adjoint {lhs:.12g} {rhs:.12g}")
