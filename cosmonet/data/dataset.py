"""A torch Dataset over the HDF5 shards of a campaign directory (see docs/data-format.md).

Construction reads ``campaign.yaml``, the shard records (``manifest.json``, plus any
``shards/shard_*.json`` it lacks) and, from each shard that holds a selected simulation, the
small ``params/*`` table and the attributes; it checks fields, shapes, ``nc`` and
``box_size`` and closes the files again. Fields are read lazily: each process (the main one
and every DataLoader worker) opens its own read-only h5py handles on first access, at most
``max_open_files`` of them (least recently used closed first). Handles are never pickled
and never shared across a fork: a process that finds handles opened by its parent leaves
them alone and opens its own.
"""
import math
import operator
import os
from collections import OrderedDict

import h5py
import numpy as np
import torch

from ..errors import InputError
from ..io import schema
from ..campaign import store as shardio
from ..campaign.config import FIELD_NAMES
from .augment import call_transform, sample_rng, vector_flags

__all__ = ["ShardDataset", "EpochItems"]


def _fail(msg):
    raise InputError(msg)


def _decode(b):
    return b.decode() if isinstance(b, bytes) else str(b)


def _check_fields(fields):
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise InputError(f"fields must be a non-empty list of dataset names (got {fields!r})")
    if len(set(fields)) != len(fields):
        raise InputError(f"fields lists a field twice ({', '.join(fields)})")
    return fields


def _select(cfg, root, split, indices):
    """(campaign indices, split name or None) of the simulations a dataset holds."""
    yaml_path = os.path.join(root, shardio.CONFIG_COPY)
    n_sims, splits = cfg.n_sims, cfg.splits
    if indices is not None:
        try:
            sel = [operator.index(i) for i in indices]
        except TypeError:
            raise InputError(f"indices must be integers (got {indices!r})") from None
        bad = [i for i in sel if not 0 <= i < n_sims]
        if bad:
            _fail(f"{yaml_path}: simulation index {bad[0]} is out of range (n_sims = {n_sims})")
        if not sel:
            _fail(f"{root}: empty selection (indices=[])")
        return sel, None
    if split is None:
        return list(range(n_sims)), None
    if split not in splits:
        known = f"splits: {', '.join(splits)}" if splits else "it defines no splits; use split=None"
        _fail(f"{yaml_path}: no split {split!r} ({known})")
    sel = shardio.split_indices(cfg, split)
    if not sel:
        _fail(f"{yaml_path}: split {split!r} selects no simulations (its count is 0)")
    return sel, split


def _shard_of(cfg, root, records, sel):
    """{campaign index: shard} for the selected simulations; InputError naming a missing shard."""
    if not records:
        _fail(f"{root} holds no shards (no {shardio.MANIFEST} and no "
              f"{shardio.SHARD_DIR}/shard_*.json)")
    spans = sorted((lo, hi, shard) for shard, (lo, hi, _, _) in records.items())
    shard_of = {}
    for i in sorted(set(sel)):
        hit = [s for lo, hi, s in spans if lo <= i < hi]
        if not hit:
            _fail(f"{shardio.shard_path(root, i // cfg.shard_size)} is missing: simulation {i} is in no "
                  f"shard record (run cosmonet simulate again to finish the campaign)")
        shard_of[i] = hit[0]
    return shard_of


def _read_shard(path, where, fields):
    """Check a shard against the schema (:mod:`cosmonet.io.schema`: attributes, the params
    table, the dtype and shape of every field) and read its attributes and params table
    (file closed again)."""
    if not os.path.exists(path):
        _fail(f"shard file {path} is missing (listed in {where})")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        _fail(f"{path} is not a readable HDF5 shard")
    with fh:
        root_attrs = schema.check_attrs(path, fh.attrs, schema.SHARD_ATTRS)
        # a field at an output before a_final (NAME@a=A) is the dataset a_A.AAAA/NAME
        keys = {name: schema.field_key(path, root_attrs, name, "field") for name in fields}
        for name, key in keys.items():
            if not isinstance(fh.get(key), h5py.Dataset):
                have = _present_fields(fh)
                _fail(f"field {name!r} is not in {path} (it has: {', '.join(have) or 'no fields'})")
        attrs, table = schema.check_shard_file(path, fh, list(keys.values()))
        return {"path": path, "nc": attrs["nc"], "box": float(attrs["box_size"]),
                "index": table["index"], "seed": table["seed"], "split": table["split"],
                "cosmo": {c: table[c] for c in shardio.PARAM_COLUMNS if c in table},
                "shapes": {name: tuple(fh[key].shape[1:]) for name, key in keys.items()}, "keys": keys}


