"""Campaign configuration: YAML -> validated dataclass, with ``--set key=value`` overrides.

Every error is an :class:`~cosmonet.errors.InputError` whose one-line message names the
field, e.g. ``config: n_sims must be an integer >= 1 (got 'ten')``.
"""
import math
import os
from dataclasses import asdict, dataclass, field, fields

from ..errors import InputError, shown
from ..sim.simulation import SimConfig, SimParams
from ..yamlconfig import apply_overrides, load_yaml

#: dataset names a campaign can store (see docs/data-format.md)
FIELD_NAMES = ("za/disp", "lpt2/disp", "fastpm/disp", "za/vel", "lpt2/vel", "fastpm/vel", "density")
COSMOLOGY_MODES = ("list", "grid", "lhs")
#: the simulation engines: the MPI particle mesh (cosmonet.sim) and the batched torch one
ENGINES = ("mpi", "torch")
#: devices of the torch engine: cuda (each rank the GPU of its local rank), cpu, or auto
#: (cuda when torch sees a GPU, else cpu)
DEVICES = ("cuda", "cpu", "auto")


@dataclass(frozen=True, kw_only=True)
class CampaignConfig(SimParams):
    """A simulation campaign (lengths in Mpc/h). See ``configs/*.yaml`` and docs/campaigns.md.

    n_sims: number of simulations; nc, box, steps, boost, a_start, a_final: as run-sim;
    save_a: outputs at several scale factors, as run-sim --save-a (a list; engine mpi);
    seed: base seed (simulation i uses a seed derived from (seed, i));
    cosmology: fixed (a string or overrides), or {list: [...]}, {grid: {...}}, {lhs: {...}};
    ranks_per_sim: ranks that run one simulation together; shard_size: simulations per file;
    fields: datasets to store; density_nmesh: mesh of the "density" field (default nc);
    splits: optional {name: count} or {name: fraction} assigning consecutive indices to
    train/val/test... (see :func:`resolve_splits`; after validation always counts);
    engine: "mpi" (default) or "torch" (:mod:`cosmonet.torchpm`; part of what the campaign
    is, a rerun may not change it); device: the torch engine's device (cuda, cpu, auto);
    batch_size: simulations per torch batch; noise_workers: processes per rank drawing
    the torch engine's white noise (device, batch_size and noise_workers change only float
    rounding, so a rerun may change them, like ranks_per_sim); out: output directory.
    """

    n_sims: int
    seed: int = 0
    cosmology: object = "planck15"
    ranks_per_sim: int = 1
    shard_size: int = 100
    fields: tuple = ("za/disp", "lpt2/disp", "fastpm/disp", "fastpm/vel")
    density_nmesh: int = 0
    splits: dict = field(default_factory=dict)
    engine: str = "mpi"
    device: str = "cuda"
    batch_size: int = 64
    noise_workers: int = 1
    out: str = "out/campaign"

    def sim_fields(self):
        """The keys shared with :class:`~cosmonet.sim.simulation.SimConfig` (nc, box, steps,
        boost, a_start, a_final): what every simulation of the campaign has in common."""
        return {k: getattr(self, k) for k in SIM_KEYS}

    def sim_config(self, seed, cosmology=None):
        """The :class:`~cosmonet.sim.simulation.SimConfig` of one planned simulation
        (``cosmology`` None: SimConfig's default, planck15)."""
        extra = {} if cosmology is None else {"cosmology": cosmology}
        return SimConfig(seed=seed, **self.sim_fields(), **extra)

    def to_dict(self):
        """Plain dict in the order of the YAML keys (as stored in campaign.yaml); ``save_a``
        only when it lists outputs (so a campaign without it stores what it always did)."""
        d = asdict(self)
        d["fields"] = list(self.fields)
        d["save_a"] = list(self.save_a)
        return {k: d[k] for k in _KEYS if k != "save_a" or self.save_a}

    def stored_fields(self):
        """The datasets of a shard: ``fields`` at a_final, and with ``save_a`` the vector
        fields (not density, painted at a_final only) of each earlier output as
        ``a_A.AAAA/NAME`` (:func:`~cosmonet.io.schema.output_group`)."""
        from ..io.schema import output_group
        extra = [f"{output_group(a)}/{name}" for a in self.save_a[:-1] for name in self.fields if name != "density"]
        return tuple(self.fields) + tuple(extra)

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


