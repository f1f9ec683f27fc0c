"""A slab-decomposed real 3D FFT over MPI with one real and one complex buffer.

The real field is split along x (rank r holds planes ``[x0_r, x0_r + nx_r)``, shape
``(nx, N, N)``), its transform along y (rank r holds ``[y0_r, y0_r + ny_r)``, shape
``(N, ny, N // 2 + 1)``, all kx), the block split of mpi4py-fft's slab ``PFFT``
(``N // P`` planes each, one more on the first ``N % P`` ranks), so callers see the same
layout as with ``PFFT``.

Forward, in chunks of ``c`` local x-planes: a 2-D real-to-complex FFT of the planes
(axes y, z) into a chunk buffer, packed by destination y-block and sent with one
``Alltoallv`` straight into the x-planes of the complex slab; then one in-place 1-D FFT
along x of the whole complex slab, and the 1/N^3 normalisation. Backward mirrors it: the
in-place inverse 1-D FFT along x, then per chunk an ``Alltoallv`` from the complex slab
into the chunk buffer, unpacked, and a 2-D complex-to-real FFT into the real planes.

Memory: the real buffer (4 bytes per local float32 cell) and the complex buffer (about 4)
are all that scale with the slab; the two chunk buffers hold at most an eighth of the
slab's planes and at most ~4 MiB each. mpi4py-fft's ``PFFT(collapse=True)`` keeps four
arrays (16.6 bytes per cell, measured): docs/benchmarks.md.

All plans use one planner flag (``FFTW_ESTIMATE`` by default) and the chunking depends
only on (N, number of ranks, dtype), so runs on the same number of ranks execute the
same arithmetic and are bitwise identical.
"""
import numpy as np

from ..extras import MPI

#: byte alignment of the buffers and of every chunk start within the real buffer
ALIGN = 64
#: target size of one chunk of 2-D transforms (bytes of complex planes)
CHUNK_BYTES = 4 * 2 ** 20
#: complex slabs above this size take their 1-D transforms along x in blocks of y-rows
XBLOCK_MIN_BYTES = 24 * 2 ** 20
#: target size of one such block (bytes)
XBLOCK_BYTES = 2 ** 20


def block_split(N, size, rank):
    """(count, start) of ``rank``'s block of ``N`` planes split over ``size`` ranks."""
    q, r = divmod(N, size)
    return q + (1 if rank < r else 0), rank * q + min(rank, r)


