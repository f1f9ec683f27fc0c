"""Networks shipped with cosmonet, loadable by name wherever a checkpoint is taken.

Each network is a folder ``cosmonet/pretrained/NAME/`` (``pretrained/`` at the top of a
clone links here, and ``pip install`` installs it with the package) holding

- ``weights.pt``: a ``torch.save`` of plain data and tensors only, read with
  ``torch.load(weights_only=True)``: the model's state dict in float16 (BatchNorm's counters
  as int64), its signature, normalisation, training config, the training set-up (box, grid,
  cosmology, FastPM settings; what ``probe`` and ``emulate`` compare against) and
  ``format: cosmonet-pretrained-1``;
- ``card.json`` and ``MODEL_CARD.md``: how it was made and how well it does.

``cosmonet emulate --checkpoint d3m_cpu`` (or ``pretrained:d3m_cpu``) loads
``cosmonet/pretrained/d3m_cpu/weights.pt``; a path that exists always wins over a name.
"""
import json
import os

import torch

from ..errors import InputError

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = "weights.pt"
CARD = "card.json"
FORMAT = "cosmonet-pretrained-1"
PREFIX = "pretrained:"


def available():
    """Names of the shipped networks (folders holding a weights file), sorted."""
    return sorted(name for name in os.listdir(PRETRAINED_DIR)
                  if os.path.isfile(os.path.join(PRETRAINED_DIR, name, WEIGHTS)))


def _shipped(name):
    """The weights file that ``NAME`` or ``pretrained:NAME`` names, or None."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    path = os.path.join(PRETRAINED_DIR, bare, WEIGHTS)
    if os.sep in bare or bare in ("", ".", "..") or not os.path.isfile(path):
        return None
    return path


def weights_path(name):
    """The weights file of the shipped network ``name``; InputError listing the names."""
    path = _shipped(name)
    if path is None:
        bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
        raise InputError(f"no shipped network {bare!r} (shipped: {', '.join(available()) or 'none'})")
    return path


def resolve(name_or_path):
    """``name_or_path`` when it exists, else the weights file of the shipped network of that
    name (``NAME`` or ``pretrained:NAME``), else None; InputError for ``pretrained:NAME``
    when nothing of that name is shipped."""
    if os.path.exists(name_or_path):
        return name_or_path
    if name_or_path.startswith(PREFIX):
        return weights_path(name_or_path)
    return _shipped(name_or_path)


def card(name):
    """The ``card.json`` of a shipped network (a dict)."""
    path = os.path.join(os.path.dirname(weights_path(name)), CARD)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def half_state(state_dict):
    """A state dict with floating tensors in float16 (others unchanged), contiguous copies."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).clone().contiguous()
            for k, v in state_dict.items()}


def export(state, out_dir, extra=None):
    """Write ``out_dir/weights.pt`` from a training checkpoint ``state`` (a dict from
    :func:`cosmonet.train.checkpoint.load_checkpoint`): float16 weights and plain metadata,
    nothing of the optimiser. ``extra`` (plain data) is stored beside. Returns the path."""
    from ..io.atomic import atomic_path
    for key in ("model", "model_signature", "normalization", "config"):
        if key not in state:
            raise InputError(f"cannot export: the checkpoint has no {key!r}")
    record = {"format": FORMAT, "model": half_state(state["model"]),
              "model_signature": state["model_signature"], "normalization": state["normalization"],
              "config": state["config"], "training_setup": state.get("training_setup"),
              "step": int(state.get("step", 0)), "samples_seen": state.get("samples_seen"),
              "precision": state.get("precision"), **(extra or {})}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, WEIGHTS)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path
