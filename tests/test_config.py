"""Campaign configuration and plan, in process (fast): validation, ``--set`` overrides, the
deterministic plan (seeds, cosmology blocks fixed / list / grid / lhs, A_s_scale) and splits.

Contract for bad input: an :class:`InputError` whose message is one line naming the field.
"""
import dataclasses
import glob
import itertools
import math
import os

import numpy as np
import pytest
import yaml

from cosmonet.campaign.config import CampaignConfig, apply_overrides, load_config, validate
from cosmonet.cosmology import Cosmology
from cosmonet.errors import InputError
from cosmonet.campaign.plan import SimSpec, latin_hypercube, plan, simulation_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANCK_SIGMA8 = Cosmology.planck15().sigma8
LHS = {"lhs": {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9]}}


def _raw(**kw):
    raw = {"n_sims": 6, "nc": 8, "box": 64.0, "steps": 2, "seed": 11, "shard_size": 2}
    raw.update(kw)
    return raw


def _cfg(**kw):
    return validate(_raw(**kw))


def _error(fn, *args):
    """The one-line message of the InputError raised by ``fn(*args)``."""
    with pytest.raises(InputError) as info:
        fn(*args)
    msg = str(info.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------- valid configs
def test_minimal_config_gets_defaults():
    cfg = validate({"n_sims": 3})
    assert isinstance(cfg, CampaignConfig)
    assert cfg.n_sims == 3 and cfg.nc == 32 and cfg.box == 128.0
    assert cfg.density_nmesh == cfg.nc          # 0 means "nc"
    assert isinstance(cfg.fields, tuple) and cfg.fields
    assert cfg.splits == {} and cfg.split_of(0) == ""


def test_demo_config_is_valid():
    cfg = load_config(os.path.join(REPO, "configs", "demo.yaml"))
    assert cfg.n_shards == -(-cfg.n_sims // cfg.shard_size)
    assert not cfg.splits or sum(cfg.splits.values()) == cfg.n_sims


def _shipped(kind):
    """Shipped configs of one kind: campaigns hold n_sims, training configs a model section."""
    import yaml
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    key = "n_sims" if kind == "campaign" else "model"
    return [p for p in paths if key in (yaml.safe_load(open(p)) or {})]


@pytest.mark.parametrize("path", _shipped("campaign"), ids=os.path.basename)
def test_shipped_campaign_configs_are_valid(path):
    cfg = load_config(path)
    specs = plan(cfg)
    assert len(specs) == cfg.n_sims and [s.index for s in specs] == list(range(cfg.n_sims))


@pytest.mark.parametrize("path", _shipped("train"), ids=os.path.basename)
def test_shipped_training_configs_are_valid(path):
    from cosmonet.models import build_model
    from cosmonet.train.trainconfig import load_train_config
    cfg = load_train_config(path)
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    if kwargs.get("lpt2_prior") == "auto":          # filled from the campaign by the trainer
        kwargs["lpt2_prior"] = -0.648
    build_model(cfg["model"]["name"], **kwargs)


def test_every_shipped_config_is_checked():
    assert len(_shipped("campaign")) + len(_shipped("train")) == len(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def test_integers_are_accepted_for_float_keys():
    cfg = _cfg(box=100, boost=1, a_start=1, a_final=2)
    assert isinstance(cfg.box, float) and cfg.box == 100.0
    assert isinstance(cfg.a_start, float)


def test_shards_cover_all_indices_once():
    cfg = _cfg(n_sims=7, shard_size=3)
    assert cfg.n_shards == 3
    assert [cfg.shard_indices(s) for s in range(cfg.n_shards)] == [[0, 1, 2], [3, 4, 5], [6]]


# --------------------------------------------------------------------------- bad configs
BAD = {
    "unknown_key": (dict(colour="red"), ["colour"]),
    "missing_n_sims": ({"nc": 8}, ["n_sims"]),
    "n_sims_string": (dict(n_sims="ten"), ["n_sims", "ten"]),
    "n_sims_zero": (dict(n_sims=0), ["n_sims"]),
    "n_sims_bool": (dict(n_sims=True), ["n_sims"]),
    "n_sims_float": (dict(n_sims=10.0), ["n_sims"]),
    "nc_float": (dict(nc=3.5), ["nc", "3.5"]),
    "nc_1": (dict(nc=1), ["nc"]),
    "box_string": (dict(box="big"), ["box", "big"]),
    "box_negative": (dict(box=-1.0), ["box"]),
    "steps_list": (dict(steps=[2]), ["steps"]),
    "seed_negative": (dict(seed=-1), ["seed"]),
    "shard_size_zero": (dict(shard_size=0), ["shard_size"]),
    "ranks_per_sim_string": (dict(ranks_per_sim="two"), ["ranks_per_sim"]),
    "boost_below_1": (dict(boost=0.5), ["boost"]),
    "a_start_after_a_final": (dict(a_start=0.9, a_final=0.5), ["a_start"]),
    "field_unknown": (dict(fields=["za/disp", "pmwd/disp"]), ["fields", "pmwd/disp"]),
    "field_twice": (dict(fields=["za/disp", "za/disp"]), ["fields"]),
    "fields_empty": (dict(fields=[]), ["fields"]),
    "fields_string": (dict(fields="density"), ["fields"]),
    "density_nmesh_1": (dict(density_nmesh=1), ["density_nmesh"]),
    "splits_sum_low": (dict(splits={"train": 3, "test": 1}), ["splits", "4", "6"]),
    "splits_sum_high": (dict(splits={"train": 6, "test": 1}), ["splits", "7", "6"]),
    "splits_not_mapping": (dict(splits=[4, 2]), ["splits"]),
    "splits_count_string": (dict(splits={"train": "four", "test": 2}), ["splits.train"]),
    "out_not_string": (dict(out=["a"]), ["out"]),
    "cosmology_unknown_key": (dict(cosmology={"Omegam": 0.3}), ["Omegam"]),
    "cosmology_bad_value": (dict(cosmology={"Omega_m": "heavy"}), ["Omega_m"]),
    "list_entry_unknown_key": (dict(cosmology={"list": ["planck15", {"Omegam": 0.3}]}), ["Omegam"]),
    "list_entry_unknown_key_string": (dict(cosmology={"list": ["planck15", "Omega_m=0.3,sigmaeight=0.8"]}),
                                      ["sigmaeight"]),
    "list_empty": (dict(cosmology={"list": []}), ["cosmology.list"]),
    "grid_unknown_key": (dict(cosmology={"grid": {"Omega_m": [0.3], "Omega_x": [0.1, 0.2]}}), ["Omega_x"]),
    "grid_not_list": (dict(cosmology={"grid": {"Omega_m": 0.3}}), ["cosmology.grid.Omega_m"]),
    "grid_bad_value": (dict(cosmology={"grid": {"Omega_m": [0.3, 1.5]}}), ["Omega_m"]),
    "lhs_min_above_max": (dict(cosmology={"lhs": {"Omega_m": [0.35, 0.25], "sigma8": [0.7, 0.9]}}),
                          ["cosmology.lhs.Omega_m"]),
    "lhs_min_equals_max": (dict(cosmology={"lhs": {"sigma8": [0.8, 0.8]}}), ["cosmology.lhs.sigma8"]),
    "lhs_range_length": (dict(cosmology={"lhs": {"sigma8": [0.7, 0.8, 0.9]}}), ["cosmology.lhs.sigma8"]),
    "lhs_range_string": (dict(cosmology={"lhs": {"sigma8": ["low", "high"]}}), ["cosmology.lhs.sigma8"]),
    "lhs_unknown_key": (dict(cosmology={"lhs": {"Omega_x": [0.1, 0.2]}}), ["Omega_x"]),
    "lhs_invalid_corner": (dict(cosmology={"lhs": {"Omega_m": [0.2, 1.5]}}), ["Omega_m"]),
    "lhs_A_s_scale_zero": (dict(cosmology={"lhs": {"A_s_scale": [0.0, 2.0]}}), ["A_s_scale"]),
    "two_modes": (dict(cosmology={"list": ["planck15"], "grid": {"Omega_m": [0.3]}}), ["list", "grid"]),
    "extra_key_in_block": (dict(cosmology={"lhs": {"sigma8": [0.7, 0.9]}, "sampler": "sobol"}),
                           ["cosmology.sampler"]),
    # lhs_seed is passed to the Latin hypercube's generator: it must be checked like `seed`,
    # not accepted here and crash later in plan() with a ValueError.
    "lhs_seed_string": (dict(cosmology={**LHS, "lhs_seed": "abc"}), ["lhs_seed"]),
    "lhs_seed_negative": (dict(cosmology={**LHS, "lhs_seed": -1}), ["lhs_seed"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_is_one_line_input_error_naming_the_field(case):
    kw, needles = BAD[case]
    raw = kw if case == "missing_n_sims" else _raw(**kw)
    msg = _error(validate, raw)
    for needle in needles:
        assert needle in msg, f"{needle!r} not named in {msg!r}"


def test_config_must_be_a_mapping():
    for raw in ([1, 2], "n_sims: 3", None, 7):
        assert "config" in _error(validate, raw)


def test_validation_errors_before_plan():
    """Everything plan() needs is checked by validate(): a valid config always plans."""
    for case in ({**LHS, "lhs_seed": 5}, {"grid": {"A_s_scale": [0.5, 2.0]}}, {"list": ["planck15"]},
                 "Omega_m=0.3,sigma8=0.8", {"Omega_m": 0.3}):
        cfg = _cfg(cosmology=case)
        assert len(plan(cfg)) == cfg.n_sims


# --------------------------------------------------------------------------- --set overrides
def test_override_top_level_values_are_yaml_typed():
    raw = _raw()
    new = apply_overrides(raw, ["n_sims=40", "out=/x", "box=100.5", "fields=[za/disp, density]",
                                "splits={train: 30, test: 10}", "cosmology=Omega_m=0.3,sigma8=0.8"])
    assert new["n_sims"] == 40 and isinstance(new["n_sims"], int)
    assert new["out"] == "/x"
    assert new["box"] == 100.5 and isinstance(new["box"], float)
    assert new["fields"] == ["za/disp", "density"]
    assert new["splits"] == {"train": 30, "test": 10}
    assert new["cosmology"] == "Omega_m=0.3,sigma8=0.8"   # split at the first '=' only
    assert raw == _raw(), "the input dict was modified"
    cfg = validate(new)
    assert (cfg.n_sims, cfg.out, cfg.fields, cfg.split_of(35)) == (40, "/x", ("za/disp", "density"), "test")
    assert cfg.cosmology == "Omega_m=0.3,sigma8=0.8"


def test_override_nested_key():
    raw = _raw(cosmology={"lhs": {"Omega_m": [0.25, 0.35]}, "lhs_seed": 1})
    new = apply_overrides(raw, ["cosmology.lhs_seed=3", "cosmology.lhs.sigma8=[0.7, 0.9]"])
    assert new["cosmology"] == {"lhs": {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9]}, "lhs_seed": 3}
    assert raw["cosmology"] == {"lhs": {"Omega_m": [0.25, 0.35]}, "lhs_seed": 1}, "input modified"
    # a nested override creates the missing mappings
    assert apply_overrides({"n_sims": 2}, ["splits.train=2"])["splits"] == {"train": 2}
    # later overrides win
    assert apply_overrides(raw, ["n_sims=4", "n_sims=5"])["n_sims"] == 5


def test_override_changes_the_plan():
    raw = _raw(cosmology={**LHS, "lhs_seed": 1})
    a = plan(validate(raw))
    b = plan(validate(apply_overrides(raw, ["cosmology.lhs_seed=3"])))
    c = plan(validate(apply_overrides(raw, ["cosmology.lhs_seed=1"])))
    assert [s.cosmology for s in a] == [s.cosmology for s in c]
    assert [s.cosmology.Omega_m for s in a] != [s.cosmology.Omega_m for s in b]
    assert [s.seed for s in a] == [s.seed for s in b]       # lhs_seed does not change the seeds


@pytest.mark.parametrize("item, needles", [
    ("n_sims", ["n_sims"]),            # no '='
    ("=3", ["=3"]),                     # no key
    ("n_sims=[1, 2", ["n_sims"]),      # not YAML
])
def test_bad_override_syntax(item, needles):
    msg = _error(apply_overrides, _raw(), [item])
    for needle in needles:
        assert needle in msg


@pytest.mark.parametrize("item, needles", [
    ("n_sims=ten", ["n_sims", "ten"]),
    ("nc=3.5", ["nc", "3.5"]),
    ("box=big", ["box", "big"]),
    ("colour=red", ["colour"]),
    ("fields=[za/disp, foo]", ["fields", "foo"]),
    ("cosmology.lhs.Omega_m=[0.4, 0.3]", ["cosmology.lhs.Omega_m"]),
])
def test_override_to_bad_value_is_caught_by_validate(item, needles):
    msg = _error(lambda: validate(apply_overrides(_raw(cosmology=dict(LHS)), [item])))
    for needle in needles:
        assert needle in msg, f"{needle!r} not named in {msg!r}"


def test_override_below_a_scalar_names_the_key():
    msg = _error(apply_overrides, _raw(cosmology="planck15"), ["cosmology.lhs_seed=3"])
    assert "cosmology" in msg


def test_load_config_applies_overrides_then_out(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(cosmology=dict(LHS), out="from/file")))
    cfg = load_config(str(path), ["n_sims=40", "out=/x", "cosmology.lhs_seed=3"])
    assert cfg.n_sims == 40 and cfg.out == "/x" and cfg.cosmology["lhs_seed"] == 3
    assert load_config(str(path), ["out=/x"], out="/y").out == "/y"      # --out beats --set out=
    assert load_config(str(path)).out == "from/file"


def test_load_config_errors(tmp_path):
    assert "nope.yaml" in _error(load_config, str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_sims: 4\nnc: [8\n")
    assert "bad.yaml" in _error(load_config, str(bad))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "n_sims" in _error(load_config, str(empty))
    typed = tmp_path / "typed.yaml"
    typed.write_text("n_sims: ten\n")
    assert "n_sims" in _error(load_config, str(typed))


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n"])
def test_load_config_non_mapping_file_with_overrides(tmp_path, text):
    """A YAML file that is not a mapping is bad input even when --set is given."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert "config" in _error(load_config, str(path))
    _error(load_config, str(path), ["n_sims=3"])


# --------------------------------------------------------------------------- plan: seeds
def test_plan_is_deterministic():
    for cosmology in ("planck15", {"list": ["planck15", {"Omega_m": 0.25, "sigma8": 0.75}]},
                      {"grid": {"Omega_m": [0.25, 0.35], "A_s_scale": [0.5, 2.0]}}, dict(LHS)):
        a, b = plan(_cfg(n_sims=9, cosmology=cosmology)), plan(_cfg(n_sims=9, cosmology=cosmology))
        assert a == b
        assert all(isinstance(s, SimSpec) for s in a)
        assert [s.index for s in a] == list(range(9))


def test_plan_independent_of_decomposition_and_storage():
    kw = dict(n_sims=10, cosmology=dict(LHS), splits={"train": 8, "test": 2})
    ref = plan(_cfg(**kw))
    for extra in (dict(shard_size=1), dict(shard_size=3), dict(shard_size=100), dict(ranks_per_sim=2),
                  dict(ranks_per_sim=4, shard_size=7), dict(out="elsewhere"),
                  dict(fields=["density"]), dict(density_nmesh=4)):
        assert plan(_cfg(**kw, **extra)) == ref, extra


def test_seeds_differ_by_index_and_base_seed():
    seeds = [simulation_seed(0, i) for i in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and 0 <= s < 2 ** 63 for s in seeds)
    assert [simulation_seed(0, i) for i in range(2000)] == seeds           # pure
    other = [simulation_seed(1, i) for i in range(2000)]
    assert not set(seeds) & set(other)
    assert seeds[1] != simulation_seed(1, 0)                                # not seed + index
    assert [s.seed for s in plan(_cfg(n_sims=5, seed=11))] == [simulation_seed(11, i) for i in range(5)]


def test_seeds_of_a_longer_campaign_extend_the_shorter():
    short, long = plan(_cfg(n_sims=4)), plan(_cfg(n_sims=12))
    assert [s.seed for s in long[:4]] == [s.seed for s in short]


# --------------------------------------------------------------------------- plan: cosmologies
def test_fixed_cosmology():
    for spec, om, s8 in (("planck15", 0.3089, PLANCK_SIGMA8), ("Omega_m=0.3,sigma8=0.8", 0.3, 0.8),
                         ({"Omega_m": 0.28, "sigma8": 0.79}, 0.28, 0.79)):
        specs = plan(_cfg(n_sims=3, cosmology=spec))
        assert len({s.cosmology for s in specs}) == 1
        assert specs[0].cosmology.Omega_m == pytest.approx(om)
        assert specs[0].cosmology.sigma8 == pytest.approx(s8)


def test_list_cycles():
    entries = ["planck15", {"Omega_m": 0.25, "sigma8": 0.75}, "Omega_m=0.35,sigma8=0.85"]
    specs = plan(_cfg(n_sims=8, cosmology={"list": entries}))
    om = [0.3089, 0.25, 0.35]
    assert [s.cosmology.Omega_m for s in specs] == pytest.approx([om[i % 3] for i in range(8)])


def test_list_mapping_entries_modify_base_and_may_scale_A_s():
    entries = [{"Omega_m": 0.25}, {"A_s_scale": 1.8}, {"Omega_m": 0.35, "A_s_scale": 0.5}]
    specs = plan(_cfg(n_sims=3, cosmology={"list": entries, "base": {"h": 0.7, "sigma8": 0.8}}))
    assert [s.cosmology.h for s in specs] == [0.7, 0.7, 0.7]
    assert [s.cosmology.Omega_m for s in specs] == pytest.approx([0.25, 0.3089, 0.35])
    assert [s.cosmology.sigma8 for s in specs] == pytest.approx(
        [0.8, 0.8 * math.sqrt(1.8), 0.8 * math.sqrt(0.5)], rel=1e-12)
    assert "A_s_scale" in _error(validate, _raw(cosmology={"list": [{"A_s_scale": 0}]}))


def test_list_string_entry_of_overrides_modifies_base():
    """docs/campaigns.md: "base: sets the cosmology that list, grid and lhs entries modify";
    a "key=value,..." string entry is overrides, like the equivalent mapping entry."""
    base = {"h": 0.7}
    as_string = plan(_cfg(n_sims=1, cosmology={"list": ["Omega_m=0.35,sigma8=0.8"], "base": base}))
    as_mapping = plan(_cfg(n_sims=1, cosmology={"list": [{"Omega_m": 0.35, "sigma8": 0.8}], "base": base}))
    assert as_mapping[0].cosmology.h == 0.7
    assert as_string[0].cosmology == as_mapping[0].cosmology


def test_grid_is_the_cartesian_product_cycled():
    grid = {"Omega_m": [0.25, 0.3, 0.35], "sigma8": [0.7, 0.9]}
    specs = plan(_cfg(n_sims=14, cosmology={"grid": grid}))
    points = list(itertools.product(grid["Omega_m"], grid["sigma8"]))     # order written, last fastest
    assert len(points) == 6
    for s in specs:
        om, s8 = points[s.index % 6]
        assert (s.cosmology.Omega_m, s.cosmology.sigma8) == pytest.approx((om, s8)), s.index
    # the base is used for the parameters not on the grid
    specs = plan(_cfg(n_sims=2, cosmology={"grid": {"sigma8": [0.7, 0.9]}, "base": {"h": 0.7}}))
    assert [s.cosmology.h for s in specs] == [0.7, 0.7]


def test_grid_order_follows_the_yaml():
    text = "n_sims: 4\ncosmology:\n  grid:\n    sigma8: [0.7, 0.9]\n    Omega_m: [0.25, 0.35]\n"
    specs = plan(validate(yaml.safe_load(text)))
    got = [(s.cosmology.sigma8, s.cosmology.Omega_m) for s in specs]
    np.testing.assert_allclose(got, [(0.7, 0.25), (0.7, 0.35), (0.9, 0.25), (0.9, 0.35)])


def test_A_s_scale_scales_sigma8_by_sqrt_when_sigma8_normalised():
    scales = [0.25, 1.0, 4.0]
    specs = plan(_cfg(n_sims=3, cosmology={"grid": {"A_s_scale": scales}}))
    for s, f in zip(specs, scales):
        assert s.cosmology.A_s is None
        assert s.cosmology.sigma8 == pytest.approx(PLANCK_SIGMA8 * math.sqrt(f), rel=1e-12)
        assert s.cosmology.Omega_m == pytest.approx(0.3089)
    # with sigma8 on the same grid point: the scale applies on top of it
    specs = plan(_cfg(n_sims=2, cosmology={"grid": {"sigma8": [0.8], "A_s_scale": [0.64, 1.44]}}))
    assert [s.cosmology.sigma8 for s in specs] == pytest.approx([0.64, 0.96], rel=1e-12)


def test_A_s_scale_scales_A_s_when_A_s_normalised():
    base = {"A_s": 2.1e-9, "transfer": "boltzmann_camb"}
    specs = plan(_cfg(n_sims=2, cosmology={"grid": {"A_s_scale": [0.5, 2.0]}, "base": base}))
    assert [s.cosmology.A_s for s in specs] == pytest.approx([1.05e-9, 4.2e-9], rel=1e-12)
    assert all(s.cosmology.sigma8 is None for s in specs)


def _assert_one_per_stratum(values, lo, hi):
    n = len(values)
    values = np.asarray(values)
    assert np.all((values >= lo) & (values <= hi)), values
    strata = np.floor((values - lo) / (hi - lo) * n).astype(int)
    strata = np.minimum(strata, n - 1)
    assert sorted(strata.tolist()) == list(range(n)), strata


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_lhs_one_sample_per_stratum(n):
    ranges = {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9], "h": [0.6, 0.8]}
    specs = plan(_cfg(n_sims=n, cosmology={"lhs": ranges}))
    for key, (lo, hi) in ranges.items():
        _assert_one_per_stratum([getattr(s.cosmology, key) for s in specs], lo, hi)
    # parameters not sampled come from the base
    assert all(s.cosmology.n_s == pytest.approx(0.9667) for s in specs)


def test_lhs_over_A_s_scale():
    specs = plan(_cfg(n_sims=20, cosmology={"lhs": {"A_s_scale": [0.5, 2.0]}}))
    scale = [(s.cosmology.sigma8 / PLANCK_SIGMA8) ** 2 for s in specs]
    _assert_one_per_stratum(scale, 0.5, 2.0)


def test_lhs_seed_default_and_explicit():
    base = _cfg(n_sims=8, seed=5, cosmology=dict(LHS))
    explicit = _cfg(n_sims=8, seed=5, cosmology={**LHS, "lhs_seed": 5})
    other = _cfg(n_sims=8, seed=5, cosmology={**LHS, "lhs_seed": 6})
    om = lambda cfg: [s.cosmology.Omega_m for s in plan(cfg)]   # noqa: E731
    assert om(base) == om(explicit)                  # default lhs_seed: the base seed
    assert om(base) != om(other)


def test_latin_hypercube_function():
    pts = latin_hypercube({"a": (0.0, 1.0), "b": (-2.0, 2.0)}, 16, seed=3)
    assert set(pts) == {"a", "b"}
    _assert_one_per_stratum(pts["a"], 0.0, 1.0)
    _assert_one_per_stratum(pts["b"], -2.0, 2.0)
    again = latin_hypercube({"a": (0.0, 1.0), "b": (-2.0, 2.0)}, 16, seed=3)
    np.testing.assert_array_equal(pts["a"], again["a"])
    np.testing.assert_array_equal(pts["b"], again["b"])


# --------------------------------------------------------------------------- splits
def test_split_of_by_index():
    cfg = _cfg(n_sims=8, splits={"train": 6, "val": 1, "test": 1})
    assert [cfg.split_of(i) for i in range(8)] == ["train"] * 6 + ["val", "test"]
    assert [s.split for s in plan(cfg)] == [cfg.split_of(i) for i in range(8)]


def test_split_of_keeps_the_written_order_and_skips_empty_splits():
    cfg = validate(yaml.safe_load("n_sims: 5\nsplits: {test: 1, val: 0, train: 4}\n"))
    assert [cfg.split_of(i) for i in range(5)] == ["test", "train", "train", "train", "train"]


def test_config_is_frozen():
    cfg = _cfg()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_sims = 3


# --------------------------------------------------------------------------- splits as fractions
def test_split_fractions_scale_with_n_sims():
    """Fractions follow n_sims (largest remainder, ties to the split listed first); counts stay as written."""
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert _cfg(n_sims=500, splits=fr).splits == {"train": 400, "val": 50, "test": 50}
    assert _cfg(n_sims=16, splits=fr).splits == {"train": 13, "val": 2, "test": 1}
    assert _cfg(n_sims=10, splits=fr).splits == {"train": 8, "val": 1, "test": 1}
    cfg = _cfg(n_sims=7, splits={"train": 0.5, "val": 0.25, "test": 0.25})     # 3.5, 1.75, 1.75
    assert cfg.splits == {"train": 3, "val": 2, "test": 2}
    assert [cfg.split_of(i) for i in range(7)] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert _cfg(n_sims=5, splits={"a": 0.5, "b": 0.5}).splits == {"a": 3, "b": 2}       # a tie: the first
    for n in range(10, 40):
        counts = _cfg(n_sims=n, splits=fr).splits
        assert sum(counts.values()) == n and all(abs(counts[k] - fr[k] * n) < 1 for k in fr)
    assert _cfg(n_sims=6, splits={"train": 4, "val": 1, "test": 1}).splits == {"train": 4, "val": 1, "test": 1}
    assert _cfg(n_sims=6, splits={"train": 6, "val": 0}).splits == {"train": 6, "val": 0}


def test_split_fraction_errors_name_the_split():
    msg = _error(validate, _raw(n_sims=4, splits={"train": 0.9, "val": 0.05, "test": 0.05}))
    assert "splits.val" in msg and "no simulation" in msg
    msg = _error(validate, _raw(splits={"train": 0.8, "val": 0.1}))
    assert "splits" in msg and "0.9" in msg
    assert "splits.val" in _error(validate, _raw(splits={"train": 0.8, "val": "a tenth", "test": 0.1}))
    assert "splits.train" in _error(validate, _raw(splits={"train": 1.5, "val": -0.5}))


def test_demo_config_takes_any_n_sims():
    """The README's first command: ``--set n_sims=16`` on configs/demo.yaml."""
    path = os.path.join(REPO, "configs", "demo.yaml")
    assert load_config(path).splits == {"train": 6, "val": 1, "test": 1}
    assert load_config(path, ["n_sims=16"]).splits == {"train": 12, "val": 2, "test": 2}
    assert load_config(path, ["n_sims=40"]).splits == {"train": 30, "val": 5, "test": 5}


@pytest.mark.parametrize("text,key", [("n_sims: 4\nnc: 8\nn_sims: 5\n", "n_sims"),
                                      ("cosmology: {Omega_m: 0.3, Omega_m: 0.25}\n", "Omega_m")])
def test_a_key_given_twice_is_refused(tmp_path, text, key):
    """PyYAML would keep the last value silently; cosmonet names the key and the line."""
    from cosmonet.yamlconfig import load_yaml
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=f"key '{key}' is given twice"):
        load_yaml(path, "config")
