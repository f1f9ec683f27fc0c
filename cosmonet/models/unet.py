"""The D3M U-Net (He et al., PNAS 2019): ZA displacement field -> FastPM displacement field.

Architecture for ``UNet(in_channels=3, out_channels=3, base_channels=C, depth=2)`` on an
n^3 box (every convolution periodic, see ``layers``; every block = conv + BN + ReLU
except the output convolution)::

    level 0  n^3      enc0: 3^3 conv 3 -> C,   3^3 conv C -> C ........ skip0 ..
             down1:   4^3 conv stride 2, C -> 2C                                  :
    level 1  (n/2)^3  enc1: 3^3 conv 2C -> 2C, 3^3 conv 2C -> 2C .... skip1 ..   :
             down2:   4^3 conv stride 2, 2C -> 4C                            :   :
    level 2  (n/4)^3  enc2: 3^3 conv 4C -> 4C, 3^3 conv 4C -> 4C             :   :
             up2:     2^3 transposed conv stride 2, 4C -> 2C                 :   :
    level 1  (n/2)^3  dec1: concat(skip1, up2) 4C -> 3^3 conv -> 2C, 3^3 conv 2C -> 2C
             up1:     2^3 transposed conv stride 2, 2C -> C                      :
    level 0  n^3      dec0: concat(skip0, up1) 2C -> 3^3 conv -> C,  3^3 conv C -> C
             head:    1^3 conv C -> out_channels (with bias, no norm/activation)
             output = head + input                      (residual=True)

i.e. 15 convolution layers for depth 2 (C = 64: 64 -> 128 -> 256 channels). With
``residual=True`` the input is added to the output (D3M's "variant of residual net"): the
network learns the correction to the Zel'dovich approximation, and a zero head gives the
identity. Box sizes must be divisible by 2**depth (any such size: 32^3 in training,
larger boxes at inference; non-cubic boxes work too). Because every layer is periodic,
the network commutes with periodic translations by multiples of 2**depth voxels.

Zero anchor (``zero_anchor=True``, off by default; on in ``configs/d3m_gpu.yaml``): a
zero input must give a zero displacement (a uniform lattice does not move, and the 48
cube symmetries forbid any constant or 2**depth-periodic output), but biases and the
normalisation shifts make the plain network answer 0 with a constant field, and its
stride-2 transposed convolutions with a 2**depth-periodic "checkerboard". With the
anchor the network returns ``f(x) - f0`` where ``f0`` is the plain network's answer to a
zero input, computed on one (2**(depth+1))^3 box (2**depth when the input's sides are
not multiples of it) with BatchNorm in evaluation mode (its
running statistics, not updated by this pass) and tiled periodically over the input
box; for a zero input every layer's output is 2**depth-periodic, so in evaluation mode
``f(0) - f0 = 0`` up to float rounding, for an untrained and a trained network alike.
Cost: one forward and backward of an 8^3 box per step at depth 2 (1/64 of a 32^3
sample). The parameters are those of the plain network (a checkpoint of one loads
into the other); only the signature differs.

2LPT prior (``lpt2_prior=C``, 0 = off; ``model.lpt2_prior: auto`` in a training config
fills C from the campaign, :func:`cosmonet.models.lpt_prior.lpt2_coefficient`): from its
ZA input ``u`` the network computes the second-order displacement ``u + u_2``
(:mod:`cosmonet.models.lpt_prior`, a few FFTs), reads both fields (2 x in_channels
input channels to the first convolution) and, with ``residual``, adds ``u + u_2`` instead
of ``u`` to its output: it learns the correction to 2LPT, and a rescaled, rotated or
phase-shifted input gets its own exact 2LPT term. Its interface stays ZA in, displacement
out. The prior is spectral, so it needs the whole periodic box: tiled emulation computes
it on the whole box first (:meth:`UNet.features`, :meth:`UNet.from_features`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import ACTIVATIONS, NORMS, DoubleConv, DownBlock, PeriodicConv3d, UpBlock
from .registry import register_model


@register_model("unet")
class UNet(nn.Module):
    """Periodic 3D U-Net; see the module docstring.

    Arguments: ``in_channels``, ``out_channels`` (equal when ``residual``);
    ``base_channels`` (channels of level 0, doubled at every level); ``depth`` (number of
    stride-2 downsamplings); ``norm`` ("batch", "group" or "none"); ``residual`` (add
    the input to the output); ``act`` ("relu" or "leaky_relu"); ``down_kernel`` (4 or
    3, stride-2 conv); ``up_kernel`` (2 or 4, stride-2 transposed conv); ``zero_anchor``
    (subtract the answer to a zero input, so that f(0) = 0; see the module docstring);
    ``lpt2_prior`` (the coefficient C of :mod:`.lpt_prior`; 0: off; needs in_channels 3).
    """

    def __init__(self, in_channels=3, out_channels=3, base_channels=64, depth=2, norm="batch",
                 residual=True, act="relu", down_kernel=4, up_kernel=2, zero_anchor=False, lpt2_prior=0.0):
        super().__init__()
        for name, v, lo in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                            ("base_channels", base_channels, 1), ("depth", depth, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"UNet: {name} must be an integer >= {lo} (got {v!r})")
        if norm not in NORMS:
            raise ValueError(f"UNet: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if act not in ACTIVATIONS[:2]:
            raise ValueError(f"UNet: unknown act {act!r}; choose one of {', '.join(ACTIVATIONS[:2])}")
        if down_kernel not in (3, 4):
            raise ValueError(f"UNet: down_kernel must be 3 or 4 (got {down_kernel!r})")
        if up_kernel not in (2, 4):
            raise ValueError(f"UNet: up_kernel must be 2 or 4 (got {up_kernel!r})")
        if isinstance(lpt2_prior, bool) or not isinstance(lpt2_prior, (int, float)) or lpt2_prior != lpt2_prior \
                or abs(lpt2_prior) == float("inf"):
            raise ValueError(f"UNet: lpt2_prior must be a finite number, the 2LPT coefficient (got {lpt2_prior!r})")
        lpt2_prior = float(lpt2_prior)
        if lpt2_prior and in_channels != 3:
            raise ValueError(f"UNet: lpt2_prior needs a 3-component ZA displacement input (in_channels 3, "
                             f"got {in_channels})")
        residual = bool(residual)
        if residual and in_channels != out_channels:
            raise ValueError(f"UNet: residual=True adds the input to the output, so in_channels "
                             f"({in_channels}) must equal out_channels ({out_channels})")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           depth=depth, norm=norm, residual=residual, act=act, down_kernel=down_kernel,
                           up_kernel=up_kernel, zero_anchor=bool(zero_anchor), lpt2_prior=lpt2_prior)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lpt2_prior = lpt2_prior
        self.feature_channels = 2 * in_channels if lpt2_prior else in_channels
        self.depth, self.residual, self.zero_anchor = depth, residual, bool(zero_anchor)
        ch = [base_channels * 2 ** level for level in range(depth + 1)]
        self.channels = ch
        kw = dict(norm=norm, act=act)

        self.enc = nn.ModuleList([DoubleConv(self.feature_channels, ch[0], **kw)])
        self.down = nn.ModuleList()
        for level in range(1, depth + 1):
            self.down.append(DownBlock(ch[level - 1], ch[level], kernel=down_kernel, **kw))
            self.enc.append(DoubleConv(ch[level], ch[level], **kw))
        # up[l] / dec[l] bring level l+1 back to level l (applied for l = depth-1 .. 0).
        self.up = nn.ModuleList([UpBlock(ch[level + 1], ch[level], kernel=up_kernel, **kw)
                                 for level in range(depth)])
        self.dec = nn.ModuleList([DoubleConv(2 * ch[level], ch[level], **kw) for level in range(depth)])
        self.head = PeriodicConv3d(ch[0], out_channels, kernel_size=1, bias=True)

    @property
    def size_multiple(self) -> int:
        """Box sizes must be multiples of this (2**depth)."""
        return 2 ** self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` is (N, in_channels, D, H, W) with D, H, W multiples of 2**depth."""
        if x.dim() != 5:
            raise ValueError(f"UNet expects a 5D input (batch, channels, n, n, n), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        m = self.size_multiple
        if any(n % m or n == 0 for n in x.shape[2:]):
            raise ValueError(f"UNet(depth={self.depth}) needs every box side to be a positive multiple of "
                             f"2**depth = {m}; got box {tuple(x.shape[2:])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.from_features(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the convolutions read: ``x``, or with the 2LPT prior ``cat(x, x + u_2(x))``
        (computed over the whole periodic box ``x``, float32)."""
        if not self.lpt2_prior:
            return x
        from .lpt_prior import second_order_displacement
        lpt2 = x.float() + second_order_displacement(x, self.lpt2_prior)
        return torch.cat([x, lpt2.to(x.dtype)], dim=1)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        """The output for features ``f`` (:meth:`features`); local, so it can run on tiles."""
        out = self._body(f)
        if self.zero_anchor:
            out = out - self.zero_response(f)
        if self.residual:
            out = out + f[:, -self.in_channels:]       # x, or its 2LPT displacement with the prior
        return out

    def zero_response(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network's output (without the residual) for zero features shaped like
        ``x``: computed on one (2**(depth+1))^3 box, BatchNorm in eval mode, tiled over x's box."""
        m = self.size_multiple
        if all(n % (2 * m) == 0 for n in x.shape[2:]):
            m *= 2          # (2 m)^3: more than one voxel per channel at the coarsest level (GroupNorm)
        z = torch.zeros((1, x.shape[1], m, m, m), dtype=x.dtype, device=x.device)
        norms = [mod for mod in self.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training]
        for mod in norms:
            mod.eval()
        try:
            f0 = self._body(z)
        finally:
            for mod in norms:
                mod.train()
        return f0.repeat(1, 1, *(n // m for n in x.shape[2:]))

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder, decoder and head (no residual, no anchor)."""
        h = self.enc[0](x)
        skips = []
        for level in range(self.depth):
            skips.append(h)
            h = self.enc[level + 1](self.down[level](h))
        for level in reversed(range(self.depth)):
            h = self.up[level](h)
            h = self.dec[level](torch.cat([skips[level], h], dim=1))
        return self.head(h)
