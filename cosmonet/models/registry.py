"""Model registry: build a model by name, and a signature that identifies it in checkpoints.

A model class (or factory) registers itself with ``@register_model("name")``.
``build_model(name, **kwargs)`` constructs it and records its *signature*: the name plus
**all** constructor arguments, defaults filled in, so that a checkpoint stays exact even
if a default changes later. ``model_signature(model)`` returns it (as plain JSON data:
tuples become lists), ``build_from_signature`` rebuilds the same architecture and
``check_signature`` raises ``ValueError`` naming the differences when a checkpoint was
written by another model.
"""
from __future__ import annotations

import copy
import inspect

import torch.nn as nn

_MODELS: dict = {}
_SIGNATURE_ATTR = "_cosmonet_signature"


def register_model(name: str):
    """Class/factory decorator: ``@register_model("paramnet") class ParamNet(nn.Module)``.

    A registered class should keep its constructor arguments in ``self.config`` (a dict)
    so that ``model_signature`` also works for instances built directly, not through
    ``build_model``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string (got {name!r})")

    def decorate(obj):
        if name in _MODELS and _MODELS[name] is not obj:
            raise ValueError(f"model name {name!r} is already registered for {_MODELS[name]!r}")
        _MODELS[name] = obj
        return obj

    return decorate


def available_models() -> list:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def _factory(name):
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in available_models()) or "none"
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _full_kwargs(name, factory, kwargs):
    """All constructor arguments, defaults filled in; ValueError for unknown ones."""
    try:
        bound = inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model {name!r}: {exc}") from None
    bound.apply_defaults()
    full = {}
    for pname, param in inspect.signature(factory).parameters.items():
        if pname not in bound.arguments:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            full.update(bound.arguments[pname])
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            if bound.arguments[pname]:
                raise ValueError(f"model {name!r}: positional *args cannot be recorded in a signature")
        else:
            full[pname] = bound.arguments[pname]
    return full


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct the registered model ``name`` with ``kwargs``.

    Raises ``ValueError`` for an unknown name (listing the known models) or an argument
    the model does not take.
    """
    factory = _factory(name)
    full = _full_kwargs(name, factory, kwargs)
    model = factory(**full)
    setattr(model, _SIGNATURE_ATTR, {"name": name, "kwargs": _jsonable(full)})
    return model


def model_signature(model: nn.Module) -> dict:
    """``{"name": ..., "kwargs": {...}}`` identifying the architecture of ``model``.

    Recorded by ``build_model``; for a model constructed directly, found from its class's
    registered name and its ``config`` dict. ``ValueError`` when neither is available.
    """
    sig = getattr(model, _SIGNATURE_ATTR, None)
    if sig is not None:
        return copy.deepcopy(sig)
    for name, factory in _MODELS.items():
        if isinstance(factory, type) and type(model) is factory:
            config = getattr(model, "config", None)
            if not isinstance(config, dict):
                break
            return {"name": name, "kwargs": _jsonable(_full_kwargs(name, factory, dict(config)))}
    raise ValueError(f"cannot tell the signature of {type(model).__name__}: it was not built by build_model "
                     f"and is not a registered model class with a `config` dict")


def _as_signature(obj) -> dict:
    if isinstance(obj, nn.Module):
        return model_signature(obj)
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(obj.get("kwargs"), dict)):
        raise ValueError(f"not a model signature (expected a dict with 'name' and 'kwargs'): {obj!r}")
    return {"name": obj["name"], "kwargs": _jsonable(obj["kwargs"])}


def build_from_signature(signature: dict) -> nn.Module:
    """Rebuild the architecture described by a signature (e.g. read from a checkpoint)."""
    sig = _as_signature(signature)
    return build_model(sig["name"], **sig["kwargs"])


def signature_differences(a, b) -> list:
    """Human-readable differences between two signatures (or models); empty if equal."""
    sa, sb = _as_signature(a), _as_signature(b)
    if sa["name"] != sb["name"]:
        return [f"model {sa['name']!r} vs {sb['name']!r}"]
    diffs = []
    for key in sorted(set(sa["kwargs"]) | set(sb["kwargs"])):
        va, vb = sa["kwargs"].get(key, "<absent>"), sb["kwargs"].get(key, "<absent>")
        if va != vb:
            diffs.append(f"{key}: {va!r} vs {vb!r}")
    return diffs


def check_signature(expected, actual, what="checkpoint") -> None:
    """Raise ``ValueError`` when ``actual`` (a model or signature) differs from ``expected``
    (typically the signature stored in a checkpoint)."""
    diffs = signature_differences(expected, actual)
    if diffs:
        raise ValueError(f"{what} was written by another model ({what} vs this model): " + "; ".join(diffs))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (only those with ``requires_grad`` unless ``trainable_only=False``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
