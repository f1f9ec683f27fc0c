"""Campaign configuration: YAML -> validated dataclass, with ``--set key=value`` overrides.

Every error is an :class:`~cosmonet.errors.InputError` whose one-line message names the
field, e.g. ``config: n_sims must be an integer >= 1 (got 'ten')``.
"""
import copy
import os
import re
from dataclasses import asdict, dataclass, field

import yaml

from .errors import InputError

#: dataset names a campaign can store (see docs/data-format.md)
FIELD_NAMES = ("za/disp", "lpt2/disp", "fastpm/disp", "za/vel", "lpt2/vel", "fastpm/vel", "density")
COSMOLOGY_MODES = ("list", "grid", "lhs")


@dataclass(frozen=True)
class CampaignConfig:
    """A simulation campaign (lengths in Mpc/h). See ``configs/*.yaml`` and docs/campaigns.md.

    n_sims: number of simulations; nc, box, steps, boost, a_start, a_final: as run-sim;
    seed: base seed (simulation i uses a seed derived from (seed, i));
    cosmology: fixed (a string or overrides), or {list: [...]}, {grid: {...}}, {lhs: {...}};
    ranks_per_sim: ranks that run one simulation together; shard_size: simulations per file;
    fields: datasets to store; density_nmesh: mesh of the "density" field (default nc);
    splits: optional {name: count} assigning consecutive indices to train/val/test...;
    out: output directory.
    """

    n_sims: int
    nc: int = 32
    box: float = 128.0
    steps: int = 10
    boost: float = 2
    a_start: float = 0.1
    a_final: float = 1.0
    seed: int = 0
    cosmology: object = "planck15"
    ranks_per_sim: int = 1
    shard_size: int = 100
    fields: tuple = ("za/disp", "lpt2/disp", "fastpm/disp", "fastpm/vel")
    density_nmesh: int = 0
    splits: dict = field(default_factory=dict)
    out: str = "out/campaign"

    def to_dict(self):
        d = asdict(self)
        d["fields"] = list(self.fields)
        return d

    @property
    def n_shards(self):
        return -(-self.n_sims // self.shard_size)

    def shard_indices(self, shard):
        """Simulation indices held by ``shard`` (consecutive)."""
        lo = shard * self.shard_size
        return list(range(lo, min(lo + self.shard_size, self.n_sims)))

    def split_of(self, index):
        """Name of the split holding simulation ``index`` ("" without splits)."""
        start = 0
        for name, count in self.splits.items():
            if index < start + count:
                return name
            start += count
        return ""


_INT_KEYS = ("n_sims", "nc", "steps", "seed", "ranks_per_sim", "shard_size", "density_nmesh")
_FLOAT_KEYS = ("box", "boost", "a_start", "a_final")
_KEYS = tuple(CampaignConfig.__dataclass_fields__)


def _fail(key, msg):
    raise InputError(f"config: {key} {msg}")


def _as_int(key, val, minimum):
    if isinstance(val, bool) or not isinstance(val, int):
        _fail(key, f"must be an integer >= {minimum} (got {val!r})")
    if val < minimum:
        _fail(key, f"must be an integer >= {minimum} (got {val})")
    return val


def _as_float(key, val):
    if isinstance(val, str):          # YAML 1.1 reads 1e2 (no dot) as a string
        try:
            val = float(val)
        except ValueError:
            _fail(key, f"must be a number (got {val!r})")
    if isinstance(val, bool) or not isinstance(val, (int, float)) or val != val or val in (float("inf"), float("-inf")):
        _fail(key, f"must be a number (got {val!r})")
    return float(val)


def _check_cosmology(spec):
    """Validate the cosmology block now (so errors come before any rank starts work)."""
    from .sim.campaign import cosmology_plan_size, resolve_cosmology_block
    resolve_cosmology_block(spec)
    return cosmology_plan_size(spec)


def validate(raw):
    """A :class:`CampaignConfig` from a plain dict; raises InputError naming the field."""
    if not isinstance(raw, dict):
        raise InputError("config: the file must hold a mapping of keys (n_sims, nc, box, ...)")
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise InputError(f"config: unknown key {str(unknown[0])!r} (known: {', '.join(_KEYS)})")
    if "n_sims" not in raw:
        raise InputError("config: n_sims is required")
    kw = dict(raw)
    for key in _INT_KEYS:
        if key in kw:
            kw[key] = _as_int(key, kw[key], 0 if key in ("seed", "density_nmesh") else 1)
    for key in _FLOAT_KEYS:
        if key in kw:
            kw[key] = _as_float(key, kw[key])
    cfg = CampaignConfig(**kw)
    if cfg.nc < 2:
        _fail("nc", f"must be an integer >= 2 (got {cfg.nc})")
    if not cfg.box > 0:
        _fail("box", f"must be > 0 Mpc/h (got {cfg.box})")
    if not (cfg.boost >= 1 and float(cfg.boost * cfg.nc).is_integer()):
        _fail("boost", f"must be >= 1 with boost * nc an integer (got {cfg.boost})")
    if not 0 < cfg.a_start < cfg.a_final:
        _fail("a_start", f"must satisfy 0 < a_start < a_final (got a_start={cfg.a_start}, a_final={cfg.a_final})")
    if not cfg.a_final <= 4:
        _fail("a_final", f"must be <= 4 (got {cfg.a_final})")
    if not isinstance(cfg.fields, (list, tuple)) or not cfg.fields:
        _fail("fields", f"must be a non-empty list of {', '.join(FIELD_NAMES)} (got {cfg.fields!r})")
    for name in cfg.fields:
        if name not in FIELD_NAMES:
            _fail("fields", f"has unknown field {name!r} (known: {', '.join(FIELD_NAMES)})")
    if len(set(cfg.fields)) != len(cfg.fields):
        _fail("fields", "lists a field twice")
    if cfg.density_nmesh == 1:
        _fail("density_nmesh", "must be >= 2 (or 0 for nc)")
    if not isinstance(cfg.splits, dict):
        _fail("splits", f"must be a mapping of split name to count (got {cfg.splits!r})")
    for name, count in cfg.splits.items():
        _as_int(f"splits.{name}", count, 0)
    if cfg.splits and sum(cfg.splits.values()) != cfg.n_sims:
        _fail("splits", f"counts add up to {sum(cfg.splits.values())}, not n_sims = {cfg.n_sims}")
    if not isinstance(cfg.out, str) or not cfg.out:
        _fail("out", f"must be a directory path (got {cfg.out!r})")
    _check_cosmology(cfg.cosmology)
    object.__setattr__(cfg, "fields", tuple(cfg.fields))
    if cfg.density_nmesh == 0:
        object.__setattr__(cfg, "density_nmesh", cfg.nc)
    return cfg


def _parse_override(item):
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {item!r}: expected key=value")
    if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", key.strip()):
        raise InputError(f"--set {item!r}: the key must be names joined by dots (e.g. cosmology.lhs_seed)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise InputError(f"--set {item!r}: cannot parse the value as YAML") from None
    return key.strip().split("."), value


def apply_overrides(raw, overrides):
    """Apply ``key=value`` / ``a.b.c=value`` overrides (values parsed as YAML) to a dict copy."""
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else _fail(".".join(path), "is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return raw


def load_config(path, overrides=(), out=None):
    """Read, override and validate a campaign YAML file."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise InputError(f"cannot read config {path} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"config {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise InputError(f"config {path} is not valid YAML{where}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(f"config {path} must hold a mapping of keys (n_sims, nc, box, ...), "
                         f"not a {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    if out is not None:
        raw["out"] = out
    return validate(raw)


def check_output_dir(path):
    """Create the campaign directory if needed; raise InputError if it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InputError(f"config: out {path} cannot be created ({exc.strerror})") from None
    if not os.path.isdir(path):
        raise InputError(f"config: out {path} is not a directory")
    from .io.atomic import check_writable_dir
    try:
        check_writable_dir(os.path.join(path, "probe"))
    except InputError:
        raise InputError(f"config: out {path} is not writable") from None
