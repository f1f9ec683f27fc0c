#!/usr/bin/env python
"""Training and emulation throughput of the D3M U-Net on this machine (JSON on stdout).

- training: `cosmonet train` on a campaign (default: data/d3m_small, or --campaign DIR)
  for --steps steps on 1 rank and under `mpirun -np 2`; samples per second per rank and
  the time spent waiting for data, from the trainer's own summary;
- emulation: a U-Net of --base channels applied to batches of 32^3 boxes (seconds per
  box) and to one --big^3 box by periodic tiles of 32 (seconds per box).

    .venv/bin/python benchmarks/bench_train.py [--campaign data/d3m_small] [--steps 40] [--big 128]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def train_run(ranks, campaign, steps, base, batch, out):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    cmd = ([] if ranks == 1 else ["mpirun", "-np", str(ranks)]) + [
        os.path.join(BIN, "cosmonet"), "train", os.path.join(ROOT, "configs", "d3m_small.yaml"),
        "--set", f"data.root={campaign}", "--set", f"out={out}", "--set", f"train.max_steps={steps}",
        "--set", f"train.batch_size={batch}", "--set", f"model.base_channels={base}",
        "--set", "data.val_split=", "--set", f"train.log_every={steps}", "--set", "train.checkpoint_every=100000"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: s[k] for k in ("ranks", "steps", "global_batch", "samples_per_second", "samples_per_second_per_rank",
                              "data_wait_seconds", "compute_seconds", "wall_seconds")}


def emulation(base, big):
    from cosmonet.emulate import emulate_box
    from cosmonet.models import build_model
    model = build_model("unet", base_channels=base).eval()
    x = torch.randn(8, 3, 32, 32, 32)
    with torch.no_grad():
        model(x[:2])
        t0 = time.perf_counter()
        model(x)
        per_box = (time.perf_counter() - t0) / 8
    disp = np.random.default_rng(0).normal(0, 4, (3, big, big, big)).astype(np.float32)
    out = {"base_channels": base, "seconds_per_32cubed_box_batch8": round(per_box, 4)}
    for tile in (None, big // 2):
        t0 = time.perf_counter()
        emulate_box(model, disp, 6.0, tile=tile)
        out[f"seconds_per_{big}cubed_box_" + ("whole" if tile is None else f"tiles{tile}")] = \
            round(time.perf_counter() - t0, 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--campaign", default=os.path.join(ROOT, "data", "d3m_small"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--big", type=int, default=128)
    args = ap.parse_args()
    if not os.path.isdir(args.campaign):
        raise SystemExit(f"no campaign at {args.campaign}: make one first (docs/training.md, step 1)")
    res = {"benchmark": "cosmonet benchmarks/bench_train.py",
           "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "python": platform.python_version()},
           "params": vars(args), "training": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            print(f"[bench_train] training on {ranks} rank(s)", file=sys.stderr)
            res["training"][str(ranks)] = train_run(ranks, args.campaign, args.steps, args.base,
                                                    args.batch if ranks == 1 else args.batch // 2,
                                                    os.path.join(tmp, f"r{ranks}"))
    print("[bench_train] emulation", file=sys.stderr)
    res["emulation"] = emulation(args.base, args.big)
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
