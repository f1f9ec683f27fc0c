#!/usr/bin/env python3
"""What a CPU budget buys: the emulator's test error against training compute.

    scripts/compute_study.py runs/d3m_cpu16 runs/d3m_cpu32 --eval-data data/cpu_eval \
        --boxes 64 --cores 1 --json docs/data/compute_study.json --plot docs/img/compute_study.png

For every run (a training run directory), every ``--every``-th checkpoint and the last one
are evaluated on the same ``--boxes`` test pairs of ``--eval-data`` (a campaign from a seed
training never used): the mean displacement error of the model, 2LPT and ZA against
FastPM. Each point records the optimiser step, the samples seen, the wall-clock seconds of
the run up to that step (train_log.jsonl, resumed segments added) and the CPU core-hours
(wall time x ``--cores``, the cores the run had). An intermediate checkpoint was taken
before its schedule decayed the learning rate, so its error is what that compute gives
*on the way* to the run's own budget (an upper bound for a run scheduled to stop there);
the last point of each run is a finished schedule. Points are cached in the JSON, so a
rerun evaluates only new checkpoints.
"""
import argparse
import json
import os
import sys

import numpy as np


def elapsed_by_step(run_dir, key="elapsed_seconds"):
    """{step: seconds since the run began} from train_log.jsonl (resumed segments added):
    wall clock (``elapsed_seconds``) or the process's CPU time (``cpu_seconds``, logged
    since cosmonet 0.2; an empty dict for older logs)."""
    out, offset, last = {}, 0.0, 0.0
    with open(os.path.join(run_dir, "train_log.jsonl")) as fh:
        for line in fh:
            rec = json.loads(line) if line.strip() else {}
            if "loss" not in rec or key not in rec:
                continue
            if rec[key] < last:
                offset += last
            last = rec[key]
            out[rec["step"]] = offset + last
    return out


def wall_at(table, step):
    steps = np.array(sorted(table))
    if not len(steps):
        return None
    return float(np.interp(step, steps, [table[s] for s in steps]))


def evaluate_checkpoint(path, eval_data, boxes):
    import torch

    from cosmonet.analysis.d3m_eval import evaluate_d3m
    from cosmonet.data import ShardDataset
    from cosmonet.emulate import load_emulator
    model, norm, state = load_emulator(path)
    test = ShardDataset(eval_data, split="test", fields=("za/disp", "lpt2/disp", "fastpm/disp"))
    with torch.no_grad():
        report, _ = evaluate_d3m(model, test, norm["scale"], max_boxes=boxes)
    return report["displacement_error"], state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--eval-data", required=True)
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--every", type=int, default=4, help="evaluate every N-th checkpoint (and the last)")
    ap.add_argument("--cores", type=float, default=1.0,
                    help="cores a run had, for logs without cpu_seconds (core-hours = wall x cores)")
    ap.add_argument("--cpu-share", action="append", default=[], metavar="RUN=FRACTION",
                    help="a run's measured CPU time over its wall time (e.g. from ps), for logs without "
                         "cpu_seconds; overrides --cores for that run")
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from cosmonet.train.checkpoint import step_files
    study = {"eval_data": args.eval_data, "boxes": args.boxes, "cores_per_run": args.cores, "runs": {}}
    if os.path.exists(args.json):
        with open(args.json) as fh:
            study = json.load(fh)
    for run_dir in args.runs:
        name = os.path.basename(os.path.normpath(run_dir))
        entry = study["runs"].setdefault(name, {"points": []})
        done = {p["step"] for p in entry["points"]}
        files = sorted(step_files(run_dir))                       # oldest first
        chosen = files[args.every - 1::args.every] + files[-1:]
        table, cpu = elapsed_by_step(run_dir), elapsed_by_step(run_dir, "cpu_seconds")
        share = dict(item.split("=", 1) for item in args.cpu_share).get(name)
        for path in dict.fromkeys(chosen):
            step = int(os.path.basename(path)[5:13])
            if step in done:
                continue
            err, state = evaluate_checkpoint(path, args.eval_data, args.boxes)
            cfg = state["config"]
            entry.update(model=state["model_signature"]["kwargs"], batch=cfg["train"]["batch_size"],
                         lr=cfg["train"]["lr"], time_budget=cfg["train"]["time_budget"],
                         precision=state.get("precision"))
            wall = wall_at(table, step)
            if cpu:
                core_seconds, how = wall_at(cpu, step), "cpu_seconds logged by the trainer"
            elif share is not None:
                core_seconds, how = wall * float(share), f"wall x measured CPU share {float(share):.3f}"
            else:
                core_seconds, how = wall * args.cores, f"wall x {args.cores:g} cores"
            entry["core_hours_from"] = how
            entry["points"].append({"step": step, "samples_seen": step * cfg["train"]["batch_size"],
                                    "wall_seconds": wall, "core_hours": core_seconds / 3600 if wall else None,
                                    "error": err, "ratio_to_lpt2": err["model"] / err["lpt2"]})
            entry["points"].sort(key=lambda p: p["step"])
            print(f"compute_study: {name} step {step}: error {100 * err['model']:.2f}% "
                  f"(2LPT {100 * err['lpt2']:.2f}%)", file=sys.stderr, flush=True)
            tmp = args.json + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(study, fh, indent=1)
            os.replace(tmp, args.json)
    if args.plot:
        plot(study, args.plot)


def plot(study, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cosmonet.analysis.plots import save_png
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, entry in sorted(study["runs"].items()):
        pts = entry["points"]
        if not pts:
            continue
        label = f"{name}: {entry['model'].get('base_channels')} ch" + (
            ", 2LPT prior" if entry["model"].get("lpt2_prior") else "")
        for ax, key in zip(axes, ("samples_seen", "core_hours")):
            x = [p[key] for p in pts]
            ax.plot(x, [p["ratio_to_lpt2"] for p in pts], "o-", label=label)
    for ax, xl in zip(axes, ("training samples seen", "CPU core-hours")):
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("displacement error / 2LPT's")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"test error vs training compute ({study['boxes']} pairs of {study['eval_data']})")
    save_png(fig, path)


if __name__ == "__main__":
    main()
