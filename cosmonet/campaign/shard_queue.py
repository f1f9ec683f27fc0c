"""The shard queue both campaign runners share (:mod:`cosmonet.campaign.runner` for the MPI
engine, :mod:`cosmonet.campaign.torch_runner` for the torch engine): which shards are still
to do, the two counters on world rank 0 that hand them out and count finished
simulations, the progress line, the manifest and summary at the end, and the one line of a
campaign stopped by a signal."""
import numpy as np
from mpi4py import MPI

from .. import interrupts
from . import store as shardio


class Counters:
    """Two int64 counters on world rank 0: next queue position, simulations finished."""

    def __init__(self, comm):
        self.win = MPI.Win.Allocate(16 if comm.rank == 0 else 0, 8, comm=comm)
        if comm.rank == 0:
            buf = np.frombuffer(self.win.tomemory(), dtype=np.int64)
            buf[:] = 0
        comm.Barrier()

    def add(self, which, value=1):
        """Atomically add ``value`` to counter ``which``; returns its previous value."""
        one = np.array([value], dtype=np.int64)
        old = np.zeros(1, dtype=np.int64)
        self.win.Lock(0, MPI.LOCK_SHARED)
        self.win.Fetch_and_op(one, old, 0, target_disp=which, op=MPI.SUM)
        self.win.Unlock(0)
        return int(old[0])

    def read(self, which):
        return self.add(which, 0)

    def free(self):
        self.win.Free()


def fmt_eta(seconds):
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def stopped_line(cfg, signum):
    """The one line of a campaign stopped by a signal: what is kept, how to resume."""
    kept = [s for s in range(cfg.n_shards) if shardio.read_record(cfg.out, s) is not None]
    n = sum(len(cfg.shard_indices(s)) for s in kept)
    return (f"simulate stopped by {interrupts.signal_name(signum)}: {n} of {cfg.n_sims} simulations kept in "
            f"{len(kept)} complete shards of {cfg.out}, partial shards discarded; rerun the same command to "
            f"resume")


def end_of_run(cfg, comm, counters, t_start, timings):
    """After the loop, on every rank: (the signal that stopped any rank or 0, wall seconds,
    the (simulation s, I/O s, simulations) summed on rank 0, simulations done this run);
    frees the counters. Collective."""
    import time
    comm.Barrier()
    stopped = interrupts.group_stop(comm)
    wall = time.perf_counter() - t_start
    totals = comm.reduce(np.array(timings, dtype=float), op=MPI.SUM, root=0)
    done_now = counters.read(1)
    counters.free()
    return stopped, wall, totals, done_now


def print_progress(cfg, done_before, done, to_do, t_loop, stream):
    """The campaign's progress line (rank 0): simulations done, rate, ETA; returns the time."""
    import time
    now = time.perf_counter()
    rate = done / (now - t_loop)
    print(f"simulate: {done_before + done}/{cfg.n_sims} done, {rate:.2f} sims/s, "
          f"ETA {fmt_eta((to_do - done) / rate if rate > 0 else np.inf)}", file=stream, flush=True)
    return now


def shard_status(cfg, comm):
    """(pending shards, corrupt shards, simulations already done): each rank hashes a share
    of the shards, and all learn every status."""
    mine = [s for s in range(cfg.n_shards) if s % comm.size == comm.rank]
    status = {s: shardio.check_shard(cfg.out, s, cfg) for s in mine}
    status = {k: v for part in comm.allgather(status) for k, v in part.items()}
    pending = [s for s in range(cfg.n_shards) if status[s] != "ok"]
    corrupt = [s for s in pending if status[s] == "corrupt"]
    done_before = sum(len(cfg.shard_indices(s)) for s in range(cfg.n_shards) if status[s] == "ok")
    return pending, corrupt, done_before


def finish(cfg, n_ranks, totals, wall, done_now, done_before, stream=None, extra=None):
    """Rank 0, after the run: the manifest from every shard's record, and the summary (with
    ``extra`` keys; the last progress line on ``stream`` when given)."""
    rps = cfg.ranks_per_sim
    records = [shardio.read_record(cfg.out, s) for s in range(cfg.n_shards)]
    missing = [s for s, r in enumerate(records) if r is None]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} have no record after the run")
    shardio.write_manifest(cfg.out, cfg, records)
    t_sim, t_io, _ = totals
    summary = {"out": cfg.out, "n_sims": cfg.n_sims, "simulated_this_run": done_now,
               "already_done": done_before, "ranks": n_ranks, "ranks_per_sim": rps, **(extra or {}),
               "wall_seconds": round(wall, 3),
               "sims_per_second_per_rank": round(done_now / wall / n_ranks, 4) if wall > 0 else None,
               "simulation_seconds": round(float(t_sim) / rps, 3),
               "io_seconds": round(float(t_io) / rps, 3),
               "overhead_fraction": round(float(t_io) / float(t_sim), 4) if t_sim > 0 else None}
    if stream is not None:
        print(f"simulate: {cfg.n_sims}/{cfg.n_sims} done in {wall:.1f} s", file=stream, flush=True)
    return summary
