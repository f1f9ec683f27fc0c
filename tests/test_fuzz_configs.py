"""Property-based fuzzing (hypothesis) of the campaign and training configs and ``--set``.

In-process, no subprocess: any dict of YAML-like values given to the validators, and any
``--set KEY=VALUE`` text, ends either in a clean refusal (:class:`InputError`, one line)
or in a configuration that a run can use (its invariants checked here, and the
simulation parameters accepted by :class:`SimConfig`). Any other exception is a bug.
"""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosmonet.campaign.config import validate
from cosmonet.errors import InputError
from cosmonet.sim.simulation import SimConfig
from cosmonet.train.trainconfig import DEFAULTS, validate_train_config
from cosmonet.yamlconfig import apply_overrides

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10, max_value=300), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0.01, max_value=10),
    st.text(max_size=12), st.sampled_from(["planck15", "za/disp", "fastpm/disp", "density", "1e2", "nan", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)

CAMPAIGN_KEYS = ["n_sims", "nc", "box", "steps", "boost", "a_start", "a_final", "seed", "cosmology",
                 "ranks_per_sim", "shard_size", "fields", "density_nmesh", "splits", "out"]
cosmologies = st.one_of(
    values, st.sampled_from(["planck15", "Omega_m=0.3", "sigma8=0.8,h=0.7", "Omega_m=-1", "h=abc", "wmap"]),
    st.fixed_dictionaries({"list": st.lists(st.sampled_from(["Omega_m=0.3", "sigma8=0.9", "x=1", 3]),
                                            max_size=3)}),
    st.fixed_dictionaries({"grid": st.dictionaries(st.sampled_from(["Omega_m", "sigma8", "bogus"]),
                                                   st.lists(st.floats(-1, 2), max_size=3), max_size=2)}),
    st.fixed_dictionaries({"lhs": st.dictionaries(st.sampled_from(["Omega_m", "sigma8"]),
                                                  st.lists(st.floats(-1, 2), min_size=0, max_size=3), max_size=2)}))


def mostly(valid, hostile=None):
    """``valid`` three times out of four, else a hostile value (any YAML-like data)."""
    return st.one_of(valid, valid, valid, values if hostile is None else st.one_of(hostile, values))


plausible = {
    "nc": mostly(st.sampled_from([4, 8, 16, 32]), st.integers(-2, 3)),
    "box": mostly(st.floats(1, 1000), st.floats(-10, 0)),
    "steps": mostly(st.integers(1, 20), st.integers(-1, 0)),
    "boost": mostly(st.sampled_from([1, 2, 1.5]), st.sampled_from([0.5, 3.3, 0])),
    "a_start": mostly(st.floats(0.01, 0.5), st.floats(-0.5, 0)),
    "a_final": mostly(st.floats(0.5, 4), st.floats(4.01, 10)),
    "seed": mostly(st.integers(0, 2 ** 62), st.integers(-5, -1)),
    "cosmology": mostly(st.sampled_from(["planck15", "Omega_m=0.3", {"list": ["Omega_m=0.3", "sigma8=0.9"]},
                                         {"grid": {"Omega_m": [0.25, 0.3]}}, {"lhs": {"Omega_m": [0.25, 0.35]}}]),
                        cosmologies),
    "ranks_per_sim": mostly(st.integers(1, 4), st.integers(-1, 0)),
    "shard_size": mostly(st.integers(1, 8), st.integers(-1, 0)),
    "fields": mostly(st.lists(st.sampled_from(["za/disp", "lpt2/disp", "fastpm/disp", "density"]), min_size=1,
                              max_size=4, unique=True),
                     st.lists(st.sampled_from(["za/disp", "x", "density"]), max_size=4)),
    "density_nmesh": mostly(st.sampled_from([0, 8, 16]), st.integers(-1, 1)),
    "splits": st.one_of(st.just({}), st.dictionaries(st.sampled_from(["train", "val", "test"]),
                                                     st.integers(-1, 10), max_size=3), values),
    "out": mostly(st.just("out/x"), st.just("")),
}
campaign_dicts = st.fixed_dictionaries({"n_sims": mostly(st.integers(1, 20), st.integers(-2, 0))},
                                       optional={**plausible, "bogus_key": values})


def _check_campaign(cfg):
    """Invariants of a validated campaign: what the runner relies on."""
    assert isinstance(cfg.n_sims, int) and cfg.n_sims >= 1
    assert isinstance(cfg.nc, int) and cfg.nc >= 2
    assert math.isfinite(cfg.box) and cfg.box > 0
    assert 0 < cfg.a_start < cfg.a_final <= 4
    assert float(cfg.boost * cfg.nc).is_integer() and cfg.boost >= 1
    assert cfg.shard_size >= 1 and cfg.ranks_per_sim >= 1 and cfg.density_nmesh >= 2
    assert cfg.fields and len(set(cfg.fields)) == len(cfg.fields)
    assert not cfg.splits or sum(cfg.splits.values()) == cfg.n_sims
    assert isinstance(cfg.out, str) and cfg.out
    # a simulation of this campaign is accepted by the engine's own checks
    SimConfig(nc=cfg.nc, box=cfg.box, steps=cfg.steps, boost=cfg.boost, seed=0, a_start=cfg.a_start,
              a_final=cfg.a_final)


def _validate_or_refuse(fn, raw):
    try:
        return fn(raw)
    except InputError as exc:
        text = str(exc)
        assert text and "\n" not in text, repr(text)
        return None


@SETTINGS
@given(campaign_dicts)
def test_campaign_config_fuzz(raw):
    cfg = _validate_or_refuse(validate, raw)
    if cfg is not None:
        _check_campaign(cfg)


valid_train = {"batch_size": st.integers(1, 8), "base_batch": st.integers(1, 8), "lr": st.floats(1e-5, 1),
               "epochs": st.integers(1, 5), "max_steps": st.integers(0, 9), "optimizer": st.sampled_from(["adam", "sgd"]),
               "weight_decay": st.floats(0, 0.1), "scheduler": st.sampled_from(["cosine", "constant"]),
               "checkpoint_every": st.integers(1, 9), "log_every": st.integers(1, 9), "seed": st.integers(0, 99),
               "density_weight": st.floats(0, 1), "backend": st.just("ddp")}
valid_data = {"scale": st.floats(0.1, 10), "augment": st.booleans(), "num_workers": st.integers(0, 2),
              "subcube": st.integers(0, 32), "input": st.just("za/disp"), "params": st.just(["Omega_m"])}
hostile_scalar = st.one_of(st.floats(-1, 0), st.integers(-3, 0), st.floats(allow_nan=True, allow_infinity=True),
                           values)
train_sections = st.fixed_dictionaries({
    "model": mostly(st.just({"name": "unet"})),
    "data": st.fixed_dictionaries({"root": st.just("data/x")},
                                  optional={k: mostly(v, hostile_scalar) for k, v in valid_data.items()}),
    "train": st.fixed_dictionaries({}, optional={**{k: mostly(v, hostile_scalar) for k, v in valid_train.items()},
                                                 "bogus": values}),
}, optional={"out": mostly(st.just("runs/x")), "bogus": values})


@SETTINGS
@given(train_sections)
def test_train_config_fuzz(raw):
    raw = dict(raw)
    if isinstance(raw.get("data"), dict):
        raw["data"].setdefault("root", "data/x")
    cfg = _validate_or_refuse(validate_train_config, raw)
    if cfg is None:
        return
    t, d = cfg["train"], cfg["data"]
    for key in ("lr", "weight_decay", "density_weight"):
        assert isinstance(t[key], float) and math.isfinite(t[key]) and t[key] >= 0
    assert t["lr"] > 0 and math.isfinite(d["scale"]) and d["scale"] > 0
    for key in ("batch_size", "base_batch", "epochs", "checkpoint_every", "log_every"):
        assert isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] >= 1
    assert t["optimizer"] in ("adam", "sgd") and t["scheduler"] in ("cosine", "constant")
    assert isinstance(cfg["out"], str) and isinstance(cfg["model"]["name"], str)


