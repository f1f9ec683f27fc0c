"""Write a run-sim file slab by slab, as the simulation makes its fields.

``cosmonet run-sim`` used to gather every field whole on rank 0 before writing: 144 bytes
per particle of the whole box on one rank (a 1024^3 run: 155 GB on rank 0's node), on top
of the six fields every rank held until the end (72 bytes per local particle).
:class:`SimFileWriter` takes each field as soon as the simulation has it (the ZA and 2LPT
fields before the N-body steps), and rank 0 writes the ranks' slabs into the file one
message of at most ``MESSAGE_BYTES`` at a time. So no rank holds more than one field of
its own particles, and rank 0 one message more.

The file is the one :mod:`cosmonet.io.simfile` describes, byte for byte the same datasets
and attributes whatever the rank count, and it appears under its name only once complete
(:func:`~cosmonet.io.atomic.atomic_path`): a run that fails or is stopped leaves no file.
"""
import errno
from contextlib import ExitStack

import numpy as np

from .. import __version__
from . import schema
from .atomic import atomic_path

FIELD_UNITS = {"disp": "Mpc/h", "vel": "km/s"}
MESSAGE_BYTES = 64 * 2 ** 20        # the most rank 0 receives at once (whole x-planes, at least one)
_TAG = 7301


class SimFileWriter:
    """Collective writer of one run-sim file on ``comm``; use as a context manager.

    ``write(name, local, x0)``: every rank passes its slab ``local`` (float32, shape
    (3, nx, nc, nc), x-planes ``[x0, x0 + nx)``) of the field ``name`` (e.g.
    ``"za/disp"`` or ``"a_0.5000/fastpm/vel"``). Collective: every rank calls it for every
    field, in the same order. A failure to write on rank 0 (a full disk) is raised on every
    rank as the same ``OSError``, after rank 0 has taken every rank's messages, so no rank
    is left waiting.
    """

    def __init__(self, path, comm, config, extra_attrs=None):
        self.path, self.comm, self.config = path, comm, config
        self.nc = int(config.nc)
        self.attrs = dict(config.attrs())
        self.attrs["code_version"] = __version__
        self.attrs.update(extra_attrs or {})
        self._stack = ExitStack()
        self._file = None

    def __enter__(self):
        failure = None
        if self.comm.rank == 0:
            try:
                import h5py
                tmp = self._stack.enter_context(atomic_path(self.path))
                self._file = self._stack.enter_context(h5py.File(tmp, "w"))
                for k, v in self.attrs.items():
                    self._file.attrs[k] = "" if v is None else v
            except OSError as exc:
                failure = _describe(exc, self.path)
                self._stack.__exit__(type(exc), exc, exc.__traceback__)
        _raise_everywhere(self.comm, failure)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:        # not collective: this rank alone may have failed
            if self.comm.rank == 0:
                self._file = None
                self._stack.__exit__(exc_type, exc, tb)     # closes and removes the file
            return False
        failure = None
        if self.comm.rank == 0:
            try:
                for a in self.config.save_a[:-1]:
                    self._file.require_group(schema.output_group(a)).attrs["a"] = float(a)
            except OSError as err:
                failure = _describe(err, self.path)
            self._file = None
            try:                        # closes, then fsyncs and renames (or removes on failure)
                if failure is None:
                    self._stack.__exit__(None, None, None)
                else:
                    self._stack.__exit__(OSError, OSError(*failure), None)
            except OSError as err:
                failure = failure or _describe(err, self.path)
        _raise_everywhere(self.comm, failure)
        return False

    def write(self, name, local, x0):
        """Write this rank's slab of field ``name`` (see the class). Collective."""
        local = np.asarray(local)
        nx = local.shape[1] if local.ndim == 4 else -1
        shapes = self.comm.gather((int(x0), nx, local.shape, str(local.dtype)), root=0)
        failure = None
        if self.comm.rank == 0:
            failure = self._check_slabs(name, shapes)
        _raise_everywhere(self.comm, failure, exc_type=ValueError)
        planes = max(1, MESSAGE_BYTES // (4 * self.nc * self.nc))
        if self.comm.rank != 0:
            for c in range(3):
                for i in range(0, nx, planes):
                    self.comm.Send(np.ascontiguousarray(local[c, i:i + planes]), dest=0, tag=_TAG)
            _raise_everywhere(self.comm, None)
            return
        ds = None
        try:
            ds = self._file.create_dataset(name, shape=(3,) + (self.nc,) * 3, dtype=np.float32)
            ds.attrs["units"] = FIELD_UNITS[name.split("/")[-1]]
            for c in range(3):
                ds[c, x0:x0 + nx] = local[c]
        except OSError as exc:
            failure = _describe(exc, self.path)
        buf = np.empty((min(planes, self.nc), self.nc, self.nc), np.float32)
        for rank, (rx0, rnx, _, _) in enumerate(shapes[1:], start=1):
            for c in range(3):
                for i in range(0, rnx, planes):
                    k = min(planes, rnx - i)
                    self.comm.Recv(buf[:k], source=rank, tag=_TAG)
                    if failure is None:
                        try:
                            ds[c, rx0 + i:rx0 + i + k] = buf[:k]
                        except OSError as exc:
                            failure = _describe(exc, self.path)
        _raise_everywhere(self.comm, failure)

    def _check_slabs(self, name, shapes):
        """None, or the message of a ValueError: slabs that do not tile the box in float32."""
        covered = np.zeros(self.nc, np.int64)
        for rx0, rnx, shape, dtype in shapes:
            if dtype != "float32" or len(shape) != 4 or shape[0] != 3 \
                    or tuple(shape[2:]) != (self.nc, self.nc) or not 0 <= rx0 <= rx0 + rnx <= self.nc:
                return (f"{name}: a rank's slab is {dtype} {tuple(shape)} at x0 = {rx0}; expected float32 "
                        f"(3, nx, {self.nc}, {self.nc}) inside the box")
            covered[rx0:rx0 + rnx] += 1
        if not (covered == 1).all():
            return f"{name}: the ranks' slabs do not cover each of the {self.nc} x-planes once"
        if self._file is not None and name in self._file:
            return f"{name}: written twice"
        return None


def _describe(exc, path):
    """(errno, text, file name) of an OSError, for :func:`_raise_everywhere`."""
    return (getattr(exc, "errno", None) or errno.EIO, exc.strerror or str(exc) or "write failed",
            getattr(exc, "filename", None) or path)


def _raise_everywhere(comm, failure, exc_type=OSError):
    """Broadcast rank 0's ``failure`` (None, a message, or (errno, text)) and raise it on
    every rank: ``OSError(errno, text, file name)`` or ``exc_type(message)``."""
    failure = comm.bcast(failure, root=0)
    if failure is None:
        return
    if isinstance(failure, tuple):
        raise OSError(*failure)
    raise exc_type(failure)


def write_result(path, result, extra_attrs=None):
    """Write a finished :class:`~cosmonet.sim.simulation.SimResult` (every rank's slabs of
    every field) to ``path``. Collective over the result's communicator."""
    pm = result.pm
    with SimFileWriter(path, pm.comm, result.config, extra_attrs) as writer:
        for name, local in result.fields.items():
            writer.write(name, local, pm.x0)


def run_to_file(path, cfg, comm, extra_attrs=None, **run_kw):
    """:func:`~cosmonet.sim.simulation.run_simulation` with every field written to ``path``
    as soon as it exists (the run-sim path); returns the SimResult, whose ``fields`` are
    then empty. Collective."""
    from ..sim.simulation import run_simulation
    with SimFileWriter(path, comm, cfg, extra_attrs) as writer:
        return run_simulation(cfg, comm, sink=writer.write, **run_kw)
