"""The training loop of ``cosmonet train``: data-parallel over any launcher and backend.

Rank 0 alone logs (JSON lines in OUT/train_log.jsonl and a progress line on stderr) and
writes checkpoints. A resumed run continues the same trajectory: the sampler's epoch and
position, the optimiser, the scheduler and the RNG states are restored, and augmentation
draws its symmetry from (seed, epoch, sample index), not from a stream that depends on
the number of ranks or workers.

The steps, each a function below: :func:`build_task` (datasets, model, losses and what a
checkpoint must record), :func:`build_optimizer` (optimiser and learning-rate schedule),
:func:`restore` (resume from the latest checkpoint), :func:`batch_source` (where the
batches of an epoch come from, on the device: :class:`LoaderBatches`, or the training split
staged on the device, :mod:`cosmonet.train.staged`), :func:`run_epoch` (one pass of training
steps) and :func:`validate` (the validation loss after an epoch). :func:`train` strings
them together.

Non-finite batches and losses are caught on the device (:class:`~cosmonet.train.staged.FiniteGuard`)
and reported every ``train.check_every`` steps and before every checkpoint, so no step
waits for the host; ``train.time_budget`` stops the run on a wall-clock budget with the
learning-rate schedule fitted to it (:mod:`cosmonet.train.schedule`).
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..errors import InputError, TrainingError  # noqa: F401  (TrainingError: callers import it from here)
from ..hardware import autocast as autocast_for
from ..hardware import resolve_precision, usable_cores
from ..interrupts import stop_training
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from .dist import init_backend
from .sampler import ShardedBatchSampler
from .schedule import BudgetClock, BudgetSchedule
from .staged import FiniteGuard, make_batch_source
from .trainconfig import TrainConfig, validate_train_config


def _say(backend, msg):
    if backend.is_root:
        print(msg, file=sys.stderr, flush=True)


def is_param_task(cfg):
    """True when the config trains parameter inference (data.target: params)."""
    return cfg["data"]["target"] == "params"


# --------------------------------------------------------------------------- the task
def build_param_datasets(cfg):
    """Sub-cube datasets (train, validation) for parameter inference; the validation entry is
    None without ``data.val_split``, or the InputError saying why that split cannot be read."""
    from ..data.subcubes import SubcubeDataset
    d, seed = cfg["data"], cfg["train"]["seed"]
    if d["input"] != "density":
        raise InputError(f"train config: parameter inference reads data.input: density (got {d['input']!r})")
    kw = dict(size=d["subcube"], params=d["params"], scale=d["scale"], check_finite=False)   # train checks first
    train = SubcubeDataset(d["root"], d["train_split"], augment=d["augment"], seed=seed, **kw)
    val = None
    if d["val_split"]:
        try:
            val = SubcubeDataset(d["root"], d["val_split"], ranges=train.ranges, **kw)
        except InputError as exc:
            val = exc                     # build_task keeps why; train says it in one line
    return train, val


def build_datasets(cfg):
    """(input, target) datasets (train, validation) for the D3M emulator: campaign shards
    through the transforms of :mod:`cosmonet.data` (a random cube symmetry per (seed, epoch,
    sample) when ``data.augment``, then division by ``data.scale``). The validation entry is
    None without ``data.val_split``, or the InputError saying why that split cannot be read."""
    from ..data import Compose, FieldNormalizer, RandomCubeSymmetry, ShardDataset
    d, seed = cfg["data"], cfg["train"]["seed"]
    fields = (d["input"], d["target"])
    norm = FieldNormalizer({name: d["scale"] for name in fields})
    augment = Compose(RandomCubeSymmetry.for_fields(fields), norm) if d["augment"] else norm
    # the splits are checked for NaN and infinity before the first step (_check_data), not per read
    train = ShardDataset(d["root"], split=d["train_split"], fields=fields, transform=augment, seed=seed,
                         check_finite=False)
    val = None
    if d["val_split"]:
        try:
            val = ShardDataset(d["root"], split=d["val_split"], fields=fields, transform=norm, seed=seed,
                               check_finite=False)
        except InputError as exc:
            val = exc                     # build_task keeps why; train says it in one line
    return train, val


def _param_model_kwargs(cfg, kwargs, train_set):
    """Fill paramnet's input_size and n_params from the data; InputError when they disagree."""
    if cfg["model"]["name"] != "paramnet":
        return kwargs
    kwargs = dict(kwargs)
    for key, value in (("input_size", train_set.size), ("n_params", len(train_set.params))):
        if kwargs.setdefault(key, value) != value:
            raise InputError(f"train config: model.{key} is {kwargs[key]} but the data give {value} "
                             f"(data.subcube / data.params)")
    return kwargs


