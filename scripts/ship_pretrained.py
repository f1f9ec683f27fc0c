#!/usr/bin/env python3
"""Ship a trained D3M emulator as a pretrained network, with its evaluation and model card.

    scripts/ship_pretrained.py runs/d3m_cpu16 d3m_cpu --eval-data data/cpu_eval \
        --cosmo-data data/d3m_cosmo_test --hardware "1 core of an AMD EPYC (AVX-512 BF16)"

1. exports the run's latest checkpoint to ``cosmonet/pretrained/NAME/weights.pt`` (float16
   weights and plain metadata, :func:`cosmonet.pretrained.export`);
2. evaluates it by name (``cosmonet evaluate ... --checkpoint NAME``) on the test split of
   ``--eval-data``: pairs from a seed that training never saw;
3. runs the five probes and the cosmology probe on it, and measures its answer to a zero
   input;
4. writes ``card.json`` (every number, each goal of docs/pretrained.md with its target and
   whether it is met) and ``MODEL_CARD.md`` beside the weights, and the figures into
   ``docs/img/pretrained/NAME/``.

Every step whose output exists is skipped (``--fresh`` redoes them), so a killed run
continues; outputs of other weights (another run or step) are discarded. Needs the run's
training campaign (its data.root) only for step 1.
"""
import argparse
import json
import os
import platform
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from probe_seeds import PROBES, cached, run, zero_input_response  # noqa: E402

K_GOAL = 0.5            # h/Mpc: T and r goals hold up to here


def export_weights(run_dir, name, extra):
    from cosmonet.pretrained import PRETRAINED_DIR, export
    from cosmonet.train.checkpoint import load_checkpoint, resolve_checkpoint
    from cosmonet.train.loop import campaign_training_setup
    path = resolve_checkpoint(run_dir)
    state = load_checkpoint(path)
    if not state.get("training_setup"):
        state["training_setup"] = campaign_training_setup(state["config"]["data"]["root"])
    out = os.path.join(PRETRAINED_DIR, name)
    export(state, out, extra=dict(extra, source_checkpoint=os.path.basename(path)))
    return out, state


def training_log(run_dir, step):
    """Wall time up to ``step`` (resumed segments added), the mean training loss of the last
    ten log records up to it, and the validation losses, from the run's train_log.jsonl."""
    from compute_study import elapsed_by_step, wall_at
    recs = [json.loads(line) for line in open(os.path.join(run_dir, "train_log.jsonl")) if line.strip()]
    steps = [r for r in recs if "loss" in r and r["step"] <= step]
    val = [r for r in recs if "val_loss" in r and r["step"] <= step]
    cpu = elapsed_by_step(run_dir, "cpu_seconds")
    out = {"steps": step, "wall_seconds": round(wall_at(elapsed_by_step(run_dir), step), 1)}
    if cpu:
        out["cpu_seconds"] = round(wall_at(cpu, step), 1)
    return {**out,
            "final_train_loss": float(np.mean([r["loss"] for r in steps[-10:]])),
            "validation": [{"step": r["step"], "val_loss": r["val_loss"]} for r in val]}


STAGE_KEYS = ("steps", "samples_seen", "wall_seconds", "core_hours", "passes_over_pairs")


def training_stages(prior_card, this_stage):
    """The training stages behind the weights, oldest first, and their totals.

    A run started from shipped weights (``train.init_from``) continues that network's
    training: ``prior_card`` is the ``card.json`` those weights were shipped with. Its own
    stages (or, for a card of one run, that run) come first; the totals add steps, samples,
    wall time and core-hours over all stages.
    """
    stages = []
    if prior_card is not None:
        stages = list(prior_card.get("stages") or [dict(
            {k: prior_card["training"][k] for k in STAGE_KEYS + ("hardware",) if k in prior_card["training"]},
            lr=prior_card["config"]["train"]["lr"], seed=prior_card["config"]["train"]["seed"],
            time_budget=prior_card["config"]["train"]["time_budget"],
            init_from=prior_card["config"]["train"].get("init_from", ""),
            out=prior_card["config"].get("out"))])
    stages.append(this_stage)
    totals = {k: round(sum(s.get(k) or 0 for s in stages), 3) for k in STAGE_KEYS}
    totals["steps"], totals["samples_seen"] = int(totals["steps"]), int(totals["samples_seen"])
    return stages, totals


