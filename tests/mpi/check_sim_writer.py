"""Under mpirun: SimFileWriter on uneven slabs, in messages of two x-planes.

argv: OUT_DIR MODE. MODE "ok": two fields whose values name their global element are
written and read back on rank 0. MODE "enospc": rank 0's second dataset write fails with
ENOSPC. Rank 0 prints one JSON line: what each rank raised, what the file holds, and which
files the directory holds afterwards.
"""
import errno
import json
import os
import sys

import h5py
import numpy as np
from mpi4py import MPI

from cosmonet.io import simwriter
from cosmonet.sim.simulation import SimConfig

out_dir, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
nc = 10
simwriter.MESSAGE_BYTES = 2 * 4 * nc * nc          # two x-planes per message
rows = np.array_split(np.arange(nc), comm.size)[comm.rank]
x0, nx = (int(rows[0]) if len(rows) else nc), len(rows)
cfg = SimConfig(nc=nc, box=40.0, steps=2, seed=3, save_a=(0.5, 1.0))
path = os.path.join(out_dir, "sim.h5")


def field(offset):
    idx = np.arange(3 * nc ** 3, dtype=np.float32).reshape(3, nc, nc, nc) + offset
    return np.ascontiguousarray(idx[:, x0:x0 + nx])


if mode == "enospc" and comm.rank == 0:
    real_setitem, calls = h5py.Dataset.__setitem__, []

    def failing_setitem(self, key, value):
        calls.append(self.name)
        if self.name == "/za/vel":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_setitem(self, key, value)
    h5py.Dataset.__setitem__ = failing_setitem

raised = None
try:
    with simwriter.SimFileWriter(path, comm, cfg, {"engine": "mpi"}) as w:
        w.write("za/disp", field(0.0), x0)
        w.write("za/vel", field(0.5), x0)
        w.write("a_0.5000/fastpm/disp", field(0.25), x0)
except OSError as exc:
    raised = [exc.errno, exc.filename]
raised = comm.gather(raised, root=0)
if comm.rank == 0:
    report = {"raised": raised, "files": sorted(os.listdir(out_dir))}
    if os.path.exists(path):
        full = np.arange(3 * nc ** 3, dtype=np.float32).reshape(3, nc, nc, nc)
        with h5py.File(path, "r") as f:
            report["equal"] = [bool(np.array_equal(f[name][...], full + off)) for name, off in
                               (("za/disp", 0.0), ("za/vel", 0.5), ("a_0.5000/fastpm/disp", 0.25))]
            report["units"] = [f["za/disp"].attrs["units"], f["za/vel"].attrs["units"]]
            report["group_a"] = float(f["a_0.5000"].attrs["a"])
            report["attrs"] = {k: (f.attrs[k].tolist() if hasattr(f.attrs[k], "tolist") else f.attrs[k])
                               for k in ("nc", "engine", "seed", "save_a")}
    print(json.dumps(report), flush=True)