def chunk_planes(N, size, dtype):
    """Planes per chunk: a multiple of the count that keeps chunk starts ``ALIGN``-byte
    aligned in the real buffer (on one rank also in the complex buffer, which the chunks'
    2-D transforms then write directly), at most ~``CHUNK_BYTES`` of complex planes and at
    most an eighth of the largest slab (but at least one aligned step, and never above the
    slab)."""
    rbytes = np.dtype(dtype).itemsize
    nx_max = -(-N // size)
    step = ALIGN // np.gcd(ALIGN, N * N * rbytes)
    plane = N * (N // 2 + 1) * 2 * rbytes
    if size == 1:
        step = np.lcm(step, ALIGN // np.gcd(ALIGN, plane))
    c = min(CHUNK_BYTES // plane, -(-nx_max // 8))
    c = max(step, (c // step) * step)
    return int(min(c, nx_max))


def rows_per_block(N, ny, Nz, itemsize):
    """y-rows per block of the 1-D transforms along x (:class:`AxisZeroFFT`), or 0 for one
    plan over the whole complex slab: blocks only when the slab is above
    ``XBLOCK_MIN_BYTES``, each of the largest power of two of rows within
    ``XBLOCK_BYTES`` (at least one row, at most ``ny``)."""
    row = N * Nz * itemsize
    if ny * row <= XBLOCK_MIN_BYTES:
        return 0
    by = 1
    while 2 * by * row <= XBLOCK_BYTES and 2 * by <= ny:
        by *= 2
    return by


class AxisZeroFFT:
    """In-place 1-D FFTs along axis 0 (x) of a C-contiguous complex ``(N, ny, Nz)`` slab.

    FFTW's estimated plan over a large slab transforms each column with the slab's whole
    stride between its points (``ny * Nz`` elements), which goes out of cache: at N = 256
    in complex64 one such pass took 175 - 216 ms on this machine against 27 ms when the
    slab goes through in blocks of y-rows copied into a small contiguous buffer (measured,
    docs/benchmarks.md). Small slabs keep the one plan over the whole slab (faster there).
    The rule depends only on the shape and dtype, so it is deterministic.
    """

    def __init__(self, fftw, array, flags):
        N, ny, Nz = array.shape
        self.array = array
        self.by = rows_per_block(N, ny, Nz, array.itemsize)
        if not self.by:
            self._fwd = fftw.fftn(array, axes=(0,), flags=flags, output_array=array)
            self._bwd = fftw.ifftn(array, axes=(0,), flags=flags, output_array=array)
            return
        self._flat = fftw.aligned(N * self.by * Nz, n=ALIGN, dtype=array.dtype)
        self._flat[...] = 0
        self.blocks = [(y, min(self.by, ny - y)) for y in range(0, ny, self.by)]
        self._plans = {}
        for m in {m for _, m in self.blocks}:
            buf = self._flat[:N * m * Nz].reshape(N, m, Nz)
            self._plans[m] = (buf,
                              fftw.fftn(buf, axes=(0,), flags=flags, output_array=buf),
                              fftw.ifftn(buf, axes=(0,), flags=flags, output_array=buf))

    def _blocked(self, which):
        a = self.array
        for y, m in self.blocks:
            plan = self._plans[m]
            buf = plan[0]
            buf[...] = a[:, y:y + m]
            plan[which]()
            a[:, y:y + m] = buf

    def forward(self):
        """Unnormalised forward transform along x, in place."""
        if self.by:
            self._blocked(1)
        else:
            self._fwd()

    def backward(self):
        """Unnormalised inverse transform along x, in place."""
        if self.by:
            self._blocked(2)
        else:
            self._bwd()


class MPISlabFFT:
    """Forward (normalised by 1/N^3) and backward real FFTs of an N^3 mesh split over
    ``comm``. Buffers: ``fwd_in`` is ``bwd_out`` (real, ``(nx, N, N)``),
    ``fwd_out`` is ``bwd_in`` (complex, ``(N, ny, N // 2 + 1)``); a forward transform
    overwrites the complex buffer, a backward one the real buffer and the complex buffer.

    On one rank (large serial meshes, :mod:`cosmonet.mesh.fft`) the chunks' 2-D transforms
    read and write the two buffers directly: no chunk buffers, no exchange."""

    def __init__(self, comm, N, dtype, planner_effort="FFTW_ESTIMATE"):
        from mpi4py_fft import fftw
        self.comm, self.N, self.dtype = comm, int(N), np.dtype(dtype)
        N, P, rank = self.N, comm.size, comm.rank
        self.ctype = np.result_type(self.dtype, np.complex64)
        self.Nz = Nz = N // 2 + 1
        self.xs = [block_split(N, P, r) for r in range(P)]     # (nx, x0) per rank
        self.ys = [block_split(N, P, r) for r in range(P)]     # (ny, y0) per rank
        self.nx, self.x0 = self.xs[rank]
        self.ny, self.y0 = self.ys[rank]
        self.real_slice = (slice(self.x0, self.x0 + self.nx), slice(0, N), slice(0, N))
        self.complex_slice = (slice(0, N), slice(self.y0, self.y0 + self.ny), slice(0, Nz))
        self.c = chunk_planes(N, P, self.dtype)
        self.nchunks = -(-max(nx for nx, _ in self.xs) // self.c)

        self.fwd_in = fftw.aligned((self.nx, N, N), n=ALIGN, dtype=self.dtype)
        self.fwd_out = fftw.aligned((N, self.ny, Nz), n=ALIGN, dtype=self.ctype)
        self.bwd_in, self.bwd_out = self.fwd_out, self.fwd_in
        self.fwd_in[...] = 0
        self.fwd_out[...] = 0
        self.serial = P == 1
        if self.serial:       # the 2-D transforms write the complex planes directly
            self._chunk = self.fwd_out
        else:
            self._chunk = fftw.aligned((self.c, N, Nz), n=ALIGN, dtype=self.ctype)
            self._packed = fftw.aligned(self.c * N * Nz, n=ALIGN, dtype=self.ctype)
            self._chunk[...] = 0
            self._packed[...] = 0

        self._flags = (fftw.flag_dict[planner_effort], fftw.FFTW_DESTROY_INPUT)
        self._fftw = fftw
        self._plans2d = {}     # planes -> (r2c, c2r) over axes (y, z)
        for m in {self._planes(k)[1] for k in range(self.nchunks)} - {0}:
            self._plan2d(m)
        self._along_x = AxisZeroFFT(fftw, self.fwd_out, self._flags)
        self._scale = self.dtype.type(1.0) / self.dtype.type(N) ** 3
        self._plane = None
        if self.serial:
            return

        # MPI types: complex elements, and whole complex-slab x-planes (ny * Nz elements),
        # so displacements into the slab count planes and stay small
        self._elem = MPI.C_DOUBLE_COMPLEX if self.ctype == np.complex128 else MPI.C_FLOAT_COMPLEX
        self._plane = self._elem.Create_contiguous(self.ny * Nz).Commit()
        self._routes = [self._counts(k) for k in range(self.nchunks)]

    def free(self):
        """Release the MPI datatype (the buffers go with the object)."""
        if self._plane is not None:
            self._plane.Free()
            self._plane = None

    def __del__(self):
        try:
            if MPI.Is_initialized() and not MPI.Is_finalized():
                self.free()
        except Exception:   # interpreter shutdown
            pass

    def _planes(self, k, rank=None):
        """(first local plane, count) of chunk ``k`` on ``rank`` (count 0 past its slab)."""
        nx = self.xs[self.comm.rank if rank is None else rank][0]
        a = min(k * self.c, nx)
        return a, min(a + self.c, nx) - a

    def _plan2d(self, m):
        if m not in self._plans2d:
            fftw, N = self._fftw, self.N
            r2c = fftw.rfftn(self.fwd_in[:m], axes=(1, 2), flags=self._flags,
                             output_array=self._chunk[:m])
            c2r = fftw.irfftn(self._chunk[:m], s=(N, N), axes=(1, 2), flags=self._flags,
                              output_array=self.fwd_in[:m])
            self._plans2d[m] = (r2c, c2r)
        return self._plans2d[m]

    def _counts(self, k):
        """Per-rank (counts in elements of my chunk's y-blocks, displacements; counts and
        displacements in complex-slab planes of every rank's chunk k)."""
        Nz = self.Nz
        a, m = self._planes(k)
        elem_counts = [m * ny * Nz for ny, _ in self.ys]
        elem_displs = [m * y0 * Nz for _, y0 in self.ys]
        plane_counts, plane_displs = [], []
        for r, (nx, x0) in enumerate(self.xs):
            ar, mr = self._planes(k, r)
            plane_counts.append(mr)
            plane_displs.append(x0 + ar)
        return (elem_counts, elem_displs), (plane_counts, plane_displs)

    def forward(self):
        """``fwd_out = FFT(fwd_in) / N^3``; ``fwd_in`` may be destroyed."""
        if self.serial:
            for k in range(self.nchunks):
                a, m = self._planes(k)
                self._plan2d(m)[0](self.fwd_in[a:a + m], self.fwd_out[a:a + m], implicit=True)
            self._along_x.forward()
            np.multiply(self.fwd_out, self._scale, out=self.fwd_out)
            return
        Nz, chunk, packed = self.Nz, self._chunk, self._packed
        for k in range(self.nchunks):
            a, m = self._planes(k)
            if m:
                r2c = self._plan2d(m)[0]
                r2c(self.fwd_in[a:a + m], chunk[:m], implicit=True)
                o = 0
                for ny, y0 in self.ys:        # pack by destination y-block
                    n = m * ny * Nz
                    packed[o:o + n].reshape(m, ny, Nz)[...] = chunk[:m, y0:y0 + ny]
                    o += n
            elems, planes = self._routes[k]
            self.comm.Alltoallv([packed, elems, self._elem], [self.fwd_out, planes, self._plane])
        self._along_x.forward()
        np.multiply(self.fwd_out, self._scale, out=self.fwd_out)

    def backward(self):
        """``bwd_out = inverse FFT(bwd_in)`` (unnormalised); ``bwd_in`` is destroyed."""
        self._along_x.backward()
        if self.serial:
            for k in range(self.nchunks):
                a, m = self._planes(k)
                self._plan2d(m)[1](self.bwd_in[a:a + m], self.bwd_out[a:a + m], implicit=True)
            return
        Nz, chunk, packed = self.Nz, self._chunk, self._packed
        for k in range(self.nchunks):
            a, m = self._planes(k)
            elems, planes = self._routes[k]
            self.comm.Alltoallv([self.bwd_in, planes, self._plane], [packed, elems, self._elem])
            if m:
                o = 0
                for ny, y0 in self.ys:        # unpack by source y-block
                    n = m * ny * Nz
                    chunk[:m, y0:y0 + ny] = packed[o:o + n].reshape(m, ny, Nz)
                    o += n
                c2r = self._plan2d(m)[1]
                c2r(chunk[:m], self.bwd_out[a:a + m], implicit=True)
