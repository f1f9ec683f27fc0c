"""Issue 16: fuzzed inputs. Hypothesis damages copies of a tiny valid simulation file,
campaign shard and checkpoint (random dtypes, shapes, NaNs and infinities, truncations,
deleted datasets, attribute damage) and feeds them to ``power``, ``verify``, ``train``,
``evaluate`` and ``emulate`` (in this process, ``cosmonet.cli.main``).

Only two outcomes may come out: exit 0 with the result the undamaged input gives (to the
precision the damage allows: a field stored as float16 moves P(k) by less than 5%), or a
clean exit 2 (one ``cosmonet: error:`` line, no traceback, nothing on stdout, inputs
unchanged, nothing left behind). ``verify`` may also exit 1: its report of a damaged
campaign (one stderr line, the JSON report on stdout). Derandomized, so every run tries the
same examples; about 40 s on 2 idle cores.
"""
import json
import math
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_util import assert_clean_error, describe, file_tree
from damage_util import cli, copy_inputs, make_world, rehash_shard, retype, truncate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = ["int8", "int32", "uint16", "float16", "float64", "complex64", "bool", "S4"]
#: values no attribute of the damaged list may take (8.5 only for the integer ones)
BAD_ATTRS = ["delete", "text", b"bytes", math.nan, math.inf, -1, 0, [1, 2], True]
INT_ATTRS = ("nc", "seed", "steps", "n", "density_nmesh")
SIM_FIELDS = ["za/disp", "lpt2/disp", "fastpm/disp", "za/vel", "fastpm/vel"]
SHARD_FIELDS = ["za/disp", "lpt2/disp", "fastpm/disp", "density"]
SHARD_PARAMS = ["params/index", "params/seed", "params/split", "params/Omega_m", "params/done"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The valid inputs and the results every command gives on them."""
    d = tmp_path_factory.mktemp("fuzz_inputs")
    w = make_world(d)
    c = copy_inputs(w, d / "ref")
    ref = {}
    for name, extra in (("power", []), ("cross", ["--second", "lpt2"])):
        proc = cli(["power", c["sim"], "--json", d / f"{name}.json"] + extra)
        assert proc.returncode == 0, describe(proc)
        ref[name] = json.loads((d / f"{name}.json").read_text())
    for i in (0, 1):
        proc = cli(["power", c["shard"], "--index", i, "--json", d / f"shard{i}.json"])
        assert proc.returncode == 0, describe(proc)
        ref[f"shard{i}"] = json.loads((d / f"shard{i}.json").read_text())
    proc = cli(["emulate", "--checkpoint", c["ckpt"], "--input", c["sim"], "--out", d / "emu.h5"])
    assert proc.returncode == 0, describe(proc)
    with h5py.File(d / "emu.h5", "r") as f:
        ref["emulate"] = f["emulated/disp"][...]
    proc = cli(["evaluate", c["yaml"], "--checkpoint", c["ckpt"], "--json", d / "eval.json"])
    assert proc.returncode == 0, describe(proc)
    ref["evaluate"] = json.loads((d / "eval.json").read_text())
    proc = cli(["train", c["yaml"]])
    assert proc.returncode == 0, describe(proc)
    ref["train"] = _final_loss(c["run"])
    w["ref"] = ref
    return w


def _final_loss(run):
    lines = [json.loads(x) for x in (Path(run) / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [x["loss"] for x in lines if "loss" in x][-1]


# --------------------------------------------------------------------------- damage
def _damage_strategy(fields, params, attrs, rows):
    """One damage: (kind, target, detail)."""
    data = fields + params
    return st.one_of(
        st.tuples(st.just("dtype"), st.sampled_from(data), st.sampled_from(DTYPES)),
        st.tuples(st.just("shape"), st.sampled_from(data), st.sampled_from(["drop", "add", "short", "rows"])),
        st.tuples(st.just("nonfinite"), st.sampled_from(fields),
                  st.tuples(st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, rows - 1),
                            st.integers(1, 4), st.integers(0, 2 ** 16))),
        st.tuples(st.just("attr"), st.sampled_from(attrs), st.sampled_from(BAD_ATTRS)),
        st.tuples(st.just("attr"), st.sampled_from([a for a in attrs if a in INT_ATTRS]), st.just(8.5)),
        st.tuples(st.just("delete"), st.sampled_from(data), st.none()),
        st.tuples(st.just("truncate"), st.none(), st.floats(0.02, 0.98)),
    )


def _apply(path, damages, leading):
    """Apply ``damages`` to the HDF5 file ``path``; ``leading``: fields have a leading row axis."""
    for kind, name, detail in damages:
        if kind == "truncate":
            truncate(path, detail)
            return
        with h5py.File(path, "r+") as f:
            if kind == "attr":
                if detail == "delete":
                    f.attrs.pop(name, None)
                else:
                    f.attrs[name] = detail
                continue
            if name not in f or not isinstance(f[name], h5py.Dataset):
                continue
            if kind == "dtype":
                retype(f, name, detail)
            elif kind == "delete":
                del f[name]
            elif kind == "shape":
                data = f[name][...]
                shape = list(data.shape)
                if not shape:
                    continue
                if detail == "drop":
                    shape = shape[:-1]
                elif detail == "add":
                    shape = shape + [1]
                elif detail == "short":
                    shape[-1] = max(1, shape[-1] // 2)
                else:
                    shape[0] = shape[0] + 1
                del f[name]
                f[name] = np.zeros(shape, dtype=data.dtype)
            elif kind == "nonfinite":
                value, row, count, seed = detail
                ds = f[name]
                if ds.dtype.kind not in "fc" or ds.ndim == 0:
                    continue
                data = ds[...]
                part = data[row] if leading and data.shape[0] > row else data
                flat = part.reshape(-1)
                idx = np.random.default_rng(seed).choice(flat.size, min(count, flat.size), replace=False)
                flat[idx] = value
                if leading and data.shape[0] > row:
                    data[row] = flat.reshape(part.shape)
                else:
                    data = flat.reshape(data.shape)
                ds[...] = data


def _float16_somewhere(damages):
    return any(k == "dtype" and d == "float16" for k, _, d in damages)


def _check_outcome(proc, before, d, inputs, allowed=(0, 2)):
    """The common part: no traceback; a clean exit 2 leaves inputs and outputs as they were."""
    if os.environ.get("FUZZ_LOG"):
        with open(os.environ["FUZZ_LOG"], "a") as fh:
            fh.write(f"{proc.args[0]} {proc.returncode} {(proc.stderr.strip().splitlines() or [''])[-1][:150]}\n")
    assert "Traceback" not in proc.stderr and proc.returncode in allowed, describe(proc)
    if proc.returncode == 2:
        assert_clean_error(proc)
        assert file_tree(d) == before, f"an input changed or an output was left behind\n{describe(proc)}"
    else:
        now = file_tree(d)
        assert {k: v for k, v in now.items() if k in before and k.startswith(inputs)} == \
            {k: v for k, v in before.items() if k.startswith(inputs)}, f"an input changed\n{describe(proc)}"


def _close_power(out, ref, rtol):
    got = json.loads(Path(out).read_text())
    assert got["k"] == ref["k"]
    for key in ("power", "power_second", "cross"):
        if key in ref:
            assert all(math.isfinite(v) for v in got[key]), got[key]
            np.testing.assert_allclose(got[key], ref[key], rtol=rtol)


# --------------------------------------------------------------------------- the fuzz tests
@settings(FUZZ, max_examples=150)
@given(damages=st.lists(_damage_strategy(SIM_FIELDS, [], ["nc", "box_size", "a_final", "Omega_m", "seed", "steps"],
                                         rows=3), min_size=1, max_size=2),
       command=st.sampled_from(["power", "cross", "emulate"]))
def test_fuzzed_simulation_file(world, damages, command):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        c = copy_inputs(world, d / "in")
        (d / "out").mkdir()
        _apply(c["sim"], damages, leading=False)
        before = file_tree(d)
        if command == "emulate":
            proc = cli(["emulate", "--checkpoint", c["ckpt"], "--input", c["sim"], "--out", d / "out" / "e.h5"])
        else:
            proc = cli(["power", c["sim"], "--json", d / "out" / "p.json"]
                       + (["--second", "lpt2"] if command == "cross" else []))
        _check_outcome(proc, before, d, "in")
        if proc.returncode == 0:
            rtol = 0.05 if _float16_somewhere(damages) else 1e-6
            if command == "emulate":
                with h5py.File(d / "out" / "e.h5", "r") as f:
                    got = f["emulated/disp"][...]
                assert np.isfinite(got).all()
                np.testing.assert_allclose(got, world["ref"]["emulate"], rtol=0,
                                           atol=rtol * np.abs(world["ref"]["emulate"]).max())
            else:
                _close_power(d / "out" / "p.json", world["ref"][command], rtol)


@settings(FUZZ, max_examples=200)
@given(damages=st.lists(_damage_strategy(SHARD_FIELDS, SHARD_PARAMS,
                                         ["nc", "box_size", "n", "density_nmesh", "a_final", "campaign_config"],
                                         rows=2), min_size=1, max_size=2),
       rehash=st.booleans(), command=st.sampled_from(["verify", "train", "evaluate", "power0", "power1"]))
def test_fuzzed_shard(world, damages, rehash, command):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        c = copy_inputs(world, d / "in")
        (d / "out").mkdir()
        _apply(c["shard"], damages, leading=True)
        if rehash:
            rehash_shard(c["campaign"])
        before = file_tree(d)
        if command == "verify":
            proc = cli(["verify", c["campaign"]])
        elif command == "train":
            proc = cli(["train", c["yaml"]])
        elif command == "evaluate":
            proc = cli(["evaluate", c["yaml"], "--checkpoint", c["ckpt"], "--json", d / "out" / "e.json"])
        else:
            proc = cli(["power", c["shard"], "--index", command[-1], "--json", d / "out" / "p.json"])
        _check_outcome(proc, before, d, "in", allowed=(0, 1, 2) if command == "verify" else (0, 2))
        rtol = 0.05 if _float16_somewhere(damages) else 1e-6
        if command == "verify" and proc.returncode == 1:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("cosmonet verify:"), describe(proc)
            assert not json.loads(proc.stdout)["ok"]
        elif command == "verify" and proc.returncode == 0:
            assert json.loads(proc.stdout)["ok"]
            with h5py.File(c["shard"], "r") as f:          # what verify passed is whole and finite
                for name in SHARD_FIELDS:
                    assert f[name].dtype.kind == "f" and np.isfinite(f[name][...]).all()
        elif command == "train" and proc.returncode == 0:
            loss = _final_loss(c["run"])
            assert math.isfinite(loss) and loss == pytest.approx(world["ref"]["train"], rel=max(rtol, 1e-4))
        elif command == "evaluate" and proc.returncode == 0:
            got = json.loads((d / "out" / "e.json").read_text())
            for m, v in world["ref"]["evaluate"]["displacement_error"].items():
                assert got["displacement_error"][m] == pytest.approx(v, rel=max(rtol, 1e-5))
        elif command.startswith("power") and proc.returncode == 0:
            _close_power(d / "out" / "p.json", world["ref"][f"shard{command[-1]}"], rtol)


def _damage_checkpoint(state, kind, detail):
    import torch
    weights = state["model"]
    names = sorted(k for k, v in weights.items() if v.is_floating_point() and v.ndim > 0)
    name = names[detail[1] % len(names)] if names else None
    if kind == "dtype" and name:
        dtype = {"int32": torch.int32, "float16": torch.float16, "complex64": torch.complex64,
                 "bool": torch.bool}.get(detail[0] if isinstance(detail[0], str) else "", torch.float64)
        weights[name] = weights[name].to(dtype)
    elif kind == "nonfinite" and name:
        weights[name].view(-1)[detail[1] % weights[name].numel()] = detail[0]
    elif kind == "shape" and name:
        weights[name] = weights[name].reshape(-1)[:-1] if weights[name].numel() > 1 else weights[name][None]
    elif kind == "delete" and name:
        del weights[name]
    elif kind == "scale":
        if detail[0] == "delete":
            state["normalization"].pop("scale")
        else:
            state["normalization"]["scale"] = detail[0]
    elif kind == "signature":
        state["model_signature"] = detail[0]


@settings(FUZZ, max_examples=80)
@given(kind=st.sampled_from(["dtype", "nonfinite", "shape", "delete", "scale", "signature", "truncate"]),
       detail=st.tuples(st.sampled_from(["int32", "float16", "float64", "complex64", "bool", math.nan, math.inf,
                                         -math.inf, 0.0, -5.0, "5", None, "delete", {"name": "unet"},
                                         {"name": "nope"}, "text"]),
                        st.integers(0, 1000), st.floats(0.02, 0.98)),
       command=st.sampled_from(["emulate", "evaluate"]))
def test_fuzzed_checkpoint(world, kind, detail, command):
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        c = copy_inputs(world, d / "in")
        (d / "out").mkdir()
        if kind == "truncate":
            truncate(c["ckpt"], detail[2])
        else:
            state = torch.load(c["ckpt"], weights_only=True)
            if kind == "nonfinite" and not (isinstance(detail[0], float) and not math.isfinite(detail[0])):
                detail = (math.nan,) + detail[1:]
            _damage_checkpoint(state, kind, detail)
            torch.save(state, c["ckpt"])
        before = file_tree(d)
        if command == "emulate":
            proc = cli(["emulate", "--checkpoint", c["ckpt"], "--input", c["sim"], "--out", d / "out" / "e.h5"])
        else:
            proc = cli(["evaluate", c["yaml"], "--checkpoint", c["ckpt"], "--json", d / "out" / "e.json"])
        _check_outcome(proc, before, d, "in")
        if proc.returncode == 0:
            tol = 0.02 if kind == "dtype" and detail[0] == "float16" else 1e-5      # else float64: the same
            if command == "emulate":
                with h5py.File(d / "out" / "e.h5", "r") as f:
                    got = f["emulated/disp"][...]
                ref = world["ref"]["emulate"]
                np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.abs(ref).max())
            else:
                got = json.loads((d / "out" / "e.json").read_text())
                for m, v in world["ref"]["evaluate"]["displacement_error"].items():
                    assert got["displacement_error"][m] == pytest.approx(v, rel=tol)


def test_fuzz_damage_is_real(world, tmp_path):
    """The damage helpers change what they say (so an exit 0 above is not a no-op damage)."""
    c = copy_inputs(world, tmp_path / "in")
    _apply(c["sim"], [("nonfinite", "fastpm/disp", (math.nan, 0, 3, 1)), ("dtype", "za/disp", "int32"),
                      ("attr", "nc", "text")], leading=False)
    with h5py.File(c["sim"], "r") as f:
        assert np.isnan(f["fastpm/disp"][...]).sum() == 3 and f["za/disp"].dtype == np.int32
        assert f.attrs["nc"] == "text"
    _apply(c["shard"], [("shape", "fastpm/disp", "rows"), ("nonfinite", "za/disp", (math.inf, 1, 2, 5))],
           leading=True)
    with h5py.File(c["shard"], "r") as f:
        assert f["fastpm/disp"].shape[0] == 3 and np.isinf(f["za/disp"][1]).sum() == 2
        assert np.isfinite(f["za/disp"][0]).all()
    size = os.path.getsize(c["sim"])
    truncate(c["sim"], 0.5)
    assert os.path.getsize(c["sim"]) == size // 2
