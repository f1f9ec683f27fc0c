#!/usr/bin/env python
"""Benchmark of the batched torch engine (cosmonet.torchpm): simulations per second
against batch size, and where the time goes.

The D3M configuration (nc 32, L 128 Mpc/h, boost 2: a 64^3 float32 force mesh, 10 FastPM
steps, a = 0.1 -> 1), on each device (the CPU, and CUDA when available). For each batch
size B:

1. one warm-up batch (plans, caches, pyccl and growth tables);
2. ``--repeats`` timed batches of fresh seeds with no timers inside (the engine's real
   speed: the step loop never synchronises), reporting the median wall time per batch and
   ``sims_per_s = B / median``;
3. one batch with timers (synchronising the device around every timed block), giving the
   split: ``fft`` (every batched rfftn / irfftn, LPT and PM), ``paint``, ``readout``,
   ``noise`` (the host white noise), ``lpt`` and ``fastpm`` (inclusive), and
   ``fft_share = fft / wall`` of that run;
4. (``--mpi-reference R``) R simulations of the MPI engine on one rank in the same
   process, for scale.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_torchpm.py [--devices cpu,cuda]
        [--batch-sizes 1,8,32,128] [--repeats 3] [--threads 2] > torchpm.json

One JSON document goes to stdout; progress goes to stderr.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import cpu_model, git_state, sig  # noqa: E402


def log(msg):
    print(f"[bench_torchpm] {msg}", file=sys.stderr, flush=True)


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_batch(cfg, device, B, repeats, seed0, noise_workers):
    from cosmonet.timing import Timers
    from cosmonet.torchpm import run_batch

    def run(seeds, timers=None):
        sync(device)
        t0 = time.perf_counter()
        run_batch(cfg, seeds, device=device, timers=timers, noise_workers=noise_workers)
        sync(device)
        return time.perf_counter() - t0

    run(list(range(seed0, seed0 + B)))                     # warm-up
    walls = [run(list(range(seed0 + B * (r + 1), seed0 + B * (r + 2)))) for r in range(repeats)]
    med = statistics.median(walls)
    timers = Timers()
    wall_t = run(list(range(seed0 + B * (repeats + 1), seed0 + B * (repeats + 2))), timers)
    split = {k: v["seconds"] for k, v in timers.as_dict().items()}
    return {"batch": B, "repeats": repeats, "wall_s_per_batch_median": med, "wall_s_per_batch_min": min(walls),
            "sims_per_s": B / med, "s_per_sim": med / B,
            "timed_run": {"wall_s": wall_t, "split_s": split, "fft_share": split.get("fft", 0.0) / wall_t,
                          "fft_calls": timers.counts.get("fft", 0)}}


def mpi_reference(cfg, repeats):
    """Median seconds per simulation of the MPI engine on one rank (same process, same
    threads), after one warm-up: the reference for the CPU numbers."""
    from mpi4py import MPI
    from cosmonet.sim.simulation import SimConfig, run_simulation
    walls = []
    for r in range(repeats + 1):
        c = SimConfig(nc=cfg.nc, box=cfg.box, steps=cfg.steps, boost=cfg.boost, seed=r)
        t0 = time.perf_counter()
        run_simulation(c, MPI.COMM_SELF)
        walls.append(time.perf_counter() - t0)
    return {"repeats": repeats, "s_per_sim_median": statistics.median(walls[1:]), "s_per_sim_min": min(walls[1:]),
            "sims_per_s": 1.0 / statistics.median(walls[1:])}


def main():
    import torch
    from cosmonet.sim.simulation import SimConfig
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda when available)")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--noise-workers", type=int, default=1, help="host threads drawing white noise")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mpi-reference", type=int, default=3, metavar="R",
                    help="also time R simulations of the MPI engine on one rank (0: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cfg = SimConfig(nc=32, box=128.0, steps=args.steps, boost=2)
    result = {
        "benchmark": "torchpm_d3m",
        "config": {"nc": cfg.nc, "box": cfg.box, "boost": cfg.boost, "force_nmesh": cfg.force_nmesh,
                   "steps": cfg.steps, "a_start": cfg.a_start, "a_final": cfg.a_final,
                   "pm_dtype": "float32", "lpt_dtype": "float64"},
        "machine": {"hostname": platform.node(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average_1_5_15min": list(os.getloadavg()), "git": git_state(),
                    "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ}},
        "devices": {},
    }
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            result["machine"]["gpu"] = torch.cuda.get_device_name(device)
        rows = []
        for B in (int(b) for b in args.batch_sizes.split(",")):
            log(f"{name}: batch {B}")
            rows.append(bench_batch(cfg, device, B, args.repeats, 1000 * B, args.noise_workers))
            log(f"{name}: batch {B}: {rows[-1]['sims_per_s']:.2f} sims/s, "
                f"fft share {rows[-1]['timed_run']['fft_share']:.2f}")
        best = max(rows, key=lambda r: r["sims_per_s"])
        result["devices"][name] = {"batches": rows, "best_sims_per_s": best["sims_per_s"], "best_batch": best["batch"]}
    if args.mpi_reference:
        log("MPI engine reference")
        result["mpi_engine_one_rank"] = mpi_reference(cfg, args.mpi_reference)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    print(json.dumps(sig(result), indent=1))


if __name__ == "__main__":
    main()