def _check_alike(first, table, fields):
    """The first shard's table; InputError when ``table`` differs from it in nc, box or shapes."""
    if first is None:
        return table
    if table["keys"] != first["keys"]:
        diff = next(n for n in fields if table["keys"][n] != first["keys"][n])
        _fail(f"mismatched shards: field {diff!r} is {table['keys'][diff]} in {table['path']}, "
              f"{first['keys'][diff]} in {first['path']}")
    if (table["nc"], table["box"]) != (first["nc"], first["box"]) or table["shapes"] != first["shapes"]:
        fp, shapes, fshapes = first["path"], table["shapes"], first["shapes"]
        diff = next((n for n in fields if shapes[n] != fshapes[n]), None)
        detail = (f"field {diff!r} has shape {shapes[diff]} there, {fshapes[diff]} in {fp}"
                  if (table["nc"], table["box"]) == (first["nc"], first["box"]) else
                  f"nc={table['nc']}, box_size={table['box']:g} there, nc={first['nc']}, "
                  f"box_size={first['box']:g} in {fp}")
        _fail(f"mismatched shards: {table['path']} differs from {fp} ({detail})")
    return first


def _sample_info(table, k, i, shard):
    info = {"index": i, "seed": int(table["seed"][k]), "split": _decode(table["split"][k]), "shard": shard}
    for c in shardio.PARAM_COLUMNS:
        v = float(table["cosmo"][c][k]) if c in table["cosmo"] else math.nan
        info[c] = None if math.isnan(v) else v
    return info