def density_goal(report):
    k = np.asarray(report["k"])
    sel = (k <= K_GOAL) & np.isfinite(k)
    out = {}
    for m in ("model", "lpt2", "za"):
        t = np.asarray(report["density"][f"T_{m}"])[sel]
        r = np.asarray(report["density"][f"r_{m}"])[sel]
        out[m] = {"T_min": float(t.min()), "T_max": float(t.max()), "r_min": float(r.min())}
    return out


def goals(ev, dens, zero, cosmo, planewave):
    err = ev["displacement_error"]
    ratio = err["model"] / err["lpt2"]
    h_model = planewave["fields"]["model"]["displacement"]["harmonics"][0]["ratio_to_main"]
    h_fastpm = planewave["fields"]["fastpm"]["displacement"]["harmonics"][0]["ratio_to_main"]
    harmonic = h_model / h_fastpm if h_fastpm else float("inf")
    per_cosmo = {c["label"]: c["displacement_error"] for c in cosmo["cosmologies"]}
    worst = max(per_cosmo.items(), key=lambda kv: kv[1]["model"] / kv[1]["lpt2"])
    return [
        {"goal": "mean displacement error at most 0.5x 2LPT's", "value": ratio, "target": 0.5, "met": ratio <= 0.5},
        {"goal": f"density T(k) >= 0.95 for k <= {K_GOAL} h/Mpc", "value": dens["model"]["T_min"], "target": 0.95,
         "met": dens["model"]["T_min"] >= 0.95},
        {"goal": f"density r(k) >= 0.99 for k <= {K_GOAL} h/Mpc", "value": dens["model"]["r_min"], "target": 0.99,
         "met": dens["model"]["r_min"] >= 0.99},
        {"goal": "zero input gives at most 0.05 Mpc/h rms", "value": zero["rms"], "target": 0.05,
         "met": zero["rms"] <= 0.05},
        {"goal": "below 2LPT's error at every cosmology of the probe set",
         "value": worst[1]["model"] / worst[1]["lpt2"], "worst": worst[0], "target": 1.0,
         "met": all(v["model"] < v["lpt2"] for v in per_cosmo.values())},
        {"goal": "plane wave's 2nd harmonic within a factor 2 of FastPM's", "value": harmonic,
         "model": h_model, "fastpm": h_fastpm, "target": [0.5, 2.0], "met": 0.5 <= harmonic <= 2.0},
    ]


