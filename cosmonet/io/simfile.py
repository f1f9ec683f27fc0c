"""The single-simulation HDF5 file written by ``cosmonet run-sim``.

Datasets (float32, shape (3, nc, nc, nc), channel first, indexed by the particle's
Lagrangian grid point q = (i, j, k) L / nc):

- ``za/disp``, ``lpt2/disp``, ``fastpm/disp``: displacement x - q in Mpc/h, wrapped to the
  minimum image [-L/2, L/2);
- ``za/vel``, ``lpt2/vel``, ``fastpm/vel``: peculiar velocity a dx/dt in km/s.

Root attributes: ``box_size`` (Mpc/h), ``nc``, ``a_final``, ``a_start``, ``steps``,
``boost``, ``force_nmesh``, ``seed``, the cosmology's parameters, ``linear_field`` (path
or empty), ``code_version``; with outputs at several a (``run-sim --save-a``) also
``save_a`` (every output's a, ascending, the last a_final) and ``save_steps`` (steps of
each segment), and the same datasets of each earlier output in the group ``a_A.AAAA``
(e.g. ``a_0.5000/fastpm/disp``; attribute ``a``); the top-level ones are at a_final.
"""
import os

import h5py
import numpy as np

from ..errors import InputError
from . import schema
from .atomic import atomic_path


def write_simulation(path, result, extra_attrs=None):
    """Write ``result`` (a :class:`~cosmonet.sim.simulation.SimResult`) to ``path``, rank 0
    taking the other ranks' slabs one message at a time
    (:func:`cosmonet.io.simwriter.write_result`). Collective over the result's communicator.
    The file appears under ``path`` only once complete.
    """
    from .simwriter import write_result
    write_result(path, result, extra_attrs)


def plain_attrs(attrs):
    """HDF5 attributes as a plain dict of Python scalars and strings."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}


def lagrangian_grid(nc, box, rows=slice(None)):
    """q = (i, j, k) box / nc of the particles, (3, n_rows, nc, nc) in Mpc/h: the
    index order of every displacement dataset (``rows`` selects planes of i)."""
    g = np.arange(nc) * (box / nc)
    return np.stack(np.meshgrid(g[rows], g, g, indexing="ij"))


def read_field(path, name):
    """A (3, nc, nc, nc) floating-point dataset of a run-sim file, e.g.
    ``read_field(p, "fastpm/disp")``, checked against the schema and for non-finite values."""
    with open_sim_file(path) as f:
        attrs = schema.check_sim_file(path, f)
        nc = attrs["nc"]
        data = schema.check_dataset(path, f, name, (3, nc, nc, nc))[...]
    schema.require_finite(data, path, name)
    return data


def open_sim_file(path):
    """The open h5py file, or InputError naming why it cannot be read."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise InputError(f"cannot open simulation file {path} ({first})") from None


def describe_sim_file(path, index=None):
    """What ``path`` is: (attrs, row), row None for a run-sim file or the position of
    simulation ``index`` in a campaign shard (whose parameters are added to attrs).
    The file is checked against the schema (:mod:`cosmonet.io.schema`: attributes, every
    field's dtype and shape, the params table). Raises InputError (one line) for anything
    else, and for a shard without ``index``."""
    with open_sim_file(path) as f:
        if not schema.is_shard(f):
            if index is not None:
                schema.check_attrs(path, f.attrs, schema.SIM_ATTRS)
                if "params" in f:
                    raise InputError(f"--index {index}: {path} has no params/index dataset (a damaged campaign shard?)")
                raise InputError(f"--index {index}: {path} is a single simulation (run-sim), not a campaign shard")
            return schema.check_sim_file(path, f), None
        attrs, table = schema.check_shard_file(path, f)
    nc = attrs["nc"]
    held = [int(i) for i in table["index"]]
    if index is None:
        raise InputError(f"{path} is a campaign shard of {len(held)} simulations (indices {held[0]}.."
                         f"{held[-1]}, {nc}^3 particles each): choose one with --index")
    if index not in held:
        raise InputError(f"--index {index} is not in {path} (it holds simulations {held[0]}..{held[-1]})")
    row = held.index(index)
    for col in schema.PARAM_COLUMNS:
        if col in table:
            v = float(table[col][row])
            if v == v:                      # NaN: the parameter was not set (A_s or sigma8)
                attrs[col] = v
    return attrs, row


