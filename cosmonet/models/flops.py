"""Convolution FLOPs of a model for an input shape.

FLOP convention (``count_flops``): a multiply-add counts 2 FLOPs; conv3d costs
``2 * Cin/groups * Cout * k^3 * (output voxels)``, a transposed conv
``2 * Cin * Cout/groups * k^3 * (input voxels)``, both over the whole batch, counted on
the tensor the torch convolution actually receives (after the circular padding); bias,
normalisation, activations, padding copies and concatenations are not counted. In the
backward pass every convolution computes the weight gradient (same FLOPs as its forward)
and, when its input requires a gradient, the input gradient (same FLOPs again): the
first layer, fed by data, only the former. So a training step is about 3x the forward.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class ConvRecord:
    """One convolution call seen during a forward pass (shapes of the torch conv call)."""
    name: str
    kind: str                  # "conv3d" or "conv_transpose3d"
    input_shape: tuple         # what the torch conv receives (after circular padding)
    output_shape: tuple
    weight_shape: tuple
    stride: tuple
    padding: tuple
    groups: int
    bias: bool
    input_requires_grad: bool
    forward_flops: int

    @property
    def backward_flops(self) -> int:
        return self.forward_flops * (2 if self.input_requires_grad else 1)

    def shape_key(self):
        return (self.kind, self.input_shape, self.weight_shape, self.stride, self.padding,
                self.groups, self.bias, self.input_requires_grad)


@dataclass
class FlopReport:
    """Result of ``count_flops``: totals over the batch and per sample, and every conv."""
    input_shape: tuple
    layers: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return int(self.input_shape[0])

    @property
    def forward(self) -> int:
        return sum(r.forward_flops for r in self.layers)

    @property
    def backward(self) -> int:
        return sum(r.backward_flops for r in self.layers)

    @property
    def train_step(self) -> int:
        """Forward + backward (the optimiser update is negligible)."""
        return self.forward + self.backward

    @property
    def forward_per_sample(self) -> float:
        return self.forward / self.batch

    @property
    def train_step_per_sample(self) -> float:
        return self.train_step / self.batch

    def distinct_shapes(self):
        """Distinct conv calls (same kind, shapes, stride, padding, grad need) with counts,
        in order of first appearance: list of (ConvRecord, count)."""
        seen = {}
        for r in self.layers:
            key = r.shape_key()
            if key in seen:
                seen[key][1] += 1
            else:
                seen[key] = [r, 1]
        return [tuple(v) for v in seen.values()]

    def as_dict(self):
        return {
            "input_shape": list(self.input_shape),
            "forward_flops": self.forward,
            "backward_flops": self.backward,
            "train_step_flops": self.train_step,
            "forward_flops_per_sample": self.forward_per_sample,
            "train_step_flops_per_sample": self.train_step_per_sample,
            "conv_calls": len(self.layers),
        }


def _conv_flops(kind, weight_shape, input_shape, output_shape, groups):
    k = math.prod(weight_shape[2:])
    if kind == "conv3d":
        cout, cin_per_group = weight_shape[0], weight_shape[1]
        return 2 * cin_per_group * cout * k * math.prod(output_shape[2:]) * output_shape[0]
    cin, cout_per_group = weight_shape[0], weight_shape[1]
    return 2 * cin * cout_per_group * k * math.prod(input_shape[2:]) * input_shape[0]


def count_flops(model: nn.Module, input_shape, dtype=torch.float32, use_meta=True) -> FlopReport:
    """FLOPs of every ``nn.Conv3d`` / ``nn.ConvTranspose3d`` call of ``model(x)`` with
    ``x`` of ``input_shape`` (N, C, D, H, W); see the module docstring for the convention.

    By default a copy of the model runs on the ``meta`` device (shapes only, no compute,
    the model itself is untouched); ``use_meta=False`` (or a failure on meta) runs the
    model itself under ``torch.no_grad`` on zeros, on the device of its parameters, with
    the input-gradient needs taken from the parameters' ``requires_grad`` flags.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if use_meta:
        try:
            return _count(copy.deepcopy(model).to("meta"), input_shape, dtype, torch.device("meta"), grad=True)
        except (NotImplementedError, RuntimeError):
            pass
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    return _count(model, input_shape, dtype, device, grad=False)


def _count(model, input_shape, dtype, device, grad):
    report = FlopReport(input_shape)
    names = {m: n for n, m in model.named_modules()}
    # Without autograd, "does this conv's input need a gradient" = does any parameter
    # run before it (all convs but the ones fed directly by the data).
    state = {"upstream_params": False}

    def hook(mod, inputs, output):
        x = inputs[0]
        kind = "conv3d" if isinstance(mod, nn.Conv3d) else "conv_transpose3d"
        needs = bool(x.requires_grad) if grad else state["upstream_params"]
        report.layers.append(ConvRecord(
            name=names.get(mod, "?"), kind=kind, input_shape=tuple(x.shape), output_shape=tuple(output.shape),
            weight_shape=tuple(mod.weight.shape), stride=tuple(mod.stride), padding=tuple(mod.padding),
            groups=mod.groups, bias=mod.bias is not None, input_requires_grad=needs,
            forward_flops=_conv_flops(kind, tuple(mod.weight.shape), tuple(x.shape), tuple(output.shape),
                                      mod.groups)))
        if any(p.requires_grad for p in mod.parameters()):
            state["upstream_params"] = True

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        x = torch.zeros(input_shape, dtype=dtype, device=device)
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return report
