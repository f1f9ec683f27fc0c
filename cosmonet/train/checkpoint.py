"""Checkpoints: one file per save, written atomically by rank 0, and a ``latest`` pointer.

``DIR/checkpoints/step_00000100.pt`` holds the model (unwrapped state dict), optimiser,
scheduler, step, epoch, position in the epoch, RNG states, the normalisation, the model
signature and the training config; ``DIR/checkpoints/latest`` names the newest complete
file. A run killed while saving leaves the previous checkpoint as ``latest``.
"""
import os
import random

import numpy as np
import torch

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_path

CKPT_DIR = "checkpoints"
LATEST = "latest"


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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


def latest_checkpoint(out):
    """Path of the newest complete checkpoint in DIR, or None."""
    pointer = os.path.join(out, CKPT_DIR, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as fh:
        name = fh.read().strip()
    path = os.path.join(out, CKPT_DIR, name)
    return path if os.path.exists(path) else None


def resolve_checkpoint(path):
    """The checkpoint file meant by ``path``: a step_*.pt file, a run directory (its latest
    checkpoint), or a ``checkpoints/latest`` pointer file."""
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:   # torch.load fails in many ways (pickle, zip, EOF): all mean "not readable"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"checkpoint {path}: cannot be read ({first})") from None
    if not isinstance(state, dict) or "model" not in state or "model_signature" not in state:
        raise InputError(f"checkpoint {path}: not a cosmonet checkpoint")
    if expect_signature is not None and state["model_signature"] != expect_signature:
        raise InputError(f"checkpoint {path}: holds model {state['model_signature']}, "
                         f"not the configured {expect_signature}")
    return state