class ShardDataset(torch.utils.data.Dataset):
    """Simulations of a campaign as tuples of float32 tensors, one ``(C, n, n, n)`` per field.

    root: the campaign directory (``campaign.yaml``, ``manifest.json``, ``shards/``).
    split: a split name of ``campaign.yaml`` (consecutive simulation indices, in the order
        the splits are listed), or None for every simulation.
    fields: dataset names to read, e.g. ``("za/disp", "fastpm/disp")`` or ``"density"``;
    ``NAME@a=A`` reads the output at a = A of a campaign with ``save_a`` (``fastpm/disp@a=0.5``).
    indices: explicit simulation indices (campaign numbering, in this order); when given,
        ``split`` is ignored.
    transform: called on the tuple as ``transform(tensors, rng)`` when it takes an rng (see
        :func:`cosmonet.data.augment.takes_rng`), else ``transform(tensors)``; its result is
        what ``dataset[i]`` returns.
    seed: when set, the ``rng`` of item ``i`` is ``np.random.default_rng([seed, epoch, i])``
        (:func:`~cosmonet.data.augment.sample_rng`; ``i`` the position in this dataset), so
        random transforms are reproducible and do not depend on the number of DataLoader
        workers; call :meth:`set_epoch` to draw new ones each epoch, or read item ``i`` of
        any epoch with :meth:`sample` (what :class:`EpochItems` does for training). When
        None, ``rng`` is None and the transform uses its own generator.
    max_open_files: h5py handles kept open per process.
    check_finite: every read refuses a NaN or an infinity (InputError naming the shard, the
        field, the simulation and the count). The trainer turns it off: it checks its splits
        once before the first step (:mod:`cosmonet.train.datacheck`) and flags non-finite
        batches on the device.

    Raises :class:`~cosmonet.errors.InputError` (one line naming the file) for a directory
    that is not a campaign, a missing shard, a field not in a shard, mismatched shards, an
    unknown split or an empty selection.
    """

    def __init__(self, root, split="train", fields=("za/disp", "fastpm/disp"), indices=None,
                 transform=None, seed=None, max_open_files=8, check_finite=True):
        root = os.fspath(root)
        self.root = root
        self.config = shardio.read_config(root)
        self.fields = _check_fields(fields)
        self.vector = vector_flags(self.fields)
        sel, self.split = _select(self.config, root, split, indices)
        self.indices = tuple(sel)
        records = shardio.read_records(root)
        shard_of = _shard_of(self.config, root, records, sel)
        pos_of, info_of, first = {}, {}, None
        for shard in sorted(set(shard_of.values())):
            lo, hi, path, where = records[shard]
            table = _read_shard(path, where, self.fields)
            first = _check_alike(first, table, self.fields)
            row = {int(v): k for k, v in enumerate(table["index"])}
            for i in (i for i, s in shard_of.items() if s == shard):
                if i not in row:
                    _fail(f"{path} does not hold simulation {i} (its params/index: "
                          f"{', '.join(map(str, table['index'].tolist()))})")
                pos_of[i] = (path, row[i])
                info_of[i] = _sample_info(table, row[i], i, shard)
        self.nc, self.box_size = first["nc"], first["box"]
        self.field_shapes = dict(first["shapes"])
        self._keys = dict(first["keys"])      # field name -> its dataset (a_A.AAAA/NAME for NAME@a=A)
        self._locs = [pos_of[i] for i in sel]
        self._info = [info_of[i] for i in sel]
        self.transform = transform
        self.seed = seed
        self.check_finite = bool(check_finite)
        self.epoch = 0
        self.max_open_files = max(1, int(max_open_files))
        self._handles = OrderedDict()       # path -> h5py.File, opened by process self._pid
        self._pid = None
        self._inherited = []                # handles of a parent process: kept, never used or closed

    # ----------------------------------------------------------------- file handles
    def _file(self, path):
        pid = os.getpid()
        if self._pid != pid:
            if self._handles:
                self._inherited.extend(self._handles.values())
            self._handles = OrderedDict()
            self._pid = pid
        f = self._handles.get(path)
        if f is not None:
            self._handles.move_to_end(path)
            return f
        while len(self._handles) >= self.max_open_files:
            _, old = self._handles.popitem(last=False)
            old.close()
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise InputError(f"cannot open shard {path} (removed or unreadable since the dataset was made)") from None
        self._handles[path] = f
        return f

    @property
    def open_files(self):
        """Paths of the shard files this process holds open."""
        return list(self._handles) if self._pid == os.getpid() else []

    def close(self):
        """Close this process's file handles (they reopen on the next access)."""
        if self._pid == os.getpid():
            for f in self._handles.values():
                try:
                    f.close()
                except Exception:
                    pass
        self._handles = OrderedDict()
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"], state["_inherited"] = OrderedDict(), None, []
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ----------------------------------------------------------------- access
    def __len__(self):
        return len(self._locs)

    def _item(self, i):
        i = operator.index(i)
        n = len(self._locs)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} simulations")
        return i % n

    def _checked(self, i, path, k, name, data):
        """``data`` (part of field ``name`` of item ``i``, row ``k`` of ``path``) as float32;
        InputError naming the file, the field, the simulation and the count when it holds a
        NaN or an infinity."""
        bad = schema.count_nonfinite(data) if self.check_finite else 0
        if bad:
            raise InputError(schema.nonfinite_message(path, name, bad, f"of simulation {self._info[i]['index']}"))
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))

    def _get(self, path, name, sel):
        try:
            return self._file(path)[self._keys[name]][sel]
        except OSError as exc:
            raise InputError(f"{path}: {name} cannot be read ({str(exc).splitlines()[0] if str(exc) else 'I/O error'})") from None

    def read(self, i):
        """The raw fields of item ``i`` (no transform), a tuple of float32 tensors; a NaN or an
        infinity is refused (InputError naming the shard, the field and the count)."""
        i = self._item(i)
        path, k = self._locs[i]
        return tuple(self._checked(i, path, k, name, self._get(path, name, k)) for name in self.fields)

    def read_region(self, i, name, region):
        """Part of field ``name`` of item ``i``: ``region`` is a tuple of slices over the
        field's (C, n, n, n) axes; only that part is read from disk. A float32 tensor (a NaN
        or an infinity in it is refused as in :meth:`read`)."""
        i = self._item(i)
        path, k = self._locs[i]
        if name not in self.fields:
            raise KeyError(f"field {name!r} was not selected (fields: {', '.join(self.fields)})")
        return self._checked(i, path, k, name, self._get(path, name, (k,) + tuple(region)))

    def count_nonfinite(self, i):
        """{field: number of NaN and infinite values} of item ``i``, read block by block."""
        i = self._item(i)
        path, k = self._locs[i]
        f = self._file(path)
        out = {}
        for name in self.fields:
            try:
                out[name] = schema.count_nonfinite(_Row(f[self._keys[name]], k))
            except OSError as exc:
                raise InputError(f"{path}: {name} cannot be read ({str(exc).splitlines()[0] if str(exc) else 'I/O error'})") from None
        return out

    def rng(self, i, epoch=None):
        """The generator passed to the transform for item ``i`` in ``epoch`` (default: the
        epoch of :meth:`set_epoch`); None without ``seed``."""
        if self.seed is None:
            return None
        return sample_rng(self.seed, self.epoch if epoch is None else epoch, self._item(i))

    def set_epoch(self, epoch):
        """Choose the epoch mixed into the per-sample generators (with ``seed``)."""
        self.epoch = int(epoch)

    def sample(self, i, epoch=None):
        """Item ``i`` as transformed in ``epoch`` (default: the epoch of :meth:`set_epoch`)."""
        tensors = self.read(i)
        if self.transform is not None:
            tensors = call_transform(self.transform, tensors, self.rng(i, epoch))
        return tensors

    def __getitem__(self, i):
        return self.sample(i)

    def sample_info(self, i):
        """{index, seed, split, shard, Omega_m, Omega_b, h, n_s, sigma8, A_s} of item ``i``
        (cosmology values not set in the campaign are None)."""
        return dict(self._info[self._item(i)])

    def __repr__(self):
        what = f"split={self.split!r}" if self.split is not None else f"{len(self)} simulations"
        return (f"ShardDataset({self.root!r}, {what}, fields={self.fields}, nc={self.nc}, "
                f"box_size={self.box_size:g}, n={len(self)})")


