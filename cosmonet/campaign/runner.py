"""Run a simulation campaign over MPI: groups of ``ranks_per_sim`` ranks take shards from a
dynamic queue, write them atomically, and a rerun resumes where a killed run stopped.

The queue is one counter in an MPI window on world rank 0 (``Fetch_and_op``): a group
leader takes the next pending shard whenever its group is free, so simulations of uneven
cost never leave a group idle while shards remain. A second counter counts finished
simulations, from which rank 0 prints one progress line for the whole campaign.
"""
import sys
import time

from .. import interrupts
from ..errors import InputError
from ..mesh import clear_mesh_cache
from ..sim.simulation import density_contrast, gather_fields, run_simulation
from . import store as shardio
from .plan import plan
from .shard_queue import Counters, end_of_run, finish, print_progress, shard_status, stopped_line
from .store import config_yaml  # noqa: F401  (the CLI's entry points)


def prepare_directory(cfg, lock=None):
    """Check that the campaign's engine can run here (torch on cuda: a GPU is visible),
    then create or check its directory (:func:`cosmonet.campaign.store.prepare_directory`,
    which takes ``lock`` before it writes)."""
    from .config import check_engine_available
    check_engine_available(cfg)
    shardio.prepare_directory(cfg, lock=lock)


def run_campaign(cfg, comm, show_progress=True, stream=sys.stderr):
    """Run (or resume) the campaign ``cfg`` on ``comm``; returns the summary (rank 0) or None."""
    if cfg.engine == "torch":        # each rank its own group, batches on its device
        from .torch_runner import run_torch_campaign
        return run_torch_campaign(cfg, comm, show_progress=show_progress, stream=stream)
    t_start = time.perf_counter()
    rps = cfg.ranks_per_sim
    if comm.size % rps:
        raise InputError(f"config: ranks_per_sim {rps} does not divide the {comm.size} ranks")
    group = comm.Split(comm.rank // rps, comm.rank)
    leader = group.rank == 0
    specs = plan(cfg)

    pending, corrupt, done_before = shard_status(cfg, comm)
    to_do = cfg.n_sims - done_before
    if comm.rank == 0 and show_progress:
        print(f"simulate: {cfg.n_sims} simulations in {cfg.n_shards} shards; {done_before} already done"
              + (f"; regenerating corrupt shards {corrupt}" if corrupt else "")
              + f"; {comm.size} ranks in {comm.size // rps} groups of {rps}", file=stream, flush=True)

    counters = Counters(comm)
    t_sim = t_io = 0.0
    n_mine = 0
    last_print = 0.0
    t_loop = time.perf_counter()
    halted = False
    failure = None              # a write that failed on this rank (full disk): all ranks stop, one line
    while True:
        # --- interrupt hook (issue 12): SIGINT/SIGTERM stop the group at a simulation boundary
        if interrupts.group_stop(group):
            halted = True
            break
        j = counters.add(0) if leader else None
        j = group.bcast(j, root=0)
        if j >= len(pending):
            break
        shard = pending[j]
        writer = None
        if leader:
            try:
                writer = shardio.ShardWriter(cfg.out, shard, cfg, config_yaml(cfg))
            except OSError as exc:
                failure = shardio.write_failure(exc)
        if group.bcast(failure, root=0) is not None:
            halted = True
            break
        try:
            for k, index in enumerate(cfg.shard_indices(shard)):
                if k and interrupts.group_stop(group):
                    raise interrupts.Interrupted(interrupts.received() or 15, "partial shard")
                spec = specs[index]
                t0 = time.perf_counter()
                result = run_simulation(cfg.sim_config(spec.seed, spec.cosmology), group, fields=_needed(cfg))
                t1 = time.perf_counter()
                full = _gather(cfg, result)
                if leader:
                    failure = _write(writer.add, k, spec, full)
                    if failure is None:
                        done = counters.add(1) + 1
                        n_mine += 1
                if group.bcast(failure, root=0) is not None:
                    raise _WriteFailed()
                t_sim += t1 - t0
                t_io += time.perf_counter() - t1
                if comm.rank == 0 and show_progress and time.perf_counter() - last_print > 0.5:
                    last_print = print_progress(cfg, done_before, done, to_do, t_loop, stream)
            t0 = time.perf_counter()
            if leader:
                failure = _write(writer.close)
            if group.bcast(failure, root=0) is not None:
                raise _WriteFailed()
            t_io += time.perf_counter() - t0
        except BaseException as exc:
            if leader:
                writer.abort()
            if not isinstance(exc, (interrupts.Interrupted, _WriteFailed)):
                raise
            halted = True
            break
    if leader and halted:
        counters.add(0, len(pending))        # the other groups take no new shard
    stopped, wall, totals, done_now = end_of_run(cfg, comm, counters, t_start, (t_sim, t_io, n_mine))
    clear_mesh_cache(group)
    group.Free()
    shardio.raise_write_failure(comm, failure if leader else None)
    if stopped:
        raise interrupts.Interrupted(stopped, stopped_line(cfg, stopped) if comm.rank == 0 else "")
    if comm.rank != 0:
        return None
    return finish(cfg, comm.size, totals, wall, done_now, done_before, stream if show_progress else None)


class _WriteFailed(Exception):
    """A shard write failed on the group's leader (the group stops; see raise_write_failure)."""


def _write(fn, *args):
    """Call a ShardWriter method; the :func:`~cosmonet.campaign.store.write_failure` of an
    OSError (a full disk), else None."""
    try:
        fn(*args)
    except OSError as exc:
        return shardio.write_failure(exc)
    return None


def _needed(cfg):
    """The simulation outputs the stored fields need (density is painted from fastpm/disp)."""
    needed = set(cfg.fields) - {"density"}
    if "density" in cfg.fields:
        needed.add("fastpm/disp")
    return needed


def _gather(cfg, result):
    """The stored fields of one simulation, full arrays on the group leader ({} elsewhere). Collective."""
    full = gather_fields(result)
    if "density" in cfg.fields:
        delta = density_contrast(result, cfg.density_nmesh)
        if result.pm.comm.rank == 0:
            full["density"] = delta
    return full
