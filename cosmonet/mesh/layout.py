"""Moving particles to the ranks that own their part of the mesh, and results back.

A :class:`Layout` is built once per particle distribution (like pmesh's ``decompose``):
``exchange`` sends per-particle data to the owning ranks, ``gather`` brings per-particle
results home in the original order. With one rank both are no-ops.
"""
import numpy as np

from ..extras import MPI, numba   # optional: see cosmonet/extras.py


@numba.njit(cache=True, nogil=True)
def _counting_order(dest, n_ranks):
    """Stable permutation that groups particles by destination rank (O(n), unlike argsort)."""
    counts = np.zeros(n_ranks + 1, dtype=np.int64)
    for d in dest:
        counts[d + 1] += 1
    for r in range(n_ranks):
        counts[r + 1] += counts[r]
    order = np.empty(dest.shape[0], dtype=np.int64)
    for i in range(dest.shape[0]):
        order[counts[dest[i]]] = i
        counts[dest[i]] += 1
    return order


class Layout:
    """A routing of ``n`` local particles to destination ranks ``dest`` (int array)."""

    def __init__(self, comm, dest):
        self.comm = comm
        self.n_local = len(dest)
        self.routed = None   # (positions, their owner-side copy), kept by ParticleMesh.paint
        if comm.size == 1:
            self.order = None
            return
        dest = np.asarray(dest, dtype=np.int64)
        self.order = _counting_order(dest, comm.size)
        self.send_counts = np.bincount(dest, minlength=comm.size).astype(np.int64)
        self.recv_counts = np.empty_like(self.send_counts)
        comm.Alltoall(self.send_counts, self.recv_counts)

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

    def exchange_positions(self, pos):
        """:meth:`exchange` for positions, remembered so that paint and readout with the
        same layout and the same (unmodified) ``pos`` array route them only once."""
        if self.routed is not None and self.routed[0] is pos:
            return self.routed[1]
        routed = self.exchange(pos)
        self.routed = (pos, routed)
        return routed

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
