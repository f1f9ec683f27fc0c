"""``paramnet``: the 3D conv-net of Ravanbakhsh et al. (ICML 2016) that reads cosmological
parameters off a dark-matter density sub-cube.

For an s^3 input (s divisible by 16; 32 by default) with channels C = (c1, ..., c6)::

    conv1  3^3, 1 -> c1,  BN, leaky ReLU, 2^3 average pool       s/2
    conv2  3^3, c1 -> c2, BN, leaky ReLU, 2^3 average pool       s/4
    conv3  3^3, c2 -> c3, BN, leaky ReLU                         s/4
    conv4  4^3 stride 2, c3 -> c4, BN, leaky ReLU                s/8
    conv5  3^3, c4 -> c5, BN, leaky ReLU                         s/8
    conv6  4^3 stride 2, c5 -> c6, BN, leaky ReLU                s/16
    flatten c6 (s/16)^3 -> fc1 -> leaky ReLU -> fc2 -> leaky ReLU -> fc3 -> outputs

Sub-cubes are not periodic, so convolutions pad with zeros. The outputs are the P
parameters scaled to the unit interval (see :mod:`cosmonet.data.subcubes`) and, with
``uncertainty=True``, P more: the log-variance of each, trained with the Gaussian negative
log-likelihood  0.5 [log sigma^2 + (y - mu)^2 / sigma^2]  instead of the mean squared error.

The plain NLL lets the network buy a low loss with a large sigma where the mean is hard
to learn: on a 96-box version of the small configuration its Omega_m mean was no better
than the training mean (rmse 0.055 against 0.051); MSE training reached 0.046, beta = 1
below 0.047. ``nll_beta`` = beta
weights each term by sigma^(2 beta), held constant in the gradient (the beta-NLL of
Seitzer et al., ICLR 2022): beta = 1 gives the mean the gradient of the MSE while sigma^2
still converges to the expected squared error; beta = 0 is the plain NLL.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model

LOG_VAR_RANGE = (-16.0, 4.0)     # clamp on log sigma^2 (unit-range parameters): sigma in [3e-4, 7]


def _block(cin, cout, kernel, stride, slope):
    pad = (kernel - stride) // 2 if stride > 1 else kernel // 2
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad, bias=False),
                         nn.BatchNorm3d(cout), nn.LeakyReLU(slope))


@register_model("paramnet")
class ParamNet(nn.Module):
    """Conv-net regression of cosmological parameters; see the module docstring.

    Arguments: ``input_size`` (s, cells per side, divisible by 16); ``n_params`` (P);
    ``channels`` (six convolution widths); ``hidden`` (two fully connected widths);
    ``uncertainty`` (also predict log sigma^2 and train with the Gaussian NLL);
    ``slope`` (leaky ReLU negative slope); ``dropout`` (before each hidden FC layer);
    ``nll_beta`` (the beta of the beta-NLL, see the module docstring).
    """

    def __init__(self, input_size=32, n_params=2, channels=(16, 32, 64, 64, 128, 128), hidden=(256, 64),
                 uncertainty=False, slope=0.01, dropout=0.0, nll_beta=1.0):
        super().__init__()
        if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 16 or input_size % 16:
            raise ValueError(f"ParamNet: input_size must be a multiple of 16 (got {input_size!r})")
        if not isinstance(n_params, int) or n_params < 1:
            raise ValueError(f"ParamNet: n_params must be an integer >= 1 (got {n_params!r})")
        channels, hidden = list(channels), list(hidden)
        if len(channels) != 6 or not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ValueError(f"ParamNet: channels must be six positive integers (got {channels!r})")
        if len(hidden) != 2 or not all(isinstance(c, int) and c >= 1 for c in hidden):
            raise ValueError(f"ParamNet: hidden must be two positive integers (got {hidden!r})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"ParamNet: dropout must be in [0, 1) (got {dropout!r})")
        if not 0.0 <= float(nll_beta) <= 1.0:
            raise ValueError(f"ParamNet: nll_beta must be in [0, 1] (got {nll_beta!r})")
        self.config = dict(input_size=input_size, n_params=n_params, channels=channels, hidden=hidden,
                           uncertainty=bool(uncertainty), slope=float(slope), dropout=float(dropout),
                           nll_beta=float(nll_beta))
        self.nll_beta = float(nll_beta)
        self.n_params, self.uncertainty = n_params, bool(uncertainty)
        c = [1] + channels
        self.features = nn.Sequential(
            _block(c[0], c[1], 3, 1, slope), nn.AvgPool3d(2),
            _block(c[1], c[2], 3, 1, slope), nn.AvgPool3d(2),
            _block(c[2], c[3], 3, 1, slope),
            _block(c[3], c[4], 4, 2, slope),
            _block(c[4], c[5], 3, 1, slope),
            _block(c[5], c[6], 4, 2, slope),
        )
        flat = c[6] * (input_size // 16) ** 3
        n_out = n_params * (2 if uncertainty else 1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden[0]), nn.LeakyReLU(slope),
            nn.Dropout(dropout), nn.Linear(hidden[0], hidden[1]), nn.LeakyReLU(slope),
            nn.Linear(hidden[1], n_out),
        )
        self.input_size = input_size

    def forward(self, x):
        if x.shape[-3:] != (self.input_size,) * 3:
            raise ValueError(f"ParamNet built for {self.input_size}^3 sub-cubes got input {tuple(x.shape)}")
        return self.head(self.features(x))

    def split(self, out):
        """(mean (B, P), sigma (B, P) or None) in unit-range parameters from the raw output."""
        mu = out[:, :self.n_params]
        if not self.uncertainty:
            return mu, None
        log_var = out[:, self.n_params:].clamp(*LOG_VAR_RANGE)
        return mu, torch.exp(0.5 * log_var)

    def loss(self, out, target):
        """Mean squared error, or with ``uncertainty`` the (beta-weighted) Gaussian negative
        log-likelihood."""
        mu = out[:, :self.n_params]
        if not self.uncertainty:
            return torch.mean((mu - target) ** 2)
        log_var = out[:, self.n_params:].clamp(*LOG_VAR_RANGE)
        nll = 0.5 * (log_var + (target - mu) ** 2 * torch.exp(-log_var))
        if self.nll_beta > 0:
            nll = nll * torch.exp(self.nll_beta * log_var).detach()
        return torch.mean(nll)
