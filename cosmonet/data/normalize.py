"""Fixed per-field normalization: ``(t - shift) / scale`` with constants from the training config.

The constants are stated, not fitted on the fly, so a checkpoint's normalizer (stored with
:meth:`FieldNormalizer.state_dict`) maps network outputs back to physical units exactly.
:func:`estimate` measures the standard deviation of each field over a few samples to help
choose them (e.g. displacement / 6 Mpc/h).

Keep ``shift`` at 0 for vector fields (displacement, velocity) when augmenting with cube
symmetries: a symmetry negates components, which commutes with a scale but not with a shift.
Apply the symmetry first, then the normalizer (``Compose(RandomCubeSymmetry(...), norm)``).
"""
import math

import numpy as np
import torch

from ..errors import InputError

__all__ = ["FieldNormalizer", "estimate"]


def _number(what, value, positive):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"normalizer: {what} must be a number (got {value!r})") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise InputError(f"normalizer: {what} must be a finite number{' > 0' if positive else ''} (got {value!r})")
    return v


class FieldNormalizer:
    """Per-field ``forward(t) = (t - shift) / scale`` and ``inverse(t) = t * scale + shift``.

    scale: mapping field name -> positive number, e.g. ``{"za/disp": 6.0, "fastpm/disp": 6.0}``;
    its order is the order of the fields in a sample tuple.
    shift: optional mapping field name -> number (missing fields: 0).

    ``forward(t, field)`` / ``inverse(t, field)`` for one tensor; ``forward(tensors)`` for a
    tuple holding every field in order. Calling the normalizer is ``forward`` on a tuple, so it
    can be a dataset transform.
    """

    takes_rng = False

    def __init__(self, scale, shift=None):
        if not isinstance(scale, dict) or not scale:
            raise InputError(f"normalizer: scale must be a non-empty mapping of field name to number (got {scale!r})")
        shift = dict(shift or {})
        unknown = [k for k in shift if k not in scale]
        if unknown:
            raise InputError(f"normalizer: shift names field {unknown[0]!r} that has no scale "
                             f"(fields: {', '.join(scale)})")
        self.fields = tuple(str(k) for k in scale)
        self.scale = {k: _number(f"scale of {k!r}", v, True) for k, v in scale.items()}
        self.shift = {k: _number(f"shift of {k!r}", shift.get(k, 0.0), False) for k in self.fields}

    def _field(self, field, op):
        if field is None:
            if len(self.fields) != 1:
                raise ValueError(f"{op}: name the field of a single tensor (one of {', '.join(self.fields)})")
            return self.fields[0]
        if field not in self.scale:
            raise KeyError(f"{op}: no scale for field {field!r} (fields: {', '.join(self.fields)})")
        return field

    def _map(self, fn, t, field, op):
        if isinstance(t, (tuple, list)):
            if field is not None:
                raise ValueError(f"{op}: a tuple of tensors holds every field; do not pass field")
            if len(t) != len(self.fields):
                raise ValueError(f"{op}: expected {len(self.fields)} tensors ({', '.join(self.fields)}), got {len(t)}")
            return tuple(fn(x, name) for x, name in zip(t, self.fields))
        return fn(t, self._field(field, op))

    def forward(self, t, field=None):
        """``(t - shift) / scale``; ``t`` a tensor (with ``field``) or a tuple of every field."""
        def fn(x, name):
            return (x - self.shift[name]) / self.scale[name] if self.shift[name] else x / self.scale[name]
        return self._map(fn, t, field, "forward")

    def inverse(self, t, field=None):
        """``t * scale + shift`` (undoes :meth:`forward`)."""
        def fn(x, name):
            return x * self.scale[name] + self.shift[name] if self.shift[name] else x * self.scale[name]
        return self._map(fn, t, field, "inverse")

    def __call__(self, tensors):
        return self.forward(tensors)

    def state_dict(self):
        """Plain data (field order, scale, shift) for a checkpoint."""
        return {"fields": list(self.fields), "scale": [self.scale[k] for k in self.fields],
                "shift": [self.shift[k] for k in self.fields]}

    @classmethod
    def from_state_dict(cls, state):
        try:
            fields, scale, shift = list(state["fields"]), list(state["scale"]), list(state["shift"])
        except (KeyError, TypeError):
            raise InputError("normalizer: state_dict needs 'fields', 'scale' and 'shift'") from None
        if not len(fields) == len(scale) == len(shift):
            raise InputError("normalizer: state_dict 'fields', 'scale' and 'shift' differ in length")
        return cls(dict(zip(fields, scale)), dict(zip(fields, shift)))

    def __eq__(self, other):
        return isinstance(other, FieldNormalizer) and self.state_dict() == other.state_dict()

    def __repr__(self):
        parts = [f"{k}: /{self.scale[k]:g}" + (f" -{self.shift[k]:g}" if self.shift[k] else "") for k in self.fields]
        return f"FieldNormalizer({', '.join(parts)})"


def estimate(dataset, n=8):
    """Mean and standard deviation of each field over ``n`` samples spread evenly over the dataset.

    Reads the raw fields (``dataset.read(i)`` when the dataset has it, so no transform is
    applied; else ``dataset[i]``). Returns ``{field: {"mean": m, "std": s}}`` (pooled over
    channels, grid points and samples, accumulated in float64); fields are named by
    ``dataset.fields`` when present, else ``"0"``, ``"1"``, ...
    """
    if len(dataset) == 0:
        raise ValueError("estimate: the dataset is empty")
    n = max(1, min(int(n), len(dataset)))
    picks = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int))
    read = getattr(dataset, "read", None) or dataset.__getitem__
    acc = None                      # per field: [count, mean, sum of squared deviations]
    for i in picks:
        sample = read(int(i))
        sample = sample if isinstance(sample, (tuple, list)) else (sample,)
        if acc is None:
            acc = [[0, 0.0, 0.0] for _ in sample]
        for a, t in zip(acc, sample):
            x = torch.as_tensor(t).double()
            m, mean = x.numel(), float(x.mean())
            m2 = float(((x - mean) ** 2).sum())
            n_tot = a[0] + m
            delta = mean - a[1]     # combine (count, mean, M2) of two sets (Chan et al.)
            a[2] += m2 + delta * delta * a[0] * m / n_tot
            a[1] += delta * m / n_tot
            a[0] = n_tot
    names = list(getattr(dataset, "fields", [str(k) for k in range(len(acc))]))
    return {name: {"mean": mean, "std": math.sqrt(m2 / count)} for name, (count, mean, m2) in zip(names, acc)}


FieldNormalizer.estimate = staticmethod(estimate)
