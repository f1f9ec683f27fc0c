"""Periodic 3D convolution blocks for fields on a periodic simulation box (FLOPs: :mod:`.flops`).

A cosmological simulation box is periodic: it has no edges. Every convolution here
therefore pads its input *circularly* (the voxels beyond the upper face are those of the
lower face) and then runs a plain "valid" convolution, so that a layer commutes with
periodic translations of its input by any multiple of its stride.

Geometry conventions (fine grid of n voxels, coarse grid of n/2 voxels):

* ``PeriodicConv3d(kernel k, stride s)`` pads k - s voxels in total per axis,
  ``(k - s) // 2`` before and the rest after, so the output has exactly n / s voxels per
  axis (n must be divisible by s). kernel 3, stride 1 -> pad (1, 1); kernel 1 -> no pad;
  kernel 4, stride 2 -> pad (1, 1); kernel 3, stride 2 -> pad (0, 1).
* Downsampling uses kernel 4, stride 2 by default: coarse voxel i sees the fine voxels
  2i-1 .. 2i+2, a stencil centred on 2i + 1/2, i.e. on the centre of the fine pair
  (2i, 2i+1) it replaces -- the same placement as 2x2x2 average pooling, with one more
  voxel of context on each side. (kernel 3, stride 2 is available: cheaper, 27 instead
  of 64 taps, but its stencil 2i .. 2i+2 is centred half a fine voxel off that pair.)
* Upsampling uses ``ConvTranspose3d(kernel 2, stride 2)`` by default: coarse voxel i
  writes the fine pair (2i, 2i+1) and nothing else, so the output is exactly 2n with no
  padding or cropping and no overlap between neighbouring coarse voxels. kernel 4 is
  also available: coarse voxel i writes fine voxels 2i-1 .. 2i+2 (overlapping
  neighbours, smoother, 8x the FLOPs); it is made periodic by padding the input
  circularly by one coarse voxel and cropping 3 fine voxels from each side of the
  transposed-convolution output, which adds exactly the contributions that wrap around
  the box. Both kernels are centred on 2i + 1/2, consistent with the kernel-4 downsampling.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("batch", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu", "none")
LEAKY_RELU_SLOPE = 0.01
DEFAULT_GROUPS = 8


# --------------------------------------------------------------------------- helpers
def _triple(v):
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return v


def _memory_format(x):
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _pad_forward(x, before, after):
    """Circular padding by copies into one new tensor (keeps channels_last_3d layout)."""
    shape = list(x.shape)
    padded = shape[:2] + [n + before + after for n in shape[2:]]
    out = torch.empty(padded, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    nd, nh, nw = shape[2:]
    out[:, :, before:before + nd, before:before + nh, before:before + nw] = x
    # Axis by axis (W, H, D), each time over the full extent of the other axes: the
    # slabs copied for one axis are completed (corners included) by the later ones.
    for dim, n in ((4, nw), (3, nh), (2, nd)):
        if before:
            out.narrow(dim, 0, before).copy_(out.narrow(dim, n, before))
        if after:
            out.narrow(dim, before + n, after).copy_(out.narrow(dim, before, after))
    return out


def _fold_forward(g, before, after):
    """Adjoint of the circular padding: add the padded slabs back onto the box."""
    for dim in (2, 3, 4):
        n = g.shape[dim] - before - after
        core = g.narrow(dim, before, n).clone(memory_format=_memory_format(g))
        if before:
            core.narrow(dim, n - before, before).add_(g.narrow(dim, 0, before))
        if after:
            core.narrow(dim, 0, after).add_(g.narrow(dim, before + n, after))
        g = core
    return g


class _PeriodicPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, before, after):
        ctx.pads = (before, after)
        return _pad_forward(x, before, after)

    @staticmethod
    def backward(ctx, g):
        return _PeriodicFold.apply(g, *ctx.pads), None, None


class _PeriodicFold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, before, after):
        ctx.pads = (before, after)
        return _fold_forward(g, before, after)

    @staticmethod
    def backward(ctx, g):
        return _PeriodicPad.apply(g, *ctx.pads), None, None


def periodic_pad(x: torch.Tensor, pad) -> torch.Tensor:
    """Pad the last three axes of ``x`` (N, C, D, H, W) circularly (periodic boundary).

    ``pad`` is an int (same before and after on every axis) or a pair (before, after)
    used on every axis. The padding may not exceed the axis length (no double wrap).
    Same result as ``F.pad(x, (before, after) * 3, mode="circular")``, but the backward
    pass folds the gradient of the padded slabs back in one pass per axis instead of
    the zero-filled full-size buffers of the generic slicing backward (several times
    cheaper), and a ``channels_last_3d`` input keeps its layout.
    """
    before, after = (pad, pad) if isinstance(pad, int) else (int(pad[0]), int(pad[1]))
    if before == 0 and after == 0:
        return x
    if before < 0 or after < 0:
        raise ValueError(f"periodic padding must be >= 0 (got ({before}, {after}))")
    if x.dim() != 5:
        raise ValueError(f"periodic_pad expects a 5D tensor (N, C, D, H, W), got shape {tuple(x.shape)}")
    if max(before, after) > min(x.shape[2:]):
        raise ValueError(f"periodic padding ({before}, {after}) is larger than the box {tuple(x.shape[2:])}")
    if x.device.type == "meta":
        return F.pad(x, (before, after) * 3, mode="circular")
    return _PeriodicPad.apply(x, before, after)


def group_count(channels: int, target: int = DEFAULT_GROUPS) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor <= ``target``."""
    return math.gcd(channels, target) if target > 0 else 1


