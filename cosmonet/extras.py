"""The optional packages (pip extras) and what stands in for them when they are absent.

The core install (``pip install .``) trains, evaluates, emulates, probes and runs the torch
engine. The extras add:

* ``[mpi]``: mpi4py, mpi4py-fft (FFTW) and numba, for the MPI engine on several ranks,
  campaigns (``simulate``), launching under ``mpirun``/``srun``, and FFTW and compiled
  kernels instead of numpy's;
* ``[horovod]``: Horovod (built locally, ``make horovod``);
* ``[test]``: pytest and hypothesis.

Modules import MPI and numba from here, never directly, so that importing cosmonet needs
neither. Without mpi4py, :data:`MPI` gives a one-process communicator
(:class:`SerialComm`) for ``COMM_SELF`` and for ``COMM_WORLD`` of an un-launched process;
anything that truly needs MPI raises :class:`MissingExtra`, an :class:`InputError` whose
one line names the extra. Without numba, ``from cosmonet.extras import numba`` gives a
stand-in whose ``njit`` puts the numpy version of each kernel in its place
(:mod:`cosmonet.numpy_kernels`); without mpi4py-fft, a one-rank mesh transforms with
numpy's FFT (:mod:`cosmonet.mesh.fft`).
"""
import functools
import importlib
import os

from .errors import InputError

#: the pip extra that brings each optional top-level module
EXTRA_OF = {"mpi4py": "mpi", "mpi4py_fft": "mpi", "numba": "mpi", "horovod": "horovod",
            "pytest": "test", "hypothesis": "test"}
#: core packages that are imported only when needed
CORE = ("pyccl", "h5py", "scipy", "matplotlib", "yaml", "torch")
#: the MPI launchers' variables that hold the number of processes (mpirun, mpiexec, srun's
#: step); torchrun's processes are each their own MPI world, as with mpi4py
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")


class MissingExtra(InputError):
    """A command needs a package that is not installed; the message names the extra."""


def missing(module, purpose, hint=""):
    """:class:`MissingExtra` for ``purpose`` (what needs it) and the missing ``module``."""
    top = module.partition(".")[0]
    if top not in EXTRA_OF:
        return MissingExtra(f"{purpose} needs {module}, which is not installed here: it is part of the core "
                            f"install (pip install cosmonet, see docs/install.md){hint}")
    extra = EXTRA_OF[top]
    return MissingExtra(f"{purpose} needs {module}, which is not installed here: install the [{extra}] extra "
                        f"(pip install 'cosmonet[{extra}]', see docs/install.md){hint}")


def explain(exc, purpose):
    """:func:`missing` for a ModuleNotFoundError of an optional or core package, else None."""
    name = getattr(exc, "name", None) or ""
    if name.partition(".")[0] not in EXTRA_OF and name.partition(".")[0] not in CORE:
        return None
    return missing(name, purpose)


def require(module, purpose, hint=""):
    """Import ``module`` or raise :func:`missing` (one line, naming the extra)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module, purpose, hint) from None


def available(module):
    """True when ``module`` imports (an MPI library that fails to load counts as absent)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def launcher_size():
    """The number of processes that an MPI launcher (mpirun, srun) started; 1 alone."""
    for key in _SIZE_VARS:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 1


# --------------------------------------------------------------------------- MPI
class SerialComm:
    """A communicator of one process with the mpi4py calls that one-rank code makes
    (rank 0 of size 1: collectives return their own argument)."""

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def py2f(self):
        return -1

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def scatter(self, objs, root=0):
        return objs[0]

    def reduce(self, obj, op=None, root=0):
        return obj

    def allreduce(self, obj, op=None):
        return obj

    def barrier(self):
        pass

    Barrier = barrier

    def Allreduce(self, sendbuf, recvbuf, op=None):
        recvbuf[...] = sendbuf

    def Sendrecv(self, sendbuf, dest=0, recvbuf=None, source=0, **kw):
        recvbuf[...] = sendbuf

    def Dup(self):
        return self

    def Split(self, color=0, key=0):
        return self

    def Split_type(self, split_type=None, key=0, info=None):
        return self

    def Free(self):
        pass

    def Abort(self, errorcode=1):
        os._exit(errorcode)


SERIAL = SerialComm()


@functools.lru_cache(maxsize=None)
def _mpi_module():
    try:
        from mpi4py import MPI as real
    except ImportError:
        return None
    return real


def has_mpi():
    """True when mpi4py (and the MPI library it was built for) imports."""
    return _mpi_module() is not None


class _LazyMPI:
    """``mpi4py.MPI``, imported at the first attribute used. Without mpi4py: COMM_SELF, and
    COMM_WORLD of a process that no launcher started with others, are :data:`SERIAL`;
    reduction operations are names that SerialComm ignores; the rest raises
    :class:`MissingExtra`."""

    _OPS = ("SUM", "MAX", "MIN", "PROD", "LAND", "LOR", "BAND", "BOR")

    def __getattr__(self, name):
        real = _mpi_module()
        if real is not None:
            return getattr(real, name)
        if name == "COMM_SELF":
            return SERIAL
        if name == "COMM_WORLD":
            n = launcher_size()
            if n > 1:
                raise missing("mpi4py", f"a run of {n} processes (mpirun/srun)",
                              "; or start one process")
            return SERIAL
        if name in self._OPS or name == "COMM_TYPE_SHARED":
            return name
        raise missing("mpi4py", f"MPI.{name}")


#: use as ``from cosmonet.extras import MPI`` in place of ``from mpi4py import MPI``
MPI = _LazyMPI()


# --------------------------------------------------------------------------- numba
class _NoNumba:
    """Stands in for numba: ``njit(...)`` puts the numpy version of a kernel
    (:data:`cosmonet.numpy_kernels.KERNELS`, by module and name) in its place, and leaves
    any other function as plain Python (the small helpers that only kernels call)."""

    @staticmethod
    def _replace(fn):
        from .numpy_kernels import KERNELS
        return KERNELS.get((fn.__module__, fn.__name__), fn)

    @classmethod
    def njit(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return cls._replace(args[0])
        return cls._replace


@functools.lru_cache(maxsize=None)
def _numba():
    try:
        import numba as real
    except ImportError:
        return _NoNumba()
    return real


def __getattr__(name):
    # ``from cosmonet.extras import numba`` imports numba (or its stand-in) only then, in the
    # modules that compile kernels, not in every module that imports this one
    if name == "numba":
        return _numba()
    if name == "HAVE_NUMBA":
        return not isinstance(_numba(), _NoNumba)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
