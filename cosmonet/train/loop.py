"""The training loop of ``cosmonet train``: data-parallel over any launcher and backend.

Rank 0 alone logs (JSON lines in OUT/train_log.jsonl and a progress line on stderr) and
writes checkpoints. A resumed run continues the same trajectory: the sampler's epoch and
position, the optimiser, the scheduler and the RNG states are restored, and augmentation
draws its symmetry from (seed, epoch, sample index), not from a stream that depends on
the number of ranks or workers.
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from .dist import init_backend
from .sampler import ShardedBatchSampler
from .schedule import BudgetClock, BudgetSchedule
from .staged import FiniteGuard, make_batch_source

VECTOR_FIELDS = ("disp", "vel")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or data); the message names the step."""


def is_vector_field(name):
    return name.split("/")[-1] in VECTOR_FIELDS


class PairDataset(Dataset):
    """(input, target) pairs from a campaign, divided by ``scale``, with per-sample
    symmetry augmentation seeded by (seed, epoch, index).

    Item ``epoch * len + index`` is sample ``index`` as augmented in ``epoch`` (what
    :class:`ShardedBatchSampler` yields); plain indices below ``len`` are epoch 0.
    """

    def __init__(self, base, scale, augment, seed, vector_flags):
        self.base, self.scale, self.augment, self.seed = base, float(scale), augment, int(seed)
        self.vector_flags = vector_flags
        if augment:
            from ..data import all_symmetries
            self.symmetries = all_symmetries()

    def __len__(self):
        return len(self.base)

    def __getitem__(self, item):
        epoch, i = divmod(int(item), len(self.base))
        tensors = [t / self.scale for t in self.base[i]]
        if self.augment:
            from ..data import apply_symmetry
            rng = np.random.default_rng([self.seed, epoch, i])
            perm, flips = self.symmetries[int(rng.integers(len(self.symmetries)))]
            tensors = [apply_symmetry(t, perm, flips, vector=v) for t, v in zip(tensors, self.vector_flags)]
        return tuple(tensors) + (i,)


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


def _say(backend, msg):
    if backend.is_root:
        print(msg, file=sys.stderr, flush=True)


def _lr_lambda(kind, total_steps):
    if kind == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def is_param_task(cfg):
    """True when the config trains parameter inference (data.target: params)."""
    return cfg["data"]["target"] == "params"


def build_param_datasets(cfg):
    """Sub-cube datasets (train, validation or None) for parameter inference."""
    from ..data.subcubes import SubcubeDataset
    d, seed = cfg["data"], cfg["train"]["seed"]
    if d["input"] != "density":
        raise InputError(f"train config: parameter inference reads data.input: density (got {d['input']!r})")
    kw = dict(size=d["subcube"], params=d["params"], scale=d["scale"])
    train = SubcubeDataset(d["root"], d["train_split"], augment=d["augment"], seed=seed, **kw)
    val = None
    if d["val_split"]:
        try:
            val = SubcubeDataset(d["root"], d["val_split"], ranges=train.ranges, **kw)
        except InputError:
            val = None
    return train, val


def build_datasets(cfg):
    from ..data import ShardDataset
    d = cfg["data"]
    fields = (d["input"], d["target"])
    flags = tuple(is_vector_field(f) for f in fields)
    train = ShardDataset(d["root"], split=d["train_split"], fields=fields)
    val = None
    if d["val_split"]:
        try:
            val = ShardDataset(d["root"], split=d["val_split"], fields=fields)
        except InputError:
            val = None
    return train, val, flags


def _loss_fn(pred, target):
    return torch.mean((pred - target) ** 2)


def _make_loss(cfg, box, model):
    from .losses import displacement_loss
    if hasattr(model, "loss"):            # a model that defines its own loss (paramnet: MSE or Gaussian NLL)
        return model.loss
    weight = cfg["train"]["density_weight"]
    scale = cfg["data"]["scale"]
    if weight == 0:
        return _loss_fn
    return lambda pred, target: displacement_loss(pred, target, scale, box, weight)


def evaluate_loss(model, dataset, backend, batch_size, device, loss_fn=_loss_fn):
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


