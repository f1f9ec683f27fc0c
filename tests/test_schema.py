"""Issue 16, classes 1 and 2: non-finite values, and types and shapes, table-driven.

Every case damages a copy of a tiny valid input (an 8^3 run-sim file, a 2-simulation
campaign shard, a checkpoint, a linear field) and runs one command on it, in this process
(``cosmonet.cli.main``). Each asserts: exit 2 with exactly one ``cosmonet: error:`` line that
names the file and the problem (field, attribute, count) and no traceback, every input
unchanged (SHA-256 before and after), nothing left behind. ``verify`` reports a damaged
shard instead (exit 1, the problem in its one stderr line and under ``invalid`` in its
JSON). The schema itself is in cosmonet/io/schema.py and docs/data-format.md.
"""
import json

import h5py
import numpy as np
import pytest

from cli_util import assert_clean_error, describe, file_tree
from damage_util import cli, copy_inputs, make_world, poke, rehash_shard, reshape, retype

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("schema_inputs"))


def sim(fn):
    """A damage of the run-sim file copy."""
    def apply(c):
        with h5py.File(c["sim"], "r+") as f:
            fn(f)
    return apply


def shard(fn):
    """A damage of the shard copy; its record and the manifest are rewritten to match."""
    def apply(c):
        with h5py.File(c["shard"], "r+") as f:
            fn(f)
        rehash_shard(c["campaign"])
    return apply


def ckpt(fn):
    """A damage of the checkpoint copy: ``fn(state)`` changes the loaded dict."""
    def apply(c):
        import torch
        state = torch.load(c["ckpt"], weights_only=True)
        fn(state)
        torch.save(state, c["ckpt"])
    return apply


def linear(values):
    """A .npy linear field beside the copies."""
    def apply(c):
        np.save(c["dir"] / "delta.npy", values)
    return apply


def attr(name, value):
    def fn(f):
        f.attrs[name] = value
    return fn


def first_weight(state, fn):
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.ndim > 1)
    state["model"][name] = fn(state["model"][name])


POWER = ["power", "{sim}", "--json", "{out}/p.json"]
POWER_SHARD = ["power", "{shard}", "--index", "0", "--json", "{out}/p.json"]
EMULATE = ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{out}/e.h5"]
TRAIN = ["train", "{yaml}"]
EVALUATE = ["evaluate", "{yaml}", "--checkpoint", "{ckpt}", "--json", "{out}/e.json"]
RUN_SIM = ["run-sim", "--nc", "8", "--box", "32", "--steps", "1", "--linear-field", "{dir}/delta.npy",
           "--out", "{out}/s.h5", "--quiet"]
VERIFY = ["verify", "{campaign}"]
NAN, INF = np.nan, np.inf

