"""Moving particles to the ranks that own their part of the mesh, and results back.

A :class:`Layout` is built once per particle distribution (like pmesh's ``decompose``):
``exchange`` sends per-particle data to the owning ranks, ``gather`` brings per-particle
results home in the original order. With one rank both are no-ops.
"""
import numpy as np

from ..extras import MPI, numba   # optional: see cosmonet/extras.py


@numba.njit(cache=True, nogil=True)
def _counting_order(dest, n_ranks, order):
    """Stable permutation that groups particles by destination rank (O(n), unlike argsort),
    written into ``order`` (int32 below 2^31 particles, else int64)."""
    counts = np.zeros(n_ranks + 1, dtype=np.int64)
    for d in dest:
        counts[d + 1] += 1
    for r in range(n_ranks):
        counts[r + 1] += counts[r]
    for i in range(dest.shape[0]):
        order[counts[dest[i]]] = i
        counts[dest[i]] += 1


@numba.njit(cache=True, nogil=True)
def lattice_rows(disp, idx, start, rows, index):
    """Rows of routed lattice particles ``idx``: ``rows[i, :3] = disp[idx[i]]`` (float32
    displacements) and ``index[i] = idx[i] + start`` (their int32 global lattice index,
    a view of the rows' 4th column): :meth:`ParticleMesh.route_lattice`'s lean rows."""
    for i in range(idx.shape[0]):
        p = idx[i]
        rows[i, 0] = disp[p, 0]
        rows[i, 1] = disp[p, 1]
        rows[i, 2] = disp[p, 2]
        index[i] = p + start


#: particles (rows) per round of an exchange or gather: bounds the send/receive copies
CHUNK = 2 ** 18
#: at least this many rounds, so the copies stay a small fraction of the particles
MIN_ROUNDS = 16


class Layout:
    """A routing of ``n`` local particles to destination ranks ``dest`` (int array)."""

    def __init__(self, comm, dest):
        self.comm = comm
        self.n_local = len(dest)
        self.routed = None   # (positions, their owner-side copy), kept by ParticleMesh.paint
        self.rows = None     # the owner-side (n, 4) rows of ParticleMesh.route_lattice's lean path
        if comm.size == 1:
            self.order = None
            return
        dest = np.asarray(dest)
        if dest.dtype not in (np.int32, np.int64):
            dest = dest.astype(np.int64)
        # kept for the layout's life (paint to gather): int32 halves it (4 bytes a particle)
        self.order = np.empty(len(dest), np.int32 if len(dest) < 2 ** 31 else np.int64)
        _counting_order(dest, comm.size, self.order)
        self.send_counts = np.bincount(dest, minlength=comm.size).astype(np.int64)
        self.recv_counts = np.empty_like(self.send_counts)
        comm.Alltoall(self.send_counts, self.recv_counts)
        self._send_start = np.concatenate([[0], np.cumsum(self.send_counts)[:-1]]).astype(np.int64)
        self._recv_start = np.concatenate([[0], np.cumsum(self.recv_counts)[:-1]]).astype(np.int64)
        self._n_rounds = None

    def _rounds(self):
        """Rounds of an exchange (the same on every rank): ``CHUNK`` rows per round at
        most, and at least ``MIN_ROUNDS`` rounds."""
        if self._n_rounds is None:
            mine = max(MIN_ROUNDS, -(-max(self.n_local, int(self.recv_counts.sum())) // CHUNK))
            self._n_rounds = self.comm.allreduce(mine, op=MPI.MAX)
        return self._n_rounds

    def _round(self, t, rounds):
        """Round ``t``: local indices sent (routing order), send counts, receive counts
        and receive displacements (rows, into the owner-side array)."""
        s_lo = self.send_counts * t // rounds
        s_hi = self.send_counts * (t + 1) // rounds
        r_lo = self.recv_counts * t // rounds
        r_hi = self.recv_counts * (t + 1) // rounds
        idx = np.concatenate([self.order[a + lo:a + hi]
                              for a, lo, hi in zip(self._send_start, s_lo, s_hi)])
        return idx, s_hi - s_lo, r_hi - r_lo, self._recv_start + r_lo

    def route(self, make_rows, width, dtype):
        """Owner-side array (n_owned, ``width``) of ``dtype`` whose rows ``make_rows(idx)``
        builds for local particles ``idx`` (an index array in routing order), in the order
        of :meth:`exchange`. Sent in rounds of at most ``CHUNK`` rows straight into the
        result, so no full-size send copy exists. Collective."""
        out = np.empty((int(self.recv_counts.sum()), width), dtype)
        row = MPI.BYTE.Create_contiguous(width * out.itemsize).Commit()
        try:
            rounds = self._rounds()
            for t in range(rounds):
                idx, sc, rc, rd = self._round(t, rounds)
                rows = np.ascontiguousarray(make_rows(idx), dtype=dtype).reshape(len(idx), width)
                sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
                self.comm.Alltoallv([rows, (sc.tolist(), sd.tolist()), row],
                                    [out, (rc.tolist(), rd.tolist()), row])
        finally:
            row.Free()
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
        data = np.asarray(data)
        flat = data.reshape(len(data), int(np.prod(data.shape[1:], dtype=np.int64)))
        out = self.route(lambda idx: flat[idx], flat.shape[1], data.dtype)
        return out.reshape((len(out),) + data.shape[1:])

    def gather(self, data, columns=None, into=None):
        """Return owner-side ``data`` to the particles' home ranks, in original order
        (in rounds of at most ``CHUNK`` rows: no full-size receive copy). Collective.

        ``columns``: send only the first ``columns`` columns of the (n, w) ``data`` (an MPI
        datatype skips the rest; no copy). ``into(idx, rows)``: instead of building the
        home-side array, hand each round's received rows, those of local particles ``idx``,
        to ``into``, and return None (no full-size home-side array either)."""
        if self.order is None:
            if into is not None:
                into(np.arange(self.n_local), data[:, :columns] if columns else data)
                return None
            return data if columns is None else data[:, :columns]
        data = np.ascontiguousarray(data)
        flat = data.reshape(len(data), int(np.prod(data.shape[1:], dtype=np.int64)))
        width = flat.shape[1] if columns is None else int(columns)
        out = None if into is not None else np.empty((self.n_local, width), data.dtype)
        row = MPI.BYTE.Create_contiguous(width * data.itemsize).Commit()
        send_row = row if width == flat.shape[1] else \
            MPI.BYTE.Create_contiguous(width * data.itemsize).Create_resized(0, flat.shape[1] * data.itemsize).Commit()
        try:
            rounds = self._rounds()
            for t in range(rounds):
                idx, sc, rc, rd = self._round(t, rounds)   # the exchange's round, reversed
                buf = np.empty((len(idx), width), data.dtype)
                bd = np.concatenate([[0], np.cumsum(sc)[:-1]])
                self.comm.Alltoallv([flat, (rc.tolist(), rd.tolist()), send_row],
                                    [buf, (sc.tolist(), bd.tolist()), row])
                if into is None:
                    out[idx] = buf
                else:
                    into(idx, buf)
        finally:
            if send_row is not row:
                send_row.Free()
            row.Free()
        if into is not None:
            return None
        return out if columns is not None else out.reshape((self.n_local,) + data.shape[1:])
