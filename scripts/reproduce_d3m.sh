#!/usr/bin/env bash
# The D3M experiment of issue 10 in one command (docs/training.md, "The experiment in one
# command"): simulate the 10,000 ZA -> FastPM pairs of configs/d3m_pairs.yaml, train the
# full-width U-Net of configs/d3m_gpu.yaml for a wall-clock budget, evaluate on the 1,000
# test pairs, and write OUT/report.json (+ OUT/eval.json, OUT/plots/*.png).
#
#   scripts/reproduce_d3m.sh BUDGET_SECONDS [OUT]          # default 300 s, runs/reproduce_d3m
#   SMOKE=1 scripts/reproduce_d3m.sh 20 /tmp/smoke         # tiny CPU check (~1 min on 2 cores)
#
# Environment:
#   ENGINE=torch|mpi   simulation engine (default: torch on a GPU run, mpi for SMOKE=1).
#                      torch runs configs/d3m_pairs_gpu.yaml (the batched torch engine,
#                      docs/campaigns.md "GPU campaigns") on SIM_DEVICE; mpi runs
#                      configs/d3m_pairs.yaml under `mpirun -np NP` (NP default: the cores).
#   SIM_BATCH          boxes per torch-engine batch (default: the config's, 1000).
#   SIM_DEVICE         the torch engine's device (default cuda; cpu for a check without GPU).
#   COSMONET           the cosmonet executable (default: the one on PATH).
#   SMOKE=1            24 pairs of 16^3 in 64 Mpc/h (16 train, 8 test), U-Net of 4 base
#                      channels, batch 2, data staged on the CPU: checks the chain end to end.
# A finished step is not redone: the campaign resumes, training resumes from OUT/run.
set -euo pipefail

BUDGET=${1:-300}
OUT=${2:-runs/reproduce_d3m}
SMOKE=${SMOKE:-0}
COSMONET=${COSMONET:-cosmonet}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$(dirname "$(command -v "$COSMONET")")/python}
[ -x "$PY" ] || PY=python3
if [ "$SMOKE" = 1 ]; then ENGINE=${ENGINE:-mpi}; else ENGINE=${ENGINE:-torch}; fi
NP=${NP:-$(nproc)}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}

mkdir -p "$OUT"
PAIRS="$OUT/pairs"
RUN="$OUT/run"
say() { echo "reproduce_d3m: $*" >&2; }
now() { date +%s.%N; }

SIM_SET=(--set "out=$PAIRS")
TRAIN_SET=(--set "data.root=$PAIRS" --set "out=$RUN" --set "train.time_budget=$BUDGET")
if [ "$SMOKE" = 1 ]; then
    SIM_SET+=(--set n_sims=24 --set nc=16 --set box=64.0 --set steps=2 --set shard_size=8
              --set "splits={train: 16, val: 0, test: 8}")
    TRAIN_SET+=(--set model.base_channels=4 --set train.batch_size=2 --set train.base_batch=2
                --set data.num_workers=0 --set data.staging=device --set train.budget_warmup_steps=6
                --set train.log_every=20 --set train.check_every=10)
fi
if [ "$ENGINE" = torch ]; then
    SIM_SET+=(--set "device=${SIM_DEVICE:-cuda}")
    [ -n "${SIM_BATCH:-}" ] && SIM_SET+=(--set "batch_size=$SIM_BATCH")
    [ "$SMOKE" = 1 ] && SIM_SET+=(--set noise_workers=1)
    SIM=("$COSMONET" simulate "$HERE/configs/d3m_pairs_gpu.yaml" --quiet "${SIM_SET[@]}")
else
    SIM=(mpirun -np "$NP" "$COSMONET" simulate "$HERE/configs/d3m_pairs.yaml" --quiet "${SIM_SET[@]}")
fi

t0=$(now)
say "1/4 simulate ($ENGINE engine) -> $PAIRS"
"${SIM[@]}"
t1=$(now)
say "2/4 train for a budget of $BUDGET s -> $RUN"
RESUME=()
[ -e "$RUN/checkpoints/latest" ] && RESUME=(--resume)
"$COSMONET" train "$HERE/configs/d3m_gpu.yaml" "${TRAIN_SET[@]}" "${RESUME[@]}" > "$OUT/train_summary.json"
t2=$(now)
say "3/4 evaluate on the test split -> $OUT/eval.json, $OUT/plots"
"$COSMONET" evaluate "$HERE/configs/d3m_gpu.yaml" "${TRAIN_SET[@]}" --checkpoint "$RUN" \
    --json "$OUT/eval.json" --plots "$OUT/plots" > "$OUT/eval_summary.json"
t3=$(now)
say "4/4 report -> $OUT/report.json"
"$PY" - "$OUT" "$BUDGET" "$ENGINE" "$SMOKE" "$t0" "$t1" "$t2" "$t3" <<'EOF'
"""Assemble OUT/report.json: stage times, training summary, the issue's goals as measured."""
import json
import os
import sys

import numpy as np
import torch

from cosmonet.emulate import load_emulator
from cosmonet.io.atomic import write_json

out, budget, engine, smoke = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
t0, t1, t2, t3 = (float(v) for v in sys.argv[5:9])
summary = json.loads(open(os.path.join(out, "train_summary.json")).read().strip().splitlines()[-1])
ev = json.load(open(os.path.join(out, "eval.json")))
model, norm, state = load_emulator(summary["checkpoint"])
nc = int(ev["nc"])
with torch.no_grad():
    zero = model(torch.zeros(1, 3, nc, nc, nc))[0] * norm["scale"]            # Mpc/h
k = np.asarray(ev["k"])
low = k <= 0.5
err = ev["displacement_error"]
goals = {
    "displacement_error_model_over_lpt2": err["model"] / err["lpt2"],
    "goal_error_ratio_at_most_0.5": err["model"] / err["lpt2"] <= 0.5,
    "density_T_min_k_le_0.5": float(np.min(np.asarray(ev["density"]["T_model"])[low])),
    "density_r_min_k_le_0.5": float(np.min(np.asarray(ev["density"]["r_model"])[low])),
    "zero_input_rms_mpc_h": float(zero.pow(2).mean().sqrt()),
}
goals["goal_T_ge_0.95"] = goals["density_T_min_k_le_0.5"] >= 0.95
goals["goal_r_ge_0.99"] = goals["density_r_min_k_le_0.5"] >= 0.99
goals["goal_zero_input_within_0.05"] = goals["zero_input_rms_mpc_h"] <= 0.05
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
report = {"experiment": "D3M, issue 10 section 3 (scripts/reproduce_d3m.sh)", "smoke": smoke,
          "engine": engine, "gpu": gpu, "time_budget_seconds": budget,
          "seconds": {"simulate": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2, "total": t3 - t0},
          "train": summary, "steps": state["step"], "displacement_error": err, "goals": goals,
          "eval_json": os.path.join(out, "eval.json"), "plots": os.path.join(out, "plots")}
write_json(os.path.join(out, "report.json"), report)
print(json.dumps({"report": os.path.join(out, "report.json"), "seconds": report["seconds"], "goals": goals}))
EOF
