"""What a run needs and what the machine has: memory and disk estimates, checked before work.

A size that cannot fit is refused with one line naming both numbers, e.g.
``run-sim --nc 4096 (force mesh 8192^3) needs about 58.0 TiB of memory; this node has
20.8 GiB available``,
instead of dying in numpy after minutes (or being killed by the out-of-memory killer).

The estimates are measured, not derived (peak resident size above the imports,
``benchmarks/bench_memory.py``, docs/benchmarks.md, 2026-12-04):

- a simulation: ``BASE`` (the interpreter, numpy, MPI, FFTW, pyccl: 0.5 GiB per process)
  plus the larger of its two phases (:func:`simulation_bytes`). The LPT phase holds the two
  float64 displacement meshes, delta(k), the LPT mesh's FFT buffers, the N-body state and
  the field being made (``LPT_PER_PARTICLE``); the N-body steps the state, the forces and
  the routed particles (``NBODY_PER_PARTICLE``) and the force mesh (``PER_FORCE_CELL`` per
  cell). A run that keeps its six output fields in memory (campaigns) holds 48 more bytes a
  particle in the LPT phase and 88 more in the N-body steps (the fields and the cached LPT
  mesh). Measured at boost 2: 173 B/particle kept, 110 written as made (``run-sim``), one
  rank; 180 and 115 per rank on 2 ranks; at boost 1: 141 and 97;
- the gather of a campaign simulation's full fields on its first rank:
  ``GATHER_PER_PARTICLE`` bytes per particle (``run-sim`` gathers nothing: its rank 0
  takes one message of at most 64 MiB at a time, :mod:`cosmonet.io.simwriter`);
- ``cosmonet emulate``: four float32 copies of the 3-channel field (``FIELD_COPIES_PER_CELL``)
  and the network's own need, estimated on the meta device for the exact tile, margin and
  batch (:func:`cosmonet.emulate.memory_need`, :mod:`cosmonet.models.memory`); networks in
  training likewise (:func:`cosmonet.train.loop.check_model_memory`).

The memory available is the smaller of the node's MemAvailable and what the process's
control group (cgroup v2 ``memory.max``, or v1 ``memory.limit_in_bytes``) still allows.

They are meant to be within a factor of about 1.5: enough to refuse what cannot fit.
"""
import os
import shutil

from .errors import InputError

BASE = 512 * 2 ** 20
LPT_PER_PARTICLE = 120
NBODY_PER_PARTICLE = 70
PER_FORCE_CELL = 9
FIELDS_PER_PARTICLE = 6 * 3 * 4            # the six float32 3-vector output fields
KEPT_FIELDS_LPT = 4 * 3 * 4                # the four ZA and 2LPT fields
KEPT_FIELDS_NBODY = FIELDS_PER_PARTICLE + 16   # all six, and the cached float64 LPT mesh
GATHER_PER_PARTICLE = 2 * FIELDS_PER_PARTICLE
FIELD_COPIES_PER_CELL = 4 * 3 * 4


