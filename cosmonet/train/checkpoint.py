"""Checkpoints: one file per save, written atomically by rank 0, and a ``latest`` pointer.

``DIR/checkpoints/step_00000100.pt`` holds the model (unwrapped state dict), optimiser,
scheduler, step, epoch, position in the epoch, RNG states, the normalisation, the model
signature and the training config; ``DIR/checkpoints/latest`` names the newest complete
file. A run killed while saving leaves the previous checkpoint as ``latest``.
"""
import os
import random
import re
import zipfile

import numpy as np
import torch

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_path

CKPT_DIR = "checkpoints"
LATEST = "latest"
_STEP = re.compile(r"step_(\d+)\.pt")


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def rng_state():
    """The RNG states of torch, numpy and Python in types ``torch.load(weights_only=True)``
    reads: a tensor, and tuples of strings, ints, floats and a tensor (numpy's key)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (str(kind), torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss),
                   float(cached))
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(state["python"])


def _numpy_globals():
    """The numpy names a checkpoint of cosmonet <= 0.x holds (numpy's RNG key as an array):
    array reconstruction and dtypes only, which build data and run no code of the file."""
    names = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            names.append(getattr(__import__(module, fromlist=["_reconstruct"]), "_reconstruct"))
        except (ImportError, AttributeError):
            pass
    names += [np.ndarray, np.dtype]
    names += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32")]
    return names


def safe_load(path):
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True``: tensors and plain
    Python data (and numpy arrays, for older checkpoints), never code from the file."""
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(out, state):
    """Write ``state`` (a dict) to DIR/checkpoints/step_N.pt and point ``latest`` at it."""
    d = os.path.join(out, CKPT_DIR)
    os.makedirs(d, exist_ok=True)
    name = f"step_{state['step']:08d}.pt"
    state = dict(state, code_version=__version__)
    with atomic_path(os.path.join(d, name)) as tmp:
        torch.save(state, tmp)
    with atomic_path(os.path.join(d, LATEST)) as tmp:
        with open(tmp, "w") as fh:
            fh.write(name + "\n")
    return os.path.join(d, name)


_TEMPORARY = re.compile(r"(step_\d+\.pt|latest)\..+\.tmp")


def prepare_checkpoint_dir(out):
    """Before the first step, with the run's lock held: create ``OUT/checkpoints``, check
    that it and ``OUT`` can be written (InputError naming the directory otherwise, instead
    of a failure at the first checkpoint), and remove the temporary files a checkpoint
    write killed midway left behind (no other writer can own them). Returns their names."""
    from ..io.atomic import check_writable_dir
    d = os.path.join(out, CKPT_DIR)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as exc:
        raise InputError(f"train config: out {out}: cannot create {CKPT_DIR}/ ({exc.strerror})") from None
    for where in (out, d):
        try:
            check_writable_dir(os.path.join(where, "train_log.jsonl"))
        except InputError as exc:
            raise InputError(f"train config: out {out}: {exc}") from None
    removed = []
    for name in sorted(os.listdir(d)):
        if _TEMPORARY.fullmatch(name):
            try:
                os.unlink(os.path.join(d, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def step_files(out):
    """The checkpoint files ``DIR/checkpoints/step_N.pt``, newest (largest N) first."""
    d = os.path.join(out, CKPT_DIR)
    if not os.path.isdir(d):
        return []
    steps = []
    for name in os.listdir(d):
        m = _STEP.fullmatch(name)
        if m:
            steps.append((int(m.group(1)), os.path.join(d, name)))
    return [path for _, path in sorted(steps, reverse=True)]


def readable(path):
    """True when ``path`` is a whole torch zip archive (its central directory reads): a
    truncated, emptied or foreign file is not. Cheap: the data are not read."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _pointer(out):
    """The file name ``DIR/checkpoints/latest`` holds, or None (no or unreadable pointer)."""
    try:
        with open(os.path.join(out, CKPT_DIR, LATEST)) as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def find_latest(out):
    """``(path, note)``: the checkpoint to continue from and, when it is not the one
    ``checkpoints/latest`` names, a line saying why (that file is missing or unreadable,
    or there is no pointer) and which one is used instead: the newest readable
    ``step_N.pt``. ``path`` is None when DIR holds no readable checkpoint."""
    name = _pointer(out)
    named = os.path.join(out, CKPT_DIR, name) if name else None
    if named is not None and os.path.isfile(named) and readable(named):
        return named, None
    newest = next((p for p in step_files(out) if readable(p)), None)
    if named is None:
        why = f"{os.path.join(out, CKPT_DIR, LATEST)} is missing or empty"
    else:
        why = f"{os.path.join(CKPT_DIR, LATEST)} names {name}, which is " + (
            "unreadable" if os.path.exists(named) else "missing")
    if newest is None:
        return None, (f"{why} and no other checkpoint is readable" if step_files(out) or named else None)
    return newest, f"{why}; using {os.path.basename(newest)}, the newest readable checkpoint"


def latest_checkpoint(out):
    """Path of the newest complete checkpoint in DIR, or None: the file ``latest`` names,
    or when that is missing or unreadable the newest readable ``step_N.pt`` (:func:`find_latest`)."""
    return find_latest(out)[0]


def checkpoint_argument(path, option="checkpoint"):
    """The path a ``--checkpoint`` argument names: an existing file or run directory, or
    the weights of a shipped network (``d3m_cpu`` or ``pretrained:d3m_cpu``,
    :mod:`cosmonet.pretrained`); InputError when it is neither."""
    from ..pretrained import available, resolve
    found = resolve(path)
    if found is None:
        raise InputError(f"{option} {path} does not exist (nor is it a shipped network: "
                         f"{', '.join(available()) or 'none shipped'})")
    return found


def resolve_checkpoint(path):
    """The checkpoint file meant by ``path``: a step_*.pt file, a run directory (its latest
    checkpoint), a ``checkpoints/latest`` pointer file, or the name of a shipped network."""
    if not os.path.exists(path):
        from ..pretrained import resolve
        path = resolve(path) or path
    if os.path.isdir(path):
        found = latest_checkpoint(path) or latest_checkpoint(os.path.dirname(os.path.normpath(path)))
        if found is None:
            raise InputError(f"checkpoint {path}: a directory without checkpoints/latest")
        return found
    if os.path.basename(path) == LATEST and os.path.isfile(path):
        found = latest_checkpoint(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        if found is None:
            raise InputError(f"checkpoint {path}: the file it names does not exist")
        return found
    return path


def load_checkpoint(path, expect_signature=None):
    """Load a checkpoint (on CPU); check that it holds the expected model. ``path`` may
    also be a run directory or its ``checkpoints/latest`` pointer (the newest checkpoint)."""
    path = resolve_checkpoint(path)
    if os.path.isfile(path) and not readable(path):
        raise InputError(f"checkpoint {path}: cannot be read (not a torch checkpoint archive: truncated, or "
                         f"another kind of file)")
    try:
        state = safe_load(path)
    except Exception as exc:   # torch.load fails in many ways (pickle, zip, EOF, unsafe global): all "not readable"
        text = str(exc)
        unsafe = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)
        if unsafe:
            raise InputError(f"checkpoint {path}: refused: it holds the Python object {unsafe.group(1)}, and "
                             f"loading it could run code (cosmonet loads tensors and plain data only)") from None
        detail = re.search(r"Unpickler error:\s*([^\n]+)", text)
        first = detail.group(1) if detail else (text.splitlines()[0] if text else type(exc).__name__)
        raise InputError(f"checkpoint {path}: cannot be read ({first[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "model_signature" not in state:
        raise InputError(f"checkpoint {path}: not a cosmonet checkpoint")
    if expect_signature is not None and state["model_signature"] != expect_signature:
        raise InputError(f"checkpoint {path}: holds a model that is not the configured one "
                         f"({_signature_difference(state['model_signature'], expect_signature)})")
    return state


def _signature_difference(held, configured, prefix=""):
    """The keys on which two model signatures differ, as ``key: held in the checkpoint,
    configured`` items (nested dicts flattened with dots), so that an error line names them."""
    if not (isinstance(held, dict) and isinstance(configured, dict)):
        return f"{prefix or 'model'}: {held!r} in the checkpoint, {configured!r} configured"
    items = []
    for key in sorted(set(held) | set(configured), key=str):
        a, b = held.get(key, "absent"), configured.get(key, "absent")
        if a != b:
            items.append(_signature_difference(a, b, f"{prefix}{key}.") if isinstance(a, dict) and isinstance(b, dict)
                         else f"{prefix}{key}: {a!r} in the checkpoint, {b!r} configured")
    return "; ".join(items)


# --------------------------------------------------------------------------- what a --resume may change
#: config keys a ``--resume`` may change: applied from the resumed step on, and recorded (one
#: stderr line and a ``resume`` record in train_log.jsonl). ``train.epochs`` also stretches the
#: cosine schedule's length from the resumed step on.
RESUME_APPLIED = ("train.epochs", "train.max_steps", "train.checkpoint_every", "train.log_every",
                  "train.check_every", "train.backend", "data.num_workers", "data.staging", "data.staging_limit_gb",
                  "train.precision")
#: keys never compared: where the run lives
RESUME_IGNORED = ("out",)


def _flat(cfg):
    out = {}
    for section, value in cfg.items():
        if isinstance(value, dict):
            for key, v in value.items():
                out[f"{section}.{key}"] = list(v) if isinstance(v, tuple) else v
        else:
            out[section] = value
    return out


def resume_changes(old, new):
    """``(applied, refused)``: the keys whose value differs between the config ``old`` stored
    in a checkpoint and the config ``new`` of the resuming run, each {key: (old, new)}.
    ``applied`` are those of :data:`RESUME_APPLIED`; every other change (model.*, data.*,
    batch sizes, lr, optimiser, schedule, time budget, seed, loss weights) is ``refused``: a
    resume keeps the optimiser's learning rate and state, the budget schedule's horizon and
    budget (restored with the scheduler) and the data order of the checkpoint, so such a
    change would be recorded and silently not followed, or would change what the
    trajectory means."""
    a, b = _flat(old or {}), _flat(new)
    applied, refused = {}, {}
    for key in sorted(set(a) | set(b)):
        if key in RESUME_IGNORED or key not in a:      # a key older checkpoints did not store
            continue
        if a.get(key) != b.get(key):
            (applied if key in RESUME_APPLIED else refused)[key] = (a.get(key), b.get(key))
    return applied, refused
