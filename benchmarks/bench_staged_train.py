#!/usr/bin/env python
"""End-to-end throughput of ``cosmonet train`` with the device-staged data path against the
bare U-Net training step of ``benchmarks/bench_conv.py`` at the same batch and precision
(issue 10 section 2: the trainer should reach 90% of the bare step on a GPU). JSON on stdout.

For one U-Net (``--base`` channels, ``--depth``, BatchNorm, residual; ``--zero-anchor``)
on a campaign (``--campaign DIR``, or a tiny one made in a temporary directory: ``--nc``^3
particles, ``--sims`` training pairs, 1 FastPM step), on ``--device`` (cuda when available,
else cpu; the trainer uses bf16 autocast and channels_last_3d on CUDA, fp32 on the CPU):

- ``trainer_staged`` / ``trainer_loader``: ``cosmonet.train.loop.train`` in this process for
  ``--steps`` steps (``data.staging: device`` / ``loader``, ``train.check_every`` =
  ``--check-every``, the loss read every ``--log-every`` steps). ``steady_samples_per_second``
  is measured between the log records of step ``--log-every`` and the last step (after the
  warm-up); ``samples_per_second`` is the trainer's own figure over the whole run;
  ``first_step_seconds`` is the time from the call of ``train()`` to the end of the first
  step (data staging, model build, first step; torch's one-off import of its compiler at
  the first optimiser of a process is paid before, ``torch_first_optimizer_seconds``).
- ``bare_step``: bench_conv's ``time_train_steps`` (zero_grad, forward, MSE, backward, SGD
  step on one fixed random batch; mode ``bf16_channels_last`` on CUDA, ``fp32`` on the CPU)
  on the same model, and the same step with Adam (the trainer's optimiser):
  ``samples_per_second`` from the median step.
- ``ratio_staged_over_bare`` = trainer_staged steady samples/s / bare step samples/s (SGD,
  bench_conv's number), and ``ratio_staged_over_bare_adam``.

    .venv/bin/python benchmarks/bench_staged_train.py --base 4 --batch 4 --steps 40   # CPU, ~1 min
    .venv/bin/python benchmarks/bench_staged_train.py --campaign data/d3m_pairs --base 64 --batch 16
"""
import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch  # noqa: E402

from bench_conv import time_train_steps  # noqa: E402


def log(msg):
    print(f"[bench_staged_train] {msg}", file=sys.stderr, flush=True)


def make_campaign(root, nc, sims):
    from mpi4py import MPI
    from cosmonet.campaign_runner import prepare_directory, run_campaign
    from cosmonet.config import validate
    cfg = validate({"n_sims": sims + 2, "nc": nc, "box": 4.0 * nc, "steps": 1, "shard_size": 16, "seed": 1,
                    "fields": ["za/disp", "lpt2/disp", "fastpm/disp"],
                    "splits": {"train": sims, "val": 0, "test": 2}, "out": root})
    prepare_directory(cfg)
    run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    return root


def model_cfg(args):
    return {"name": "unet", "base_channels": args.base, "depth": args.depth, "norm": "batch", "residual": True,
            "zero_anchor": args.zero_anchor}


def trainer_run(args, campaign, out, staging):
    from cosmonet.train.config import validate_train_config
    from cosmonet.train.loop import train
    cfg = validate_train_config({
        "model": model_cfg(args),
        "data": {"root": campaign, "val_split": "", "num_workers": args.workers, "staging": staging},
        "train": {"batch_size": args.batch, "base_batch": args.batch, "max_steps": args.steps, "epochs": 100000,
                  "log_every": args.log_every, "check_every": args.check_every, "checkpoint_every": 10 ** 9,
                  "seed": 0},
        "out": out})
    t0 = time.perf_counter()
    summary, _, _ = train(cfg, log_stream=io.StringIO())
    call = time.perf_counter() - t0
    recs = [json.loads(x) for x in open(os.path.join(out, "train_log.jsonl")) if '"loss"' in x]
    first, last = recs[0], recs[-1]
    steady = (last["step"] - first["step"]) * args.batch / (last["elapsed_seconds"] - first["elapsed_seconds"])
    return {"staged": summary["staged"], "steps": summary["steps"], "samples_per_second": summary["samples_per_second"],
            "steady_samples_per_second": steady, "steady_from_step": first["step"],
            "first_step_seconds": summary["first_step_seconds"], "data_wait_seconds": summary["data_wait_seconds"],
            "train_call_seconds": call}