# (id, damage, argv, needles)
CASES = [
    # ---- class 1: non-finite values
    ("power nan", sim(lambda f: poke(f, "fastpm/disp", NAN)), POWER, ["sim.h5", "fastpm/disp has 1 non-finite"]),
    ("power inf in the second field", sim(lambda f: poke(f, "lpt2/disp", INF, 3)), POWER + ["--second", "lpt2"],
     ["lpt2/disp has 3 non-finite"]),
    ("power shard nan", shard(lambda f: f["fastpm/disp"].__setitem__((0, 0, 0, 0, slice(0, 2)), NAN)), POWER_SHARD,
     ["shard_000000.h5", "fastpm/disp", "2 non-finite"]),
    ("emulate -inf", sim(lambda f: poke(f, "za/disp", -INF, 5)), EMULATE, ["sim.h5", "za/disp has 5 non-finite"]),
    ("emulate nan in fastpm", sim(lambda f: poke(f, "fastpm/disp", NAN)), EMULATE, ["fastpm/disp has 1 non-finite"]),
    ("train nan", shard(lambda f: f["fastpm/disp"].__setitem__((0, 1, 2, 3, 4), NAN)), TRAIN,
     ["shard_000000.h5", "fastpm/disp of simulation 0 has 1 non-finite", "train split"]),
    ("train inf in input", shard(lambda f: f["za/disp"].__setitem__((0, 0, 0, 0, slice(0, 4)), INF)), TRAIN,
     ["za/disp of simulation 0 has 4 non-finite"]),
    ("evaluate nan", shard(lambda f: f["lpt2/disp"].__setitem__((1, 2, 0, 0, 0), NAN)), EVALUATE,
     ["shard_000000.h5", "lpt2/disp of simulation 1 has 1 non-finite"]),
    ("run-sim linear field nan", linear(np.where(np.arange(512).reshape(8, 8, 8) == 7, np.nan, 0.01)), RUN_SIM,
     ["delta.npy", "1 non-finite"]),
    ("emulate checkpoint nan weight", ckpt(lambda s: first_weight(s, lambda t: t.fill_(float("nan")))), EMULATE,
     ["unet.pt", "non-finite"]),
    ("evaluate checkpoint scale inf", ckpt(lambda s: s["normalization"].update(scale=float("inf"))), EVALUATE,
     ["unet.pt", "scale"]),
    # ---- class 2: types and shapes, simulation file
    ("power integer field", sim(lambda f: retype(f, "fastpm/disp", np.int32)), POWER,
     ["fastpm/disp holds integer data"]),
    ("power complex field", sim(lambda f: retype(f, "fastpm/disp", np.complex64)), POWER, ["complex"]),
    ("power string field", sim(lambda f: retype(f, "fastpm/disp", "S4")), POWER, ["fastpm/disp holds string"]),
    ("power boolean velocity", sim(lambda f: retype(f, "za/vel", bool)), POWER, ["za/vel holds boolean"]),
    ("power wrong shape", sim(lambda f: reshape(f, "fastpm/disp", (3, 8, 8, 4))), POWER,
     ["fastpm/disp has shape (3, 8, 8, 4), expected (3, 8, 8, 8)"]),
    ("power field is a group", sim(lambda f: (f.__delitem__("fastpm/disp"), f.create_group("fastpm/disp"))),
     POWER, ["fastpm/disp is a group"]),
    ("power nc is text", sim(attr("nc", "8")), POWER, ["attribute 'nc' is str"]),
    ("power nc is a float", sim(attr("nc", 8.0)), POWER, ["attribute 'nc' is float 8.0, expected an integer"]),
    ("power nc is an array", sim(attr("nc", np.array([8, 8]))), POWER, ["attribute 'nc' is an array"]),
    ("power nc disagrees with the data", sim(attr("nc", 16)), POWER, ["expected (3, 16, 16, 16)"]),
    ("power box nan", sim(attr("box_size", np.nan)), POWER, ["attribute 'box_size' is nan"]),
    ("power box negative", sim(attr("box_size", -32.0)), POWER, ["attribute 'box_size' is -32.0, expected > 0"]),
    ("power a_final text", sim(attr("a_final", "one")), POWER, ["attribute 'a_final'"]),
    ("power seed is a bool", sim(attr("seed", True)), POWER, ["attribute 'seed'"]),
    ("emulate integer input", sim(lambda f: retype(f, "za/disp", np.int16)), EMULATE, ["za/disp holds integer"]),
    ("emulate wrong shape", sim(lambda f: reshape(f, "za/disp", (3, 8, 8, 8, 1))), EMULATE, ["za/disp has shape"]),
    ("emulate cosmology text", sim(attr("Omega_m", b"0.3")), EMULATE, ["attribute 'Omega_m' is str '0.3', expected a number"]),
    # ---- shards
    ("train integer target", shard(lambda f: retype(f, "fastpm/disp", np.int32)), TRAIN,
     ["shard_000000.h5", "fastpm/disp holds integer"]),
    ("train wrong shape", shard(lambda f: reshape(f, "fastpm/disp", (2, 3, 8, 8, 4))), TRAIN,
     ["fastpm/disp has shape (2, 3, 8, 8, 4), expected (2, 3, 8, 8, 8)"]),
    ("train index is float", shard(lambda f: retype(f, "params/index", np.float64)), TRAIN,
     ["params/index holds floating point"]),
    ("train split is integer", shard(lambda f: retype(f, "params/split", np.int64)), TRAIN,
     ["params/split holds integer"]),
    ("train n is text", shard(attr("n", "2")), TRAIN, ["attribute 'n' is str"]),
    ("evaluate complex input", shard(lambda f: retype(f, "za/disp", np.complex64)), EVALUATE,
     ["za/disp holds complex"]),
    ("evaluate params table short", shard(lambda f: reshape(f, "params/Omega_m", (1,))), EVALUATE,
     ["params/Omega_m has shape (1,), expected (2,)"]),
    ("evaluate duplicate indices", shard(lambda f: f["params/index"].__setitem__(slice(None), [1, 1])), EVALUATE,
     ["params/index must hold 2 distinct"]),
    ("power shard box text", shard(attr("box_size", "32")), POWER_SHARD, ["attribute 'box_size' is str"]),
    ("power shard sigma8 infinite", shard(lambda f: f["params/sigma8"].__setitem__(0, np.inf)), POWER_SHARD,
     ["params/sigma8 has 1 infinite"]),
    # ---- linear fields and checkpoints
    ("run-sim linear field complex", linear(np.zeros((8, 8, 8), np.complex64)), RUN_SIM, ["dtype complex64"]),
    ("run-sim linear field integer", linear(np.zeros((8, 8, 8), np.int64)), RUN_SIM, ["dtype int64"]),
    ("emulate checkpoint integer weight", ckpt(lambda s: first_weight(s, lambda t: t.to(int))), EMULATE,
     ["unet.pt", "torch.int64", "expected floating point"]),
    ("emulate checkpoint complex weight", ckpt(lambda s: first_weight(s, lambda t: t.to(torch_complex()))),
     EMULATE, ["complex"]),
    ("emulate checkpoint scale text", ckpt(lambda s: s["normalization"].update(scale="5")), EMULATE,
     ["normalization scale is '5'"]),
    ("evaluate checkpoint without scale", ckpt(lambda s: s["normalization"].pop("scale")), EVALUATE,
     ["unet.pt", "no scale"]),
]


