"""What a process computes with: torch's CPU threads and the training precision.

Threads. torch starts as many intra-op threads as the machine has cores, whatever share of
them the process really has. On a shared or loaded node that oversubscribes the cores:
a U-Net step on a busy 2-core machine took 4-5x longer with torch's default threads than
with one (docs/benchmarks.md). :func:`torch_threads` counts the cores this process may
use: its CPU affinity (what ``taskset``, ``srun --cpu-bind`` or ``mpirun --bind-to`` gave
it), at most ``SLURM_CPUS_PER_TASK``, shared among the ranks of this node when the
affinity covers the whole node (the launcher did not bind). ``OMP_NUM_THREADS`` overrides.

Precision. ``train.precision: auto | fp32 | bf16``. ``bf16`` runs the forward pass under
bfloat16 autocast; weights, gradients and the optimiser stay float32 and the loss is
computed in float32. ``auto`` is bf16 on CUDA and on CPUs with native bfloat16
instructions (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``; read from the CPU's
flags, not its name), fp32 elsewhere: without native instructions oneDNN emulates
bfloat16 and is slower than float32.
"""
import os

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")

#: environment variables that give the number of ranks on this node, by launcher
_LOCAL_SIZE_KEYS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
                    "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (a set of lower-case words; empty when unknown)."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.lower().split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags=None):
    """True when the CPU executes bfloat16 arithmetic natively (x86 AVX512-BF16 or AMX-BF16,
    Arm BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision, device):
    """``"fp32"`` or ``"bf16"`` for ``precision`` (auto, fp32, bf16) on ``device``."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def autocast(precision, device):
    """The autocast context of a resolved precision on ``device`` (disabled for fp32)."""
    device = torch.device(device)
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    if precision == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)


def _int_env(key, environ):
    value = environ.get(key, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if key == "SLURM_NTASKS_PER_NODE" and value:          # "2(x3)": tasks per node of a uniform job
        head = value.split("(")[0]
        if head.isdigit() and int(head) > 0:
            return int(head)
    return None


def local_ranks(environ=None):
    """The number of ranks of this job on this node (1 when no launcher says)."""
    environ = os.environ if environ is None else environ
    for key in _LOCAL_SIZE_KEYS:
        n = _int_env(key, environ)
        if n:
            return n
    return 1


def usable_cores():
    """The cores this process may run on: its CPU affinity (all cores where unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads(environ=None, affinity=None, node_cores=None):
    """``(threads, why)``: the intra-op threads this process should use and a few words on
    where the number comes from (see the module docstring)."""
    environ = os.environ if environ is None else environ
    omp = _int_env("OMP_NUM_THREADS", environ)
    if omp:
        return omp, f"OMP_NUM_THREADS={omp}"
    if affinity is None:
        affinity = usable_cores()
    node_cores = node_cores or os.cpu_count() or affinity
    cores, why = affinity, f"{affinity} cores in this process's CPU affinity"
    slurm = _int_env("SLURM_CPUS_PER_TASK", environ)
    if slurm and slurm < cores:
        cores, why = slurm, f"SLURM_CPUS_PER_TASK={slurm}"
    ranks = local_ranks(environ)
    if ranks > 1 and affinity >= node_cores and not (slurm and slurm < affinity):
        cores, why = max(1, cores // ranks), f"{affinity} cores shared by {ranks} ranks on this node"
    return max(1, cores), why


def set_torch_threads():
    """Set torch's intra-op threads to :func:`torch_threads`; returns the words that say so
    ("1 torch thread (OMP_NUM_THREADS=1)"), for the command's own progress line or report."""
    threads, why = torch_threads()
    torch.set_num_threads(threads)
    tail = "" if why.startswith("OMP_NUM_THREADS") else "; OMP_NUM_THREADS overrides"
    return f"{threads} torch thread{'s' if threads != 1 else ''} ({why}{tail})"