def markdown(card):
    ev, g = card["evaluation"], card["goals"]
    err = ev["displacement_error"]
    lines = [f"# Model card: `{card['name']}`", "",
             card["summary"], "",
             "## Use", "", "```bash",
             f"cosmonet emulate --checkpoint {card['name']} --input sim.h5 --out emu.h5",
             f"cosmonet evaluate configs/{card['config_file']} --checkpoint {card['name']} --json eval.json "
             f"--set data.root=DIR",
             f"cosmonet probe planewave --checkpoint {card['name']} --out probes --with-nbody", "```", "",
             "## Training", "",
             "| | |", "|---|---|"]
    t = card["training"]
    lines.append(f"| training pairs | {describe_campaign(card['campaign'])} |")
    for key, label in (("config_file", "config"), ("model", "model"),
                       ("steps", "optimiser steps"), ("samples_seen", "samples seen"),
                       ("passes_over_pairs", "times each pair was seen"), ("wall_seconds", "wall time (s)"),
                       ("core_hours", "CPU core-hours"), ("precision", "precision"), ("hardware", "hardware")):
        value = card.get(key, t.get(key))
        if key == "model":
            value = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in value["kwargs"].items())
        lines.append(f"| {label} | {value} |")
    if len(card.get("stages", [])) > 1:
        lines += ["", "Optimiser steps, samples, wall time and core-hours above are totals over the training "
                  "stages; each stage after the first started from the weights of the one before "
                  "(`train.init_from`) with a new optimiser and schedule:", "",
                  "| stage | run | lr | seed | budget (s) | steps | samples | wall (s) | core-hours |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, st in enumerate(card["stages"], 1):
            lines.append(f"| {i} | `{st.get('out')}` | {st['lr']:g} | {st['seed']} | {st['time_budget']:g} | "
                         f"{st['steps']:,} | {st['samples_seen']:,} | {st['wall_seconds']:.0f} | "
                         f"{st['core_hours']:.2f} |")
    import yaml
    lines += ["", f"The training config (`configs/{card['config_file']}` with the run's overrides), as stored in "
              "the weights:", "", "```yaml", yaml.safe_dump(card["config"], sort_keys=False).rstrip(), "```"]
    lines += ["", f"## Evaluation ({ev['n_boxes']} pairs of {describe_campaign(card['evaluation_data'])}: a seed "
              "training never saw)", "",
              "| | model | 2LPT | ZA |", "|---|---|---|---|",
              "| mean displacement error | " + " | ".join(f"{100 * err[m]:.2f}%" for m in ("model", "lpt2", "za"))
              + " |"]
    d = card["density_k_le_0.5"]
    lines += ["| density T(k), k <= 0.5: min / max | " + " | ".join(
        f"{d[m]['T_min']:.3f} / {d[m]['T_max']:.3f}" for m in ("model", "lpt2", "za")) + " |",
        "| density r(k), k <= 0.5: min | " + " | ".join(f"{d[m]['r_min']:.4f}" for m in ("model", "lpt2", "za"))
        + " |", "",
        f"Zero input: rms {card['zero_input']['rms']:.2e} Mpc/h.", "",
        "## Goals (docs/pretrained.md)", "", "| goal | value | met |", "|---|---|---|"]
    for item in g:
        v = item["value"]
        lines.append(f"| {item['goal']} | {v:.4g}" + (f" (worst: {item['worst']})" if "worst" in item else "")
                     + f" | {'yes' if item['met'] else '**no**'} |")
    lines += ["", "## Cosmologies (cosmonet probe cosmology)", "",
              "| cosmology | model | 2LPT | ZA |", "|---|---|---|---|"]
    for c in card["cosmology"]:
        e = c["displacement_error"]
        lines.append(f"| {c['label']} | " + " | ".join(f"{100 * e[m]:.1f}%" for m in ("model", "lpt2", "za")) + " |")
    lines += ["", "## Figures", ""]
    for fig in card["figures"]:
        lines.append(f"![{fig}](../../../docs/img/pretrained/{card['name']}/{fig})")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("name")
    ap.add_argument("--eval-data", required=True, help="campaign whose test split is the evaluation set")
    ap.add_argument("--cosmo-data", required=True, help="campaign of the cosmology probe (d3m_cosmo_test.yaml)")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "d3m_cpu.yaml"))
    ap.add_argument("--work", default=None, help="scratch directory (default out/ship_NAME)")
    ap.add_argument("--hardware", default=platform.processor() or platform.machine())
    ap.add_argument("--cores", type=float, default=1.0,
                    help="cores the training used (core-hours), for a log without cpu_seconds")
    ap.add_argument("--prior-card", default=None,
                    help="card.json of the weights the run started from (train.init_from): the card "
                         "then lists both stages and their totals")
    ap.add_argument("--summary", default="")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    work = args.work or os.path.join(ROOT, "out", f"ship_{args.name}")
    if args.fresh and os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    cosmonet = os.path.join(os.path.dirname(sys.executable), "cosmonet")

    prior = None
    if args.prior_card:
        with open(args.prior_card) as fh:     # read before export: it may be the card being replaced
            prior = json.load(fh)
    out, state = export_weights(args.run_dir, args.name, {"hardware": args.hardware})
    t = training_log(args.run_dir, int(state["step"]))
    source = {"run": os.path.abspath(args.run_dir), "step": int(state["step"])}
    marker = os.path.join(work, "source.json")
    if os.path.exists(marker) and json.load(open(marker)) != source:      # cached steps of other weights
        shutil.rmtree(work)
        os.makedirs(work)
    with open(marker, "w") as fh:
        json.dump(source, fh)
    name = args.name
    ev = cached(os.path.join(work, "eval_run.json"), lambda: run(
        [cosmonet, "evaluate", args.config, "--checkpoint", name, "--json", os.path.join(work, "eval.json"),
         "--plots", os.path.join(work, "plots"), "--set", f"data.root={args.eval_data}"], log))
    with open(os.path.join(work, "eval.json")) as fh:
        ev = json.load(fh)
    zero = cached(os.path.join(work, "zero_input.json"), lambda: zero_input_response(name))
    probes = {}
    for label, extra in PROBES:
        kind = label.split("_")[0]
        pdir = os.path.join(work, label)
        cached(os.path.join(work, f"{label}_run.json"), lambda: run(
            [cosmonet, "probe", kind, "--checkpoint", name, "--out", pdir, "--quiet"] + extra, log))
        with open(os.path.join(pdir, f"{kind}.json")) as fh:
            probes[label] = json.load(fh)
    cdir = os.path.join(work, "cosmology")
    cached(os.path.join(work, "cosmology_run.json"), lambda: run(
        [cosmonet, "probe", "cosmology", "--checkpoint", name, "--out", cdir, "--data", args.cosmo_data,
         "--no-reference", "--quiet"], log))
    with open(os.path.join(cdir, "cosmology.json")) as fh:
        cosmo = json.load(fh)

    figdir = os.path.join(ROOT, "docs", "img", "pretrained", name)
    os.makedirs(figdir, exist_ok=True)
    figures = []
    for src in sorted(os.listdir(os.path.join(work, "plots"))):
        shutil.copy(os.path.join(work, "plots", src), os.path.join(figdir, src))
        figures.append(src)
    for label, _ in PROBES + [("cosmology", None)]:
        pdir = os.path.join(work, label)
        for src in sorted(f for f in os.listdir(pdir) if f.endswith(".png")):
            dst = f"{label}.png" if src == f"{label.split('_')[0]}.png" else src
            shutil.copy(os.path.join(pdir, src), os.path.join(figdir, dst))
            figures.append(dst)

    cfg = state["config"]
    n_train = sum(v for k, v in (read_splits(cfg["data"]["root"]) or {}).items() if k == "train")
    samples = int(state.get("samples_seen") or state["step"] * cfg["train"]["batch_size"])
    dens = density_goal(ev)
    card = {"name": name, "summary": args.summary, "config_file": os.path.basename(args.config),
            "config": cfg, "model": state["model_signature"], "training_setup": state["training_setup"],
            "campaign": campaign_identity(cfg["data"]["root"]),
            "training": dict(t, samples_seen=samples, precision=state.get("precision"), hardware=args.hardware,
                             core_hours=round((t.get("cpu_seconds") or t["wall_seconds"] * args.cores) / 3600, 3),
                             passes_over_pairs=round(samples / n_train, 2) if n_train else None),
            "evaluation_data": campaign_identity(args.eval_data), "evaluation": ev, "density_k_le_0.5": dens,
            "zero_input": zero, "cosmology": cosmo["cosmologies"],
            "probes": {k: _headline(k, v) for k, v in probes.items()},
            "figures": figures}
    this_stage = dict({k: card["training"][k] for k in STAGE_KEYS + ("hardware",)},
                      lr=cfg["train"]["lr"], seed=cfg["train"]["seed"], time_budget=cfg["train"]["time_budget"],
                      init_from=cfg["train"].get("init_from", ""), out=cfg.get("out"))
    card["stages"], totals = training_stages(prior, this_stage)
    card.update({k: card["training"][k] for k in ("precision", "hardware")}, **totals)
    card["goals"] = goals(ev, dens, zero, cosmo, probes["planewave"])
    for key in ("evaluation",):          # the per-k arrays stay in the card; slices are in the figures
        card[key] = {k: v for k, v in card[key].items() if k != "checkpoint"}
    with open(os.path.join(out, "card.json"), "w") as fh:
        json.dump(card, fh, indent=1)
    with open(os.path.join(out, "MODEL_CARD.md"), "w") as fh:
        fh.write(markdown(card))
    print(json.dumps({"weights": os.path.join(out, "weights.pt"), "goals": card["goals"]}, indent=1))


