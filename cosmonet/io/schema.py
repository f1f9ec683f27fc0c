"""The schema of cosmonet's HDF5 files, stated once, and the checks every reader runs.

docs/data-format.md describes the same schema in words; this module is what enforces it.
Two kinds of file:

- the simulation file of ``cosmonet run-sim`` (and of ``emulate``): displacement and
  velocity datasets ``NAME/disp``, ``NAME/vel`` of shape (3, nc, nc, nc);
- the campaign shard of ``cosmonet simulate``: the same fields with a leading axis of n
  simulations, ``density`` (n, 1, M, M, M) and the ``params/*`` table of n rows.

Every field dataset must hold real floating-point numbers (float32 as written; float16
and float64 are read too); integer, boolean, complex, string and compound data are
refused, as are datasets of another shape and attributes of the wrong type (an integer
``nc`` stored as a float or a string, a non-finite ``box_size``, an array where a scalar
belongs). The checks here read metadata only (dtypes, shapes, attributes, the small
params table); the field values are checked for NaN and infinity where they are read,
with :func:`count_nonfinite` (blockwise, so no second copy of a big array is made).
Every failure is an :class:`~cosmonet.errors.InputError` of one line naming the file,
the dataset or attribute, and what is wrong.
"""
import math

import h5py
import numpy as np

from ..errors import InputError

#: components of a vector field (displacement, velocity); a density field has one
VECTOR, SCALAR = 3, 1
#: the cosmology columns of a shard's params table (float64; NaN where not set)
PARAM_COLUMNS = ("Omega_m", "Omega_b", "h", "n_s", "sigma8", "A_s")

# attribute rules: (kind, rule); kind "int" takes integers only, "float" takes any real
# number (integers included), "str" takes text; rule "> x" / ">= x" bounds a number, and a
# float must be finite
_POS, _NONNEG, _ANY = "> 0", ">= 0", ""
_COMMON = {
    "nc": ("int", ">= 1"), "box_size": ("float", _POS), "steps": ("int", _NONNEG),
    "boost": ("float", _POS), "force_nmesh": ("int", ">= 1"), "a_start": ("float", _POS),
    "a_final": ("float", _POS), "code_version": ("str", _ANY),
    "save_a": ("floats", _POS), "save_steps": ("ints", ">= 1"),
}
#: root attributes of a simulation file (``nc`` and ``box_size`` required)
SIM_ATTRS = dict(_COMMON, box=("float", _POS), seed=("int", _NONNEG), n_ranks=("int", ">= 1"),
                 Omega_m=("float", _POS), Omega_b=("float", _NONNEG), h=("float", _POS), n_s=("float", _ANY),
                 sigma8=("float", _POS), A_s=("float", _POS), transfer=("str", _ANY),
                 linear_field=("str", _ANY), engine=("str", _ANY), checkpoint=("str", _ANY),
                 emulated_from=("str", _ANY))
#: root attributes of a campaign shard (``nc`` and ``box_size`` required)
SHARD_ATTRS = dict(_COMMON, density_nmesh=("int", ">= 1"), shard=("int", _NONNEG), n=("int", ">= 1"),
                   campaign_config=("str", _ANY))
REQUIRED_ATTRS = ("nc", "box_size")
#: the params table of a shard: name -> dtype kinds accepted (numpy ``dtype.kind``)
PARAMS = dict({"index": "iu", "seed": "iu", "split": "SOU", "done": "iub"}, **{c: "f" for c in PARAM_COLUMNS})
REQUIRED_PARAMS = ("index", "seed", "split")
_KIND_NAMES = {"i": "integer", "u": "integer", "b": "boolean", "f": "floating point", "c": "complex",
               "S": "string", "U": "string", "O": "string", "V": "compound", "M": "datetime",
               "m": "timedelta"}


def _kind(dtype):
    return _KIND_NAMES.get(dtype.kind, str(dtype))


def is_field_name(name):
    """True for the field datasets of the schema: ``density`` and ``GROUP/disp``,
    ``GROUP/vel``, and ``a_A.AAAA/GROUP/disp``, ``a_A.AAAA/GROUP/vel`` (an output before a_final)."""
    parts = name.split("/")
    if len(parts) == 3 and output_a(parts[0]) is not None:
        parts = parts[1:]
    return name == "density" or (len(parts) == 2 and parts[1] in ("disp", "vel"))


# --------------------------------------------------------------------------- outputs at several a
#: the group of an output before a_final: ``a_`` and the scale factor with 4 decimals
OUTPUT_PREFIX = "a_"


