"""Moving particles to the ranks that own their part of the mesh, and results back.

A :class:`Layout` is built once per particle distribution (like pmesh's ``decompose``):
``exchange`` sends per-particle data to the owning ranks, ``gather`` brings per-particle
results home in the original order. With one rank both are no-ops.
"""
import numpy as np
from mpi4py import MPI


class Layout:
    """A routing of ``n`` local particles to destination ranks ``dest`` (int array)."""

    def __init__(self, comm, dest):
        self.comm = comm
        self.n_local = len(dest)
        if comm.size == 1:
            self.order = None
            return
        dest = np.asarray(dest)
        self.order = np.argsort(dest, kind="stable")
        self.send_counts = np.bincount(dest, minlength=comm.size).astype(np.int64)
        self.recv_counts = np.empty_like(self.send_counts)
        comm.Alltoall(self.send_counts, self.recv_counts)
        self.n_owned = int(self.recv_counts.sum())

    def _alltoallv(self, data, send_counts, recv_counts):
        row = int(np.prod(data.shape[1:], dtype=np.int64)) * data.dtype.itemsize
        data = np.ascontiguousarray(data)
        out = np.empty((int(recv_counts.sum()),) + data.shape[1:], dtype=data.dtype)
        sc = send_counts * row
        rc = recv_counts * row
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        self.comm.Alltoallv([data.view(np.uint8).reshape(-1) if data.size else np.empty(0, np.uint8),
                             (sc, sd), MPI.BYTE],
                            [out.view(np.uint8).reshape(-1) if out.size else np.empty(0, np.uint8),
                             (rc, rd), MPI.BYTE])
        return out

    def exchange(self, data):
        """Send ``data`` (first axis: local particles) to the owning ranks."""
        if self.order is None:
            return data
        return self._alltoallv(np.asarray(data)[self.order], self.send_counts, self.recv_counts)

    def gather(self, data):
        """Return owner-side ``data`` to the particles' home ranks, in original order."""
        if self.order is None:
            return data
        back = self._alltoallv(np.asarray(data), self.recv_counts, self.send_counts)
        out = np.empty_like(back)
        out[self.order] = back
        return out