def make_norm(kind: str, channels: int, num_groups: int | None = None) -> nn.Module:
    """``"batch"`` -> BatchNorm3d, ``"group"`` -> GroupNorm (``group_count`` groups unless
    ``num_groups``), ``"none"`` -> Identity."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        g = num_groups if num_groups is not None else group_count(channels)
        if channels % g:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible into {g} groups")
        return nn.GroupNorm(g, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def make_activation(kind: str) -> nn.Module:
    """``"relu"``, ``"leaky_relu"`` (slope 0.01) or ``"none"``."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


# --------------------------------------------------------------------------- convolutions
class PeriodicConv3d(nn.Module):
    """3D convolution on a periodic box: circular padding, then a valid ``nn.Conv3d``.

    The output has exactly ``n // stride`` voxels per axis for an input of ``n`` (``n``
    divisible by ``stride``). The torch convolution is ``self.conv`` (padding 0).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, bias=True):
        super().__init__()
        k, s = int(kernel_size), int(stride)
        if k < 1 or s < 1:
            raise ValueError(f"kernel_size and stride must be >= 1 (got {k}, {s})")
        if k < s:
            raise ValueError(f"kernel_size {k} < stride {s} would skip voxels")
        self.kernel_size, self.stride = k, s
        total = k - s
        self.pad = (total // 2, total - total // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, k, stride=s, padding=0, bias=bias)

    def forward(self, x):
        if self.stride > 1 and any(n % self.stride for n in x.shape[2:]):
            raise ValueError(f"PeriodicConv3d(stride={self.stride}): box {tuple(x.shape[2:])} "
                             f"is not divisible by the stride")
        return self.conv(periodic_pad(x, self.pad))

    def extra_repr(self):
        return f"periodic_pad={self.pad}"


class PeriodicConvTranspose3d(nn.Module):
    """Exact 2x periodic upsampling by a transposed convolution (stride 2).

    ``kernel_size=2``: plain ``nn.ConvTranspose3d(k=2, s=2)``; coarse voxel i fills fine
    voxels 2i, 2i+1; no padding needed. ``kernel_size=4``: coarse voxel i spreads over
    fine voxels 2i-1 .. 2i+2; the input is padded circularly by 1 and 3 voxels are
    cropped from each side of the output (``padding=3`` of ``nn.ConvTranspose3d``),
    which equals a transposed convolution whose overflow wraps around the box.
    """

    def __init__(self, in_channels, out_channels, kernel_size=2, bias=True):
        super().__init__()
        k = int(kernel_size)
        if k not in (2, 4):
            raise ValueError(f"upsampling kernel must be 2 or 4 (got {k})")
        self.kernel_size = k
        self.in_pad = 0 if k == 2 else 1
        crop = 0 if k == 2 else 3
        self.conv = nn.ConvTranspose3d(in_channels, out_channels, k, stride=2, padding=crop, bias=bias)

    def forward(self, x):
        return self.conv(periodic_pad(x, self.in_pad))

    def extra_repr(self):
        return f"periodic_in_pad={self.in_pad}"


# --------------------------------------------------------------------------- blocks
class ConvBlock(nn.Sequential):
    """Periodic conv3d + normalisation + activation.

    ``ConvBlock(in_ch, out_ch, kernel=3, stride=1, norm="batch"|"group"|"none",
    act="relu"|"leaky_relu"|"none")``. The convolution has a bias only when there is no
    normalisation (a bias before BatchNorm/GroupNorm is cancelled by it). With
    ``stride=2`` (kernel 4 or 3) it is the downsampling block: 32^3 -> 16^3 exactly.
    """

    def __init__(self, in_channels, out_channels, kernel=3, stride=1, norm="batch", act="relu",
                 num_groups=None):
        _check_choice("norm", norm, NORMS)
        _check_choice("activation", act, ACTIVATIONS)
        super().__init__(
            PeriodicConv3d(in_channels, out_channels, kernel, stride, bias=(norm == "none")),
            make_norm(norm, out_channels, num_groups),
            make_activation(act),
        )


class DownBlock(ConvBlock):
    """Stride-2 periodic downsampling ``ConvBlock`` (kernel 4 or 3): n -> n/2 per axis."""

    def __init__(self, in_channels, out_channels, kernel=4, norm="batch", act="relu", num_groups=None):
        if kernel not in (3, 4):
            raise ValueError(f"downsampling kernel must be 3 or 4 (got {kernel})")
        super().__init__(in_channels, out_channels, kernel, 2, norm, act, num_groups)


class UpBlock(nn.Sequential):
    """Periodic transposed convolution (x2 per axis) + normalisation + activation."""

    def __init__(self, in_channels, out_channels, kernel=2, norm="batch", act="relu", num_groups=None):
        _check_choice("norm", norm, NORMS)
        _check_choice("activation", act, ACTIVATIONS)
        super().__init__(
            PeriodicConvTranspose3d(in_channels, out_channels, kernel, bias=(norm == "none")),
            make_norm(norm, out_channels, num_groups),
            make_activation(act),
        )


class DoubleConv(nn.Sequential):
    """Two 3^3 periodic ``ConvBlock``s: in -> out -> out channels (one U-Net level)."""

    def __init__(self, in_channels, out_channels, norm="batch", act="relu", num_groups=None):
        super().__init__(
            ConvBlock(in_channels, out_channels, 3, 1, norm, act, num_groups),
            ConvBlock(out_channels, out_channels, 3, 1, norm, act, num_groups),
        )
