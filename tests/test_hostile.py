"""A hostile user, table-driven (issue 12): every command with bad inputs and faults.

Each case runs ``cosmonet`` once and asserts: exit code 2, exactly one ``cosmonet: error:``
line naming the problem and no traceback (``assert_clean_error``), every input file
unchanged (SHA-256 of the shared inputs and of the case's own directory before and after),
and nothing left behind (no new file or directory). The first case of every command runs
the real executable in a subprocess; the others call ``cosmonet.cli.main`` in this process
with stdout and stderr captured (an exception that escapes ``main`` fails the case as a
traceback would), which saves the interpreter and torch start-up of a subprocess per case.
The inputs are made once per module and are tiny (8^3 particles, a 2-simulation campaign,
U-Nets of 2-4 channels).
"""
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from cli_util import assert_clean_error, describe, file_tree
from mpi_util import cosmonet_exe, mpi_env

CAMPAIGN_YAML = """\
n_sims: 2
nc: 8
box: 32.0
steps: 1
seed: 3
shard_size: 2
fields: [za/disp, lpt2/disp, fastpm/disp]
splits: {train: 1, val: 0, test: 1}
out: unused
"""

TRAIN_YAML = """\
model: {{name: unet, base_channels: 2, depth: 1, norm: batch}}
data: {{root: {root}, val_split: "", scale: 5.0, num_workers: 0}}
train: {{batch_size: 1, base_batch: 1, epochs: 1, log_every: 1}}
out: {out}
"""


def _run(args, timeout=120):
    return subprocess.run([cosmonet_exe()] + [str(a) for a in args], capture_output=True, text=True,
                          env=mpi_env(), timeout=timeout)