def _mse(pred, target):
    return torch.mean((pred - target) ** 2)


def _train_loss(cfg, box, model):
    """The training loss: the model's own (paramnet), MSE or relative MSE (``train.loss``),
    either plus the density term."""
    from .losses import displacement_loss, relative_mse
    if hasattr(model, "loss"):            # a model that defines its own loss (paramnet: MSE or Gaussian NLL)
        if cfg["train"]["loss"] != "mse":
            raise InputError(f"train config: train.loss: {cfg['train']['loss']} is for displacement networks; "
                             f"{cfg['model']['name']} has its own loss")
        return model.loss
    weight, scale = cfg["train"]["density_weight"], cfg["data"]["scale"]
    relative = cfg["train"]["loss"] == "relative"
    if weight == 0:
        return relative_mse if relative else _mse
    return lambda pred, target: displacement_loss(pred, target, scale, box, weight, relative)


def campaign_setup(root):
    """``(sim, None)``: the SimConfig of the campaign at ``root`` with its one cosmology, read
    once for the model's prior, its depth check and the checkpoint's record; or ``(None,
    why)`` for a campaign of several cosmologies."""
    from .generated import campaign_simulation
    try:
        return campaign_simulation(root)[0], None
    except InputError as exc:
        return None, str(exc)


def auto_lpt2_prior(cfg, sim, why):
    """``model.lpt2_prior: auto``: the 2LPT coefficient of the campaign's ``sim`` (its
    cosmology, a_final, cell size) and ``data.scale`` (:mod:`cosmonet.models.lpt_prior`);
    ``why``: what :func:`campaign_setup` said when there is no ``sim``."""
    from ..models.lpt_prior import lpt2_coefficient
    if sim is None:
        raise InputError(f"train config: model.lpt2_prior: auto: {why or 'needs a displacement campaign'}; "
                         f"give the coefficient as a number")
    return lpt2_coefficient(sim.cosmology, sim.a_final, sim.box, sim.nc, cfg["data"]["scale"])


def training_setup_record(sim):
    """What a D3M checkpoint records of its training pairs (box and grid in Mpc/h and cells,
    FastPM steps, force-mesh boost, a_start, a_final, cosmology as plain data), so that
    ``probe`` and ``emulate`` know them without the campaign; None without ``sim`` (a
    campaign of several cosmologies: :func:`campaign_training_setup`)."""
    if sim is None:
        return None
    return {"nc": int(sim.nc), "box": float(sim.box), "steps": int(sim.steps), "boost": float(sim.boost),
            "a_start": float(sim.a_start), "a_final": float(sim.a_final), "cosmology": sim.cosmology.to_dict()}


def campaign_training_setup(root):
    """The training record of the campaign at ``root`` whatever its cosmologies: that of
    :func:`training_setup_record` with the campaign's most common cosmology (the first of
    those tied) as ``cosmology``, and, when it holds several, ``cosmologies``: each distinct
    one as plain data with its number of simulations, most common first (``emulate`` then
    warns only outside their range). None when the campaign cannot be read."""
    from ..campaign.plan import cosmology_counts, plan
    from ..campaign.store import read_config
    try:
        cfg = read_config(root)
        counts = cosmology_counts(plan(cfg))
    except (InputError, OSError, ValueError):
        return None
    record = training_setup_record(cfg.sim_config(seed=0, cosmology=counts[0][0]))
    if len(counts) > 1:
        record["cosmologies"] = [dict(c.to_dict(), n_sims=n) for c, n in counts]
    return record


