"""Training configuration (YAML): model, data, train and out sections, validated with
one-line errors naming the field into a frozen :class:`TrainConfig`. ``--set
section.key=value`` overrides any value (:mod:`cosmonet.yamlconfig`).

A TrainConfig reads like the YAML (``cfg["data"]["root"]``, or ``cfg.data.root``) and
cannot be changed; :meth:`TrainConfig.to_dict` gives the plain dict a checkpoint stores.

```yaml
model: {name: unet, base_channels: 16, depth: 2, norm: batch, residual: true}
data:
  root: data/d3m_small          # a campaign directory (cosmonet simulate)
  input: za/disp                 # field fed to the network ("density" for parameter inference)
  target: fastpm/disp            # field it learns, or "params" (parameter inference, docs/params.md)
  train_split: train
  val_split: val
  test_split: test
  scale: 6.0                     # fields are divided by this (Mpc/h) before the network
  augment: true                  # the 48 symmetries of the cube, one per sample
  num_workers: 1
  subcube: 0                     # parameter inference (target: params): sub-cube side in cells
  params: [Omega_m, sigma8]      # parameter inference: the parameters to learn
  staging: loader                # auto | device | loader: the split on the device (train/staged.py)
  staging_limit_gb: 0            # staging limit in GB (0: half the free GPU memory; 4 GB on a CPU)
  source: campaign               # or generate: new pairs simulated on the fly each step (train/generated.py)
train:
  backend: ddp                   # or horovod
  batch_size: 4                  # per rank
  base_batch: 4                  # lr is given for this global batch ...
  lr: 1.0e-3                     # ... and scaled linearly to the real global batch
  epochs: 10
  max_steps: 0                   # stop after this many steps (0: run all epochs)
  optimizer: adam                # or sgd
  weight_decay: 0.0
  scheduler: cosine              # or constant
  checkpoint_every: 100          # steps
  log_every: 10                  # steps
  seed: 0
  loss: mse                      # or relative: each box's MSE over its own mean square (pairs of several amplitudes)
  density_weight: 0.0            # > 0 adds weight x MSE of the CIC densities of q + psi
  check_every: 1                 # steps between host checks of the device-side non-finite flag
  time_budget: 0                 # seconds of wall clock (0: off); lr schedule fitted (train/schedule.py)
  budget_warmup_steps: 20        # steps at full lr whose second half measures the step time
  budget_step_seconds: 0         # > 0: assume this step time instead of measuring (reproducible)
  precision: auto                # auto | fp32 | bf16: bf16 autocast on CUDA and native-bf16 CPUs (cosmonet/hardware.py)
  init_from: ""                  # start from these weights: a checkpoint, a run directory or a shipped network (d3m_cpu)
out: runs/d3m_small
```
"""
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from ..errors import InputError
from ..yamlconfig import apply_overrides, load_yaml


class _Section(Mapping):
    """Read-only mapping view of a frozen dataclass section (``section["key"]``)."""

    def __getitem__(self, key):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self):
        return len(self.__dataclass_fields__)


@dataclass(frozen=True, eq=True)
class DataConfig(_Section):
    """The ``data`` section: a campaign directory, the fields in and out, the splits,
    ``scale`` (Mpc/h, fields are divided by it), augmentation and sub-cubes (parameter inference)."""

    root: str = None
    input: str = "za/disp"
    target: str = "fastpm/disp"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    scale: float = 6.0
    augment: bool = True
    num_workers: int = 1
    subcube: int = 0
    params: tuple = ("Omega_m", "sigma8")
    staging: str = "loader"          # auto | device | loader (cosmonet/train/staged.py)
    source: str = "campaign"         # campaign | generate: pairs made on the fly (train/generated.py)
    staging_limit_gb: float = 0.0


@dataclass(frozen=True, eq=True)
class TrainSettings(_Section):
    """The ``train`` section: backend, per-rank batch, learning rate (given for ``base_batch``),
    epochs / max_steps, optimiser and schedule, checkpoint and log intervals (steps), seed,
    and the weight of the density term of the loss."""

    backend: str = "ddp"
    batch_size: int = 4
    base_batch: int = 4
    lr: float = 1e-3
    epochs: int = 10
    max_steps: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    loss: str = "mse"                # mse | relative (train/losses.py)
    density_weight: float = 0.0
    check_every: int = 1             # device flag / time budget: train/staged.py, train/schedule.py
    time_budget: float = 0.0
    budget_warmup_steps: int = 20
    budget_step_seconds: float = 0.0
    precision: str = "auto"          # auto | fp32 | bf16 (cosmonet/hardware.py)
    init_from: str = ""              # weights to start from (not optimiser state): path or shipped name


@dataclass(frozen=True, eq=True)
class TrainConfig(_Section):
    """A validated training configuration (see the module docstring for the YAML)."""

    model: Mapping = field(default_factory=lambda: MappingProxyType({"name": "unet"}))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    out: str = "runs/train"

    def to_dict(self):
        """Plain nested dict (lists for tuples), as stored in checkpoints."""
        def plain(section):
            return {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return {"model": dict(self.model), "data": plain(self.data), "train": plain(self.train), "out": self.out}


def _defaults(cls):
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields(cls)}