def describe_campaign(c):
    splits = ", ".join(f"{n:,} {k}" for k, n in c["splits"].items())
    return (f"`{c['path']}`, {c['n_sims']:,} pairs of seed {c['seed']} ({splits}): {c['nc']}^3 particles in "
            f"{c['box']:g} Mpc/h, {c['steps']} FastPM steps, force mesh {c['boost']:g}x, a = {c['a_start']:g} to "
            f"{c['a_final']:g}, {c['cosmology']}")


def read_splits(root):
    from cosmonet.campaign.store import read_config
    return dict(read_config(root).splits or {})


def campaign_identity(root):
    """The settings that identify a campaign (seed, size, splits, physics), from its campaign.yaml."""
    from cosmonet.campaign.store import read_config
    cfg = read_config(root)
    return {"path": os.path.relpath(os.path.abspath(root), ROOT), "seed": cfg.seed, "n_sims": cfg.n_sims,
            "splits": dict(cfg.splits or {}), "nc": cfg.nc, "box": cfg.box, "steps": cfg.steps, "boost": cfg.boost,
            "a_start": cfg.a_start, "a_final": cfg.a_final, "cosmology": cfg.cosmology}


def _headline(label, report):
    from cosmonet.probes.command import _headline as headline
    return headline(label.split("_")[0], report)


if __name__ == "__main__":
    main()