def read_positions(path, name, rank=0, size=1, row=None, comm=None, option="--field"):
    """Particle positions q + displacement of field ``name`` ("za", "lpt2", "fastpm", or
    ``NAME@a=A`` for the output at a = A of a run with several outputs, its error naming
    ``option``) of a simulation file (or of simulation ``row`` of a campaign shard): the rows of process
    ``rank`` of ``size`` (planes of i split evenly), (n, 3) float64 in Mpc/h wrapped into
    [0, box), and the file's attributes (plain dict). Raises InputError (one line) for a
    file that is not a simulation file, lacks the field, breaks the schema (dtype, shape,
    attributes) or holds a NaN or infinity in the field. With ``comm`` (rank and size taken
    from it) the call is collective: every rank raises the same error, with the count of
    non-finite values over all ranks."""
    if comm is not None:
        rank, size = comm.rank, comm.size
    error, bad = None, 0
    base, _ = schema.split_field_ref(name, option)
    with open_sim_file(path) as f:
        spec = schema.SHARD_ATTRS if row is not None else schema.SIM_ATTRS
        attrs = schema.check_attrs(path, f.attrs, spec)
        key = schema.field_key(path, attrs, name, option, suffix="/disp")
        if key not in f:
            raise InputError(f"{path} has no field '{base}' (has: "
                             f"{', '.join(sorted(k for k in f.keys() if f'{k}/disp' in f))})")
        nc, box = attrs["nc"], float(attrs["box_size"])
        shape = (3, nc, nc, nc) if row is None else (None, 3, nc, nc, nc)
        ds = schema.check_dataset(path, f, key, shape)
        rows = np.array_split(np.arange(nc), size)[rank]
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        try:
            disp = ds[:, lo:hi] if row is None else ds[row, :, lo:hi]
        except OSError as exc:
            disp, error = None, f"{path}: {key} cannot be read ({str(exc).splitlines()[0] if str(exc) else 'I/O error'})"
    if disp is not None:
        bad = schema.count_nonfinite(disp)
    if comm is not None:
        gathered = comm.allgather((error, bad))
        error = next((e for e, _ in gathered if e), None)
        bad = sum(b for _, b in gathered)
    if error:
        raise InputError(error)
    if bad:
        what = "" if row is None else f"of row {row}"
        raise InputError(schema.nonfinite_message(path, key, bad, what) + "; power refuses it")
    q = lagrangian_grid(nc, box, slice(lo, hi))
    pos = np.mod(q + disp.astype(np.float64), box).reshape(3, -1).T
    return pos, attrs


def read_displacements(path):
    """The displacements of a run-sim file for emulation: (za/disp, root attributes, {name:
    disp} of lpt2 and fastpm where present), float32 arrays (3, n, n, n) in Mpc/h. The file
    is checked against the schema (``nc`` and ``box_size`` optional here; the fields of
    shape (3, n, n, n)) and every field read for NaN and infinity."""
    with open_sim_file(path) as f:
        if schema.is_shard(f):
            raise InputError(f"{path} is a campaign shard; emulate takes one run-sim file")
        schema.check_sim_file(path, f, required=())
        if "za/disp" not in f:
            raise InputError(f"{path} has no za/disp: not a run-sim simulation file")
        attrs = dict(f.attrs)
        fields = {name: f[f"{name}/disp"][...] for name in ("za", "lpt2", "fastpm") if f"{name}/disp" in f}
    for name, field in fields.items():
        bad = schema.count_nonfinite(field)
        if bad:
            raise InputError(schema.nonfinite_message(path, f"{name}/disp", bad) + "; emulate refuses it")
    disp = fields.pop("za")
    return disp, attrs, fields
def write_emulated(path, emulated, source_attrs, displacements, checkpoint, source):
    """The file of ``cosmonet emulate``: the source's root attributes plus ``checkpoint`` and
    ``emulated_from`` (absolute paths), ``emulated/disp`` and the source's own
    displacements ``{name: disp}`` as ``NAME/disp`` (Mpc/h), written atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(source_attrs)
            f.attrs["checkpoint"] = os.path.abspath(checkpoint)
            f.attrs["emulated_from"] = os.path.abspath(source)
            f.create_dataset("emulated/disp", data=emulated).attrs["units"] = "Mpc/h"
            for name, field in sorted(displacements.items()):
                f.create_dataset(f"{name}/disp", data=field).attrs["units"] = "Mpc/h"
