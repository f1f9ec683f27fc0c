"""Planned real-to-complex 3D FFTs over x-slabs, with reusable buffers.

One rank: FFTW's 3-D plans from mpi4py-fft's ``fftw`` module on aligned buffers for
meshes up to 24 MiB of complex buffer, the slab transforms below for larger ones
(:func:`serial_uses_slab`; numpy's FFT when mpi4py-fft is not installed: the core install
without the [mpi] extra). Several ranks:
:class:`~cosmonet.mesh.slab.MPISlabFFT`, a slab decomposition of our own on the same FFTW
bindings (real fields split along x, complex fields along y, the split of mpi4py-fft's
slab ``PFFT``), with 2-D transforms of the local planes, ``Alltoallv`` transposes in
chunks and in-place 1-D transforms along x. Either way a :class:`SlabFFT` owns two buffers, a real one (``fwd_in``, also named
``bwd_out``) and a complex one (``fwd_out``, also named ``bwd_in``), and :meth:`forward` /
:meth:`backward` transform between them: a forward transform overwrites the complex buffer,
a backward one the real buffer (and, FFTW c2r destroying its input, the complex buffer). Reusing buffers
avoids fresh allocations, whose page faults cost as much as the transforms themselves
at 64^3 (measured: 15,000 faults and 0.04 s of system time per simulation).

Plans are made with ``FFTW_ESTIMATE`` (:data:`PLANNER_EFFORT`), serial and parallel
alike: an estimated plan depends only on the transform's shape, so two runs with the same
number of ranks execute the same arithmetic and are bitwise identical. ``FFTW_MEASURE``
times candidate plans and may pick another one in every process (shards from one run then
differed by 1-4 float32 ulps from a rerun); see docs/physics.md for the bound across rank
counts and docs/benchmarks.md for the cost. ``COSMONET_FFTW_PLANNER=FFTW_MEASURE`` selects
the measured plans (benchmarks only). Plans are cached per (communicator, N, dtype).
Call :func:`clear_cache` before freeing a communicator that has cached plans.
"""
import os

import numpy as np

#: FFTW planner flag of every plan: deterministic FFTW_ESTIMATE unless overridden
PLANNER_EFFORT = os.environ.get("COSMONET_FFTW_PLANNER", "FFTW_ESTIMATE")
if PLANNER_EFFORT not in ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE"):
    PLANNER_EFFORT = "FFTW_ESTIMATE"

_CACHE = {}


