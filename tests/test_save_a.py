"""Outputs at several scale factors (issue 17): ``run-sim --save-a``, the campaign key
``save_a``, and the readers that name an output (``power --field fastpm@a=0.5``, training's
``fastpm/disp@a=0.5``).

Shown here: the output at a = 0.5 (and 0.67) of a run to a = 1 is bit for bit the run
that ends there with the same steps; ZA and 2LPT at each a are D1 and D2 scalings of the
final output (float32 round-off); bad values are refused with one error line.
"""
import os

import h5py
import numpy as np
import pytest
import yaml

from cli_util import assert_clean_error, file_tree
from test_hostile import _run, _run_in_process

FIELDS = ("za/disp", "za/vel", "lpt2/disp", "lpt2/vel", "fastpm/disp", "fastpm/vel")
SIM = ["--nc", "8", "--box", "32", "--seed", "5", "--quiet"]

CAMPAIGN_YAML = """\
n_sims: 2
nc: 8
box: 32.0
steps: 3
seed: 3
shard_size: 2
save_a: [0.5, 1.0]
fields: [za/disp, lpt2/disp, fastpm/disp, fastpm/vel]
splits: {train: 1, val: 0, test: 1}
out: unused
"""


def _ok(args):
    proc = _run_in_process(args)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """A run to a = 1 with outputs at 0.5, 0.67, 1 (6 steps: 3, 1, 2 per segment), the run
    that ends at 0.5 (3 steps) and the run that ends at 0.67 with an output at 0.5 (4 steps)."""
    d = tmp_path_factory.mktemp("save_a")
    p = {"d": d, "long": d / "long.h5", "to05": d / "to05.h5", "to067": d / "to067.h5"}
    _ok(["run-sim", *SIM, "--steps", "6", "--save-a", "0.5,0.67,1", "--out", p["long"]])
    _ok(["run-sim", *SIM, "--steps", "3", "--a-final", "0.5", "--out", p["to05"]])
    _ok(["run-sim", *SIM, "--steps", "4", "--a-final", "0.67", "--save-a", "0.5", "--out", p["to067"]])
    return p


def _read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][...]


def test_schedule_rule():
    from cosmonet.sim.fastpm import segment_steps, step_schedule, time_steps
    assert segment_steps(0.1, [1.0], 10) == [10]
    (only,) = step_schedule(0.1, [1.0], 10)
    assert np.array_equal(only, time_steps(0.1, 1.0, 10))          # one output: today's schedule, bitwise
    assert segment_steps(0.1, [0.5, 0.67, 1.0], 6) == [3, 1, 2]
    assert segment_steps(0.1, [0.55, 1.0], 10) == [5, 5]            # equal lengths: equal steps
    segs = step_schedule(0.1, [0.5, 0.67, 1.0], 6)
    assert [s[-1] for s in segs] == [0.5, 0.67, 1.0]               # every output is a step boundary
    assert np.array_equal(segs[0], time_steps(0.1, 0.5, 3))


def test_file_layout(sims):
    with h5py.File(sims["long"], "r") as f:
        assert list(f.attrs["save_a"]) == [0.5, 0.67, 1.0] and list(f.attrs["save_steps"]) == [3, 1, 2]
        assert sorted(k for k in f.keys()) == ["a_0.5000", "a_0.6700", "fastpm", "lpt2", "za"]
        for g in ("a_0.5000", "a_0.6700"):
            assert sorted(f[g].attrs.keys()) == ["a"]
            for name in FIELDS:
                assert f[g][name].shape == (3, 8, 8, 8) and f[g][name].dtype == np.float32
    with h5py.File(sims["to05"], "r") as f:         # one output: no save_a attribute, no group
        assert "save_a" not in f.attrs and "save_steps" not in f.attrs and sorted(f.keys()) == ["fastpm", "lpt2", "za"]


@pytest.mark.parametrize("name", FIELDS)
def test_output_equals_the_run_that_ends_there(sims, name):
    """Bit for bit: a = 0.5 of the run to 1 and the run to 0.5 with its 3 steps; a = 0.5 and
    0.67 of the run to 1 and of the run to 0.67 with outputs at 0.5 (3 + 1 steps)."""
    long05 = _read(sims["long"], f"a_0.5000/{name}")
    assert np.array_equal(long05, _read(sims["to05"], name))
    assert np.array_equal(long05, _read(sims["to067"], f"a_0.5000/{name}"))
    assert np.array_equal(_read(sims["long"], f"a_0.6700/{name}"), _read(sims["to067"], name))
    assert not np.array_equal(long05, _read(sims["long"], name))   # and the outputs differ


