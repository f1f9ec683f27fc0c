"""The campaign plan: simulation index -> (seed, cosmology, split). Pure and deterministic.

The plan depends only on the configuration, never on the number of ranks, the
``ranks_per_sim`` or on how often a run was interrupted, so every restart and every
decomposition produces the same simulations.

Cosmology blocks (YAML):

- fixed: ``planck15``, ``"Omega_m=0.3,sigma8=0.8"`` or ``{Omega_m: 0.3, sigma8: 0.8}``
  (overrides on planck15; ``preset:`` picks another base);
- ``{list: [c0, c1, ...]}``: simulation i gets entry ``i % len``; an entry is a string or a
  mapping of overrides (which may hold ``A_s_scale``), on ``base`` (default planck15);
- ``{grid: {A_s_scale: [0.2, 0.8], Omega_m: [0.25, 0.35]}, base: planck15}``: the
  cartesian product in the order written, simulation i gets point ``i % size``;
- ``{lhs: {Omega_m: [0.25, 0.35], sigma8: [0.7, 0.9]}, base: ..., lhs_seed: 1}``: a
  Latin hypercube of ``n_sims`` points over the ranges (default lhs_seed: the base seed).

``A_s_scale`` multiplies the primordial amplitude: A_s by the factor when the base is
normalised by A_s, sigma8 by its square root otherwise (exact in linear theory).
"""
import itertools
from dataclasses import dataclass

import numpy as np

from ..cosmology import Cosmology, parse_cosmology
from ..errors import InputError, shown

SCALE_KEY = "A_s_scale"
#: every seed is below 2^63: run-sim's ``--seed``, a campaign's ``seed`` and
#: ``cosmology.lhs_seed``, and the per-simulation seeds derived from them. They are stored
#: as signed 64-bit integers (``params/seed`` of a shard, the ``seed`` attribute of a
#: run-sim file), and the white noise takes any seed of that range.
SEED_LIMIT = 2 ** 63
SEED_RULE = "an integer in [0, 2^63)"


