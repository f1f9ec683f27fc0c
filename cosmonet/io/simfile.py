"""The single-simulation HDF5 file written by ``cosmonet run-sim``.

Datasets (float32, shape (3, nc, nc, nc), channel first, indexed by the particle's
Lagrangian grid point q = (i, j, k) L / nc):

- ``za/disp``, ``lpt2/disp``, ``fastpm/disp``: displacement x - q in Mpc/h, wrapped to the
  minimum image [-L/2, L/2);
- ``za/vel``, ``lpt2/vel``, ``fastpm/vel``: peculiar velocity a dx/dt in km/s.

Root attributes: ``box_size`` (Mpc/h), ``nc``, ``a_final``, ``a_start``, ``steps``,
``boost``, ``force_nmesh``, ``seed``, the cosmology's parameters, ``linear_field`` (path
or empty), ``code_version``.
"""
import os

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError
from .atomic import atomic_path

FIELD_UNITS = {"disp": "Mpc/h", "vel": "km/s"}


def write_simulation(path, result, extra_attrs=None):
    """Gather ``result`` (a :class:`~cosmonet.sim.simulation.SimResult`) and write it on rank 0.

    Collective over the result's communicator. The file appears under ``path`` only once
    complete.
    """
    from ..sim.simulation import gather_fields
    pm = result.pm
    full = gather_fields(result)
    if pm.comm.rank == 0:
        attrs = dict(result.config.attrs())
        attrs["code_version"] = __version__
        attrs.update(extra_attrs or {})
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                for k, v in attrs.items():
                    f.attrs[k] = "" if v is None else v
                for name, arr in full.items():
                    ds = f.create_dataset(name, data=arr)
                    ds.attrs["units"] = FIELD_UNITS[name.split("/")[-1]]
    pm.comm.Barrier()


def plain_attrs(attrs):
    """HDF5 attributes as a plain dict of Python scalars and strings."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}


def lagrangian_grid(nc, box, rows=slice(None)):
    """q = (i, j, k) box / nc of the particles, (3, n_rows, nc, nc) in Mpc/h: the
    index order of every displacement dataset (``rows`` selects planes of i)."""
    g = np.arange(nc) * (box / nc)
    return np.stack(np.meshgrid(g[rows], g, g, indexing="ij"))


def read_field(path, name):
    """A (3, nc, nc, nc) float32 dataset, e.g. ``read_field(p, "fastpm/disp")``."""
    with h5py.File(path, "r") as f:
        return f[name][...]


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
    Raises InputError (one line) for anything else, and for a shard without ``index``."""
    with open_sim_file(path) as f:
        attrs = plain_attrs(f.attrs)
        missing = [k for k in ("nc", "box_size") if k not in attrs]
        if missing:
            raise InputError(f"{path} is not a cosmonet simulation file or campaign shard "
                             f"(no '{missing[0]}' attribute)")
        nc = int(attrs["nc"])
        if not ("params" in f and "index" in f["params"]):
            if index is not None:
                raise InputError(f"--index {index}: {path} is a single simulation (run-sim), not a campaign shard")
            return attrs, None
        held = [int(i) for i in f["params/index"][...]]
        if index is None:
            raise InputError(f"{path} is a campaign shard of {len(held)} simulations (indices {held[0]}.."
                             f"{held[-1]}, {nc}^3 particles each): choose one with --index")
        if index not in held:
            raise InputError(f"--index {index} is not in {path} (it holds simulations {held[0]}..{held[-1]})")
        row = held.index(index)
        for col in f["params"]:
            if col not in ("index", "seed", "split", "done"):
                v = float(f["params"][col][row])
                if v == v:                      # NaN: the parameter was not set (A_s or sigma8)
                    attrs[col] = v
        return attrs, row


def read_positions(path, name, rank=0, size=1, row=None):
    """Particle positions q + displacement of field ``name`` ("za", "lpt2", "fastpm") of a
    simulation file (or of simulation ``row`` of a campaign shard): the rows of process
    ``rank`` of ``size`` (planes of i split evenly), (n, 3) float64 in Mpc/h wrapped into
    [0, box), and the file's attributes (plain dict). Raises InputError (one line) for a
    file that is not a simulation file, lacks the field or has another shape."""
    with open_sim_file(path) as f:
        key = f"{name}/disp"
        if key not in f:
            raise InputError(f"{path} has no field '{name}' (has: "
                             f"{', '.join(sorted(k for k in f.keys() if f'{k}/disp' in f))})")
        attrs = plain_attrs(f.attrs)
        missing = [k for k in ("nc", "box_size") if k not in attrs]
        if missing:
            raise InputError(f"{path} is not a cosmonet simulation file (no '{missing[0]}' attribute)")
        nc, box = int(attrs["nc"]), float(attrs["box_size"])
        want = (3, nc, nc, nc) if row is None else (f[key].shape[0], 3, nc, nc, nc)
        if f[key].shape != want:
            raise InputError(f"{path}: {key} has shape {f[key].shape}, expected {want}")
        rows = np.array_split(np.arange(nc), size)[rank]
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        disp = (f[key][:, lo:hi] if row is None else f[key][row, :, lo:hi]).astype(np.float64)
    q = lagrangian_grid(nc, box, slice(lo, hi))
    pos = np.mod(q + disp, box).reshape(3, -1).T
    return pos, attrs

def read_displacements(path):
    """The displacements of a run-sim file for emulation: (za/disp, root attributes, {name:
    disp} of lpt2 and fastpm where present), float32 arrays (3, n, n, n) in Mpc/h."""
    try:
        with open_sim_file(path) as f:
            disp = f["za/disp"][...]
            attrs = dict(f.attrs)
            others = {name: f[f"{name}/disp"][...] for name in ("lpt2", "fastpm") if f"{name}/disp" in f}
    except KeyError as exc:
        raise InputError(f"{path}: cannot read za/disp ({exc})") from None
    for name, field in (("za", disp), *others.items()):
        if not np.issubdtype(field.dtype, np.floating):
            raise InputError(f"{path}: {name}/disp holds {field.dtype} values, not floating point displacements")
        bad = int(np.count_nonzero(~np.isfinite(field)))
        if bad:
            raise InputError(f"{path}: {name}/disp has {bad} non-finite values (NaN or infinity); emulate refuses it")
    return disp, attrs, others


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