def test_lpt_outputs_scale_with_d1_and_d2(sims):
    from cosmonet.cosmology import Cosmology, growth_for
    cosmo = Cosmology.planck15()
    g = growth_for(cosmo)
    za1, lpt1 = _read(sims["long"], "za/disp").astype(np.float64), _read(sims["long"], "lpt2/disp").astype(np.float64)
    zv1, lv1 = _read(sims["long"], "za/vel").astype(np.float64), _read(sims["long"], "lpt2/vel").astype(np.float64)
    second1, second_v1 = lpt1 - za1, lv1 - zv1
    for a in (0.5, 0.67):
        grp = f"a_{a:.4f}/"
        za, lpt = _read(sims["long"], grp + "za/disp"), _read(sims["long"], grp + "lpt2/disp")
        zv, lv = _read(sims["long"], grp + "za/vel"), _read(sims["long"], grp + "lpt2/vel")
        r1, r2 = g.D1(a) / g.D1(1.0), g.D2(a) / g.D2(1.0)
        tol = 1e-6 * np.abs(za1).max()
        np.testing.assert_allclose(za, r1 * za1, rtol=0, atol=tol)
        second = lpt.astype(np.float64) - za
        assert np.abs(r2 * second1).max() > 100 * tol            # the 2nd-order term is far above round-off
        np.testing.assert_allclose(second, r2 * second1, rtol=0, atol=tol)
        # velocities 100 a E(a) D f psi km/s
        v1 = a * cosmo.E(a) * g.D1(a) * g.f1(a) / (cosmo.E(1.0) * g.D1(1.0) * g.f1(1.0))
        v2 = a * cosmo.E(a) * g.D2(a) * g.f2(a) / (cosmo.E(1.0) * g.D2(1.0) * g.f2(1.0))
        vtol = 1e-6 * np.abs(zv1).max()
        np.testing.assert_allclose(zv, v1 * zv1, rtol=0, atol=vtol)
        np.testing.assert_allclose(lv.astype(np.float64) - zv, v2 * second_v1, rtol=0, atol=vtol)


def test_power_names_an_output(sims):
    import json
    d = sims["d"]
    _ok(["power", sims["long"], "--field", "fastpm@a=0.5", "--second", "za@a=0.50", "--json", d / "p05.json"])
    _ok(["power", sims["to05"], "--field", "fastpm", "--second", "za", "--json", d / "ref.json"])
    got, ref = (json.loads((d / n).read_text()) for n in ("p05.json", "ref.json"))
    assert got["a"] == 0.5 and ref["a"] == 0.5
    for key in ("power", "power_second", "cross", "r"):
        assert got[key] == ref[key], key
    _ok(["power", sims["long"], "--field", "fastpm@a=1", "--json", d / "p1.json"])
    _ok(["power", sims["long"], "--json", d / "p_default.json"])
    assert json.loads((d / "p1.json").read_text())["power"] == json.loads((d / "p_default.json").read_text())["power"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    d = tmp_path_factory.mktemp("save_a_campaign")
    cfg = d / "campaign.yaml"
    cfg.write_text(CAMPAIGN_YAML)
    _ok(["simulate", cfg, "--out", d / "c", "--quiet"])
    return {"d": d, "cfg": cfg, "root": d / "c"}


def test_campaign_stores_the_outputs(campaign):
    from cosmonet.data import ShardDataset
    from cosmonet.errors import InputError
    root = campaign["root"]
    assert yaml.safe_load((root / "campaign.yaml").read_text())["save_a"] == [0.5, 1.0]
    shard = root / "shards" / "shard_000000.h5"
    with h5py.File(shard, "r") as f:
        assert list(f.attrs["save_a"]) == [0.5, 1.0] and list(f.attrs["save_steps"]) == [1, 2]
        assert sorted(f["a_0.5000"].keys()) == ["fastpm", "lpt2", "za"]
        za05, fp05, za1 = f["a_0.5000/za/disp"][...], f["a_0.5000/fastpm/disp"][...], f["za/disp"][...]
    from cosmonet.cosmology import Cosmology, growth_for
    g = growth_for(Cosmology.planck15())
    np.testing.assert_allclose(za05, g.D1(0.5) / g.D1(1.0) * za1.astype(np.float64), rtol=0,
                               atol=1e-6 * np.abs(za1).max())
    _ok(["verify", root])
    ds = ShardDataset(root, split="train", fields=("za/disp@a=0.5", "fastpm/disp@a=0.5"))
    x, y = ds.read(0)
    assert np.array_equal(x.numpy(), za05[0]) and np.array_equal(y.numpy(), fp05[0])
    with pytest.raises(InputError, match=r"no output at a = 0.6 \(outputs at a = 0.5, 1\)"):
        ShardDataset(root, split="train", fields=("za/disp@a=0.6",))


def test_training_names_an_output(campaign):
    d = campaign["d"]
    train = d / "train.yaml"
    train.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 2, "depth": 1, "norm": "batch"},
        "data": {"root": str(campaign["root"]), "input": "za/disp@a=0.5", "target": "fastpm/disp@a=0.5",
                 "val_split": "", "scale": 5.0, "num_workers": 0},
        "train": {"batch_size": 1, "base_batch": 1, "max_steps": 1, "log_every": 1, "precision": "fp32"},
        "out": str(d / "run")}))
    _ok(["train", train])
    assert any(p.endswith(".pt") for p in os.listdir(d / "run" / "checkpoints"))
    before = file_tree(d)
    proc = _run_in_process(["train", train, "--set", "data.target=fastpm/disp@a=0.7", "--set", f"out={d / 'run2'}"])
    assert_clean_error(proc, "fastpm/disp@a=0.7", "outputs at a = 0.5, 1")
    assert file_tree(d) == before