def output_group(a):
    """Name of the group holding the output at scale factor ``a``: ``a_0.5000``."""
    return f"{OUTPUT_PREFIX}{float(a):.4f}"


def output_a(group):
    """The scale factor of an output group name (``a_0.5000`` -> 0.5), None for another name."""
    if not isinstance(group, str) or not group.startswith(OUTPUT_PREFIX):
        return None
    text = group[len(OUTPUT_PREFIX):]
    try:
        a = float(text)
    except ValueError:
        return None
    return a if math.isfinite(a) and a > 0 and output_group(a) == group else None


def split_field_ref(ref, option="field"):
    """``NAME`` or ``NAME@a=A`` (e.g. ``fastpm/disp@a=0.5``) -> (NAME, A or None);
    InputError naming ``option`` when A is not a number > 0."""
    if not isinstance(ref, str) or "@" not in ref:
        return ref, None
    name, _, at = ref.partition("@")
    key, eq, value = at.partition("=")
    try:
        a = float(value) if key.strip() == "a" and eq else None
    except ValueError:
        a = None
    if a is None or not math.isfinite(a) or a <= 0 or not name:
        raise InputError(f"{option} {ref!r}: expected NAME@a=A with A a scale factor > 0 (e.g. fastpm/disp@a=0.5)")
    return name, a


def file_outputs(attrs):
    """Scale factors of the outputs of a file (root attributes as a dict): its ``save_a``,
    or ``(a_final,)`` (``()`` when the file has no a_final)."""
    if "save_a" in attrs:
        return tuple(float(a) for a in np.atleast_1d(attrs["save_a"]))
    return (float(attrs["a_final"]),) if "a_final" in attrs else ()


def field_key(path, attrs, ref, option="field", suffix=""):
    """The dataset path of the field ``ref`` (``NAME`` or ``NAME@a=A``) in a file with root
    attributes ``attrs``: ``NAME`` for a_final (and without ``@a``), ``a_A.AAAA/NAME`` for
    an earlier output (``suffix``, e.g. ``/disp``, appended to NAME). InputError naming
    the file's outputs when it has none at A."""
    name, a = split_field_ref(ref, option)
    name += suffix
    if a is None:
        return name
    outputs = file_outputs(attrs)
    want = output_group(a)
    for i, have in enumerate(outputs):
        if output_group(have) == want:
            return name if i == len(outputs) - 1 else f"{want}/{name}"
    listed = ", ".join(f"{v:g}" for v in outputs) or "none recorded"
    raise InputError(f"{option} {ref!r}: {path} has no output at a = {a:g} (outputs at a = {listed})")


# --------------------------------------------------------------------------- attributes
def _check_attr(path, name, value, kind, rule):
    """The attribute as a plain Python value; InputError naming it when it has another type.
    Kinds ``floats`` and ``ints``: a 1-D array of at least one such number, each under ``rule``."""
    where = f"{path}: attribute {name!r}"
    if kind in ("floats", "ints"):
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.size < 1:
            raise InputError(f"{where} has shape {arr.shape}, expected a list of numbers")
        if arr.dtype.kind not in ("f" if kind == "floats" else "") + "iu":
            raise InputError(f"{where} holds {_kind(arr.dtype)} data, expected "
                             f"{'numbers' if kind == 'floats' else 'integers'}")
        return [_check_attr(path, name, v, kind[:-1], rule) for v in arr.tolist()]
    if isinstance(value, np.ndarray) and value.ndim > 0:
        what = {"int": "integer", "float": "number", "str": "text"}[kind]
        raise InputError(f"{where} is an array of shape {value.shape}, expected a single {what}")
    value = value.item() if hasattr(value, "item") else value
    if kind == "str":
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{where} is not UTF-8 text") from None
        if not isinstance(value, str):
            raise InputError(f"{where} is {type(value).__name__} {value!r}, expected text")
        return value
    ok = (isinstance(value, int) if kind == "int" else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok:
        what = "an integer" if kind == "int" else "a number"
        raise InputError(f"{where} is {type(value).__name__} {value!r}, expected {what}")
    if kind == "float" and not math.isfinite(value):
        raise InputError(f"{where} is {value!r}, expected a finite number")
    if rule:
        op, bound = rule.split()
        if not (value > float(bound) if op == ">" else value >= float(bound)):
            raise InputError(f"{where} is {value!r}, expected {rule}")
    return value


def check_attrs(path, attrs, spec, required=REQUIRED_ATTRS):
    """Root attributes ``attrs`` (an h5py AttributeManager or dict) checked against ``spec``:
    a plain dict (unknown attributes passed through as plain values)."""
    out = {}
    try:
        items = list(attrs.items())
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its attributes cannot be read ({type(exc).__name__})") from None
    for name, value in items:
        if name in spec:
            out[name] = _check_attr(path, name, value, *spec[name])
        else:
            out[name] = value.item() if hasattr(value, "item") and np.ndim(value) == 0 else value
    missing = [k for k in required if k not in out]
    if missing:
        raise InputError(f"{path} is not a cosmonet simulation file or campaign shard (no {missing[0]!r} attribute)")
    return out


# --------------------------------------------------------------------------- datasets
def check_dataset(path, f, name, shape, kinds="f"):
    """The h5py dataset ``name`` of the open file ``f``, checked: a dataset (not a group),
    of a dtype kind in ``kinds`` (default: floating point) and of ``shape`` (a tuple whose
    None entries match any length)."""
    obj = f.get(name)
    if obj is None:
        raise InputError(f"{path} has no dataset {name!r}")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path}: {name} is a {type(obj).__name__.lower()}, expected a dataset")
    dt = obj.dtype
    if dt.kind not in kinds or (dt.kind == "f" and dt.itemsize > 8):
        want = " or ".join(dict.fromkeys(_KIND_NAMES[k] for k in kinds))
        raise InputError(f"{path}: {name} holds {_kind(dt)} data ({dt}), expected {want}")
    got = tuple(obj.shape)
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise InputError(f"{path}: {name} has shape {got}, expected {want}")
    return obj


