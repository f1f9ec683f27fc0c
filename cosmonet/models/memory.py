"""Memory a network needs, estimated before it is built (bytes; float32 weights).

A network that cannot fit is refused with the estimate and the available memory instead
of growing until the kernel kills it (``train --set model.base_channels=1024`` used to end
with exit 137). The estimate runs the model on PyTorch's ``meta`` device: shapes only, no
data, no memory, so a network of 30 billion parameters is estimated in a fraction of a
second. It is built there from its registry name and arguments (:func:`meta_model`), its
parameters are counted exactly, and one training step (forward, loss, backward) or one
inference pass is replayed under :class:`LiveBytes`, which adds the bytes of every tensor
an operation creates and subtracts them when the tensor is freed: its peak is the largest
sum of live tensors (activations kept for the backward pass, gradients, temporaries).

Training (:func:`training_bytes`), per process:
``weights + optimiser state + peak of one step + workspace + the input and target batch``,
with the weights 4 B per parameter, Adam's two moments 8 B (SGD's momentum 4 B), a
data-parallel run's gradient buckets 4 B more; the step's peak includes the gradients
(4 B); the workspace is the column buffer of the first convolution's backward on a CPU
(:func:`first_conv_workspace`, measured).
Inference (:func:`inference_bytes`): ``weights + peak of one forward pass under no_grad +
its input``. Neither includes the interpreter and libraries (``cosmonet.resources.BASE``).

Measured against the growth of the peak resident size of real CPU passes (fp32, one thread,
U-Net of depth 2 on one box; docs/training.md section 2), measured / estimated: training
0.94-1.0 (base channels 4, 8, 16 on 96^3, 64^3, 48^3), inference 0.82-0.91 (8 on 96^3,
16 on 64^3); ``tests/test_hostile_resources.py`` requires a factor 1.5 either way.
"""
from __future__ import annotations

import contextlib
import copy
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FLOAT = 4
#: optimiser state per parameter, bytes
OPTIMIZER_STATE = {"adam": 2 * FLOAT, "sgd": FLOAT}


class LiveBytes(TorchDispatchMode):
    """Dispatch mode that tracks the bytes of the tensors created inside it: ``live`` now,
    ``peak`` the largest so far. A view or an in-place result adds nothing (it shares its
    input's storage); a tensor's bytes are released when it is garbage-collected."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, n)
        return out

    def _release(self, n):
        self.live -= n


@contextlib.contextmanager
def _meta_autocast():
    """``torch.autocast("meta", ...)`` as a no-op while a replay runs: autocast has no meta
    device, and a layer that turns it off around its float32 part (the 2LPT prior's FFTs)
    would otherwise stop the replay. Autocast on other devices is left as it is."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    torch.autocast = autocast
    try:
        yield
    finally:
        torch.autocast = real


def meta_model(name, **kwargs):
    """The registered model ``name`` built on the meta device (no memory); ValueError or
    TypeError as :func:`cosmonet.models.build_model` for bad arguments."""
    from .registry import build_model
    with torch.device("meta"):
        return build_model(name, **kwargs)


def as_meta(model):
    """A meta-device copy of a built model (the model itself is untouched)."""
    return copy.deepcopy(model).to("meta")


def parameter_count(model):
    """Number of parameters (all of them: frozen ones still take memory)."""
    return sum(p.numel() for p in model.parameters())


def _zeros(shape):
    return torch.zeros(tuple(int(s) for s in shape), device="meta")


def step_peak(model, input_shape, target_shape=None, loss=None):
    """Peak live bytes of one training step of a meta ``model`` on a batch of ``input_shape``
    (forward, ``loss(pred, target)`` (default MSE), backward; gradients included)."""
    model.train()
    x = _zeros(input_shape)
    mode = LiveBytes()
    with _meta_autocast(), mode:
        pred = model(x)
        target = _zeros(target_shape if target_shape is not None else pred.shape)
        value = (loss or (lambda p, t: torch.mean((p - t) ** 2)))(pred, target)
        value.backward()
        del pred, target, value
    for p in model.parameters():
        p.grad = None
    return mode.peak


def first_conv_workspace(model, input_shape):
    """Bytes of the column buffer (im2col: input channels x kernel volume x output voxels,
    float32) of the first 3D convolution of ``model`` on ``input_shape``: the CPU backward of
    the convolution fed by the data (3 or 6 channels) builds it, and it is the one term of a
    CPU training step's peak that the live tensors miss (measured: the excess over the live
    sum is 290-330 B per voxel of a 3-channel input, its 3 x 27 x 4 B)."""
    found = []

    def hook(mod, inputs, output):
        if not found:
            found.append(mod.weight.shape[1] * mod.weight[0, 0].numel() * output[0, 0].numel() * output.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    try:
        with _meta_autocast(), torch.no_grad():
            model(_zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return found[0] * FLOAT if found else 0


def forward_peak(model, input_shape, fn=None):
    """Peak live bytes of one inference pass (no_grad, eval mode) of a meta ``model`` on a
    tensor of ``input_shape``: ``model(x)``, or ``fn(x)`` (a method of the model)."""
    was_training = model.training
    model.eval()
    x = _zeros(input_shape)
    mode = LiveBytes()
    try:
        with _meta_autocast(), torch.no_grad(), mode:
            out = (fn or model)(x)
            del out
    finally:
        model.train(was_training)
    return mode.peak


def training_bytes(model, input_shape, target_shape=None, optimizer="adam", data_parallel=False, loss=None):
    """``(total, parts)``: bytes one process needs to train the meta ``model`` on batches of
    ``input_shape`` (batch included), ``parts`` naming each term (see the module docstring)."""
    n = parameter_count(model)
    x = _zeros(input_shape)
    with _meta_autocast(), torch.no_grad():
        y_shape = target_shape if target_shape is not None else model.eval()(x).shape
    model.train()
    parts = {"parameters": n, "weights": n * FLOAT, "optimizer": n * OPTIMIZER_STATE.get(optimizer, 2 * FLOAT),
             "buckets": n * FLOAT if data_parallel else 0,
             "batch": (_numel(input_shape) + _numel(y_shape)) * FLOAT,
             "step": step_peak(model, input_shape, y_shape, loss),
             "workspace": first_conv_workspace(model, input_shape)}
    return sum(v for k, v in parts.items() if k != "parameters"), parts


def inference_bytes(model, input_shape):
    """``(total, parts)``: bytes of one inference pass of the meta ``model`` on ``input_shape``."""
    n = parameter_count(model)
    parts = {"parameters": n, "weights": n * FLOAT, "batch": _numel(input_shape) * FLOAT,
             "forward": forward_peak(model, input_shape)}
    return sum(v for k, v in parts.items() if k != "parameters"), parts


def _numel(shape):
    out = 1
    for s in shape:
        out *= int(s)
    return out