# ----------------------------------------------------------------------------- hostile
HOSTILE = [
    ("unsorted", ["--save-a", "0.67,0.5"], ["--save-a", "ascending"]),
    ("duplicate", ["--save-a", "0.5,0.5,1"], ["--save-a", "twice"]),
    ("below a_start", ["--save-a", "0.05"], ["--save-a", "0.05", "outside"]),
    ("beyond a_final", ["--save-a", "0.5,1.2"], ["--save-a", "1.2", "outside"]),
    ("not a number", ["--save-a", "0.5,half"], ["--save-a", "half"]),
    ("nan", ["--save-a", "nan"], ["--save-a", "nan"]),
    ("empty", ["--save-a", ""], ["--save-a", "not a number"]),
    ("more outputs than steps", ["--steps", "2", "--save-a", "0.3,0.6,1"], ["--save-a", "3 outputs", "steps is 2"]),
    ("same output name", ["--save-a", "0.50001,0.50003"], ["--save-a", "a_0.5000"]),
    ("torch engine", ["--save-a", "0.5", "--engine", "torch"], ["--save-a", "--engine mpi"]),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_bad_save_a_is_refused(tmp_path, case):
    _, extra, needles = case
    before = file_tree(tmp_path)
    proc = _run_in_process(["run-sim", *SIM, "--out", tmp_path / "x.h5", *extra])
    assert_clean_error(proc, *needles)
    assert file_tree(tmp_path) == before


def test_bad_save_a_subprocess(tmp_path):
    before = file_tree(tmp_path)
    proc = _run(["run-sim", *SIM, "--out", tmp_path / "x.h5", "--save-a", "0.9,0.4"])
    assert_clean_error(proc, "--save-a", "ascending")
    assert file_tree(tmp_path) == before


@pytest.mark.parametrize("field,needles", [
    ("fastpm@a=0.4", ["--field 'fastpm@a=0.4'", "no output at a = 0.4", "outputs at a = 0.5, 0.67, 1"]),
    ("fastpm@a=", ["--field", "NAME@a=A"]),
    ("fastpm@b=0.5", ["--field", "NAME@a=A"]),
    ("fastpm@a=-1", ["--field", "NAME@a=A"]),
])
def test_power_refuses_an_output_not_in_the_file(sims, tmp_path, field, needles):
    before, inputs = file_tree(tmp_path), file_tree(sims["d"])
    proc = _run_in_process(["power", sims["long"], "--field", field, "--json", tmp_path / "p.json"])
    assert_clean_error(proc, *needles)
    assert file_tree(tmp_path) == before and file_tree(sims["d"]) == inputs


@pytest.mark.parametrize("value,needles", [
    ("[0.5, 0.3]", ["config: save_a", "ascending"]),
    ("0.5", ["config: save_a", "list"]),
    ("[0.5, x]", ["config: save_a", "number"]),
    ("[0.5, 2.0]", ["config: save_a", "outside"]),
    ("[0.2, 0.4, 0.6, 1.0]", ["config: save_a", "4 outputs", "steps is 3"]),
])
def test_bad_campaign_save_a_is_refused(tmp_path, value, needles):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CAMPAIGN_YAML.replace("save_a: [0.5, 1.0]", f"save_a: {value}"))
    before = file_tree(tmp_path)
    proc = _run_in_process(["simulate", cfg, "--out", tmp_path / "out", "--quiet"])
    assert_clean_error(proc, *needles)
    assert file_tree(tmp_path) == before


def test_torch_campaign_refuses_save_a(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CAMPAIGN_YAML + "engine: torch\ndevice: cpu\n")
    before = file_tree(tmp_path)
    proc = _run_in_process(["simulate", cfg, "--out", tmp_path / "out", "--quiet"])
    assert_clean_error(proc, "config: save_a", "engine mpi")
    assert file_tree(tmp_path) == before


def test_schema_refuses_a_stray_output_group(sims, tmp_path):
    """A group a_0.4000 that the file's save_a does not list is refused by every reader."""
    import shutil
    bad = tmp_path / "bad.h5"
    shutil.copy(sims["long"], bad)
    with h5py.File(bad, "a") as f:
        f.copy("a_0.5000", "a_0.4000")
    before = file_tree(tmp_path)
    proc = _run_in_process(["power", bad, "--json", tmp_path / "p.json"])
    assert_clean_error(proc, "a_0.4000", "outputs at a = 0.5, 0.67, 1")
    assert file_tree(tmp_path) == before
