"""SIGINT and SIGTERM as part of the interface: long commands stop cleanly and say how to resume.

``simulate``, ``train`` and ``run-sim`` (MPI engine) install *flag* handlers
(:func:`handling`): a signal only records its number, and the work loop asks at its
boundaries (a simulation, a training step, an N-body step) whether to stop. The question
is collective (:func:`group_stop` over an MPI communicator, :func:`backend_stop` over a
training backend), so every rank stops at the same boundary and none waits forever in a collective the others left. ``evaluate``
installs *raise* handlers: a signal raises :class:`Interrupted` at once, and the command's
``remove_on_failure`` removes what it had begun to write.

A stopped command raises :class:`Interrupted`; ``cosmonet.cli.main`` prints its one line
on rank 0 and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

Under ``mpirun`` (Open MPI) a SIGINT or SIGTERM to mpirun is passed on to every rank as
SIGTERM, followed by SIGKILL after ``odls_base_sigkill_timeout`` seconds; under ``srun``
SLURM sends SIGTERM to every task and SIGKILL after ``KillWait``.
"""
import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received = None


class Interrupted(Exception):
    """A command stopped on a signal. ``message`` is its one line (what is kept, how to
    resume); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum, message, backend=None):
        super().__init__(message)
        self.signum, self.message, self.backend = int(signum), message, backend

    @property
    def exit_code(self):
        return 128 + self.signum


def signal_name(signum):
    try:
        return signal.Signals(int(signum)).name
    except ValueError:
        return f"signal {signum}"


def received():
    """The number of the first signal received under :func:`handling`, or None."""
    return _received


def _flag(signum, frame):
    global _received
    if _received is None:            # the first signal decides the exit code
        _received = signum


def _raise(signum, frame):
    _flag(signum, frame)
    raise Interrupted(signum, f"{signal_name(signum)} received")


@contextmanager
def handling(mode="flag"):
    """Install handlers for SIGINT and SIGTERM for the block ('flag' or 'raise'); restore
    the previous handlers after it. Outside the main thread nothing is installed."""
    global _received
    _received = None
    handler = _flag if mode == "flag" else _raise
    old = {}
    try:
        for sig in SIGNALS:
            old[sig] = signal.signal(sig, handler)
    except ValueError:              # not the main thread: signals cannot be handled here
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _received = None


def group_stop(comm):
    """Collective over the MPI communicator ``comm``: the signal number if any of its ranks
    received one (the largest), else 0. Every rank of ``comm`` must call it at the same point."""
    from .extras import MPI
    return int(comm.allreduce(int(_received or 0), op=MPI.MAX))


def backend_stop(backend):
    """Collective over a training backend: the signal number if any rank received one, else 0.
    One all-reduce of a vector of ranks' flags on the backend's device (NCCL takes device
    tensors only); on a single process no tensor at all."""
    local = int(_received or 0)
    if backend.size == 1:
        return local
    import torch
    flags = torch.zeros(backend.size, dtype=torch.float32, device=backend.device)
    flags[backend.rank] = local
    backend.allreduce_sum(flags)
    return int(flags.max().item())


def stop_training(run):
    """The training loop's hook (issue 12): after an optimiser step (every ``train.check_every``
    steps, when the trainer synchronises anyway), if any rank received a signal, write a
    checkpoint at this step (unless one was just written) and raise :class:`Interrupted` on
    every rank. ``run`` is :class:`cosmonet.train.loop.Run`."""
    p = run.progress
    if p.step % run.cfg["train"].get("check_every", 1):     # asked with the device flag's cadence
        return
    signum = backend_stop(run.backend)
    if not signum:
        return
    if p.step % run.cfg["train"]["checkpoint_every"] != 0:
        run.checkpoint()
    where = run.last_ckpt or f"{run.cfg['out']}/checkpoints"
    raise Interrupted(signum, f"train stopped by {signal_name(signum)} at step {p.step}: checkpoint {where} kept; "
                              f"continue with the same command and --resume", backend=run.backend)
