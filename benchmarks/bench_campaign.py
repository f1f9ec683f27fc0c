#!/usr/bin/env python
"""Campaign throughput: simulations per second per rank, weak scaling 1 -> 2 ranks, and
the campaign's overhead (gathering, HDF5, hashing, coordination) against simulation time.

Runs ``cosmonet simulate`` on the D3M configuration (nc 32, L 128 Mpc/h, 10 steps,
boost 2, ZA + 2LPT + FastPM displacements) under ``mpirun -np N`` with ``--sims-per-rank``
simulations per rank (weak scaling), in a temporary directory, and prints one JSON
document. Also measures what a new cosmology costs (pyccl P(k) and growth tables), which
every simulation of a Latin-hypercube campaign pays, and estimates the core-hours for the
10,000 D3M pairs from the measured rate.

    .venv/bin/python benchmarks/bench_campaign.py [--sims-per-rank 24] [--ranks 1 2]

``--set KEY=VALUE`` (repeatable) is passed on to ``cosmonet simulate``; the torch engine on
one GPU, for example (one rank, whole shards per batch)::

    .venv/bin/python benchmarks/bench_campaign.py --ranks 1 --sims-per-rank 4000 --shard-size 1000 \
        --set engine=torch --set device=cuda --set batch_size=1000 --set noise_workers=8
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)


def run_campaign(ranks, n_sims, shard_size, workdir, overrides=()):
    out = os.path.join(workdir, f"r{ranks}")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    cmd = ["mpirun", "-np", str(ranks), os.path.join(BIN, "cosmonet"), "simulate",
           os.path.join(ROOT, "configs", "d3m_pairs.yaml"), "--out", out, "--quiet",
           "--set", f"n_sims={n_sims}", "--set", f"shard_size={shard_size}", "--set", "splits={}"]
    cmd += [arg for kv in overrides for arg in ("--set", kv)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["process_wall_seconds"] = round(wall, 3)
    shutil.rmtree(out)
    return summary


def cosmology_setup_cost(n=5):
    """Seconds to prepare a new cosmology: pyccl P(k) table + growth ODE (median of n)."""
    import statistics
    from cosmonet.cosmology import Cosmology
    from cosmonet.cosmology import growth_for
    import numpy as np
    times = []
    for i in range(n):
        c = Cosmology.planck15().with_params(Omega_m=0.28 + 0.01 * i, sigma8=0.75 + 0.01 * i)
        t0 = time.perf_counter()
        c.linear_power(np.geomspace(1e-3, 10, 512))
        growth_for(c)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims-per-rank", type=int, default=24)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to cosmonet simulate, e.g. --set engine=torch --set device=cuda")
    args = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="cosmonet-bench-") as work:
        for r in args.ranks:
            print(f"[bench_campaign] {r} rank(s), {args.sims_per_rank * r} simulations", file=sys.stderr)
            runs[str(r)] = run_campaign(r, args.sims_per_rank * r, args.shard_size, work, args.overrides)
    base = runs[str(args.ranks[0])]["sims_per_second_per_rank"]
    eff = {r: round(v["sims_per_second_per_rank"] / base, 3) for r, v in runs.items()}
    best_rate = max(v["sims_per_second_per_rank"] for v in runs.values())
    worst_rate = min(v["sims_per_second_per_rank"] for v in runs.values())
    result = {
        "benchmark": "cosmonet benchmarks/bench_campaign.py",
        "config": "configs/d3m_pairs.yaml (nc 32, L 128, 10 steps, boost 2; ZA, 2LPT, FastPM disp)",
        "sims_per_rank": args.sims_per_rank, "shard_size": args.shard_size, "overrides": args.overrides,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "runs": runs,
        "weak_scaling_efficiency": eff,
        "overhead_fraction": {r: v["overhead_fraction"] for r, v in runs.items()},
        "new_cosmology_setup_seconds": round(cosmology_setup_cost(), 4),
        "d3m_10000_pairs_core_hours": {
            "at_best_rate": round(10000 / best_rate / 3600, 2),
            "at_worst_rate": round(10000 / worst_rate / 3600, 2),
            "one_rank_wall_seconds_at_best_rate": round(10000 / best_rate, 1),
            "note": "core-hours = 10,000 / (simulations per second per rank) / 3600, one rank per core; "
                    "includes start-up and I/O as measured in these runs"},
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