class SlabFFT:
    """Forward (normalised by 1/N^3) and backward real FFTs of an N^3 mesh on ``comm``."""

    def __init__(self, comm, N, dtype):
        self.comm, self.N, self.dtype = comm, int(N), np.dtype(dtype)
        shape = (self.N,) * 3
        if comm.size == 1 and not _have_fftw():
            self._numpy_transforms(N)
        elif comm.size == 1 and not serial_uses_slab(N, self.dtype):
            from mpi4py_fft import fftw
            self.real_slice = (slice(0, N),) * 3
            self.complex_slice = (slice(0, N), slice(0, N), slice(0, N // 2 + 1))
            ctype = np.result_type(self.dtype, np.complex64)
            # one real and one complex buffer serve both directions, as in mpi4py-fft's PFFT
            self.fwd_in = fftw.aligned(shape, dtype=self.dtype)
            self.fwd_out = fftw.aligned((N, N, N // 2 + 1), dtype=ctype)
            self.bwd_in = self.fwd_out
            self.bwd_out = self.fwd_in
            flags = (fftw.flag_dict[PLANNER_EFFORT], fftw.FFTW_DESTROY_INPUT)
            self._fwd = fftw.rfftn(self.fwd_in, axes=(0, 1, 2), flags=flags, output_array=self.fwd_out)
            self._bwd = fftw.irfftn(self.bwd_in, s=shape, axes=(0, 1, 2), flags=flags,
                                    output_array=self.bwd_out)
            self.fwd_in[...] = 0
            self.fwd_out[...] = 0
            self.forward = self._serial_forward
            self.backward = self._serial_backward
        else:
            # our slab FFT: one real and one complex buffer, as on one rank (mpi4py-fft's
            # PFFT keeps four arrays per plan even with collapse=True): mesh/slab.py; on
            # one rank for large meshes, where FFTW's estimated 3-D plan goes out of cache
            from .slab import MPISlabFFT
            self._slab = MPISlabFFT(comm, N, self.dtype, planner_effort=PLANNER_EFFORT)
            self.real_slice = self._slab.real_slice
            self.complex_slice = self._slab.complex_slice
            self.fwd_in = self.bwd_out = self._slab.fwd_in
            self.fwd_out = self.bwd_in = self._slab.fwd_out
            self.forward = self._slab.forward
            self.backward = self._slab.backward

    def free(self):
        """Drop the plans and buffers now; the object cannot transform afterwards. (Its
        bound methods ``forward``/``backward`` make a reference cycle, so without this the
        buffers would wait for the cyclic garbage collector.)"""
        if hasattr(self, "_slab"):
            self._slab.free()
        self.__dict__.clear()

    def _numpy_transforms(self, N):
        """One rank without mpi4py-fft (an install without the [mpi] extra): numpy's FFT on
        plain buffers, the same transforms and normalisation (equal to FFTW's to rounding)."""
        self.real_slice = (slice(0, N),) * 3
        self.complex_slice = (slice(0, N), slice(0, N), slice(0, N // 2 + 1))
        ctype = np.result_type(self.dtype, np.complex64)
        # one real and one complex buffer serve both directions, as with FFTW
        self.fwd_in = np.zeros((N,) * 3, dtype=self.dtype)
        self.fwd_out = np.zeros((N, N, N // 2 + 1), dtype=ctype)
        self.bwd_in = self.fwd_out
        self.bwd_out = self.fwd_in
        self.forward = self._numpy_forward
        self.backward = self._numpy_backward

    def _numpy_forward(self):
        self.fwd_out[...] = np.fft.rfftn(self.fwd_in, norm="forward")

    def _numpy_backward(self):
        self.bwd_out[...] = np.fft.irfftn(self.bwd_in, s=(self.N,) * 3, norm="forward")

    def _serial_forward(self):
        self._fwd(normalize=True)

    def _serial_backward(self):
        self._bwd()


def serial_uses_slab(N, dtype):
    """True when a one-rank mesh of N^3 ``dtype`` cells takes the slab transforms of
    :mod:`cosmonet.mesh.slab` (2-D transforms of chunks of x-planes, then blocked 1-D
    transforms along x) instead of FFTW's estimated 3-D plan: when the complex buffer is
    above ``slab.XBLOCK_MIN_BYTES`` (24 MiB; N >= 192 in float32, N >= 160 in float64).
    Measured on one core (r2c + c2r pair, docs/benchmarks.md): 256^3 float32 0.54 s with
    the 3-D plan, 0.15 s in slabs; below the threshold the two are within 10%.
    A rule of the shape alone, so the choice is deterministic."""
    from .slab import XBLOCK_MIN_BYTES
    ctype = np.result_type(np.dtype(dtype), np.complex64)
    return N * N * (N // 2 + 1) * ctype.itemsize > XBLOCK_MIN_BYTES


def _have_fftw():
    """True when mpi4py-fft's FFTW bindings import (the [mpi] extra)."""
    try:
        from mpi4py_fft import fftw  # noqa: F401
    except ImportError:
        return False
    return True


def _key(comm, N, dtype):
    return (comm.py2f(), comm.size, int(N), np.dtype(dtype).str)


def slab_fft(comm, N, dtype):
    """The cached :class:`SlabFFT` for (comm, N, dtype)."""
    key = _key(comm, N, dtype)
    if key not in _CACHE:
        _CACHE[key] = SlabFFT(comm, N, dtype)
    return _CACHE[key]


def release_plan(comm, N, dtype):
    """Forget the cached :class:`SlabFFT` of (comm, N, dtype) and free its buffers: no mesh
    may use it afterwards (:func:`cosmonet.mesh.pm.release_mesh`)."""
    plan = _CACHE.pop(_key(comm, N, dtype), None)
    if plan is not None:
        plan.free()


def clear_cache(comm=None):
    """Forget cached plans (of ``comm`` only, when given)."""
    for key in list(_CACHE):
        if comm is None or key[:2] == (comm.py2f(), comm.size):
            plan = _CACHE.pop(key)
            if hasattr(plan, "_slab"):
                plan._slab.free()