#: the simulation keys, checked by SimParams (one place for their rules)
SIM_KEYS = tuple(f.name for f in fields(SimParams))
_INT_KEYS = ("n_sims", "nc", "steps", "seed", "ranks_per_sim", "shard_size", "density_nmesh", "batch_size",
             "noise_workers")
_FLOAT_KEYS = ("box", "boost", "a_start", "a_final")
#: the YAML keys, in the order campaign.yaml stores them
_KEYS = ("n_sims",) + SIM_KEYS + ("seed", "cosmology", "ranks_per_sim", "shard_size", "fields", "density_nmesh",
                                  "splits", "engine", "device", "batch_size", "noise_workers",
                                  "out")


def _fail(key, msg):
    raise InputError(f"config: {key} {msg}")


def _as_int(key, val, minimum):
    if isinstance(val, bool) or not isinstance(val, int):
        _fail(key, f"must be an integer >= {minimum} (got {shown(val)})")
    if val < minimum:
        _fail(key, f"must be an integer >= {minimum} (got {val})")
    return val


def _as_float(key, val):
    if isinstance(val, str):          # YAML 1.1 reads 1e2 (no dot) as a string
        try:
            val = float(val)
        except ValueError:
            _fail(key, f"must be a number (got {shown(val)})")
    if isinstance(val, bool) or not isinstance(val, (int, float)) or val != val or val in (float("inf"), float("-inf")):
        _fail(key, f"must be a number (got {shown(val)})")
    return float(val)


def resolve_splits(splits, n_sims):
    """The splits as {name: count}, in the order given.

    Counts (integers >= 0) must add up to ``n_sims`` and are kept as they are. Fractions
    (any value written with a decimal point, e.g. ``{train: 0.75, val: 0.125, test: 0.125}``;
    numbers in [0, 1] summing to 1) are scaled with ``n_sims`` by the largest-remainder
    rule: each split gets floor(fraction * n_sims), and the simulations left over go one
    each to the splits with the largest remainders (ties: the split listed first). A split
    with a fraction > 0 that would get no simulation is an error, so any ``n_sims``
    override either works or says which split is empty.
    """
    if not isinstance(splits, dict):
        _fail("splits", f"must be a mapping of split name to count or fraction (got {shown(splits)})")
    if not any(isinstance(v, float) for v in splits.values()):
        for name, count in splits.items():
            _as_int(f"splits.{name}", count, 0)
        if splits and sum(splits.values()) != n_sims:
            _fail("splits", f"counts add up to {sum(splits.values())}, not n_sims = {n_sims}")
        return dict(splits)
    for name, frac in splits.items():
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
            _fail(f"splits.{name}", f"must be a fraction in [0, 1] (got {shown(frac)})")
    total = sum(splits.values())
    if abs(total - 1) > 1e-6:
        _fail("splits", f"fractions add up to {total:g}, not 1")
    exact = {name: frac * n_sims for name, frac in splits.items()}
    counts = {name: int(math.floor(x + 1e-9)) for name, x in exact.items()}
    left = n_sims - sum(counts.values())
    names = list(splits)
    by_remainder = sorted(names, key=lambda k: (-(exact[k] - counts[k]), names.index(k)))
    for name in by_remainder[:max(left, 0)]:
        counts[name] += 1
    for name, frac in splits.items():
        if frac > 0 and counts[name] == 0:
            _fail(f"splits.{name}", f"= {frac:g} of n_sims = {n_sims} selects no simulation "
                                    f"(raise n_sims or the fraction, or give counts)")
    return counts


def _check_cosmology(spec):
    """Validate the cosmology block now (so errors come before any rank starts work)."""
    from .plan import cosmology_plan_size, resolve_cosmology_block
    resolve_cosmology_block(spec)
    return cosmology_plan_size(spec)