def time_adam_steps(model, device, mode, batch, n, warmup, repeats):
    """bench_conv's training step (same input, MSE, autocast and memory format) with Adam."""
    from bench_conv import Clock, mode_settings
    st = mode_settings(mode)
    x = torch.randn(batch, 3, n, n, n, device=device).contiguous(memory_format=st["memory_format"])
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = (torch.autocast(device.type, dtype=st["autocast_dtype"]) if st["autocast_dtype"] is not None
           else nullcontext())

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = torch.nn.functional.mse_loss(model(x).float(), target)
        loss.backward()
        opt.step()

    return Clock(device).time(step, warmup, repeats)


def bare_runs(args, device, n):
    from cosmonet.models import build_model
    mode = "bf16_channels_last" if device.type == "cuda" else "fp32"
    res = {"mode": mode}
    for opt in ("sgd", "adam"):
        torch.manual_seed(0)
        model = build_model(**model_cfg(args)).to(device)
        if mode == "bf16_channels_last":
            model = model.to(memory_format=torch.channels_last_3d)
        if opt == "sgd":
            times, _ = time_train_steps(model, device, mode, args.batch, n, args.bare_warmup, args.bare_repeats)
        else:
            times = time_adam_steps(model, device, mode, args.batch, n, args.bare_warmup, args.bare_repeats)
        med = statistics.median(times)
        res[opt] = {"step_seconds_median": med, "samples_per_second": args.batch / med}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--campaign", default=None, help="a campaign directory (default: a tiny one, made here)")
    ap.add_argument("--nc", type=int, default=16, help="particles per side of the tiny campaign")
    ap.add_argument("--sims", type=int, default=32, help="training pairs of the tiny campaign")
    ap.add_argument("--base", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--zero-anchor", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="data.num_workers of the loader run")
    ap.add_argument("--bare-warmup", type=int, default=5)
    ap.add_argument("--bare-repeats", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"benchmark": "cosmonet benchmarks/bench_staged_train.py", "device": str(device),
           "machine": {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "python": platform.python_version(),
                       "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
           "params": vars(args)}
    t0 = time.perf_counter()      # torch's first optimiser imports torch._dynamo: a per-process cost, paid here
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    res["torch_first_optimizer_seconds"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        campaign = args.campaign or make_campaign(os.path.join(tmp, "pairs"), args.nc, args.sims)
        from cosmonet.data import ShardDataset
        n = int(ShardDataset(campaign, split="train", fields=("za/disp",)).nc)
        res["box"] = n
        for staging in ("device", "loader"):
            log(f"trainer, data.staging: {staging}")
            res[f"trainer_{'staged' if staging == 'device' else 'loader'}"] = trainer_run(
                args, campaign, os.path.join(tmp, staging), staging)
    log("bare U-Net steps (bench_conv.time_train_steps)")
    res["bare_step"] = bare_runs(args, device, n)
    st = res["trainer_staged"]["steady_samples_per_second"]
    res["ratio_staged_over_bare"] = st / res["bare_step"]["sgd"]["samples_per_second"]
    res["ratio_staged_over_bare_adam"] = st / res["bare_step"]["adam"]["samples_per_second"]
    res["ratio_loader_over_bare_adam"] = (res["trainer_loader"]["steady_samples_per_second"]
                                         / res["bare_step"]["adam"]["samples_per_second"])
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