def check_seed(name, value):
    """``value`` as a seed, or InputError ``NAME must be an integer in [0, 2^63) (got V)``
    (``name`` as the user wrote it: ``--seed``, ``config: seed``, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < SEED_LIMIT:
        raise InputError(f"{name} must be {SEED_RULE} (got {shown(value)})")
    return int(value)


@dataclass(frozen=True)
class SimSpec:
    """One planned simulation."""

    index: int
    seed: int
    cosmology: Cosmology
    split: str = ""


def simulation_seed(base_seed, index):
    """Seed of simulation ``index``: a hash of (base_seed, index) (SeedSequence), below
    2^63 = :data:`SEED_LIMIT` by construction (a 32-bit word shifted by 31 bits, XOR a
    32-bit word), so every derived seed is a valid seed whatever the base seed."""
    state = np.random.SeedSequence([int(base_seed), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def with_amplitude_scale(cosmo, scale):
    """Scale the primordial amplitude A_s by ``scale`` (sigma8 by sqrt(scale))."""
    if not scale > 0:
        raise InputError(f"config: cosmology {SCALE_KEY} must be > 0 (got {scale})")
    if cosmo.A_s is not None:
        return cosmo.with_params(A_s=cosmo.A_s * scale)
    return cosmo.with_params(sigma8=cosmo.sigma8 * float(np.sqrt(scale)))


def _point(base, params):
    params = dict(params)
    scale = params.pop(SCALE_KEY, None)
    cosmo = base.with_params(**params) if params else base
    return with_amplitude_scale(cosmo, scale) if scale is not None else cosmo


def _mode(spec):
    if isinstance(spec, dict):
        modes = [m for m in ("list", "grid", "lhs") if m in spec]
        if len(modes) > 1:
            raise InputError(f"config: cosmology has both '{modes[0]}' and '{modes[1]}'")
        if modes:
            allowed = {modes[0], "base"} | ({"lhs_seed"} if modes[0] == "lhs" else set())
            extra = set(spec) - allowed
            if extra:
                raise InputError(f"config: cosmology.{sorted(extra)[0]} is not allowed with '{modes[0]}'")
            if "lhs_seed" in spec:
                check_seed("config: cosmology.lhs_seed", spec["lhs_seed"])
            return modes[0]
    return "fixed"


def _base(spec):
    return parse_cosmology(spec.get("base", "planck15"))


def _string_overrides(text):
    """``"Omega_m=0.3,A_s_scale=1.8"`` -> dict; None when the string names a preset."""
    tokens = [t.strip() for t in str(text).split(",") if t.strip()]
    if not tokens or "=" not in tokens[0]:
        return None
    out = {}
    for tok in tokens:
        key, sep, val = tok.partition("=")
        if not sep:
            raise InputError(f"config: cosmology entry {shown(text)}: bad item '{tok}' (expected key=value)")
        try:
            out[key.strip()] = val.strip() if key.strip() == "transfer" else float(val)
        except ValueError:
            raise InputError(f"config: cosmology entry {shown(text)}: '{key.strip()}' needs a number") from None
    return out


def _list_entries(spec):
    entries = spec["list"]
    if not isinstance(entries, list) or not entries:
        raise InputError("config: cosmology.list must be a non-empty list")
    base = _base(spec)
    out = []
    for entry in entries:
        if isinstance(entry, str) and _string_overrides(entry) is not None:
            entry = _string_overrides(entry)        # overrides on base, like a mapping
        if isinstance(entry, dict):
            entry = dict(entry)
            scale = entry.pop(SCALE_KEY, None)
            preset = entry.pop("preset", None)
            cosmo = _point(parse_cosmology(preset) if preset else base, entry)
            out.append(with_amplitude_scale(cosmo, scale) if scale is not None else cosmo)
        else:
            out.append(parse_cosmology(entry))
    return out


def _grid_points(spec):
    grid = spec["grid"]
    if not isinstance(grid, dict) or not grid:
        raise InputError("config: cosmology.grid must map parameter names to lists of values")
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"config: cosmology.grid.{key} must be a non-empty list")
        axes.append([(key, v) for v in values])
    base = _base(spec)
    return [_point(base, combo) for combo in itertools.product(*axes)]


def _lhs_ranges(spec):
    ranges = spec["lhs"]
    if not isinstance(ranges, dict) or not ranges:
        raise InputError("config: cosmology.lhs must map parameter names to [min, max]")
    out = {}
    for key, rng in ranges.items():
        if (not isinstance(rng, list) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)):
            raise InputError(f"config: cosmology.lhs.{key} must be [min, max] (got {shown(rng)})")
        if not rng[0] < rng[1]:
            raise InputError(f"config: cosmology.lhs.{key} has min >= max ({rng[0]} >= {rng[1]})")
        out[key] = (float(rng[0]), float(rng[1]))
    return out


def latin_hypercube(ranges, n, seed):
    """``n`` points of a Latin hypercube over ``ranges`` {name: (min, max)}; dict of arrays."""
    rng = np.random.default_rng([int(seed), 0x1A5])
    out = {}
    for key, (lo, hi) in ranges.items():
        u = (rng.permutation(n) + rng.uniform(size=n)) / n
        out[key] = lo + u * (hi - lo)
    return out


def resolve_cosmology_block(spec):
    """Validate a cosmology block; returns its mode. Raises InputError naming the field."""
    mode = _mode(spec)
    if mode == "fixed":
        parse_cosmology(spec)
    elif mode == "list":
        _list_entries(spec)
    elif mode == "grid":
        _grid_points(spec)
    else:
        _lhs_ranges(spec)
        base = _base(spec)
        for key, (lo, hi) in _lhs_ranges(spec).items():   # the corners must be valid cosmologies
            _point(base, {key: lo}), _point(base, {key: hi})
    return mode


def cosmology_plan_size(spec):
    """Number of distinct cosmologies of a list or grid block (None for fixed and lhs)."""
    mode = _mode(spec)
    if mode == "list":
        return len(spec["list"])
    if mode == "grid":
        return len(_grid_points(spec))
    return None


def cosmology_counts(specs):
    """[(cosmology, number of simulations)] of a plan, most common first (ties in order of
    first appearance): the first is what a campaign of several cosmologies is described by."""
    counts, first = {}, {}
    for i, s in enumerate(specs):
        counts[s.cosmology] = counts.get(s.cosmology, 0) + 1
        first.setdefault(s.cosmology, i)
    return sorted(counts.items(), key=lambda cn: (-cn[1], first[cn[0]]))


def plan(cfg):
    """The full plan of a :class:`~cosmonet.campaign.config.CampaignConfig`: a list of SimSpec."""
    spec = cfg.cosmology
    mode = resolve_cosmology_block(spec)
    n = cfg.n_sims
    if mode == "fixed":
        c = parse_cosmology(spec)
        cosmos = [c] * n
    elif mode == "list":
        entries = _list_entries(spec)
        cosmos = [entries[i % len(entries)] for i in range(n)]
    elif mode == "grid":
        points = _grid_points(spec)
        cosmos = [points[i % len(points)] for i in range(n)]
    else:
        base = _base(spec)
        samples = latin_hypercube(_lhs_ranges(spec), n, spec.get("lhs_seed", cfg.seed))
        cosmos = [_point(base, {k: float(v[i]) for k, v in samples.items()}) for i in range(n)]
    return [SimSpec(index=i, seed=simulation_seed(cfg.seed, i), cosmology=cosmos[i], split=cfg.split_of(i))
            for i in range(n)]
