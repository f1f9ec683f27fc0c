"""A periodic 3D mesh distributed over an MPI communicator in x-slabs.

Conventions (pmesh / nbodykit): ``Nmesh`` cells of size ``BoxSize / Nmesh`` Mpc/h per
side; real fields are local slabs of shape ``(nx, N, N)`` holding x-planes ``[x0, x1)``;
complex fields (real-to-complex transform, last axis ``N // 2 + 1``) are slabs along
the y axis. The forward transform is normalised by ``1 / N^3`` so that a density
contrast ``delta(x)`` has ``<|delta_k|^2> = P(k) / V``, as in nbodykit.
"""
import numpy as np

from ..errors import InputError
from ..extras import MPI   # mpi4py, or one process without it
from ..timing import Timers
from . import cic
from .fft import slab_fft
from .layout import Layout, lattice_rows


class ParticleMesh:
    """Distributed FFTs, k-vectors and CIC paint/readout on an ``Nmesh^3`` periodic box.

    Parameters
    ----------
    Nmesh : int
        Cells per side.
    BoxSize : float
        Box side in Mpc/h.
    comm : MPI communicator, default COMM_WORLD.
    dtype : numpy real dtype of the mesh (float32 default; float64 available).
    timers : :class:`~cosmonet.timing.Timers` that collects fft/paint/readout time.
    """

    def __init__(self, Nmesh, BoxSize, comm=None, dtype=np.float32, timers=None):
        self.timers = Timers() if timers is None else timers
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.Nmesh = int(Nmesh)
        self.BoxSize = float(BoxSize)
        self.dtype = np.dtype(dtype)
        # mpi4py-fft cannot split a 2^3 mesh; one rank plans FFTW directly and takes any N >= 2
        need = 2 if self.comm.size == 1 else max(3, self.comm.size)
        if self.Nmesh < need:
            raise InputError(
                f"mesh of {self.Nmesh}^3 cannot be split over {self.comm.size} ranks "
                f"(need at least {need} cells per side)")
        if self.BoxSize <= 0:
            raise InputError(f"box size must be > 0 Mpc/h (got {BoxSize})")
        N = self.Nmesh
        self.fft = slab_fft(self.comm, N, self.dtype)
        rs, cs = self.fft.real_slice, self.fft.complex_slice
        self.cache = {}     # derived arrays (kernels...) that users of this mesh keep
        self._paint_buffer = None
        self.real_slice = rs
        self.complex_slice = cs
        self.x0, self.x1 = rs[0].start, rs[0].stop
        self.real_shape = tuple(s.stop - s.start for s in rs)
        self.complex_shape = tuple(s.stop - s.start for s in cs)
        bounds = self.comm.allgather((self.x0, self.x1))
        self.plane_owner = np.empty(N, dtype=np.int32)
        for r, (a, b) in enumerate(bounds):
            self.plane_owner[a:b] = r
        kf = 2 * np.pi / self.BoxSize
        full = np.fft.fftfreq(N, 1.0 / N) * kf
        half = np.fft.rfftfreq(N, 1.0 / N) * kf
        self.k = [full[cs[0]].reshape(-1, 1, 1),
                  full[cs[1]].reshape(1, -1, 1),
                  half[cs[2]].reshape(1, 1, -1)]
        self._k2 = None

    # ------------------------------------------------------------------ geometry
    @property
    def cell_size(self):
        """Mesh spacing in Mpc/h."""
        return self.BoxSize / self.Nmesh

    @property
    def k_fundamental(self):
        """2 pi / BoxSize in h/Mpc."""
        return 2 * np.pi / self.BoxSize

    @property
    def k_nyquist(self):
        """pi Nmesh / BoxSize in h/Mpc."""
        return np.pi * self.Nmesh / self.BoxSize

    @property
    def k2(self):
        """|k|^2 on the local complex slab, (h/Mpc)^2 (float64, broadcast to full shape)."""
        if self._k2 is None:
            self._k2 = self.k[0] ** 2 + self.k[1] ** 2 + self.k[2] ** 2
        return self._k2

    def gradient_k(self, axis):
        """k_i for the spectral derivative i k_i, zero on the Nyquist plane of that axis.

        The Nyquist mode's derivative is not representable on a real field; zeroing it
        keeps results independent of the decomposition. Computed once per axis and
        returned read-only (1-D along ``axis``, broadcastable).
        """
        key = ("gradient_k", axis)
        if key not in self.cache:
            k = self.k[axis].copy()
            k[np.isclose(np.abs(k), self.k_nyquist)] = 0.0
            k.flags.writeable = False
            self.cache[key] = k
        return self.cache[key]

    def hermitian_weights(self):
        """Multiplicity of each local complex mode in the full (non-halved) k space.

        Modes with 0 < kz < Nyquist stand for themselves and their conjugates (2);
        the kz = 0 and kz = Nyquist planes are counted once.
        """
        N = self.Nmesh
        iz = np.arange(N // 2 + 1)[self.complex_slice[2]]
        w = np.where((iz == 0) | ((N % 2 == 0) & (iz == N // 2)), 1.0, 2.0)
        return np.broadcast_to(w.reshape(1, 1, -1), self.complex_shape)

    def real_coords(self):
        """Cell-corner coordinates x, y, z (Mpc/h) of the local real slab, broadcastable."""
        H = self.cell_size
        return [np.arange(s.start, s.stop).reshape(sh) * H
                for s, sh in zip(self.real_slice, [(-1, 1, 1), (1, -1, 1), (1, 1, -1)])]

    # ------------------------------------------------------------------ transforms
    def create_real(self, value=0.0):
        return np.full(self.real_shape, value, dtype=self.dtype)

    @property
    def real_workspace(self):
        """The real buffer of the transforms: paint into it, then call
        ``r2c(pm.real_workspace, out=...)``. Overwritten by every r2c and c2r."""
        return self.fft.fwd_in

    @property
    def complex_workspace(self):
        """The complex buffer of the transforms (output of r2c, input of c2r)."""
        return self.fft.fwd_out

    def r2c(self, real, out=None):
        """Forward FFT of a local real slab, normalised by 1/N^3 (nbodykit convention).

        Returns a new array, or fills ``out``; ``out=pm.complex_workspace`` avoids the
        copy (the result then lives in the transform's buffer until the next transform).
        """
        with self.timers("fft"):
            if real is not self.fft.fwd_in:
                self.fft.fwd_in[...] = real
            self.fft.forward()
            if out is None:
                return self.fft.fwd_out.copy()
            if out is not self.fft.fwd_out:
                out[...] = self.fft.fwd_out
            return out

    def c2r(self, cplx, out=None, kernel=None):
        """Inverse FFT (no normalisation): ``c2r(r2c(f)) == f``.

        With ``kernel``, transforms ``kernel * cplx`` without a temporary. Returns a new
        array, or fills ``out``.
        """
        with self.timers("fft"):
            if kernel is None:
                if cplx is not self.fft.bwd_in:
                    self.fft.bwd_in[...] = cplx
            else:
                np.multiply(kernel, cplx, out=self.fft.bwd_in)
            self.fft.backward()
            if out is None:
                return self.fft.bwd_out.copy()
            if out is not self.fft.bwd_out:
                out[...] = self.fft.bwd_out
            return out

    # ------------------------------------------------------------------ particles
    def decompose(self, pos):
        """Layout that routes local particles (positions (n, 3) Mpc/h) to their plane owners.

        The layout remembers the routed positions, so paint and readout with one layout
        exchange them once: build a new layout after the positions change.
        """
        if self.comm.size == 1:
            return Layout(self.comm, np.zeros(len(pos), dtype=np.int32))
        planes = np.empty(len(pos), dtype=np.int64)
        cic.owner_plane(np.ascontiguousarray(pos[:, 0]), self.BoxSize, self.Nmesh, planes)
        return Layout(self.comm, self.plane_owner[planes])

    def route_lattice(self, disp, nc, start, absolute=False, chunk=2 ** 18):
        """Route lattice particles to the ranks that own their x-planes, without a local
        position array: ``disp`` (n, 3) float32 displacements (Mpc/h) of the particles of
        global C-order lattice index ``start + p`` on an ``nc^3`` lattice of this box.

        Returns ``(layout, arr, index)`` with the owned particles in the order
        :meth:`decompose` and ``layout.exchange`` would give: by default ``arr`` their
        float32 displacements (n_owned, 3) and ``index`` their int32 global lattice indices
        (n_owned,) -- 16 bytes a particle, for the kernels' ``lattice=(nc, 0)`` with
        ``index`` (views into one received (n_owned, 4) array, also ``layout.rows``);
        with ``absolute=True``, or when ``nc^3`` exceeds int32, ``arr`` the float64
        positions (n_owned, 3) Mpc/h and ``index`` None. Either way the kernels form the
        same float64 sums as :func:`cic.lattice_positions`, so the same bits.

        The owner planes are found at most ``chunk`` (and a sixteenth of the) particles at
        a time, the rows are built in routing order one exchange round at a time
        (:meth:`Layout.route`). Collective.
        """
        n, spacing = len(disp), self.BoxSize / nc
        absolute = absolute or nc ** 3 > 2 ** 31 - 1
        if self.comm.size == 1:
            layout = Layout(self.comm, np.zeros(n, dtype=np.int32))
            if not absolute:
                return layout, disp, np.arange(start, start + n, dtype=np.int32)
            pos = np.empty((n, 3), np.float64)
            cic.lattice_positions(disp, nc, start, spacing, pos)
            return layout, pos, None
        dest = np.empty(n, dtype=np.int32)
        m = max(1, min(chunk, -(-n // 16)))
        pos, planes = np.empty((m, 3), np.float64), np.empty(m, np.int64)
        for a in range(0, n, m):
            b = min(a + m, n)
            cic.lattice_positions(disp[a:b], nc, start + a, spacing, pos[:b - a])
            cic.owner_plane(np.ascontiguousarray(pos[:b - a, 0]), self.BoxSize, self.Nmesh, planes[:b - a])
            dest[a:b] = self.plane_owner[planes[:b - a]]
        del pos, planes
        layout = Layout(self.comm, dest)
        del dest
        if not absolute:
            def lean(idx):                      # 3 float32 displacements + the int32 index
                rows = np.empty((len(idx), 4), np.float32)
                lattice_rows(disp, idx, start, rows, rows.view(np.int32)[:, 3])
                return rows

            layout.rows = layout.route(lean, 4, np.float32)
            return layout, layout.rows[:, :3], layout.rows.view(np.int32)[:, 3]

        def positions(idx):                     # float64 positions of local particles idx
            pos = np.empty((len(idx), 3), np.float64)
            # int64 before adding start: global indices exceed int32 when nc^3 does
            cic.lattice_positions(disp[idx], nc, 0, spacing, pos, idx.astype(np.int64) + start)
            return pos

        return layout, layout.route(positions, 3, np.float64), None

    def _neighbours(self):
        return (self.comm.rank + 1) % self.comm.size, (self.comm.rank - 1) % self.comm.size

    def paint(self, pos, mass=None, layout=None, out=None):
        """CIC-paint local particles into a real field (particle count per cell).

        ``pos`` (n, 3) in Mpc/h, any rank; ``mass`` per-particle weights (default 1);
        ``layout`` from :meth:`decompose` (computed when not given); ``out``: a real
        field to fill instead of returning a new one.
        """
        with self.timers("paint"):
            return self._paint(pos, mass, layout, out)

    def _paint(self, pos, mass, layout, out):
        pos = np.asarray(pos, dtype=np.float64)
        if layout is None:
            layout = self.decompose(pos)
        opos = layout.exchange_positions(pos)
        if mass is None:
            omass = np.empty(0)
        else:
            mass = np.broadcast_to(np.asarray(mass, dtype=np.float64), (len(pos),))
            omass = layout.exchange(np.ascontiguousarray(mass))
        if out is None:
            out = self.create_real()
        self.paint_into(out, opos, omass)
        return out

    def paint_into(self, out, arr, mass=None, lattice=None, index=None, return_order=False):
        """CIC-paint particles that this rank owns into ``out`` (local real slab, mesh
        dtype, overwritten), folding in the plane painted above the slab from the rank below.

        ``arr`` (n, 3): absolute positions (Mpc/h), or, with ``lattice = (nc, start)``,
        float32 displacements of the particles of global lattice index ``start + p`` on
        an ``nc^3`` lattice of this box (positions q + disp formed in float64 in the
        kernel); with ``index`` (n,) int32/int64 as well, the particles' global lattice
        indices instead of ``start + p`` (routed particles: :meth:`route_lattice`).
        ``mass``: per-particle weights, None or empty for 1. Collective.
        Returns ``out``, or with ``return_order`` ``(out, order, first)``: the particles'
        :func:`~cosmonet.mesh.cic.plane_order`, which the FD4 readout of the same
        particles reuses.
        """
        nc, start = (0, 0) if lattice is None else (int(lattice[0]), int(lattice[1]))
        spacing = self.BoxSize / nc if nc else 0.0
        mass = np.empty(0) if mass is None else mass
        nx, N = self.real_shape[0], self.Nmesh
        if self._paint_buffer is None:
            self._paint_buffer = np.zeros((3, N, N), dtype=self.dtype)
        upper, ghost = self._paint_buffer[:2], self._paint_buffer[2]
        order = np.empty(len(arr), dtype=np.int32 if len(arr) < 2 ** 31 else np.int64)
        first = np.zeros(nx + 1, dtype=np.int64)
        cic.plane_order(arr, nc, start, spacing, self.x0, nx, self.BoxSize, N, order, first, index)
        cic.paint_ghost(arr, nc, start, spacing, mass, order, first, out, upper, ghost, self.x0, self.BoxSize,
                        index)
        if not return_order:
            del order, first
        if self.comm.size == 1:
            out[0] += ghost
        else:
            up, down = self._neighbours()
            recv = np.empty_like(ghost)
            self.comm.Sendrecv(ghost, dest=up, recvbuf=recv, source=down)
            out[0] += recv
        return (out, order, first) if return_order else out

    def halo(self, field, below=2, above=3):
        """The ``below`` planes under the local slab and the ``above`` planes over it
        (periodic), as arrays (below, N, N) and (above, N, N): planes
        ``x0 - below .. x0 - 1`` and ``x1 .. x1 + above - 1``. Collective; works for any
        slab thickness (a plane may come from a rank further away, passed along)."""
        nx = field.shape[0]
        lo = np.empty((below,) + field.shape[1:], field.dtype)
        hi = np.empty((above,) + field.shape[1:], field.dtype)
        if self.comm.size == 1:
            for t in range(below):
                lo[t] = field[(t - below) % nx]
            for s in range(above):
                hi[s] = field[s % nx]
            return lo, hi
        up, down = self._neighbours()
        comm = self.comm
        for s in range(above):          # plane x1 + s is the upper rank's plane x0' + s
            send = field[s] if s < nx else hi[s - nx]
            comm.Sendrecv(np.ascontiguousarray(send), dest=down, recvbuf=hi[s], source=up)
        for m in range(1, below + 1):   # plane x0 - m is the lower rank's plane x1' - m
            send = field[nx - m] if nx - m >= 0 else lo[below + nx - m]
            comm.Sendrecv(np.ascontiguousarray(send), dest=up, recvbuf=lo[below - m], source=down)
        return lo, hi

    def readout(self, field, pos, layout=None):
        """CIC-interpolate the local real ``field`` at local particle positions (n, 3).

        ``field`` may also be a list of 3 fields (a vector field): they are read in one
        pass and the result has shape (n, 3).
        """
        with self.timers("readout"):
            return self._readout(field, pos, layout)

    def _readout(self, field, pos, layout):
        pos = np.asarray(pos, dtype=np.float64)
        if layout is None:
            layout = self.decompose(pos)
        single = not isinstance(field, (list, tuple))
        fields = tuple(np.ascontiguousarray(f) for f in ([field] if single else field))
        if len(fields) not in (1, 3):
            raise ValueError("readout takes one field or a list of three")
        if self.comm.size == 1:
            ghosts = tuple(f[0] for f in fields)
        else:
            up, down = self._neighbours()
            sendbuf = np.ascontiguousarray(np.stack([f[0] for f in fields]))
            recv = np.empty_like(sendbuf)
            self.comm.Sendrecv(sendbuf, dest=down, recvbuf=recv, source=up)
            ghosts = tuple(recv)
        opos = layout.exchange_positions(pos)
        if single:
            values = np.empty(len(opos), dtype=np.float64)
            cic.readout_slab(opos, fields[0], ghosts[0], self.x0, self.BoxSize, values)
        else:
            values = np.empty((len(opos), 3), dtype=np.float64)
            cic.readout_slab3(opos, *fields, *ghosts, self.x0, self.BoxSize, values)
        return layout.gather(values)

    # ------------------------------------------------------------------ reductions
    def allsum(self, x):
        return self.comm.allreduce(x, op=MPI.SUM)

    def gather_real(self, field, root=0):
        """Full (N, N, N) array on ``root`` (None elsewhere) from local slabs."""
        parts = self.comm.gather(np.asarray(field), root=root)
        if self.comm.rank != root:
            return None
        return np.concatenate(parts, axis=0)


_MESHES = {}


def get_mesh(Nmesh, BoxSize, comm, dtype=np.float32, timers=None):
    """A cached :class:`ParticleMesh` for these arguments (its k-vectors, kernels and
    buffers are reused by every simulation of a campaign); ``timers`` is attached to it."""
    key = (comm.py2f(), comm.size, int(Nmesh), float(BoxSize), np.dtype(dtype).str)
    pm = _MESHES.get(key)
    if pm is None:
        pm = _MESHES[key] = ParticleMesh(Nmesh, BoxSize, comm, dtype=dtype)
    pm.timers = Timers() if timers is None else timers
    return pm


def release_mesh(pm):
    """Free ``pm``'s FFT plan, buffers and cached arrays, and forget it in the mesh cache:
    for a mesh that a one-off run is done with (run-sim's LPT mesh, before the N-body
    steps: 16 bytes a particle in float64). ``pm`` keeps its geometry (``x0``,
    ``real_shape``, ``k``) but cannot transform or paint any more; :func:`get_mesh` makes
    a fresh one."""
    from .fft import release_plan
    for key, cached in list(_MESHES.items()):
        if cached is pm:
            del _MESHES[key]
    release_plan(pm.comm, pm.Nmesh, pm.dtype)
    pm.fft = None
    pm.cache = {}
    pm._paint_buffer = None


def clear_mesh_cache(comm=None):
    """Forget cached meshes and FFT plans (of ``comm`` only, when given); call before
    freeing a communicator."""
    from .fft import clear_cache
    for key in list(_MESHES):
        if comm is None or key[:2] == (comm.py2f(), comm.size):
            del _MESHES[key]
    clear_cache(comm)
