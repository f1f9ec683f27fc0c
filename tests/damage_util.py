"""Tiny valid inputs and ways to damage copies of them, for tests/test_schema.py and
tests/test_fuzz_inputs.py (issue 16: non-finite values, types and shapes).

:func:`make_world` builds, once per module: an 8^3 run-sim file, a 2-simulation campaign
(train 1 / test 1, with ``density``), a training YAML over it, and a checkpoint of a
2-channel U-Net. The damage helpers change a *copy*; :func:`rehash_shard` rewrites the
shard's record and the manifest so that ``verify`` sees a shard whose hash matches (a
writer that wrote bad data), not a corrupt one.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import warnings

import numpy as np

TRAIN_YAML = """\
model: {{name: unet, base_channels: 2, depth: 1, norm: batch}}
data: {{root: {root}, val_split: "", scale: 5.0, num_workers: 0, staging: loader}}
train: {{batch_size: 1, base_batch: 1, epochs: 1, log_every: 1}}
out: {out}
"""
SHARD = os.path.join("shards", "shard_000000.h5")


def cli(args):
    """``cosmonet ARGS`` through ``cosmonet.cli.main`` in this process, as a CompletedProcess
    (an exception escaping ``main`` fails the test, as a traceback would)."""
    from cosmonet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def make_world(d):
    """{sim, campaign, train (YAML text template), ckpt} under directory ``d``."""
    import torch
    from mpi4py import MPI

    from cosmonet.campaign.config import validate
    from cosmonet.campaign.runner import prepare_directory, run_campaign
    from cosmonet.models import build_model, model_signature
    w = {"sim": d / "sim.h5", "campaign": d / "campaign", "ckpt": d / "unet.pt"}
    proc = cli(["run-sim", "--nc", 8, "--box", 32, "--steps", 1, "--out", w["sim"], "--quiet"])
    assert proc.returncode == 0, proc.stderr
    cfg = validate({"n_sims": 2, "nc": 8, "box": 32.0, "steps": 1, "shard_size": 2, "seed": 3,
                    "fields": ["za/disp", "lpt2/disp", "fastpm/disp", "density"],
                    "splits": {"train": 1, "val": 0, "test": 1}, "out": str(w["campaign"])})
    prepare_directory(cfg)
    run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    torch.manual_seed(0)
    model = build_model("unet", base_channels=2, depth=1, norm="batch").eval()
    torch.save({"model": model.state_dict(), "model_signature": model_signature(model), "step": 1,
                "normalization": {"scale": 5.0}, "config": {}}, w["ckpt"])
    return w


def copy_inputs(world, dest):
    """Copies of the sim file, the campaign and the checkpoint under ``dest``, and the
    training YAML over the copied campaign (out: ``dest/run``, never written on failure)."""
    dest.mkdir(parents=True, exist_ok=True)
    c = {"sim": dest / "sim.h5", "campaign": dest / "campaign", "ckpt": dest / "unet.pt",
         "yaml": dest / "train.yaml", "run": dest / "run"}
    shutil.copy(world["sim"], c["sim"])
    shutil.copytree(world["campaign"], c["campaign"])
    shutil.copy(world["ckpt"], c["ckpt"])
    c["shard"] = c["campaign"] / SHARD
    c["yaml"].write_text(TRAIN_YAML.format(root=c["campaign"], out=c["run"]))
    return c


def rehash_shard(campaign):
    """Make shard 0's record and the manifest match the (damaged) shard file."""
    from cosmonet.campaign.store import sha256_file
    path = campaign / SHARD
    rec_path = campaign / "shards" / "shard_000000.json"
    rec = json.loads(rec_path.read_text())
    rec.update(sha256=sha256_file(path), bytes=os.path.getsize(path))
    rec_path.write_text(json.dumps(rec))
    man = json.loads((campaign / "manifest.json").read_text())
    man["shards"] = [rec]
    (campaign / "manifest.json").write_text(json.dumps(man))


# --------------------------------------------------------------------------- damage
def retype(f, name, dtype):
    """Replace dataset ``name`` by its values converted to ``dtype`` (same shape)."""
    data = f[name][...]
    del f[name]
    if np.dtype(dtype).kind in "SU":
        f[name] = np.full(data.shape, b"x", dtype="S4")
    elif data.dtype.kind in "SUO":                  # text to numbers: zeros of the new type
        f[name] = np.zeros(data.shape, dtype=dtype)
    else:
        with np.errstate(all="ignore"), warnings.catch_warnings():   # NaN, complex, overflow: whatever
            warnings.simplefilter("ignore")                              # the cast gives
            f[name] = data.astype(dtype)


def reshape(f, name, shape):
    """Replace dataset ``name`` by zeros of ``shape`` (float32)."""
    del f[name]
    f[name] = np.zeros(shape, dtype=np.float32)


def poke(f, name, value, count=1, seed=0):
    """Set ``count`` random entries of dataset ``name`` to ``value`` (NaN, inf, -inf)."""
    ds = f[name]
    data = ds[...]
    rng = np.random.default_rng(seed)
    flat = data.reshape(-1)
    where = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    flat[where] = value
    ds[...] = data
    return len(where)


def truncate(path, fraction):
    """Cut the file to ``fraction`` of its bytes."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(int(size * fraction))