DEFAULTS = {"model": {"name": "unet"}, "data": _defaults(DataConfig), "train": _defaults(TrainSettings),
            "out": TrainConfig.out}
_TYPES = {
    "data.root": str, "data.input": str, "data.target": str, "data.train_split": str, "data.val_split": str,
    "data.test_split": str, "data.scale": float, "data.augment": bool, "data.num_workers": int,
    "data.subcube": int, "data.params": list, "data.staging": str, "data.staging_limit_gb": float,
    "data.source": str,
    "train.backend": str, "train.batch_size": int, "train.base_batch": int, "train.lr": float,
    "train.epochs": int, "train.max_steps": int, "train.optimizer": str, "train.weight_decay": float,
    "train.scheduler": str, "train.checkpoint_every": int, "train.log_every": int, "train.seed": int,
    "train.density_weight": float, "train.loss": str,
    "train.check_every": int, "train.time_budget": float, "train.budget_warmup_steps": int,
    "train.budget_step_seconds": float, "train.precision": str, "train.init_from": str,
    "out": str,
}
_CHOICES = {"train.backend": ("ddp", "horovod"), "train.optimizer": ("adam", "sgd"),
            "train.scheduler": ("cosine", "constant"), "data.staging": ("auto", "device", "loader"),
            "data.source": ("campaign", "generate"), "train.precision": ("auto", "fp32", "bf16"),
            "train.loss": ("mse", "relative")}
_MINIMUM = {"train.batch_size": 1, "train.base_batch": 1, "train.epochs": 1, "train.max_steps": 0,
            "train.checkpoint_every": 1, "train.log_every": 1, "data.num_workers": 0, "train.seed": 0,
            "data.subcube": 0, "train.check_every": 1, "train.time_budget": 0.0, "train.budget_warmup_steps": 2,
            "train.budget_step_seconds": 0.0, "data.staging_limit_gb": 0.0}


def _check(path, value):
    want = _TYPES[path]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise InputError(f"train config: {path} must be {want.__name__} (got {value!r})")
    if path in _CHOICES and value not in _CHOICES[path]:
        raise InputError(f"train config: {path} must be one of {', '.join(_CHOICES[path])} (got {value!r})")
    if path in _MINIMUM and value < _MINIMUM[path]:
        raise InputError(f"train config: {path} must be >= {_MINIMUM[path]} (got {value})")
    if want is float and path in ("train.lr", "data.scale") and not value > 0:
        raise InputError(f"train config: {path} must be > 0 (got {value})")
    if path == "data.params" and not (value and all(isinstance(p, str) for p in value)):
        raise InputError(f"train config: data.params must be a non-empty list of parameter names (got {value!r})")
    if path in ("train.density_weight", "train.weight_decay") and not value >= 0:
        raise InputError(f"train config: {path} must be >= 0 (got {value})")
    if want is float and value in (float("inf"), float("-inf")):
        raise InputError(f"train config: {path} must be finite (got {value})")
    return value


def validate_train_config(raw):
    """Fill defaults and check types; returns a frozen :class:`TrainConfig`."""
    if isinstance(raw, TrainConfig):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        raise InputError("train config: the file must hold a mapping with model, data, train, out")
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        raise InputError(f"train config: unknown section {str(unknown[0])!r} (known: {', '.join(DEFAULTS)})")
    cfg = copy.deepcopy(DEFAULTS)
    for section in ("model", "data", "train"):
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise InputError(f"train config: {section} must be a mapping")
        for key, value in given.items():
            if section != "model" and key not in DEFAULTS[section]:
                raise InputError(f"train config: unknown key {f'{section}.{key}'!r} "
                                 f"(known: {', '.join(DEFAULTS[section])})")
            cfg[section][key] = value
    if "out" in raw:
        cfg["out"] = raw["out"]
    for path in _TYPES:
        section, _, key = path.partition(".")
        if key:
            if cfg[section][key] is None:
                raise InputError(f"train config: {path} is required")
            cfg[section][key] = _check(path, cfg[section][key])
        else:
            cfg[section] = _check(path, cfg[section])
    if not isinstance(cfg["model"].get("name"), str):
        raise InputError("train config: model.name is required (e.g. unet)")
    d = dict(cfg["data"], params=tuple(cfg["data"]["params"]))
    return TrainConfig(model=MappingProxyType(dict(cfg["model"])), data=DataConfig(**d),
                       train=TrainSettings(**cfg["train"]), out=cfg["out"])


def load_train_config(path, overrides=()):
    """Read, override and validate a training YAML file; a :class:`TrainConfig`."""
    raw = load_yaml(path, "train config")
    if not isinstance(raw, dict):
        raise InputError(f"train config {path} must hold a mapping with model, data, train, out")
    return validate_train_config(apply_overrides(raw, overrides))