def fmt_bytes(n):
    """``1536`` -> ``'1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} EiB"


def available_memory():
    """Bytes of memory available to new allocations here: MemAvailable of /proc/meminfo (the
    free physical pages where that file does not exist), or less where this process's
    control group has a lower limit (:func:`cgroup_headroom`)."""
    node = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    node = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if node is None:
        try:
            node = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            node = None
    group = cgroup_headroom()
    if group is None:
        return node
    return group if node is None else min(node, group)


def _read_int(path):
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None                       # "max": no limit


def cgroup_headroom(root="/sys/fs/cgroup"):
    """Bytes this process's control group may still allocate (its limit minus its usage), or
    None without a limit. cgroup v2 (``memory.max``, ``memory.current`` of the process's own
    group, read from /proc/self/cgroup) or v1 (``memory/memory.limit_in_bytes``)."""
    v2 = v1 = ""
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.strip().split(":", 2)
                if len(parts) == 3 and parts[0] == "0":
                    v2 = parts[2].lstrip("/")
                elif len(parts) == 3 and "memory" in parts[1].split(","):
                    v1 = parts[2].lstrip("/")
    except OSError:
        pass
    candidates = [(os.path.join(root, v2), "memory.max", "memory.current"),
                  (os.path.join(root, "memory", v1), "memory.limit_in_bytes", "memory.usage_in_bytes")]
    for base, limit_name, usage_name in candidates:
        limit = _read_int(os.path.join(base, limit_name))
        if limit is not None and limit < 2 ** 60:          # v1 writes "no limit" as about 2^63
            used = _read_int(os.path.join(base, usage_name)) or 0
            return max(0, limit - used)
    return None


def simulation_bytes(nc, force_nmesh, streamed=False, earlier_outputs=0):
    """Memory of one simulation summed over the ranks that run it, without ``BASE``:
    the larger of its LPT phase and its N-body steps. ``streamed``: its fields are written
    as they are made (``run-sim``), not kept until the end; else each of
    ``earlier_outputs`` (``save_a`` before a_final) holds six more fields (72 B a particle)."""
    n = int(nc) ** 3
    kept = 0 if streamed else KEPT_FIELDS_NBODY + FIELDS_PER_PARTICLE * int(earlier_outputs)
    lpt = n * (LPT_PER_PARTICLE + (0 if streamed else KEPT_FIELDS_LPT))
    nbody = n * (NBODY_PER_PARTICLE + kept) + int(force_nmesh) ** 3 * PER_FORCE_CELL
    return max(lpt, nbody)


def gather_bytes(nc, density_nmesh=0):
    """Extra memory on the rank that gathers the full fields of one simulation."""
    return int(nc) ** 3 * GATHER_PER_PARTICLE + 2 * 4 * int(density_nmesh) ** 3


def check_memory(need, what, available=None):
    """InputError when ``need`` bytes exceed the available memory (one line, both numbers)."""
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise InputError(f"{what} needs about {fmt_bytes(need)} of memory; this node has "
                         f"{fmt_bytes(available)} available")


def check_node_memory(comm, per_rank, extra_rank0, what):
    """Collective: the sum of ``per_rank`` (+ ``extra_rank0`` on world rank 0) over the ranks
    of each node against that node's available memory; InputError on every rank if any
    node is short (the message names the first such node's numbers)."""
    from .extras import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        need = node.allreduce(int(per_rank) + (int(extra_rank0) if comm.rank == 0 else 0))
        short = None
        if node.rank == 0:
            try:
                check_memory(need, what + (f" on {node.size} ranks of this node" if node.size > 1 else ""))
            except InputError as exc:
                short = str(exc)
        short = [m for m in comm.allgather(short) if m]
    finally:
        node.Free()
    if short:
        raise InputError(short[0])


def existing_ancestor(path):
    """The nearest existing directory at or above ``path``."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def check_disk(need, path, what):
    """InputError when ``need`` bytes exceed the free space of the file system of ``path``."""
    where = existing_ancestor(path)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        on = "" if os.path.abspath(path) == where else f" (its file system, at {where})"
        raise InputError(f"{what} needs about {fmt_bytes(need)} of disk; {path} has {fmt_bytes(free)} free{on}")


def campaign_disk_bytes(cfg, n_sims=None):
    """Bytes of the shards of ``n_sims`` simulations (default all) of a campaign config."""
    per_sim = 0
    for name in cfg.fields:
        per_sim += 4 * (cfg.density_nmesh ** 3 if name == "density" else 3 * cfg.nc ** 3)
    n = cfg.n_sims if n_sims is None else n_sims
    return n * (per_sim + 256) + cfg.n_shards * 64 * 1024


def power_bytes(nc, nmesh, n_fields):
    """Memory of ``cosmonet power`` summed over its ranks, without ``BASE``: the float64
    positions and their copies of ``n_fields`` fields of nc^3 particles (48 B a particle),
    and six float64 copies of the nmesh^3 painting mesh and its transform."""
    return int(n_fields) * int(nc) ** 3 * 48 + int(nmesh) ** 3 * 8 * 6


def check_device(text):
    """The torch device named by ``text`` ('cpu', 'cuda', 'cuda:1'); InputError when it is not
    a device name or not present on this machine."""
    import torch
    try:
        dev = torch.device(str(text))
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device {text!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise InputError(f"--device {text}: only cpu and cuda devices are supported")
    return dev
