"""One small interface over the distributed training backends: DDP and Horovod.

``init_backend(name)`` reads the world from the launcher and returns a backend with
``rank``, ``size``, ``local_rank``, ``device``, ``allreduce_mean``, ``broadcast``,
``barrier``, ``wrap_model`` and ``wrap_optimizer``. Launchers understood:

- ``torchrun``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- ``mpirun`` (OpenMPI): ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK``;
- ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``;
- none of these: a single process.

Under mpirun and srun, DDP's rendezvous address (rank 0's host and a free port) is agreed
through MPI, so no environment needs setting by hand.
"""
import os
import socket
from dataclasses import dataclass

import torch

from ..errors import InputError

BACKENDS = ("ddp", "horovod")

# True once this process has run a torch.distributed process group: see end_process.
_group_threads_left = False


@dataclass(frozen=True)
class World:
    """What the launcher says: this process's rank, the number of processes, the rank
    on this node, and which launcher it was."""

    rank: int
    size: int
    local_rank: int
    launcher: str


def detect_world(env=None):
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), "torchrun")
    if "OMPI_COMM_WORLD_SIZE" in env:
        return World(int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                     int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)), "mpirun")
    if "PMI_SIZE" in env and "PMI_RANK" in env:
        return World(int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(env.get("MPI_LOCALRANKID", 0)), "mpirun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "srun")
    return World(0, 1, 0, "single")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _device(local_rank):
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        torch.cuda.set_device(local_rank % n)
        return torch.device("cuda", local_rank % n)
    return torch.device("cpu")


class Backend:
    """Common interface; the single-process backend is this class itself."""

    name = "single"

    def __init__(self, world):
        self.world = world
        self.rank, self.size, self.local_rank = world.rank, world.size, world.local_rank
        self.device = _device(world.local_rank)

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_mean(self, tensor):
        """Mean over ranks, in place; returns the tensor."""
        return tensor

    def allreduce_sum(self, tensor):
        return tensor

    def broadcast_object(self, obj, src=0):
        return obj

    def barrier(self):
        pass

    def wrap_model(self, model):
        return model

    def wrap_optimizer(self, optimizer, model):
        return optimizer

    def broadcast_parameters(self, model):
        pass

    def shutdown(self):
        pass


class DDPBackend(Backend):
    """``torch.distributed`` with gloo on CPU, NCCL on CUDA; DistributedDataParallel."""

    name = "ddp"

    def __init__(self, world):
        super().__init__(world)
        import torch.distributed as dist
        self.dist = dist
        if world.size > 1 and not dist.is_initialized():
            if world.launcher in ("mpirun", "srun"):
                from ..extras import MPI   # mpi4py; without it a one-line error naming the [mpi] extra
                addr = (socket.gethostname(), _free_port()) if world.rank == 0 else None
                addr = MPI.COMM_WORLD.bcast(addr, root=0)
                os.environ.setdefault("MASTER_ADDR", addr[0] if world.size > 1 else "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(addr[1]))
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=world.rank, world_size=world.size)
            global _group_threads_left
            _group_threads_left = True
        self.active = world.size > 1

    def allreduce_mean(self, tensor):
        if self.active:
            self.dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def allreduce_sum(self, tensor):
        if self.active:
            self.dist.all_reduce(tensor)
        return tensor

    def broadcast_object(self, obj, src=0):
        if not self.active:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self):
        if self.active:
            self.dist.barrier()

    def wrap_model(self, model):
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)

    def shutdown(self):
        """Wait for every rank, free the process group and join its threads.

        Collecting first lets the DataLoader workers of the finished run shut down. The gloo
        threads may outlive this all the same: :func:`end_process` says why and ends the
        process without letting them race the interpreter's exit.
        """
        if self.active and self.dist.is_initialized():
            import gc
            self.dist.barrier()
            gc.collect()
            self.dist.destroy_process_group()


class HorovodBackend(Backend):
    """Horovod (MPI or gloo controller): DistributedOptimizer averages gradients."""

    name = "horovod"

    def __init__(self, world):
        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise InputError(f"backend horovod: horovod.torch does not import ({exc}); "
                             "build it with `make horovod` (docs/horovod.md)") from None
        hvd.init()
        self.hvd = hvd
        super().__init__(World(hvd.rank(), hvd.size(), hvd.local_rank(), world.launcher))

    def allreduce_mean(self, tensor):
        tensor.copy_(self.hvd.allreduce(tensor, op=self.hvd.Average))
        return tensor

    def allreduce_sum(self, tensor):
        tensor.copy_(self.hvd.allreduce(tensor, op=self.hvd.Sum))
        return tensor

    def broadcast_object(self, obj, src=0):
        return self.hvd.broadcast_object(obj, root_rank=src)

    def barrier(self):
        self.hvd.allreduce(torch.zeros(1), name="barrier")

    def wrap_optimizer(self, optimizer, model):
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def broadcast_parameters(self, model):
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def init_backend(name="ddp", world=None):
    """The backend ``name`` ('ddp' or 'horovod') on the launcher's world."""
    if name not in BACKENDS:
        raise InputError(f"train.backend must be one of {', '.join(BACKENDS)} (got {name!r})")
    world = detect_world() if world is None else world
    if name == "horovod":
        return HorovodBackend(world)
    if world.size == 1:
        return Backend(world)
    return DDPBackend(world)


def end_process(code):
    """Exit with ``code`` now if this process ran a torch.distributed group, else return it.

    torch (2.13 at least) never frees a gloo process group once DistributedDataParallel has
    broadcast through it (``_broadcast_coalesced``), so ``destroy_process_group`` cannot
    join its run-loop threads. If one of them drops the last reference to a Python-owned
    tensor while the interpreter finalises, it aborts the whole process: SIGABRT,
    "terminate called without an active exception", exit 134 after a run that succeeded.
    So such a process ends here, after :meth:`DDPBackend.shutdown`: standard streams
    flushed, MPI finalised if mpi4py initialised it, then ``os._exit``, which runs no
    finaliser a thread could race. Files the run wrote are closed by then.
    """
    if not _group_threads_left:
        return code
    import sys
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    os._exit(code if isinstance(code, int) else 1)