def _field_names(f, top=True):
    """The field datasets present at the schema's places: ``GROUP/disp``, ``GROUP/vel``,
    ``density``, and those of the output groups ``a_A.AAAA/GROUP/...``."""
    names = []
    for key in f.keys():
        obj = f.get(key)
        if key == "density" and top:
            names.append(key)
        elif isinstance(obj, h5py.Group):
            if top and output_a(key) is not None:
                names += [f"{key}/{sub}" for sub in _field_names(obj, top=False)]
            else:
                names += [f"{key}/{sub}" for sub in ("disp", "vel") if sub in obj]
    return names


def check_outputs(path, f, attrs):
    """The output groups of ``f`` agree with its ``save_a`` attribute: each ``a_A.AAAA``
    group is one of its outputs before the last, and ``save_steps`` has one count per output."""
    outputs = file_outputs(attrs)
    if "save_a" in attrs:
        if any(b <= a for a, b in zip(outputs[:-1], outputs[1:])):
            raise InputError(f"{path}: attribute 'save_a' must be ascending (got {list(outputs)})")
        if "a_final" in attrs and outputs[-1] != float(attrs["a_final"]):
            raise InputError(f"{path}: attribute 'save_a' must end at a_final = {attrs['a_final']:g} "
                             f"(got {list(outputs)})")
        if "save_steps" in attrs and len(attrs["save_steps"]) != len(outputs):
            raise InputError(f"{path}: attribute 'save_steps' has {len(attrs['save_steps'])} entries for "
                             f"{len(outputs)} outputs")
    groups = {output_group(a) for a in outputs[:-1]}
    for key in f.keys():
        if key.startswith(OUTPUT_PREFIX) and key not in groups:
            listed = ", ".join(f"{v:g}" for v in outputs) or "none"
            raise InputError(f"{path}: group {key} is not an output before a_final of its save_a "
                             f"(outputs at a = {listed})")


def field_shape(name, nc, density_nmesh=None):
    """Shape of one simulation's field ``name``: (3, nc, nc, nc), or (1, M, M, M) for density."""
    if name == "density":
        return (SCALAR,) + ((density_nmesh,) * 3 if density_nmesh is not None else (None,) * 3)
    return (VECTOR, nc, nc, nc)


def is_shard(f):
    """True when the open file has a ``params/index`` (a campaign shard), not a run-sim file."""
    p = f.get("params")
    return isinstance(p, h5py.Group) and "index" in p


def check_sim_file(path, f, required=REQUIRED_ATTRS):
    """Root attributes (plain dict) of the open run-sim file ``f``, after checking them and
    every field dataset (``NAME/disp``, ``NAME/vel``: floating point, (3, nc, nc, nc))."""
    attrs = check_attrs(path, f.attrs, SIM_ATTRS, required)
    check_outputs(path, f, attrs)
    nc = attrs.get("nc")
    for name in _field_names(f):
        if name == "density":
            continue
        check_dataset(path, f, name, (VECTOR, nc, nc, nc) if nc is not None else (VECTOR, None, None, None))
        if nc is None:
            shape = f[name].shape
            if len(set(shape[1:])) != 1:
                raise InputError(f"{path}: {name} has shape {shape}, expected (3, n, n, n)")
    return attrs