def torch_complex():
    import torch
    return torch.complex64


def _argv(argv, c):
    return [a.format(**{k: str(v) for k, v in c.items()}) for a in argv]


@pytest.mark.parametrize("name,damage,argv,needles", CASES, ids=[c[0] for c in CASES])
def test_damaged_input_is_refused(world, tmp_path, name, damage, argv, needles):
    c = copy_inputs(world, tmp_path / "in")
    c["dir"], c["out"] = tmp_path / "in", tmp_path / "out"
    c["out"].mkdir()
    damage(c)
    before_in, before_out = file_tree(c["dir"]), file_tree(c["out"])
    proc = cli(_argv(argv, c))
    assert_clean_error(proc, *needles)
    assert file_tree(c["dir"]) == before_in, f"an input changed\n{describe(proc)}"
    assert file_tree(c["out"]) == before_out, f"output left behind: {sorted(file_tree(c['out']))}\n{describe(proc)}"


VERIFY_CASES = [
    ("nan", shard(lambda f: poke(f, "fastpm/disp", NAN, 3)), "fastpm/disp has 3 non-finite values"),
    ("inf in density", shard(lambda f: poke(f, "density", INF)), "density has 1 non-finite values"),
    ("integer field", shard(lambda f: retype(f, "lpt2/disp", np.int32)), "lpt2/disp holds integer"),
    ("density shape", shard(lambda f: reshape(f, "density", (2, 1, 4, 4, 4))), "density has shape (2, 1, 4, 4, 4)"),
    ("nc text", shard(attr("nc", "8")), "attribute 'nc' is str"),
    ("seed float", shard(lambda f: retype(f, "params/seed", np.float32)), "params/seed holds floating point"),
]


@pytest.mark.parametrize("name,damage,needle", VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES])
def test_verify_reports_an_invalid_shard(world, tmp_path, name, damage, needle):
    """A shard whose hash matches its record but whose contents break the schema or hold a
    NaN: verify exits 1, names it in its one stderr line and lists it as ``invalid``."""
    c = copy_inputs(world, tmp_path / "in")
    damage(c)
    before = file_tree(tmp_path)
    proc = cli(["verify", c["campaign"]])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "shard 0" in lines[0] and "shard_000000.h5" in lines[0] and needle in lines[0], \
        describe(proc)
    report = json.loads(proc.stdout)
    assert report["invalid"] == [0] and not report["ok"] and report["corrupt"] == []
    assert file_tree(tmp_path) == before


def test_valid_inputs_pass_and_float64_reads_the_same(world, tmp_path):
    """The schema refuses nothing valid: verify says ok, and a run-sim file whose fields are
    stored as float64 (or float16) is read as the same numbers (power to 1e-12 for float64)."""
    c = copy_inputs(world, tmp_path / "in")
    proc = cli(["verify", c["campaign"]])
    assert proc.returncode == 0 and json.loads(proc.stdout)["invalid"] == [], describe(proc)
    ref = tmp_path / "ref.json"
    assert cli(["power", c["sim"], "--json", ref]).returncode == 0
    for dtype, rtol in ((np.float64, 1e-12), (np.float16, 0.05)):
        with h5py.File(c["sim"], "r+") as f:
            retype(f, "fastpm/disp", dtype)
        out = tmp_path / f"{np.dtype(dtype).name}.json"
        proc = cli(["power", c["sim"], "--json", out])
        assert proc.returncode == 0, describe(proc)
        a, b = json.loads(ref.read_text()), json.loads(out.read_text())
        assert a["k"] == b["k"]
        np.testing.assert_allclose(b["power"], a["power"], rtol=rtol)


def test_count_nonfinite_is_blockwise():
    """count_nonfinite counts NaN and +-inf exactly however the blocks fall, reading an h5py
    dataset part by part (blocks far smaller than the array)."""
    from cosmonet.io.schema import _blocks, count_nonfinite
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 7, 5, 6)).astype(np.float32)
    flat = a.reshape(-1)
    flat[rng.choice(flat.size, 17, replace=False)] = [np.nan, np.inf, -np.inf] * 5 + [np.nan, np.nan]
    for limit in (4, 24, 100, 4 * 30, 1 << 20):
        assert count_nonfinite(a, limit=limit) == 17
        covered = np.zeros(a.shape, int)
        for block in _blocks(a.shape, 4, limit):
            covered[block] += 1
            assert a[block].nbytes <= max(limit, 4)
        assert (covered == 1).all()
    assert count_nonfinite(np.arange(10)) == 0
    assert count_nonfinite(a[:, ::2]) == np.count_nonzero(~np.isfinite(a[:, ::2]))