def train(cfg, resume=False, backend=None, log_stream=sys.stderr):
    """Train the configured model; returns a summary dict (on every rank)."""
    from ..models import build_model, model_signature

    backend = init_backend(cfg["train"]["backend"]) if backend is None else backend
    t_cfg, d_cfg = cfg["train"], cfg["data"]
    out = cfg["out"]
    device = backend.device
    clock = BudgetClock(device)                          # HOOK time budget (schedule.py): the clock starts
    if backend.is_root:
        os.makedirs(out, exist_ok=True)
    torch.manual_seed(t_cfg["seed"])
    model_kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    if is_param_task(cfg):
        train_set, val_set = build_param_datasets(cfg)
        model_kwargs = _param_model_kwargs(cfg, model_kwargs, train_set)
    try:
        model = build_model(cfg["model"]["name"], **model_kwargs).to(device)
    except (ValueError, TypeError) as exc:
        raise InputError(f"train config: model: {exc}") from None
    signature = model_signature(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)

    if is_param_task(cfg):
        normalization = {"input": d_cfg["input"], "target": "params", "scale": d_cfg["scale"],
                         "params": list(train_set.params), "ranges": {p: list(r) for p, r in train_set.ranges.items()},
                         "subcube": train_set.size, "subcube_side": train_set.side}
    else:
        train_base, val_base, flags = build_datasets(cfg)
        train_set = PairDataset(train_base, d_cfg["scale"], d_cfg["augment"], t_cfg["seed"], flags)
        val_set = (PairDataset(val_base, d_cfg["scale"], False, t_cfg["seed"], flags)
                   if val_base is not None else None)
        normalization = {"input": d_cfg["input"], "target": d_cfg["target"], "scale": d_cfg["scale"]}
    try:
        sampler = ShardedBatchSampler(len(train_set), backend.rank, backend.size, t_cfg["batch_size"],
                                      seed=t_cfg["seed"])
    except ValueError as exc:
        raise InputError(f"train config: {exc} (train split of {d_cfg['root']})") from None
    train_loss = _make_loss(cfg, float(train_set.base.box_size), model)
    val_loss_fn = getattr(model, "loss", _loss_fn)
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = steps_per_epoch * t_cfg["epochs"]
    global_batch = sampler.global_batch
    lr = t_cfg["lr"] * global_batch / t_cfg["base_batch"]
    if t_cfg["optimizer"] == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=t_cfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=t_cfg["weight_decay"])
    budget = (BudgetSchedule(t_cfg["time_budget"], t_cfg["budget_warmup_steps"], t_cfg["scheduler"],   # HOOK
                             t_cfg["budget_step_seconds"]) if t_cfg["time_budget"] > 0 else None)     # schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget or _lr_lambda(t_cfg["scheduler"], total_steps))

    step = epoch = batch_in_epoch = 0
    if resume:
        path = latest_checkpoint(out)
        if path is None:
            _say(backend, f"train: --resume but no checkpoint in {out}; starting from scratch")
        else:
            state = load_checkpoint(path, expect_signature=signature)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            set_rng_state(state["rng"])
            _say(backend, f"train: resumed from {path} (step {step}, epoch {epoch})")
    if budget is not None:
        clock.attach(budget)                              # HOOK time budget: after a resume restored it
    backend.broadcast_parameters(model)
    model = backend.wrap_model(model)
    optimizer = backend.wrap_optimizer(optimizer, unwrap(model))

    def checkpoint_state():
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "rng": rng_state(), "model_signature": signature,
                "normalization": normalization,
                "config": cfg, "world_size": backend.size}

    log_path = os.path.join(out, "train_log.jsonl")
    log = open(log_path, "a") if backend.is_root else None
    max_steps = t_cfg["max_steps"] or total_steps
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    _say(backend, f"train: {unwrap(model).__class__.__name__} on {backend.size} rank(s) ({backend.name}, "
                  f"{backend.world.launcher}), {len(train_set)} training samples, global batch {global_batch}, "
                  f"lr {lr:g}, {steps_per_epoch} steps per epoch, until step {min(max_steps, total_steps)}")
    last_ckpt = latest_checkpoint(out) if backend.is_root else None
    t_start = time.perf_counter()
    wait = compute = 0.0
    samples_done = 0
    stop = step >= max_steps or clock.exhausted(step)                        # HOOK time budget (resume)
    model.train()
    # one loader for the whole run: its workers persist across epochs (the sampler's
    # indices carry the epoch), so no worker start-up is paid per epoch
    loader = DataLoader(train_set, batch_size=t_cfg["batch_size"], sampler=sampler,
                        num_workers=d_cfg["num_workers"], drop_last=True,
                        persistent_workers=d_cfg["num_workers"] > 0, pin_memory=device.type == "cuda")
    # HOOK batch source + device-side non-finite flag (staged.py): None -> the DataLoader above
    source = (None if is_param_task(cfg) else
              make_batch_source(cfg, train_set, sampler, device, say=lambda m: _say(backend, m)))
    guard = FiniteGuard(t_cfg["check_every"], device)
    while not stop and epoch < t_cfg["epochs"]:
        sampler.set_epoch(epoch)
        sampler.set_start(batch_in_epoch)
        t0 = time.perf_counter()
        for x, y, idx in (loader if source is None else source.epoch(epoch, batch_in_epoch)):   # HOOK source
            t1 = time.perf_counter()
            wait += t1 - t0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                pred = model(x)
                loss = train_loss(pred.float(), y)
            lossv = loss.detach().reshape(1).double()
            guard.record(step + 1, x, y, loss)                                # HOOK flag: no host sync
            if guard.due(step + 1):
                guard.check(backend, last_ckpt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            samples_done += global_batch
            compute += time.perf_counter() - t1
            stop = clock.after_step(step)                                     # HOOK time budget stop
            if step % t_cfg["log_every"] == 0 or step == max_steps or stop:
                mean_loss = float(backend.allreduce_mean(lossv.clone()))
                if backend.is_root:
                    elapsed = time.perf_counter() - t_start
                    rec = {"step": step, "epoch": epoch, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                           "samples_per_second": samples_done / elapsed, "data_wait_seconds": wait,
                           "compute_seconds": compute, "elapsed_seconds": elapsed}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(f"train: step {step}/{min(max_steps, total_steps)} epoch {epoch} loss {mean_loss:.5f} "
                          f"{rec['samples_per_second']:.1f} samples/s (data wait {wait:.1f} s)",
                          file=log_stream, flush=True)
            if step % t_cfg["checkpoint_every"] == 0 or step == max_steps:
                guard.check(backend, last_ckpt)                               # HOOK flag before saving
                if backend.is_root:
                    last_ckpt = save_checkpoint(out, checkpoint_state())
                backend.barrier()
            if step >= max_steps or stop:
                stop = True
                break
            t0 = time.perf_counter()
        if stop and batch_in_epoch < steps_per_epoch:
            break
        epoch += 1
        batch_in_epoch = 0
        if val_set is not None:
            val_loss = evaluate_loss(unwrap(model), val_set, backend, t_cfg["batch_size"], device, val_loss_fn)
            if backend.is_root:
                log.write(json.dumps({"step": step, "epoch": epoch, "val_loss": val_loss}) + "\n")
                log.flush()
                print(f"train: epoch {epoch} done, validation loss {val_loss:.5f}", file=log_stream, flush=True)
    guard.check(backend, last_ckpt)                                           # HOOK flag before saving
    if backend.is_root:
        last_ckpt = save_checkpoint(out, checkpoint_state())
        log.close()
    backend.barrier()
    elapsed = time.perf_counter() - t_start
    summary = {"out": out, "steps": step, "epochs_completed": epoch, "ranks": backend.size,
               "backend": backend.name, "launcher": backend.world.launcher, "global_batch": global_batch,
               "samples_per_second": samples_done / elapsed if elapsed > 0 else None,
               "samples_per_second_per_rank": samples_done / elapsed / backend.size if elapsed > 0 else None,
               "data_wait_seconds": wait, "compute_seconds": compute, "wall_seconds": elapsed,
               "checkpoint": last_ckpt, "staged": source is not None,                     # HOOK summary
               "first_step_seconds": clock.first_step,
               "time_budget": None if budget is None else {"horizon": budget.horizon, "step_seconds": budget.step_seconds,
                                                           "spent_seconds": budget.spent}}
    return summary, unwrap(model), backend