keys = st.one_of(st.sampled_from(CAMPAIGN_KEYS), st.sampled_from(CAMPAIGN_KEYS), st.sampled_from(
    ["cosmology.lhs_seed", "cosmology.list", "splits.train", "n_sims.x", "", ".", "a..b"]), st.text(max_size=10))
override_text = st.one_of(st.sampled_from(["2", "8", "16", "0.5", "1.5", "64.0", "planck15", "[za/disp, fastpm/disp]",
                                           "{}", "1e2", "3"]),
                          st.integers(-3, 40).map(str), st.text(max_size=20), st.sampled_from(
    ["[1, 2", "{a: 1", "!!python/object:os.system", "1e400", "-0", ".nan", "null", "~", "[za/disp]",
     "{train: 1, test: 1}", "2020-01-01", "0x10", "1_000", "'8'"]))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, override_text), st.text(max_size=15)),
                     min_size=1, max_size=3)


@SETTINGS
@given(overrides)
def test_set_parser_fuzz_campaign(items):
    base = {"n_sims": 2, "nc": 8, "box": 32.0, "steps": 1, "shard_size": 2}
    try:
        raw = apply_overrides(base, items)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    cfg = _validate_or_refuse(validate, raw)
    if cfg is not None:
        _check_campaign(cfg)


train_keys = st.one_of(st.sampled_from([f"{s}.{k}" for s in ("data", "train") for k in DEFAULTS[s]
                                        if k not in ("root", "target", "backend")]),
                       st.sampled_from(["out", "model.name", "model", "train", "train.lr.x"]), st.text(max_size=10))


@SETTINGS
@given(st.lists(st.builds(lambda k, v: f"{k}={v}", train_keys, override_text), min_size=1, max_size=3))
def test_set_parser_fuzz_train(items):
    base = {"model": {"name": "unet"}, "data": {"root": "data/x"}, "out": "runs/x"}
    try:
        raw = apply_overrides(base, items)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    _validate_or_refuse(validate_train_config, raw)


@pytest.mark.parametrize("raw", [
    {"n_sims": 2, "a_final": 5.0},
    {"n_sims": 2, "box": float("nan")},
    {"n_sims": 2, "cosmology": {"lhs": {"Omega_m": [0.5, 0.1]}}},
])
def test_known_bad_campaigns_are_refused(raw):
    with pytest.raises(InputError):
        validate(raw)