def _check_engine(cfg):
    """engine, device, batch_size (what does not need torch: see :func:`check_engine_available`)."""
    if cfg.engine not in ENGINES:
        _fail("engine", f"must be one of {', '.join(ENGINES)} (got {shown(cfg.engine)})")
    if cfg.device not in DEVICES:
        _fail("device", f"must be one of {', '.join(DEVICES)} (got {shown(cfg.device)}); under mpirun/srun "
                        f"each rank takes the GPU of its local rank")
    if cfg.engine == "torch" and cfg.save_a:
        _fail("save_a", "needs engine mpi (the torch engine stores the a_final output only)")
    if cfg.engine == "torch" and cfg.ranks_per_sim != 1:
        _fail("ranks_per_sim", f"must be 1 with engine torch (each rank runs whole boxes on its own "
                               f"device; got {cfg.ranks_per_sim})")


def check_engine_available(cfg):
    """Raise InputError when the campaign's engine cannot run here: engine torch with
    device cuda and no CUDA device visible to torch. Called before the output directory
    is made (not by :func:`validate`: ``verify`` reads a GPU campaign on any machine)."""
    if cfg.engine != "torch" or cfg.device != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise InputError(f"config: device cuda requested for engine torch but CUDA is not available "
                         f"(torch {torch.__version__}); use --set device=cpu or device=auto")


def validate(raw):
    """A :class:`CampaignConfig` from a plain dict; raises InputError naming the field."""
    if not isinstance(raw, dict):
        raise InputError("config: the file must hold a mapping of keys (n_sims, nc, box, ...)")
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise InputError(f"config: unknown key {shown(str(unknown[0]))} (known: {', '.join(_KEYS)})")
    if "n_sims" not in raw:
        raise InputError("config: n_sims is required")
    kw = dict(raw)
    for key in _INT_KEYS:
        if key == "seed" and key in kw:
            from .plan import check_seed
            kw[key] = check_seed("config: seed", kw[key])
        elif key in kw:
            kw[key] = _as_int(key, kw[key], 0 if key == "density_nmesh" else 1)
    for key in _FLOAT_KEYS:
        if key in kw:
            kw[key] = _as_float(key, kw[key])
    if "save_a" in kw:
        if not isinstance(kw["save_a"], (list, tuple)):
            _fail("save_a", f"must be a list of scale factors, e.g. [0.5, 0.67, 1] (got {shown(kw['save_a'])})")
        kw["save_a"] = tuple(_as_float("save_a", v) for v in kw["save_a"])
    try:
        cfg = CampaignConfig(**kw)          # SimParams checks nc, box, steps, boost, a_start, a_final
    except InputError as exc:
        raise InputError(f"config: {exc}") from None
    if not isinstance(cfg.fields, (list, tuple)) or not cfg.fields:
        _fail("fields", f"must be a non-empty list of {', '.join(FIELD_NAMES)} (got {shown(cfg.fields)})")
    for name in cfg.fields:
        if name not in FIELD_NAMES:
            _fail("fields", f"has unknown field {shown(name)} (known: {', '.join(FIELD_NAMES)})")
    if len(set(cfg.fields)) != len(cfg.fields):
        _fail("fields", "lists a field twice")
    if cfg.density_nmesh == 1:
        _fail("density_nmesh", "must be >= 2 (or 0 for nc)")
    object.__setattr__(cfg, "splits", resolve_splits(cfg.splits, cfg.n_sims))
    if not isinstance(cfg.out, str) or not cfg.out:
        _fail("out", f"must be a directory path (got {shown(cfg.out)})")
    _check_cosmology(cfg.cosmology)
    _check_engine(cfg)
    object.__setattr__(cfg, "fields", tuple(cfg.fields))
    if cfg.density_nmesh == 0:
        object.__setattr__(cfg, "density_nmesh", cfg.nc)
    return cfg


def load_config(path, overrides=(), out=None):
    """Read, override and validate a campaign YAML file."""
    raw = load_yaml(path, "config")
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
    from ..io.atomic import check_writable_dir
    try:
        check_writable_dir(os.path.join(path, "probe"))
    except InputError:
        raise InputError(f"config: out {path} is not writable") from None
