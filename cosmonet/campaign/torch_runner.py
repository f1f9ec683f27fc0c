"""Run a campaign with the batched torch engine (``engine: torch``).

Every MPI rank is its own group and drives one device: the GPU of its local rank on the
node (``cuda:{local_rank % device_count}``) or the CPU. Ranks take shards from the same
dynamic queue as the MPI engine (:class:`cosmonet.campaign.shard_queue.Counters`), run a
shard's simulations in batches of ``batch_size`` boxes through
:func:`cosmonet.torchpm.simulate.run_batch` (per-box seeds and cosmologies from the plan),
and write the same shards, records, manifest, progress lines and summary. The white
noise of a batch is drawn on the host, in ``noise_workers`` processes per rank (milliseconds
of Python per 32^3 box: more than the GPU takes to simulate it). The shards are
those of the MPI engine to float32 rounding (about 1e-5 Mpc/h in displacement).
"""
import os
import sys
import time

from mpi4py import MPI

from .. import interrupts
from ..errors import InputError
from . import store as shardio
from .plan import plan
from .shard_queue import Counters, end_of_run, finish, print_progress, shard_status, stopped_line
from .store import config_yaml

#: environment variables that name a process's rank on its node (Open MPI, SLURM, MPICH)
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID")


def local_rank(comm):
    """This rank's index among the ranks of its node: from the launcher's environment
    (:data:`LOCAL_RANK_VARS`), else from an MPI shared-memory split of ``comm``
    (collective: every rank of ``comm`` calls it)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    shared = node.rank
    node.Free()
    for var in LOCAL_RANK_VARS:
        val = os.environ.get(var, "")
        if val.isdigit():
            return int(val)
    return shared


def rank_device(device, local):
    """The torch device string of a rank with local rank ``local`` for the campaign's
    ``device`` (cuda, cpu or auto); InputError when cuda is asked for and torch sees none."""
    import torch
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise InputError(f"config: device {device} requested for engine torch but CUDA is not available "
                         f"on {MPI.Get_processor_name()} (torch {torch.__version__})")
    return f"cuda:{local % torch.cuda.device_count()}"


def _device_of_every_rank(cfg, comm):
    """Each rank's device; an InputError raised on every rank if any rank has none."""
    local = local_rank(comm)
    try:
        dev, msg = rank_device(cfg.device, local), None
    except InputError as exc:
        dev, msg = None, str(exc)
    msgs = [m for m in comm.allgather(msg) if m]
    if msgs:
        raise InputError(msgs[0])
    return dev


def _batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def run_torch_campaign(cfg, comm, show_progress=True, stream=sys.stderr):
    """Run (or resume) the torch-engine campaign ``cfg`` on ``comm``; returns the summary
    (rank 0) or None. Shards, records and manifest as :func:`cosmonet.campaign.runner.run_campaign`."""
    import torch

    from ..torchpm.simulate import run_batch

    t_start = time.perf_counter()
    if cfg.ranks_per_sim != 1:
        raise InputError(f"config: ranks_per_sim must be 1 with engine torch (got {cfg.ranks_per_sim})")
    device = _device_of_every_rank(cfg, comm)
    devices = comm.allgather(device)
    specs = plan(cfg)

    pending, corrupt, done_before = shard_status(cfg, comm)
    to_do = cfg.n_sims - done_before
    if comm.rank == 0 and show_progress:
        names = sorted(set(devices))
        print(f"simulate: {cfg.n_sims} simulations in {cfg.n_shards} shards; {done_before} already done"
              + (f"; regenerating corrupt shards {corrupt}" if corrupt else "")
              + f"; engine torch on {comm.size} ranks ({', '.join(names)}), batches of {cfg.batch_size}",
              file=stream, flush=True)

    counters = Counters(comm)
    want = tuple(f for f in cfg.fields if f != "density")
    density_nmesh = cfg.density_nmesh if "density" in cfg.fields else None
    t_sim = t_io = 0.0
    n_mine = 0
    last_print = 0.0
    t_loop = time.perf_counter()
    halted = False
    failure = None
    while True:
        if interrupts.received():       # issue 12 hook: SIGINT/SIGTERM stop at a batch boundary
            halted = True
            break
        j = counters.add(0)
        if j >= len(pending):
            break
        shard = pending[j]
        writer = shardio.ShardWriter(cfg.out, shard, cfg, config_yaml(cfg))
        try:
            indices = cfg.shard_indices(shard)
            for batch in _batches(list(range(len(indices))), cfg.batch_size):
                if batch[0] and interrupts.received():
                    raise interrupts.Interrupted(interrupts.received(), "partial shard")
                batch_specs = [specs[indices[k]] for k in batch]
                t0 = time.perf_counter()
                first = batch_specs[0]
                try:
                    out = run_batch(cfg.sim_config(first.seed, first.cosmology), [s.seed for s in batch_specs],
                                    cosmologies=[s.cosmology for s in batch_specs], device=device, fields=want,
                                    density_nmesh=density_nmesh, noise_workers=cfg.noise_workers)
                except torch.cuda.OutOfMemoryError as exc:
                    raise RuntimeError(f"a batch of {len(batch)} simulations does not fit in the memory of "
                                       f"{device}: lower batch_size (a rerun keeps the finished shards)") from exc
                t1 = time.perf_counter()
                for b, k in enumerate(batch):
                    writer.add(k, batch_specs[b], {name: out[name][b] for name in cfg.fields})
                del out
                done = counters.add(1, len(batch)) + len(batch)
                n_mine += len(batch)
                t_sim += t1 - t0
                t_io += time.perf_counter() - t1
                if comm.rank == 0 and show_progress and time.perf_counter() - last_print > 0.5:
                    last_print = print_progress(cfg, done_before, done, to_do, t_loop, stream)
            t0 = time.perf_counter()
            writer.close()
            t_io += time.perf_counter() - t0
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, OSError):     # a full disk: every rank stops, one line (store.raise_write_failure)
                failure = shardio.write_failure(exc)
            elif not isinstance(exc, interrupts.Interrupted):
                raise
            halted = True
            break
    if halted:
        counters.add(0, len(pending))        # the other ranks take no new shard
    stopped, wall, totals, done_now = end_of_run(cfg, comm, counters, t_start, (t_sim, t_io, n_mine))
    shardio.raise_write_failure(comm, failure)
    if stopped:
        raise interrupts.Interrupted(stopped, stopped_line(cfg, stopped) if comm.rank == 0 else "")
    if comm.rank != 0:
        return None
    return finish(cfg, comm.size, totals, wall, done_now, done_before, stream if show_progress else None,
                  extra={"engine": "torch", "devices": sorted(set(devices)), "batch_size": cfg.batch_size})