def _run_in_process(args):
    """``cosmonet ARGS`` through ``cosmonet.cli.main`` here, as a CompletedProcess."""
    import contextlib
    import io

    from cosmonet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _save(path, model, normalization, config):
    import torch

    from cosmonet.models import model_signature
    torch.save({"model": model.state_dict(), "model_signature": model_signature(model), "step": 1,
                "normalization": normalization, "config": config}, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared inputs: a run-sim file (and links to it), a campaign, its YAML, checkpoints of a
    batch-norm U-Net, a GroupNorm U-Net and a paramnet, a training YAML, a non-UTF-8 YAML."""
    import torch

    from cosmonet.models import build_model

    d = tmp_path_factory.mktemp("hostile_inputs")
    w = {"d": d, "sim": d / "sim.h5", "cfg": d / "campaign.yaml", "campaign": d / "campaign",
         "train": d / "train.yaml", "ckpt": d / "unet.pt", "group": d / "group.pt", "param": d / "param.pt",
         "latin": d / "latin1.yaml", "file": d / "a_file", "link": d / "link.h5", "hard": d / "hard.h5"}
    proc = _run(["run-sim", "--nc", 8, "--box", 32, "--steps", 1, "--out", w["sim"], "--quiet"])
    assert proc.returncode == 0, describe(proc)
    os.symlink(w["sim"], w["link"])
    os.link(w["sim"], w["hard"])
    w["cfg"].write_text(CAMPAIGN_YAML)
    proc = _run(["simulate", w["cfg"], "--out", w["campaign"], "--quiet"])
    assert proc.returncode == 0, describe(proc)
    w["shard"] = w["campaign"] / "shards" / "shard_000000.h5"
    w["train"].write_text(TRAIN_YAML.format(root=w["campaign"], out=d / "never_written"))
    w["latin"].write_bytes("n_sims: 2\nout: caf\xe9\n".encode("latin-1"))
    w["file"].write_text("a file, not a directory\n")
    torch.manual_seed(0)
    unet_cfg = {"data": {"root": str(w["campaign"]), "input": "za/disp", "target": "fastpm/disp",
                         "test_split": "test"}}
    _save(w["ckpt"], build_model("unet", base_channels=2, depth=1, norm="batch").eval(), {"scale": 5.0}, unet_cfg)
    _save(w["group"], build_model("unet", base_channels=4, depth=1, norm="group").eval(), {"scale": 5.0}, unet_cfg)
    # a training run (a checkpoint of the training YAML's config, out = run) and one whose only
    # checkpoint is unreadable
    from cosmonet.train.trainconfig import validate_train_config
    w["run"], w["badrun"] = d / "run", d / "badrun"
    for run in (w["run"], w["badrun"]):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "latest").write_text("step_00000001.pt\n")
    run_cfg = validate_train_config(yaml.safe_load(TRAIN_YAML.format(root=w["campaign"], out=w["run"]))).to_dict()
    _save(w["run"] / "checkpoints" / "step_00000001.pt", build_model("unet", base_channels=2, depth=1, norm="batch"),
          {"scale": 5.0}, run_cfg)
    (w["badrun"] / "checkpoints" / "step_00000001.pt").write_bytes(b"cut short")
    param = build_model("paramnet", input_size=16, n_params=2, channels=(2, 2, 2, 2, 2, 2), hidden=(4, 4))
    _save(w["param"], param, {"scale": 1.0, "params": ["Omega_m", "sigma8"], "subcube": 16,
                              "ranges": {"Omega_m": [0.2, 0.4], "sigma8": [0.7, 0.9]}},
          {"data": {"root": str(w["campaign"]), "input": "density", "target": "params"}})
    return w


# (id, argv with {placeholders}: world paths and {w} = the case's own empty directory, needle)
CASES = [
    # ---- run-sim
    ("run-sim nc 4096 memory", ["run-sim", "--nc", "4096", "--out", "{w}/big.h5"], "of memory"),
    ("run-sim nc 1", ["run-sim", "--nc", "1", "--out", "{w}/x.h5"], "nc must be"),
    ("run-sim box negative", ["run-sim", "--box", "-5", "--out", "{w}/x.h5"], "box must be"),
    ("run-sim box nan", ["run-sim", "--box", "nan", "--out", "{w}/x.h5"], "box must be"),
    ("run-sim steps 0", ["run-sim", "--steps", "0", "--out", "{w}/x.h5"], "steps must be"),
    ("run-sim boost 0.5", ["run-sim", "--boost", "0.5", "--out", "{w}/x.h5"], "boost must be"),
    ("run-sim a-start 0", ["run-sim", "--a-start", "0", "--out", "{w}/x.h5"], "a_start"),
    ("run-sim a-final 10", ["run-sim", "--a-final", "10", "--out", "{w}/x.h5"], "a_final"),
    ("run-sim seed negative", ["run-sim", "--seed", "-1", "--out", "{w}/x.h5"], "seed"),
    ("run-sim nc not a number", ["run-sim", "--nc", "ten", "--out", "{w}/x.h5"], "--nc"),
    ("run-sim bad cosmology", ["run-sim", "--cosmology", "Omega_m=abc", "--out", "{w}/x.h5"], "Omega_m"),
    ("run-sim out is linear field", ["run-sim", "--nc", "8", "--linear-field", "{sim}", "--out", "{sim}"],
     "refusing to write over an input"),
    ("run-sim out dir missing", ["run-sim", "--out", "{w}/no/such/x.h5"], "does not exist"),
    # ---- power
    ("power shard without index", ["power", "{shard}", "--json", "{w}/p.json"], "campaign shard of 2"),
    ("power shard index absent", ["power", "{shard}", "--index", "7", "--json", "{w}/p.json"], "--index 7"),
    ("power index on run-sim file", ["power", "{sim}", "--index", "0", "--json", "{w}/p.json"], "single simulation"),
    ("power index negative", ["power", "{shard}", "--index", "-1", "--json", "{w}/p.json"], "--index must be"),
    ("power json is input", ["power", "{sim}", "--json", "{sim}"], "refusing to write over an input"),
    ("power json is hard link of symlinked input", ["power", "{link}", "--json", "{hard}"], "refusing"),
    ("power plot is json", ["power", "{sim}", "--json", "{w}/p.json", "--plot", "{w}/p.json"], "same path"),
    ("power nmesh 1", ["power", "{sim}", "--nmesh", "1", "--json", "{w}/p.json"], "--nmesh must be"),
    ("power nmesh 100000 memory", ["power", "{sim}", "--nmesh", "100000", "--json", "{w}/p.json"], "of memory"),
    ("power on a checkpoint", ["power", "{ckpt}", "--json", "{w}/p.json"], "cannot open simulation file"),
    ("power missing field", ["power", "{sim}", "--field", "nope", "--json", "{w}/p.json"], "no field 'nope'"),
    ("power on a directory", ["power", "{campaign}", "--json", "{w}/p.json"], "is not a file"),
    # ---- simulate
    ("simulate config not UTF-8", ["simulate", "{latin}", "--out", "{w}/c"], "not UTF-8"),
    ("simulate out is the config", ["simulate", "{cfg}", "--out", "{cfg}"], "refusing to write over an input"),
    ("simulate out is a file", ["simulate", "{cfg}", "--out", "{file}"], "not a directory"),
    ("simulate nc 4096 memory", ["simulate", "{cfg}", "--set", "nc=4096", "--out", "{w}/c"], "of memory"),
    ("simulate disk", ["simulate", "{cfg}", "--set", "n_sims=100000000", "--set", "shard_size=100000",
                       "--set", "splits={{}}", "--out", "{w}/c"], "of disk"),
    ("simulate torch batch memory", ["simulate", "{cfg}", "--set", "engine=torch", "--set", "device=cpu",
                                     "--set", "nc=128", "--set", "batch_size=100000", "--out", "{w}/c"], "of memory"),
    ("simulate torch on cuda without cuda", ["simulate", "{cfg}", "--set", "engine=torch", "--set", "device=cuda",
                                             "--out", "{w}/c"], "cuda"),
    ("simulate n_sims 0", ["simulate", "{cfg}", "--set", "n_sims=0", "--out", "{w}/c"], "n_sims"),
    ("simulate a_final 9", ["simulate", "{cfg}", "--set", "a_final=9", "--out", "{w}/c"], "a_final"),
    ("simulate unknown field", ["simulate", "{cfg}", "--set", "fields=[bogus]", "--out", "{w}/c"], "bogus"),
    ("simulate box negative", ["simulate", "{cfg}", "--set", "box=-1", "--out", "{w}/c"], "box"),
    ("simulate splits sum", ["simulate", "{cfg}", "--set", "splits={{train: 5}}", "--out", "{w}/c"], "splits"),
    ("simulate set without =", ["simulate", "{cfg}", "--set", "nc", "--out", "{w}/c"], "key=value"),
    ("simulate other campaign in out", ["simulate", "{cfg}", "--set", "seed=4", "--out", "{campaign}"],
     "another seed"),
    # ---- verify
    ("verify a file", ["verify", "{sim}"], "not a campaign directory"),
    ("verify missing dir", ["verify", "{w}/none"], "not a campaign directory"),
    # ---- train
    ("train config not UTF-8", ["train", "{latin}"], "not UTF-8"),
    ("train weight decay negative", ["train", "{train}", "--set", "train.weight_decay=-1"], "weight_decay"),
    ("train lr infinite", ["train", "{train}", "--set", "train.lr=.inf"], "train.lr"),
    ("train batch 0", ["train", "{train}", "--set", "train.batch_size=0"], "batch_size"),
    ("train out is a file", ["train", "{train}", "--set", "out={file}"], "not a directory"),
    ("train out is the campaign", ["train", "{train}", "--set", "out={campaign}"], "refusing"),
    ("train data root missing", ["train", "{train}", "--set", "data.root={w}/none", "--set", "out={w}/run"],
     "data.root"),
    ("train into a run without --resume", ["train", "{train}", "--set", "out={run}"],
     "already holds a training run"),
    ("train resume changes the seed", ["train", "{train}", "--set", "out={run}", "--resume", "--set",
                                       "train.seed=9"], "train.seed is 9"),
    ("train resume changes the batch", ["train", "{train}", "--set", "out={run}", "--resume", "--set",
                                        "train.batch_size=2"], "train.batch_size is 2"),
    ("train resume changes lr", ["train", "{train}", "--set", "out={run}", "--resume", "--set", "train.lr=0.01"],
     "train.lr is 0.01"),
    ("train resume changes the data", ["train", "{train}", "--set", "out={run}", "--resume", "--set",
                                       "data.scale=2.0"], "data.scale is 2.0"),
    ("train resume changes the model", ["train", "{train}", "--set", "out={run}", "--resume", "--set",
                                        "model.norm=group"], "model.norm is 'group'"),
    ("train resume without a readable checkpoint", ["train", "{train}", "--set", "out={badrun}", "--resume"],
     "no other checkpoint is readable"),
    # ---- evaluate
    ("evaluate max-boxes 0", ["evaluate", "{train}", "--checkpoint", "{ckpt}", "--json", "{w}/e.json",
                              "--max-boxes", "0"], "--max-boxes must be"),
    ("evaluate k-max negative", ["evaluate", "{train}", "--checkpoint", "{ckpt}", "--json", "{w}/e.json",
                                 "--k-max", "-1"], "--k-max must be"),
    ("evaluate json is checkpoint", ["evaluate", "{train}", "--checkpoint", "{ckpt}", "--json", "{ckpt}"],
     "refusing"),
    ("evaluate paramnet on d3m config", ["evaluate", "{train}", "--checkpoint", "{param}", "--json",
                                         "{w}/e.json", "--plots", "{w}/figs"], "does not fit"),
    ("evaluate checkpoint missing", ["evaluate", "{train}", "--checkpoint", "{w}/no.pt", "--json", "{w}/e.json"],
     "does not exist"),
    # ---- emulate
    ("emulate out is input", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{sim}"],
     "refusing to write over an input"),
    ("emulate out is symlink to input", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out",
                                         "{link}"], "refusing"),
    ("emulate out is checkpoint", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{ckpt}"],
     "refusing"),
    ("emulate tile 0", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{w}/e.h5",
                        "--tile", "0"], "--tile must be"),
    ("emulate tile negative", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{w}/e.h5",
                               "--tile", "-4"], "--tile must be"),
    ("emulate margin negative", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out", "{w}/e.h5",
                                 "--tile", "4", "--margin", "-2"], "--margin must be"),
    ("emulate tile does not divide", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out",
                                      "{w}/e.h5", "--tile", "3"], "does not divide"),
    ("emulate tile with GroupNorm", ["emulate", "--checkpoint", "{group}", "--input", "{sim}", "--out",
                                     "{w}/e.h5", "--tile", "4"], "statistics over the tile"),
    ("emulate margin below radius", ["emulate", "--checkpoint", "{ckpt}", "--input", "{sim}", "--out",
                                     "{w}/e.h5", "--tile", "4", "--margin", "0"], "receptive radius"),
    ("emulate paramnet checkpoint", ["emulate", "--checkpoint", "{param}", "--input", "{sim}", "--out",
                                     "{w}/e.h5"], "not a displacement emulator"),
    ("emulate on a shard", ["emulate", "--checkpoint", "{ckpt}", "--input", "{shard}", "--out", "{w}/e.h5"],
     "campaign shard"),
    ("emulate checkpoint is a simulation", ["emulate", "--checkpoint", "{sim}", "--input", "{sim}", "--out",
                                            "{w}/e.h5"], "cannot be read"),
    # ---- probe
    ("probe device cuda:99", ["probe", "planewave", "--checkpoint", "{ckpt}", "--out", "{w}/pr", "--device",
                              "cuda:99"], "--device cuda:99"),
    ("probe device tpu", ["probe", "planewave", "--checkpoint", "{ckpt}", "--out", "{w}/pr", "--device", "tpu"],
     "--device"),
    ("probe out is checkpoint", ["probe", "planewave", "--checkpoint", "{ckpt}", "--out", "{ckpt}"], "refusing"),
    ("probe phases one", ["probe", "phase", "--checkpoint", "{ckpt}", "--out", "{w}/pr", "--phases", "0"],
     "at least two"),
    ("probe amplitude negative", ["probe", "planewave", "--checkpoint", "{ckpt}", "--out", "{w}/pr",
                                  "--amplitude", "-1"], "--amplitude"),
    ("probe cosmology without data", ["probe", "cosmology", "--checkpoint", "{ckpt}", "--out", "{w}/pr"],
     "--data"),
    ("probe max-boxes 0", ["probe", "cosmology", "--checkpoint", "{ckpt}", "--out", "{w}/pr", "--data",
                           "{campaign}", "--max-boxes", "0"], "--max-boxes"),
    ("probe paramnet checkpoint", ["probe", "planewave", "--checkpoint", "{param}", "--out", "{w}/pr"],
     "not a displacement emulator"),
    # ---- export (tests/test_export.py reads its good output back with pynbody)
    ("export shard without index", ["export", "{shard}", "--out", "{w}/s.hdf5"], "campaign shard of 2"),
    ("export shard index absent", ["export", "{shard}", "--index", "7", "--out", "{w}/s.hdf5"], "--index 7"),
    ("export bad field", ["export", "{sim}", "--field", "nbody", "--out", "{w}/s.hdf5"], "--field"),
    ("export field absent", ["export", "{sim}", "--field", "emulated", "--out", "{w}/s.hdf5"], "no field 'emulated'"),
    ("export out is input", ["export", "{sim}", "--out", "{sim}"], "refusing to write over an input"),
    ("export on a checkpoint", ["export", "{ckpt}", "--out", "{w}/s.hdf5"], "cannot open simulation file"),
    # ---- the command line itself
    ("unknown command", ["fly"], "invalid choice"),
]


#: the cases run as a real subprocess: the first of every command
END_TO_END = {next(c[0] for c in CASES if c[1][0] == cmd) for cmd in dict.fromkeys(c[1][0] for c in CASES)}


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(world, tmp_path, name, argv, needle):
    case = tmp_path / "case"
    case.mkdir()
    paths = {k: str(v) for k, v in world.items()}
    args = [a.format(w=case, **paths) for a in argv]
    before, before_case = file_tree(world["d"]), file_tree(case)
    proc = _run(args) if name in END_TO_END else _run_in_process(args)
    assert_clean_error(proc, needle)
    assert file_tree(world["d"]) == before, f"an input changed\n{describe(proc)}"
    assert file_tree(case) == before_case, f"output left behind: {sorted(file_tree(case))}\n{describe(proc)}"


def test_case_table_covers_every_command():
    from cosmonet.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = {c[1][0] for c in CASES}
    assert set(sub.choices) <= used, set(sub.choices) - used
    assert len(CASES) >= 40


def test_power_reads_one_simulation_of_a_shard(world, tmp_path):
    """``power --index i`` on a shard equals power of the same simulation's displacement
    written as a run-sim file (the shard is not read as one simulation)."""
    import h5py
    out = tmp_path / "shard.json"
    proc = _run(["power", world["shard"], "--index", 1, "--json", out])
    assert proc.returncode == 0, describe(proc)
    single = tmp_path / "one.h5"
    with h5py.File(world["shard"], "r") as f, h5py.File(single, "w") as g:
        g.attrs.update({"nc": 8, "box_size": 32.0, "a_final": 1.0})
        g["fastpm/disp"] = f["fastpm/disp"][1]
    proc = _run(["power", single, "--json", tmp_path / "one.json"])
    assert proc.returncode == 0, describe(proc)
    import json
    a, b = json.loads(out.read_text()), json.loads((tmp_path / "one.json").read_text())
    assert a["index"] == 1 and a["k"] == b["k"]
    np.testing.assert_allclose(a["power"], b["power"], rtol=1e-12)


def test_full_disk_is_one_line(world, tmp_path):
    """A write that hits ENOSPC (a 1 MiB tmpfs) is one line, exit 2, and leaves no file."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = _run(["run-sim", "--nc", "32", "--steps", "1", "--out", mnt / "x.h5", "--quiet"])
        assert_clean_error(proc)
        assert os.listdir(mnt) == [], os.listdir(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_displacements_are_minimum_images(tmp_path):
    """za/disp, lpt2/disp and fastpm/disp all lie in [-L/2, L/2) (docs/data-format.md): in a
    4 Mpc/h box the displacements reach the half box, so the wrap is exercised."""
    import h5py
    out = tmp_path / "small_box.h5"
    proc = _run(["run-sim", "--nc", 8, "--box", 4, "--steps", 1, "--out", out, "--quiet"])
    assert proc.returncode == 0, describe(proc)
    with h5py.File(out, "r") as f:
        for name in ("za/disp", "lpt2/disp", "fastpm/disp"):
            d = f[name][...]
            assert d.min() >= -2.0 and d.max() < 2.0, (name, d.min(), d.max())
        assert np.abs(f["za/disp"][...]).max() > 1.8          # near the half box: wrapping matters here