def check_shard_file(path, f, fields=None):
    """(root attributes, params table {name: array}) of the open campaign shard ``f``, after
    checking its attributes, every field dataset present (or those named in ``fields``, which
    must be present) and the params table: n rows, indices >= 0 and distinct, cosmology
    columns finite or NaN (not set)."""
    attrs = check_attrs(path, f.attrs, SHARD_ATTRS)
    if not is_shard(f):
        raise InputError(f"{path} is not a campaign shard (no params/index dataset)")
    index = check_dataset(path, f, "params/index", (None,), PARAMS["index"])
    n = index.shape[0]
    if n < 1:
        raise InputError(f"{path}: params/index is empty (a shard holds at least one simulation)")
    if "n" in attrs and attrs["n"] != n:
        raise InputError(f"{path}: attribute 'n' is {attrs['n']} but params/index has {n} rows")
    check_outputs(path, f, attrs)
    table = {}
    for name, kinds in PARAMS.items():
        if name in f["params"] or name in REQUIRED_PARAMS:
            table[name] = check_dataset(path, f, f"params/{name}", (n,), kinds)[...]
    idx = table["index"]
    if (idx < 0).any() or len(np.unique(idx)) != n:
        raise InputError(f"{path}: params/index must hold {n} distinct simulation indices >= 0 "
                         f"(got {idx.tolist()[:6]})")
    for col in PARAM_COLUMNS:
        if col in table and np.isinf(table[col]).any():
            raise InputError(f"{path}: params/{col} has {int(np.isinf(table[col]).sum())} infinite values")
    nc, mesh = attrs["nc"], attrs.get("density_nmesh")
    names = _field_names(f) if fields is None else list(fields)
    for name in names:
        if not is_field_name(name):
            raise InputError(f"{path}: {name!r} is not a field of the shard schema (density, NAME/disp, NAME/vel, "
                             f"a_A.AAAA/NAME/disp, a_A.AAAA/NAME/vel)")
        ds = check_dataset(path, f, name, (n,) + field_shape(name, nc, mesh))
        if name == "density" and len(set(ds.shape[2:])) != 1:
            raise InputError(f"{path}: density has shape {ds.shape}, expected (n, 1, M, M, M)")
    return attrs, table


# --------------------------------------------------------------------------- values
def _blocks(shape, itemsize, limit):
    """Index tuples that cover an array of ``shape`` in C order, each at most ``limit``
    bytes (at least one element)."""
    inner, k = itemsize, len(shape)
    while k > 0 and inner * shape[k - 1] <= limit:
        inner *= shape[k - 1]
        k -= 1
    if k == 0:
        yield ()
        return
    step = max(1, limit // inner)
    for outer in np.ndindex(*shape[:k - 1]):
        for lo in range(0, shape[k - 1], step):
            yield outer + (slice(lo, min(lo + step, shape[k - 1])),)


def count_nonfinite(values, limit=1 << 24):
    """Number of NaN and infinite entries of ``values`` (a numpy array, a torch tensor or
    an h5py dataset), counted in blocks of at most ``limit`` bytes: the temporaries stay
    that small and a dataset is read block by block, never whole. Non-float data: 0."""
    if hasattr(values, "detach"):                    # a torch tensor
        values = values.detach().cpu().numpy()
    dtype = values.dtype
    if dtype.kind not in "fc":
        return 0
    shape = tuple(values.shape)
    bad = 0
    for block in _blocks(shape, dtype.itemsize, limit):
        part = values[block] if block else values[()]
        part = np.asarray(part)
        bad += part.size - int(np.count_nonzero(np.isfinite(part)))
    return bad


def require_finite(values, path, name, what=""):
    """InputError ``PATH: NAME has N non-finite values (NaN or infinity)`` (``what``, e.g.
    ``"of simulation 3"``, after the name) unless every entry is finite."""
    bad = count_nonfinite(values)
    if bad:
        raise InputError(nonfinite_message(path, name, bad, what))


def nonfinite_message(path, name, bad, what=""):
    return f"{path}: {name}{' ' + what if what else ''} has {bad} non-finite values (NaN or infinity)"