class EpochItems(torch.utils.data.Dataset):
    """The items a :class:`~cosmonet.train.sampler.ShardedBatchSampler` asks for: item
    ``epoch * len + i`` is ``dataset.sample(i, epoch)`` followed by ``i``, so the random
    transforms of an epoch travel in the index (no epoch state to reach DataLoader workers).

    dataset: anything with ``__len__`` and ``sample(i, epoch)`` (ShardDataset, SubcubeDataset).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        epoch, i = divmod(int(item), len(self.dataset))
        return tuple(self.dataset.sample(i, epoch)) + (i,)


class _Row:
    """Row ``k`` of an h5py dataset as an array-like that reads only what is sliced."""

    def __init__(self, ds, k):
        self.ds, self.k = ds, k
        self.dtype, self.shape = ds.dtype, tuple(ds.shape[1:])

    def __getitem__(self, sel):
        sel = sel if isinstance(sel, tuple) else (sel,)
        return self.ds[(self.k,) + sel]


def _present_fields(fh):
    """Field datasets present in an open shard (those of an earlier output as NAME@a=A)."""
    names = [name for name in FIELD_NAMES if isinstance(fh.get(name), h5py.Dataset)]
    for group in fh.keys():
        a = schema.output_a(group)
        if a is not None and isinstance(fh.get(group), h5py.Group):
            names += [f"{name}@a={a:g}" for name in FIELD_NAMES if isinstance(fh[group].get(name), h5py.Dataset)]
    return names
