"""The shard queue both campaign runners share (:mod:`cosmonet.campaign.runner` for the MPI
engine, :mod:`cosmonet.campaign.torch_runner` for the torch engine): the two counters on
world rank 0 that hand out shards and count finished simulations, the ETA of the progress
line, and the one line of a campaign stopped by a signal."""
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
