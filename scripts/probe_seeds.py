#!/usr/bin/env python3
"""Probe numbers as mean and spread over independently trained emulators.

One training run is one draw: two runs of the same small config gave a zero-input rms of
2.5 and 0.02 Mpc/h. This script trains the same config with several seeds, evaluates each
model on the test split, runs every probe on it, measures its answer to a zero input, and
writes the mean, standard deviation, minimum and maximum of every number over the seeds.

    scripts/probe_seeds.py --seeds 0 1 2                       # configs/d3m_small.yaml
    scripts/probe_seeds.py --config configs/d3m_small.yaml --seeds 0 1 2 --out out/probe_seeds \
        --cosmo-data data/d3m_cosmo_test --set train.epochs=8

Needs the pairs of the config's data.root (docs/training.md, section 1) and, for the
cosmology probe, a campaign such as configs/d3m_cosmo_test.yaml (docs/probes.md). Every
step is skipped when its output exists, so a killed run continues where it stopped.
Writes OUT/seed_S/{eval.json, probe outputs, zero_input.json}, OUT/summary.json and
prints a markdown table of the summary.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

BIN = os.path.dirname(sys.executable)
COSMONET = os.path.join(BIN, "cosmonet")
PROBES = [("planewave", ["--with-nbody"]), ("rotation", ["--with-nbody"]),
          ("rotation_shell", ["--symmetries", "shell"]), ("phase", ["--with-nbody"]), ("amplitude", [])]


def run(cmd, log):
    print("probe_seeds: " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    with open(log, "a") as fh:
        proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=fh, text=True)
    if proc.returncode != 0:
        sys.exit(f"probe_seeds: {cmd[1]} failed (exit {proc.returncode}); see {log}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def cached(path, make):
    """The JSON at ``path``, made by ``make()`` first when missing."""
    if not os.path.exists(path):
        value = make()
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(value, fh, indent=1)
        os.replace(tmp, path)
    with open(path) as fh:
        return json.load(fh)


def zero_input_response(checkpoint, n=32):
    """Mean vector and rms (Mpc/h) of the emulator's output for a zero ZA displacement."""
    import torch

    from cosmonet.emulate import load_emulator
    model, norm, _ = load_emulator(checkpoint)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, n, n, n))[0].numpy().astype(np.float64) * norm["scale"]
    return {"mean": out.mean(axis=(1, 2, 3)).tolist(), "rms": float(np.sqrt((out ** 2).sum(axis=0).mean()))}


def flatten(value, prefix=""):
    """Dotted keys -> numbers of a nested JSON value (list items by index)."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def summarise(per_seed):
    keys = sorted(set.intersection(*(set(flatten(d)) for d in per_seed.values())))
    table = {}
    for key in keys:
        vals = np.array([flatten(d)[key] for d in per_seed.values()])
        table[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                      "min": float(vals.min()), "max": float(vals.max()), "values": vals.tolist()}
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/d3m_small.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="out/probe_seeds")
    p.add_argument("--runs", default="runs/probe_seeds", help="where the training runs go")
    p.add_argument("--cosmo-data", default="data/d3m_cosmo_test", help="campaign for the cosmology probe ('' skips)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="training config overrides")
    args = p.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds needs at least two different seeds")
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "log.txt")
    per_seed = {}
    for seed in args.seeds:
        run_dir = os.path.join(args.runs, f"seed_{seed}")
        out = os.path.join(args.out, f"seed_{seed}")
        os.makedirs(out, exist_ok=True)
        sets = [a for o in args.overrides for a in ("--set", o)] + ["--set", f"train.seed={seed}",
                                                                    "--set", f"out={run_dir}"]
        train = cached(os.path.join(out, "train.json"),
                       lambda: run([COSMONET, "train", args.config, "--resume"] + sets, log))
        numbers = {"train": {"steps": train.get("steps"), "wall_seconds": train.get("wall_seconds")}}
        evaluation = cached(os.path.join(out, "evaluate.json"), lambda: run(
            [COSMONET, "evaluate", args.config, "--checkpoint", run_dir, "--json", os.path.join(out, "eval.json"),
             "--plots", os.path.join(out, "eval_plots")] + sets, log))
        numbers["test_error"] = evaluation["displacement_error"]
        numbers["zero_input"] = cached(os.path.join(out, "zero_input.json"), lambda: zero_input_response(run_dir))
        for name, extra in PROBES + ([("cosmology", ["--data", args.cosmo_data])] if args.cosmo_data else []):
            kind = name.split("_")[0]
            where = os.path.join(out, name)
            numbers[name] = {k: v for k, v in cached(os.path.join(out, f"{name}.json"), lambda: run(
                [COSMONET, "probe", kind, "--checkpoint", run_dir, "--out", where, "--quiet"] + extra, log)).items()
                if k not in ("json", "plots", "seconds")}
        per_seed[seed] = numbers
    summary = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
               "per_seed": per_seed, "summary": summarise(per_seed)}
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"| number | mean | std | min | max |  ({len(args.seeds)} seeds: {args.seeds})")
    print("|---|---|---|---|---|")
    for key, s in summary["summary"].items():
        print(f"| {key} | {s['mean']:.4g} | {s['std']:.2g} | {s['min']:.4g} | {s['max']:.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
