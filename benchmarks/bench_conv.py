#!/usr/bin/env python
"""Convolution benchmark of cosmonet's D3M U-Net: training-step time, FLOPs, and the floor
set by its bare convolutions.

For the U-Net (``cosmonet.models.UNet``, depth 2, BatchNorm, residual) at each
``--bases`` width on a (B, 3, 32, 32, 32) input, on the CPU (all cores) and, when
available, on CUDA:

1. FLOPs per sample (``cosmonet.models.count_flops``): forward, and forward + backward
   (weight gradients of every conv, input gradients of all but the first: ~3x forward);
2. training-step time (zero_grad + forward + MSE loss + backward + SGD step) for every
   batch size: median over ``--repeats`` after warm-up steps, samples/s and GFLOP/s;
3. for every distinct convolution call of the U-Net (same kind, shapes, stride, need of an
   input gradient), the time of torch's bare ``conv3d`` / ``conv_transpose3d`` forward +
   backward on tensors of the same shapes (the circularly padded input, no padding, norm,
   activation, concatenation, loss or optimiser); summed with multiplicities this is
   ``sum_of_bare_conv_seconds``, the floor of a step, and ``ratio`` =
   ``unet_step_seconds / sum_of_bare_conv_seconds`` shows the U-Net's overhead.

CUDA runs two modes: ``fp32`` (torch defaults; cuDNN may use TF32, see
``machine.cuda.cudnn_allow_tf32``) and ``bf16_channels_last`` (bf16 autocast, model and
input in ``channels_last_3d``; its bare convolutions take bf16 channels_last tensors).
The CPU runs ``fp32`` and, on CPUs with native bfloat16 (AVX512-BF16, AMX), ``bf16``
(bf16 autocast as ``train.precision: bf16``); ``--cpu-modes`` chooses.
One JSON document goes to stdout; progress goes to stderr.

    .venv/bin/python benchmarks/bench_conv.py > conv.json          # CPU ~1-2 min (+ CUDA)
    .venv/bin/python benchmarks/bench_conv.py --devices cpu --bases 16

Keys of every ``runs[i]`` (one per device, mode and width):

``parameters``, ``forward_gflop_per_sample``, ``train_step_gflop_per_sample`` (forward +
backward, FLOP convention in ``flop_convention``), ``train_step_over_forward`` (~3).
``batches[j]``: ``step_seconds_median`` / ``_min`` / ``_all`` of the timed steps (after
``warmup_steps`` untimed ones), ``samples_per_second``, ``gflops_per_second`` (median
step) and ``gflops_per_second_best`` (fastest step), ``cpu_seconds_per_step`` and
``cores_used`` (process CPU time / wall time: below the thread count when other processes
compete for the cores -- then trust the ``_min`` numbers more), involuntary context
switches per step, and on CUDA ``peak_memory_mib``.
``conv_comparison[j]`` (at the compare batch sizes): ``unet_step_seconds`` (median step),
``sum_of_bare_conv_seconds`` (sum over the distinct conv calls of count x median bare
forward + backward), ``ratio`` = the first / the second (1 = no overhead beyond the
convolutions), ``overhead_seconds``, the same from the fastest runs (``*_min``,
``ratio_of_minima``), and ``layers``: per distinct conv call its shapes, count, seconds
and GFLOP/s. ``summary`` repeats the headline numbers per run; ``machine`` records the
CPU, threads, load average at start and end, torch/CUDA/cuDNN versions and git commit.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import cpu_model, git_state  # noqa: E402
from bench_common import sig as _sig  # noqa: E402


def sig(x, digits=5):
    return _sig(x, digits)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cosmonet.models import build_model, count_flops, count_parameters  # noqa: E402

FLOP_CONVENTION = ("a multiply-add = 2 FLOPs; conv3d: 2 Cin Cout k^3 x output voxels, transposed conv: "
                   "2 Cin Cout k^3 x input voxels, counted on the tensors torch convolves (after circular "
                   "padding); backward = weight gradient (1x forward) + input gradient (1x forward, not for "
                   "the first layer, whose input is data); bias, BatchNorm, ReLU, padding, concatenation, "
                   "loss and optimiser not counted. GFLOP/s = train-step FLOPs / step seconds / 1e9")


def log(msg):
    print(f"[bench_conv] {msg}", file=sys.stderr, flush=True)




# --------------------------------------------------------------------------- machine




def machine_info():
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "git": git_state(),
        "load_average_1_5_15min_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["cuda"] = {
            "device": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1),
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": True,
        }
    return info


# --------------------------------------------------------------------------- timing
class Clock:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, warmup, repeats):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return times


def mode_settings(mode):
    """``fp32``; ``bf16`` (bf16 autocast, contiguous: the CPU trainer's ``train.precision:
    bf16``); ``bf16_channels_last`` (bf16 autocast and channels_last_3d: the CUDA trainer)."""
    cl = mode == "bf16_channels_last"
    return {"memory_format": torch.channels_last_3d if cl else torch.contiguous_format,
            "autocast_dtype": torch.bfloat16 if mode.startswith("bf16") else None}


def time_train_steps(model, device, mode, batch, n, warmup, repeats):
    st = mode_settings(mode)
    x = torch.randn(batch, 3, n, n, n, device=device).contiguous(memory_format=st["memory_format"])
    target = torch.randn_like(x)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = (torch.autocast(device.type, dtype=st["autocast_dtype"]) if st["autocast_dtype"] is not None
           else nullcontext())

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.mse_loss(model(x).float(), target)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = Clock(device)
    for _ in range(warmup):
        step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    times = clock.time(step, 0, repeats)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    extra = {
        # CPU time of this process (all threads) per step / wall time: the cores it really got
        "cpu_seconds_per_step": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / repeats,
        "involuntary_context_switches_per_step": (r1.ru_nivcsw - r0.ru_nivcsw) / repeats,
    }
    extra["cores_used"] = extra["cpu_seconds_per_step"] / (sum(times) / repeats)
    if device.type == "cuda":
        extra["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return times, extra


def time_bare_conv(rec, device, mode, warmup, repeats):
    """Forward + backward of one bare torch convolution with the shapes of ``rec``."""
    st = mode_settings(mode)
    dtype = st["autocast_dtype"] or torch.float32
    x = torch.randn(rec.input_shape, device=device, dtype=dtype).contiguous(memory_format=st["memory_format"])
    x.requires_grad_(rec.input_requires_grad)
    w = torch.randn(rec.weight_shape, device=device, dtype=dtype, requires_grad=True)
    if st["memory_format"] is torch.channels_last_3d:
        w = w.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    conv = F.conv3d if rec.kind == "conv3d" else F.conv_transpose3d
    inputs = [x, w] if rec.input_requires_grad else [w]
    gy = torch.randn(rec.output_shape, device=device, dtype=dtype).contiguous(memory_format=st["memory_format"])

    def fwd_bwd():
        y = conv(x, w, stride=rec.stride, padding=rec.padding, groups=rec.groups)
        torch.autograd.grad(y, inputs, gy)

    return Clock(device).time(fwd_bwd, warmup, repeats)


# --------------------------------------------------------------------------- one model
def bench_model(base, device, mode, batches, compare_batches, n, warmup, repeats):
    torch.manual_seed(0)
    st = mode_settings(mode)
    model = build_model("unet", base_channels=base).to(device).to(memory_format=st["memory_format"]).train()
    flops1 = count_flops(model, (1, 3, n, n, n))
    out = {
        "device": device.type, "mode": mode, "model": "unet", "base_channels": base,
        "input_shape_per_sample": [3, n, n, n], "parameters": count_parameters(model),
        "conv_layers": len(flops1.layers), "distinct_conv_shapes": len(flops1.distinct_shapes()),
        "forward_gflop_per_sample": flops1.forward_per_sample / 1e9,
        "train_step_gflop_per_sample": flops1.train_step_per_sample / 1e9,
        "train_step_over_forward": flops1.train_step / flops1.forward,
        "warmup_steps": warmup, "repeats": repeats, "batches": [],
    }
    step_median, step_min = {}, {}
    for b in sorted(set(batches) | set(compare_batches)):
        log(f"{device.type}/{mode} base {base}: batch {b} ({warmup} warm-up + {repeats} timed steps)")
        times, extra = time_train_steps(model, device, mode, b, n, warmup, repeats)
        med = statistics.median(times)
        step_median[b], step_min[b] = med, min(times)
        row = {"batch": b, "step_seconds_median": med, "step_seconds_min": min(times), "step_seconds_all": times,
               "samples_per_second": b / med, "gflops_per_second": flops1.train_step_per_sample * b / med / 1e9,
               "gflops_per_second_best": flops1.train_step_per_sample * b / min(times) / 1e9, **extra}
        out["batches"].append(row)
    out["conv_comparison"] = []
    for b in compare_batches:
        report = count_flops(model, (b, 3, n, n, n))
        layers, total, total_min = [], 0.0, 0.0
        for rec, count in report.distinct_shapes():
            ts = time_bare_conv(rec, device, mode, max(1, warmup), repeats)
            t = statistics.median(ts)
            total += count * t
            total_min += count * min(ts)
            fb = rec.forward_flops + rec.backward_flops
            layers.append({"kind": rec.kind, "input_shape": list(rec.input_shape),
                           "weight_shape": list(rec.weight_shape), "stride": rec.stride[0],
                           "input_requires_grad": rec.input_requires_grad, "count": count,
                           "gflop_fwd_bwd_each": fb / 1e9, "seconds_each": t, "seconds_total": count * t,
                           "gflops_per_second": fb / t / 1e9})
        unet = step_median[b]
        out["conv_comparison"].append({
            "batch": b, "unet_step_seconds": unet, "sum_of_bare_conv_seconds": total, "ratio": unet / total,
            "overhead_seconds": unet - total, "unet_step_seconds_min": step_min[b],
            "sum_of_bare_conv_seconds_min": total_min, "ratio_of_minima": step_min[b] / total_min, "bare_conv_gflops_per_second": report.train_step / total / 1e9,
            "unet_gflops_per_second": report.train_step / unet / 1e9, "layers": layers})
        log(f"{device.type}/{mode} base {base}: batch {b}: step {unet:.4g} s, bare convs {total:.4g} s, "
            f"ratio {unet / total:.3g}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def int_list(s):
    return [int(v) for v in s.split(",") if v.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", type=int_list, default=[16, 64], help="U-Net widths (default 16,64)")
    ap.add_argument("--n", type=int, default=32, help="box side in voxels (default 32)")
    ap.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu, and cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable cores)")
    ap.add_argument("--cpu-batches", type=int_list, default=[1, 2, 4])
    ap.add_argument("--cpu-compare-batches", type=int_list, default=[2],
                    help="CPU batch sizes of the bare-conv comparison (default 2)")
    ap.add_argument("--cpu-repeats", type=int, default=5, help="timed steps per batch, base <= 32 (default 5)")
    ap.add_argument("--cpu-repeats-large", type=int, default=2,
                    help="timed steps per batch for base > 32 on CPU (default 2)")
    ap.add_argument("--cpu-warmup", type=int, default=1)
    ap.add_argument("--cpu-modes", default=None,
                    help="CPU modes: fp32, bf16 (default fp32,bf16 on a CPU with native bfloat16, else fp32)")
    ap.add_argument("--cuda-batches", type=int_list, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--cuda-compare-batches", type=int_list, default=[4, 32])
    ap.add_argument("--cuda-modes", default="fp32,bf16_channels_last")
    ap.add_argument("--cuda-repeats", type=int, default=10)
    ap.add_argument("--cuda-warmup", type=int, default=3)
    ap.add_argument("--indent", type=int, default=1)
    args = ap.parse_args(argv)

    from cosmonet.hardware import usable_cores
    torch.set_num_threads(args.threads or usable_cores())
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        if args.devices != "auto":
            log("CUDA is not available; skipping it")
        devices.remove("cuda")
    if "cuda" in devices:
        torch.backends.cudnn.benchmark = True
    if args.n % 4:
        ap.error(f"--n must be a multiple of 4 (got {args.n})")

    t_start = time.perf_counter()
    doc = {"benchmark": "bench_conv", "flop_convention": FLOP_CONVENTION, "machine": machine_info(),
           "settings": {k: v for k, v in vars(args).items() if k != "indent"}, "runs": []}
    for dev in devices:
        device = torch.device(dev)
        if dev == "cpu":
            from cosmonet.hardware import cpu_has_native_bf16
            modes = [m for m in (args.cpu_modes or ("fp32,bf16" if cpu_has_native_bf16() else "fp32")).split(",") if m]
        else:
            modes = [m for m in args.cuda_modes.split(",") if m]
        for mode in modes:
            for base in args.bases:
                t0 = time.perf_counter()
                if dev == "cpu":
                    rep = args.cpu_repeats_large if base > 32 else args.cpu_repeats
                    run = bench_model(base, device, mode, args.cpu_batches, args.cpu_compare_batches, args.n,
                                      args.cpu_warmup, rep)
                else:
                    run = bench_model(base, device, mode, args.cuda_batches, args.cuda_compare_batches, args.n,
                                      args.cuda_warmup, args.cuda_repeats)
                run["wall_seconds"] = time.perf_counter() - t0
                doc["runs"].append(run)
    doc["summary"] = [{
        "device": r["device"], "mode": r["mode"], "base_channels": r["base_channels"], "parameters": r["parameters"],
        "forward_gflop_per_sample": r["forward_gflop_per_sample"],
        "train_step_gflop_per_sample": r["train_step_gflop_per_sample"],
        "step_seconds_by_batch": {str(b["batch"]): b["step_seconds_median"] for b in r["batches"]},
        "gflops_per_second_by_batch": {str(b["batch"]): b["gflops_per_second"] for b in r["batches"]},
        "unet_over_bare_conv_ratio_by_batch": {str(c["batch"]): c["ratio"] for c in r["conv_comparison"]},
    } for r in doc["runs"]]
    doc["machine"]["load_average_1_5_15min_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    doc["wall_seconds"] = time.perf_counter() - t_start
    print(json.dumps(sig(doc), indent=args.indent))


if __name__ == "__main__":
    main()