@dataclass
class Task:
    """What a run trains: datasets (items ``epoch * len + i`` -> (x, y, i)), the model on
    its device, the losses, and what every checkpoint records besides the weights."""

    train_set: object
    val_set: object
    model: torch.nn.Module
    train_loss: object
    val_loss: object
    signature: dict
    normalization: dict
    training_setup: dict = None
    no_validation: str = None           # why a configured validation split is not used
    memory: dict = None                 # the network's memory estimate (bytes, check_model_memory)


def build_task(cfg, device):
    """Datasets, model (seeded by ``train.seed``), losses and normalisation of ``cfg``."""
    from ..data import EpochItems
    from ..models import build_model, model_signature
    d = cfg["data"]
    torch.manual_seed(cfg["train"]["seed"])
    model_kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    sim, no_sim = (None, None) if is_param_task(cfg) else campaign_setup(d["root"])
    if model_kwargs.get("lpt2_prior") == "auto":
        model_kwargs["lpt2_prior"] = auto_lpt2_prior(cfg, sim, no_sim)
    if is_param_task(cfg):
        train_set, val_set = build_param_datasets(cfg)
        val_set, no_validation = _validation(val_set)
        model_kwargs = _param_model_kwargs(cfg, model_kwargs, train_set)
        normalization = {"input": d["input"], "target": "params", "scale": d["scale"],
                         "params": list(train_set.params), "ranges": {p: list(r) for p, r in train_set.ranges.items()},
                         "subcube": train_set.size, "subcube_side": train_set.side}
        box = train_set.base.box_size
    else:
        normalization = {"input": d["input"], "target": d["target"], "scale": d["scale"]}
    if not is_param_task(cfg):
        _check_depth(cfg, model_kwargs, sim)
    memory = check_model_memory(cfg, model_kwargs, _input_side(cfg, model_kwargs, sim), device)
    try:
        model = build_model(cfg["model"]["name"], **model_kwargs).to(device)
    except (ValueError, TypeError) as exc:
        raise InputError(f"train config: model: {exc}") from None
    signature = model_signature(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    if not is_param_task(cfg):
        train_base, val_base = build_datasets(cfg)
        val_base, no_validation = _validation(val_base)
        train_set, val_set = EpochItems(train_base), (EpochItems(val_base) if val_base is not None else None)
        box = train_base.box_size
    setup = (training_setup_record(sim) if sim is not None
             else None if is_param_task(cfg) else campaign_training_setup(d["root"]))
    return Task(train_set=train_set, val_set=val_set, model=model, train_loss=_train_loss(cfg, float(box), model),
                val_loss=getattr(model, "loss", _mse), signature=signature, normalization=normalization,
                training_setup=setup, no_validation=no_validation, memory=memory)


def _input_side(cfg, model_kwargs, sim):
    """Cells per side of one training sample: the campaign's boxes, or paramnet's sub-cubes."""
    if is_param_task(cfg):
        return model_kwargs.get("input_size")
    from ..campaign.store import read_config
    return sim.nc if sim is not None else read_config(cfg["data"]["root"]).nc


def _env_count(keys):
    for key in keys:
        try:
            return max(1, int(os.environ[key].split("(")[0]))
        except (KeyError, ValueError):
            continue
    return 1


def _local_ranks():
    """Training processes on this node, from the launcher's environment (1 when unknown)."""
    return _env_count(("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"))


def _ranks():
    """Training processes in all, from the launcher's environment (1 when unknown)."""
    return _env_count(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"))


def check_model_memory(cfg, model_kwargs, side, device):
    """Estimate the memory of training ``cfg``'s network (:mod:`cosmonet.models.memory`, on the
    meta device: nothing is allocated) and refuse, with the estimate and the available memory,
    a network that cannot fit or cannot apply to the data, before it is built. Returns the
    estimate's parts (bytes), or None when it cannot be made (the build then says why)."""
    from ..models.memory import meta_model, training_bytes
    from ..resources import BASE, available_memory, fmt_bytes
    name, t_cfg = cfg["model"]["name"], cfg["train"]
    try:
        meta = meta_model(name, **model_kwargs)
    except (ValueError, TypeError):
        return None                         # the real build names the bad argument
    if not isinstance(side, int) or side < 1:
        return None
    channels = getattr(meta, "in_channels", 1)
    shape = (t_cfg["batch_size"], channels, side, side, side)
    try:
        need, parts = training_bytes(meta, shape, optimizer=t_cfg["optimizer"], data_parallel=_ranks() > 1)
    except ValueError as exc:               # the model's own shape checks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"train config: model {name} cannot apply to the {side}^3 samples of the data: {first}") \
            from None
    except (RuntimeError, NotImplementedError, TypeError):
        return None                         # an operation without a meta kernel: no estimate
    what = (f"train: model {name} ({parts['parameters']:,} parameters) on batches of {t_cfg['batch_size']} x "
            f"{side}^3")
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need > free:
            raise InputError(f"{what} needs about {fmt_bytes(need)} of memory on {device}; it has "
                             f"{fmt_bytes(free)} free")
    else:
        ranks = _local_ranks()
        total = (BASE + need) * ranks
        available = available_memory()
        if available is not None and total > available:
            on = f" ({ranks} ranks on this node)" if ranks > 1 else ""
            raise InputError(f"{what} needs about {fmt_bytes(total)} of memory{on}; this node has "
                             f"{fmt_bytes(available)} available")
    parts["total"] = need
    return parts


def _check_depth(cfg, model_kwargs, sim):
    """InputError before the network is built when its 2**depth downsampling does not
    divide the campaign's boxes (a U-Net of depth 9 on 16^3 boxes used to grow until the
    kernel killed it). ``sim``: the campaign's SimConfig, or None (then campaign.yaml is read)."""
    from ..campaign.store import read_config
    depth = model_kwargs.get("depth", 2)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 30:
        return                              # the model's own check names it
    nc = sim.nc if sim is not None else read_config(cfg["data"]["root"]).nc
    if nc % 2 ** depth:
        raise InputError(f"train config: model.depth={depth} needs box sides divisible by 2**{depth} = "
                         f"{2 ** depth}; the campaign {cfg['data']['root']} has {nc}^3 boxes")


def _validation(val):
    """(validation dataset or None, why there is none when a split was configured)."""
    if isinstance(val, InputError):
        return None, str(val)
    return val, None


# --------------------------------------------------------------------------- optimiser, restore
def _lr_lambda(kind, total_steps):
    if kind == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def build_optimizer(t_cfg, model, global_batch, total_steps):
    """(optimiser, scheduler, lr, budget): Adam or SGD with ``train.lr`` scaled linearly from
    ``train.base_batch`` to ``global_batch``, under a cosine or constant schedule over
    ``total_steps``, or, with ``train.time_budget`` > 0, over the horizon the budget allows
    (``budget``: its :class:`~cosmonet.train.schedule.BudgetSchedule`, else None)."""
    lr = t_cfg["lr"] * global_batch / t_cfg["base_batch"]
    if t_cfg["optimizer"] == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=t_cfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=t_cfg["weight_decay"])
    budget = (BudgetSchedule(t_cfg["time_budget"], t_cfg["budget_warmup_steps"], t_cfg["scheduler"],
                             t_cfg["budget_step_seconds"]) if t_cfg["time_budget"] > 0 else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget or _lr_lambda(t_cfg["scheduler"], total_steps))
    return optimizer, scheduler, lr, budget


@dataclass
class Progress:
    """Where a run stands: optimiser steps taken, epoch, batches done in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def restore(out, task, optimizer, scheduler, backend):
    """The :class:`Progress` of the latest checkpoint in ``out`` (weights, optimiser,
    scheduler and RNG states loaded), or a fresh one when there is none."""
    path = latest_checkpoint(out)
    if path is None:
        _say(backend, f"train: --resume but no checkpoint in {out}; starting from scratch")
        return Progress()
    state = load_checkpoint(path, expect_signature=task.signature)
    task.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    _say(backend, f"train: resumed from {path} (step {state['step']}, epoch {state['epoch']})")
    return Progress(state["step"], state["epoch"], state["batch_in_epoch"])


def initialize_from(source, task, backend):
    """``train.init_from``: start a new run from the weights (only) of a checkpoint, a run
    directory or a shipped network; its architecture must be the configured one."""
    from .checkpoint import checkpoint_argument
    path = checkpoint_argument(source, "train config: train.init_from")
    state = load_checkpoint(path, expect_signature=task.signature)
    task.model.load_state_dict(state["model"])
    _say(backend, f"train: weights from {path} (step {state.get('step', '?')}); optimiser and schedule start anew")


# --------------------------------------------------------------------------- batches
class LoaderBatches:
    """Where the batches come from: ``epoch(e, start)`` yields this rank's ``(x, y, idx)``
    of epoch ``e`` from batch ``start`` on, on ``device``.

    One DataLoader for the whole run over a :class:`ShardedBatchSampler`: its workers
    persist across epochs (the sampler's indices carry the epoch), so no worker start-up is
    paid per epoch. Another source (e.g. data kept on the GPU) only needs ``epoch``.
    """

    def __init__(self, dataset, sampler, batch_size, num_workers, device):
        self.sampler, self.device = sampler, device
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 drop_last=True, persistent_workers=num_workers > 0,
                                 pin_memory=device.type == "cuda")

    def epoch(self, epoch, start=0):
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start)
        for x, y, idx in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            yield x, y, idx


def batch_source(cfg, task, sampler, device, backend):
    """The batches of the run: the training split staged on the device when ``data.staging``
    and the memory allow (D3M task; :func:`~cosmonet.train.staged.make_batch_source`), else
    a :class:`LoaderBatches` (both yield the same batches for the same seed); with
    ``data.source: generate`` new pairs simulated on the fly (:mod:`cosmonet.train.generated`)."""
    d = cfg["data"]
    if d["source"] == "generate":
        from .generated import GeneratedBatches
        if is_param_task(cfg):
            raise InputError("train config: data.source: generate makes displacement pairs, not parameter sub-cubes")
        _say(backend, f"train: pairs generated on the fly on {device} (data.source: generate)")
        return GeneratedBatches(d["root"], sampler, (d["input"], d["target"]), d["scale"], cfg["train"]["seed"],
                                device)
    staged = None
    if not is_param_task(cfg):
        staged = make_batch_source(cfg, task.train_set.dataset, sampler, device, say=lambda m: _say(backend, m))
    if staged is not None:
        return staged
    workers = cfg["data"]["num_workers"]
    cores = usable_cores()
    if workers > 2 * cores:
        _say(backend, f"train: data.num_workers {workers} capped to {2 * cores} (twice the {cores} cores this "
                      f"process has)")
        workers = 2 * cores
    return LoaderBatches(task.train_set, sampler, cfg["train"]["batch_size"], workers, device)


# --------------------------------------------------------------------------- one epoch
@dataclass
class Run:
    """The state one training run carries between steps (rank-local timings included)."""

    cfg: TrainConfig
    task: Task
    model: torch.nn.Module              # wrapped by the backend
    optimizer: object
    scheduler: object
    backend: object
    progress: Progress
    global_batch: int
    max_steps: int
    total_steps: int
    guard: FiniteGuard
    clock: BudgetClock
    log: object = None                  # the JSON-lines log (rank 0)
    log_stream: object = sys.stderr
    batches: object = None              # the batch source (LoaderBatches or staged)
    last_ckpt: str = None
    t_start: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    samples_done: int = 0
    precision: str = "fp32"             # resolved train.precision (cosmonet/hardware.py)

    @property
    def samples_seen(self):
        """Training samples of all ranks up to the current step (resumed steps included)."""
        return self.progress.step * self.global_batch

    def checkpoint_state(self):
        p = self.progress
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": p.step, "epoch": p.epoch,
                "batch_in_epoch": p.batch_in_epoch, "rng": rng_state(), "model_signature": self.task.signature,
                "normalization": self.task.normalization, "config": self.cfg.to_dict(), "world_size": self.backend.size,
                "precision": self.precision, "samples_seen": self.samples_seen,
                "training_setup": self.task.training_setup}

    def checkpoint(self):
        """Rank 0 writes a checkpoint (after a clean non-finite check); every rank waits for it."""
        self.guard.check(self.backend, self.last_ckpt)
        if self.backend.is_root:
            self.last_ckpt = save_checkpoint(self.cfg["out"], self.checkpoint_state())
        self.backend.barrier()


def train_step(run, x, y, autocast):
    """One optimiser step on a batch; returns the rank's loss (a float64 tensor of 1 on the
    device). A non-finite batch or loss is recorded on the device and raised (before the
    step's update) when the guard is due, every ``train.check_every`` steps."""
    step = run.progress.step + 1
    with autocast:
        pred = run.model(x)
    loss = run.task.train_loss(pred.float(), y)           # the loss in float32, whatever the precision
    run.guard.record(step, x, y, loss)
    if run.guard.due(step):
        run.guard.check(run.backend, run.last_ckpt)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    return loss.detach().reshape(1).double()


def _cpu_seconds():
    """CPU seconds (user + system) of this process and its finished children so far: the
    compute a run really had, which on a shared machine is less than its wall clock."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _log_step(run, lossv):
    p, backend = run.progress, run.backend
    mean_loss = float(backend.allreduce_mean(lossv.clone()))
    if backend.is_root:
        elapsed = time.perf_counter() - run.t_start
        rec = {"step": p.step, "epoch": p.epoch, "loss": mean_loss, "lr": run.scheduler.get_last_lr()[0],
               "samples_per_second": run.samples_done / elapsed, "data_wait_seconds": run.wait,
               "compute_seconds": run.compute, "elapsed_seconds": elapsed, "cpu_seconds": _cpu_seconds()}
        run.log.write(json.dumps(rec) + "\n")
        run.log.flush()
        print(f"train: step {p.step}/{min(run.max_steps, run.total_steps)} epoch {p.epoch} loss {mean_loss:.5f} "
              f"{rec['samples_per_second']:.1f} samples/s (data wait {run.wait:.1f} s)",
              file=run.log_stream, flush=True)


def run_epoch(run, batches, autocast):
    """Train on the rest of the current epoch; returns True when ``max_steps`` was reached
    or the time budget is spent."""
    t_cfg, p = run.cfg["train"], run.progress
    t0 = time.perf_counter()
    for x, y, idx in batches.epoch(p.epoch, p.batch_in_epoch):
        t1 = time.perf_counter()
        run.wait += t1 - t0
        lossv = train_step(run, x, y, autocast)
        p.step += 1
        p.batch_in_epoch += 1
        run.samples_done += run.global_batch
        run.compute += time.perf_counter() - t1
        out_of_budget = run.clock.after_step(p.step)
        if p.step % t_cfg["log_every"] == 0 or p.step == run.max_steps or out_of_budget:
            _log_step(run, lossv)
        if p.step % t_cfg["checkpoint_every"] == 0 or p.step == run.max_steps:
            run.checkpoint()
        if p.step >= run.max_steps or out_of_budget:
            return True
        # --- interrupt hook (issue 12, cosmonet/interrupts.py): on SIGINT/SIGTERM every rank stops
        # here together, after a checkpoint at this step; raises interrupts.Interrupted
        stop_training(run)
        t0 = time.perf_counter()
    return False


# --------------------------------------------------------------------------- validation
def evaluate_loss(model, dataset, backend, batch_size, device, loss_fn=_mse):
    """Mean loss over ``dataset`` (every rank takes a share), averaged over ranks."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(backend.rank, len(dataset), backend.size):
            x, y, _ = dataset[i]
            pred = model(x[None].to(device))
            total[0] += float(loss_fn(pred, y[None].to(device)))
            total[1] += 1
    backend.allreduce_sum(total)
    model.train()
    return float(total[0] / max(total[1], 1))


def validate(run):
    """The validation loss after an epoch, logged by rank 0 (nothing without a validation set)."""
    if run.task.val_set is None:
        return
    backend = run.backend
    val_loss = evaluate_loss(unwrap(run.model), run.task.val_set, backend, run.cfg["train"]["batch_size"],
                             backend.device, run.task.val_loss)
    if backend.is_root:
        run.log.write(json.dumps({"step": run.progress.step, "epoch": run.progress.epoch, "val_loss": val_loss}) + "\n")
        run.log.flush()
        print(f"train: epoch {run.progress.epoch} done, validation loss {val_loss:.5f}", file=run.log_stream, flush=True)


# --------------------------------------------------------------------------- the run
def _sampler(cfg, n, backend):
    t_cfg = cfg["train"]
    try:
        return ShardedBatchSampler(n, backend.rank, backend.size, t_cfg["batch_size"], seed=t_cfg["seed"])
    except ValueError as exc:
        raise InputError(f"train config: {exc} (train split of {cfg['data']['root']})") from None


def _summary(run):
    backend, elapsed, p = run.backend, time.perf_counter() - run.t_start, run.progress
    return {"out": run.cfg["out"], "steps": p.step, "epochs_completed": p.epoch, "ranks": backend.size,
            "backend": backend.name, "launcher": backend.world.launcher, "global_batch": run.global_batch,
            "samples_per_second": run.samples_done / elapsed if elapsed > 0 else None,
            "samples_per_second_per_rank": run.samples_done / elapsed / backend.size if elapsed > 0 else None,
            "data_wait_seconds": run.wait, "compute_seconds": run.compute, "wall_seconds": elapsed,
            "checkpoint": run.last_ckpt, "staged": type(run.batches).__name__ == "StagedBatches",
            "batches": type(run.batches).__name__,
            "first_step_seconds": run.clock.first_step, "time_budget": run.clock.report(),
            "precision": run.precision, "samples_seen": run.samples_seen, "torch_threads": torch.get_num_threads()}


def train(cfg, resume=False, backend=None, log_stream=None):
    """Train the configured model.

    Returns ``(summary, model, backend)`` on every rank: the summary dict (steps, epochs,
    throughput, timings, the last checkpoint's path on rank 0), the trained model
    (unwrapped from the backend) and the backend the run used.
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else validate_train_config(cfg)
    log_stream = sys.stderr if log_stream is None else log_stream      # the stderr of now, not of import time
    t_cfg, out = cfg["train"], cfg["out"]
    backend = init_backend(t_cfg["backend"]) if backend is None else backend
    clock = BudgetClock(backend.device, backend, t_cfg["check_every"])     # the budget's clock starts here
    lock = _lock_run(out, backend)
    try:
        return _train(cfg, resume, backend, log_stream, clock)
    finally:
        if lock is not None:
            lock.release()


def _lock_run(out, backend):
    """Rank 0 creates the run directory and takes its writer's lock (``OUT/.lock``, as
    ``simulate`` does: :mod:`cosmonet.campaign.lock`), then checks that the run and its
    ``checkpoints/`` can be written and removes a killed checkpoint write's temporaries
    (:func:`~cosmonet.train.checkpoint.prepare_checkpoint_dir`). Every rank learns the
    outcome, so a second ``train`` into the same run is refused on all its ranks with one
    line naming the holder. Returns rank 0's lock (None elsewhere)."""
    from ..campaign.lock import CampaignLock
    from .checkpoint import prepare_checkpoint_dir
    lock, error = None, None
    if backend.is_root:
        try:
            os.makedirs(out, exist_ok=True)
            lock = CampaignLock(out, command="train").acquire()
            removed = prepare_checkpoint_dir(out)
            if removed:
                _say(backend, f"train: removed {len(removed)} temporary file(s) of a checkpoint write that was "
                              f"killed midway ({', '.join(removed[:3])})")
        except InputError as exc:
            if lock is not None:
                lock.release()
                lock = None
            error = str(exc)
        except OSError as exc:
            error = f"train config: out {out} cannot be created ({exc.strerror})"
    error = backend.broadcast_object(error)
    if error:
        raise InputError(error)
    return lock


def _check_data(cfg, task, backend):
    """Refuse (InputError on every rank) a split that the run reads and that holds a NaN or
    an infinity, before the first step (:mod:`cosmonet.train.datacheck`)."""
    from .datacheck import check_splits_finite
    d = cfg["data"]
    splits = [] if d["source"] == "generate" else [(d["train_split"], task.train_set)]
    if task.val_set is not None:
        splits.append((d["val_split"], task.val_set))
    seconds = check_splits_finite(splits, backend)
    if seconds > 5:
        _say(backend, f"train: the data hold no NaN or infinity (checked in {seconds:.0f} s)")


def _train(cfg, resume, backend, log_stream, clock):
    t_cfg, out = cfg["train"], cfg["out"]
    task = build_task(cfg, backend.device)
    _check_data(cfg, task, backend)
    sampler = _sampler(cfg, len(task.train_set), backend)
    total_steps = sampler.batches_per_epoch * t_cfg["epochs"]
    optimizer, scheduler, lr, budget = build_optimizer(t_cfg, task.model, sampler.global_batch, total_steps)
    progress = restore(out, task, optimizer, scheduler, backend) if resume else Progress()
    if progress.step == 0 and t_cfg["init_from"]:
        initialize_from(t_cfg["init_from"], task, backend)
    if budget is not None:
        clock.attach(budget)                # after restore: a resumed budget keeps its horizon and time spent
    backend.broadcast_parameters(task.model)
    model = backend.wrap_model(task.model)
    optimizer = backend.wrap_optimizer(optimizer, unwrap(model))
    run = Run(cfg=cfg, task=task, model=model, optimizer=optimizer, scheduler=scheduler, backend=backend,
              progress=progress, global_batch=sampler.global_batch, max_steps=t_cfg["max_steps"] or total_steps,
              total_steps=total_steps, guard=FiniteGuard(t_cfg["check_every"], backend.device), clock=clock, log=open(os.path.join(out, "train_log.jsonl"), "a") if backend.is_root else None,
              log_stream=log_stream, last_ckpt=latest_checkpoint(out) if backend.is_root else None)
    device = backend.device
    run.precision = resolve_precision(t_cfg["precision"], device)
    autocast = autocast_for(run.precision, device)
    _say(backend, f"train: {unwrap(model).__class__.__name__} on {backend.size} rank(s) ({backend.name}, "
                  f"{backend.world.launcher}, {run.precision}, {torch.get_num_threads()} torch thread(s) per rank), "
                  f"{len(task.train_set)} training samples, global batch "
                  f"{sampler.global_batch}, lr {lr:g}, {sampler.batches_per_epoch} steps per epoch, until step "
                  f"{min(run.max_steps, total_steps)}")
    if task.memory:
        from ..resources import fmt_bytes
        m = task.memory
        _say(backend, f"train: memory estimate {fmt_bytes(m['total'])} per rank besides the interpreter "
                      f"({m['parameters']:,} parameters: weights {fmt_bytes(m['weights'])}, optimiser "
                      f"{fmt_bytes(m['optimizer'])}; one step {fmt_bytes(m['step'])})")
    if task.no_validation:
        _say(backend, f"train: runs without validation: {task.no_validation}")
    run.t_start = time.perf_counter()
    model.train()
    batches = run.batches = batch_source(cfg, task, sampler, device, backend)
    stop = progress.step >= run.max_steps or clock.exhausted(progress.step)
    while not stop and progress.epoch < t_cfg["epochs"]:
        stop = run_epoch(run, batches, autocast)
        if stop and progress.batch_in_epoch < sampler.batches_per_epoch:
            break
        progress.epoch += 1
        progress.batch_in_epoch = 0
        validate(run)
    run.guard.check(backend, run.last_ckpt)
    if backend.is_root:
        run.last_ckpt = save_checkpoint(out, run.checkpoint_state())
        run.log.close()
    backend.barrier()
    return _summary(run), unwrap(model), backend
