"""What a run needs and what the machine has: memory and disk estimates, checked before work.

A size that cannot fit is refused with one line naming both numbers, e.g.
``run-sim --nc 4096 (force mesh 8192^3) needs about 58.0 TiB of memory; this node has
20.8 GiB available``,
instead of dying in numpy after minutes (or being killed by the out-of-memory killer).

The estimates are measured, not derived (``/usr/bin/time -v`` maximum resident size,
one rank, float32 force mesh, 2 FastPM steps, 2026-11-30):

- a simulation: ``BASE`` (the interpreter, numpy, MPI, FFTW, pyccl: 0.5 GiB per process)
  plus ``PER_PARTICLE`` bytes per particle (float64 LPT mesh fields, positions, momenta,
  the six float32 output fields) plus ``PER_FORCE_CELL`` bytes per force-mesh cell
  (nc = 32, 64, 96 with boost 2 gave 0.51, 0.67, 1.12 GB: 750 B per particle);
- the gather of the full fields on rank 0: ``GATHER_PER_PARTICLE`` bytes per particle;
- the U-Net at inference: ``UNET_PER_CELL_CHANNEL`` bytes per voxel per base channel
  (41 B measured at 64^3 and 96^3 with 16 base channels) and four float32 copies of the
  3-channel field.

They are meant to be within a factor of about 1.5: enough to refuse what cannot fit.
"""
import os
import shutil

from .errors import InputError

BASE = 512 * 2 ** 20
PER_PARTICLE = 400
PER_FORCE_CELL = 48
GATHER_PER_PARTICLE = 2 * 6 * 3 * 4
UNET_PER_CELL_CHANNEL = 48
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
    """Bytes of memory available to new allocations on this node (MemAvailable of
    /proc/meminfo; the free physical pages where that file does not exist)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def simulation_bytes(nc, force_nmesh):
    """Memory of one simulation summed over the ranks that run it, without ``BASE``."""
    return int(nc) ** 3 * PER_PARTICLE + int(force_nmesh) ** 3 * PER_FORCE_CELL


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


def emulate_bytes(n, base_channels, cells_at_once):
    """Memory of ``cosmonet emulate`` on an n^3 box: four copies of the 3-channel field and
    the network's activations on ``cells_at_once`` voxels (the box, or a batch of tiles)."""
    return BASE + int(n) ** 3 * FIELD_COPIES_PER_CELL + int(cells_at_once) * int(base_channels) * UNET_PER_CELL_CHANNEL


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
