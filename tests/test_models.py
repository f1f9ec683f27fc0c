"""Tests of cosmonet.models: periodic layers, the D3M U-Net, the registry and FLOP counting."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cosmonet.models import (UNet, build_from_signature, build_model, check_signature, count_flops,
                             count_parameters, model_signature, periodic_pad, register_model)
from cosmonet.models import registry
from cosmonet.models.layers import (ConvBlock, DownBlock, PeriodicConv3d, PeriodicConvTranspose3d, UpBlock)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return UNet(**kw)


def settle_batchnorm(model, x, passes=2):
    """Give BatchNorm running statistics that resemble the data (like a trained net)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    model.eval()


# --------------------------------------------------------------------------- layers
def tiled_reference_conv(x, weight, stride, pad_before):
    """Periodic convolution computed on a 3x3x3 tiling of the box (no circular padding)."""
    n = x.shape[2]
    big = x.repeat(1, 1, 3, 3, 3)
    k = weight.shape[2]
    start = n - pad_before
    big = big[:, :, start:start + n + k - stride, start:start + n + k - stride, start:start + n + k - stride]
    return F.conv3d(big, weight, stride=stride)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (1, 1), (4, 2), (3, 2)])
def test_periodic_conv_matches_tiled_box(kernel, stride):
    torch.manual_seed(1)
    conv = PeriodicConv3d(2, 3, kernel, stride, bias=False).double()
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (2, 3, 8 // stride, 8 // stride, 8 // stride)
    ref = tiled_reference_conv(x, conv.conv.weight, stride, conv.pad[0])
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


def test_downsampling_halves_exactly():
    block = DownBlock(4, 8, kernel=4)
    assert block(torch.randn(1, 4, 32, 32, 32)).shape == (1, 8, 16, 16, 16)
    block3 = DownBlock(4, 8, kernel=3)
    assert block3(torch.randn(1, 4, 32, 32, 32)).shape == (1, 8, 16, 16, 16)
    with pytest.raises(ValueError, match="kernel"):
        DownBlock(4, 8, kernel=5)
    with pytest.raises(ValueError, match="divisible"):
        block(torch.randn(1, 4, 31, 32, 32))


@pytest.mark.parametrize("kernel", [2, 4])
def test_periodic_transposed_conv_wraps_around(kernel):
    torch.manual_seed(2)
    up = PeriodicConvTranspose3d(3, 2, kernel, bias=False).double()
    n = 4
    x = torch.randn(1, 3, n, n, n, dtype=torch.float64)
    y = up(x)
    assert y.shape == (1, 2, 2 * n, 2 * n, 2 * n)
    # Reference: the non-periodic transposed conv (length 2(n-1) + k), whose overflow is
    # added back modulo 2n; coarse voxel i writes fine voxels 2i - (k-2)/2 .. .
    full = F.conv_transpose3d(x, up.conv.weight, stride=2)
    offset = (kernel - 2) // 2
    ref = torch.zeros_like(y)
    idx = [(q - offset) % (2 * n) for q in range(full.shape[2])]
    for a, ia in enumerate(idx):
        for b, ib in enumerate(idx):
            for c, ic in enumerate(idx):
                ref[:, :, ia, ib, ic] += full[:, :, a, b, c]
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


def test_upsampling_blocks_double_exactly():
    for k in (2, 4):
        assert UpBlock(8, 4, kernel=k)(torch.randn(2, 8, 4, 4, 4)).shape == (2, 4, 8, 8, 8)
    with pytest.raises(ValueError, match="2 or 4"):
        UpBlock(8, 4, kernel=3)


def test_periodic_pad_matches_torch_circular_and_its_gradient():
    torch.manual_seed(3)
    for pad in (1, (0, 1), (1, 2)):
        x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
        b, a = (pad, pad) if isinstance(pad, int) else pad
        ours = periodic_pad(x, pad)
        ref = F.pad(x, (b, a) * 3, mode="circular")
        assert torch.equal(ours, ref)
        g = torch.randn_like(ref)
        (g_ours,) = torch.autograd.grad(ours, x, g)
        (g_ref,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    x = torch.randn(1, 2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: periodic_pad(t, (1, 2)), (x,))
    # channels_last_3d stays channels_last_3d
    xc = torch.randn(1, 4, 4, 4, 4).to(memory_format=torch.channels_last_3d)
    assert periodic_pad(xc, 1).is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="larger than the box"):
        periodic_pad(torch.randn(1, 1, 2, 2, 2), 3)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_conv_block_options(norm, act):
    block = ConvBlock(4, 8, norm=norm, act=act)
    conv = block[0].conv
    assert (conv.bias is not None) == (norm == "none")  # no bias in front of a normalisation
    x = torch.randn(2, 4, 8, 8, 8)
    y = block(x)
    assert y.shape == (2, 8, 8, 8, 8) and torch.isfinite(y).all()
    if act == "relu":
        assert (y >= 0).all()
    else:
        assert (y < 0).any()
    with pytest.raises(ValueError, match="norm"):
        ConvBlock(4, 8, norm="layer")
    with pytest.raises(ValueError, match="activation"):
        ConvBlock(4, 8, act="gelu")


# --------------------------------------------------------------------------- U-Net
@pytest.mark.parametrize("n", [16, 32, 64])
def test_unet_output_shape(n):
    model = seeded_unet(base_channels=4)
    with torch.no_grad():
        y = model(torch.randn(2, 3, n, n, n))
    assert y.shape == (2, 3, n, n, n)
    assert torch.isfinite(y).all()


def test_unet_channels_and_non_cubic_box():
    model = seeded_unet(in_channels=3, out_channels=3, base_channels=64, depth=2)
    assert model.channels == [64, 128, 256]
    small = seeded_unet(in_channels=1, out_channels=2, base_channels=4, depth=3, residual=False)
    with torch.no_grad():
        assert small(torch.randn(1, 1, 8, 16, 24)).shape == (1, 2, 8, 16, 24)


@pytest.mark.parametrize("n,depth", [(30, 2), (33, 2), (20, 3), (4, 3)])
def test_unet_rejects_sizes_not_divisible(n, depth):
    model = seeded_unet(base_channels=4, depth=depth)
    with pytest.raises(ValueError, match=rf"multiple of 2\*\*depth = {2 ** depth}"):
        model(torch.randn(1, 3, n, n, n))


def test_unet_rejects_bad_input_and_arguments():
    model = seeded_unet(base_channels=4)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="5D"):
        model(torch.randn(3, 16, 16, 16))
    with pytest.raises(ValueError, match="in_channels .* must equal out_channels"):
        UNet(in_channels=3, out_channels=1, residual=True)
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="instance")
    with pytest.raises(ValueError, match="base_channels"):
        UNet(base_channels=0)


def test_residual_with_zero_head_returns_the_input():
    model = seeded_unet(base_channels=4)
    with torch.no_grad():
        model.head.conv.weight.zero_()
        model.head.conv.bias.zero_()
    x = torch.randn(2, 3, 16, 16, 16)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            assert torch.equal(model(x), x)
    plain = seeded_unet(base_channels=4, residual=False)
    with torch.no_grad():
        plain.head.conv.weight.zero_()
        plain.head.conv.bias.zero_()
        assert torch.count_nonzero(plain(x)) == 0
        # and a non-zero head does change the output
        assert not torch.allclose(seeded_unet(base_channels=4)(x), x)


EQUIVARIANCE_CASES = [
    (dict(), 32, [(4, -8, 12), (28, 0, 4)]),
    (dict(norm="group", act="leaky_relu"), 16, [(4, 8, -4)]),
    (dict(norm="none", down_kernel=3, up_kernel=4), 16, [(12, 4, 8)]),
    (dict(depth=3), 32, [(8, -16, 24)]),
]


@pytest.mark.parametrize("kw,n,shifts", EQUIVARIANCE_CASES)
def test_unet_commutes_with_periodic_translations(kw, n, shifts):
    model = seeded_unet(base_channels=8, residual=False, **kw)
    torch.manual_seed(5)
    x = torch.randn(2, 3, n, n, n)
    settle_batchnorm(model, x)
    with torch.no_grad():
        y = model(x)
        scale = y.abs().max().item()
        assert scale > 1e-2  # a non-trivial output
        for s in shifts:
            y_shifted = model(torch.roll(x, s, dims=(2, 3, 4)))
            diff = (y_shifted - torch.roll(y, s, dims=(2, 3, 4))).abs().max().item()
            assert diff <= 1e-5, (s, diff)


def test_translation_check_sees_a_broken_symmetry():
    """Shifts that are not multiples of 2**depth are not symmetries of a strided net:
    the same comparison must then see a difference far above the 1e-5 tolerance."""
    model = seeded_unet(base_channels=8, residual=False)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32, 32)
    settle_batchnorm(model, x)
    with torch.no_grad():
        y = model(x)
        diff = (model(torch.roll(x, 1, dims=2)) - torch.roll(y, 1, dims=2)).abs().max().item()
    assert diff > 1e-3


def test_channels_last_gives_the_same_result():
    model = seeded_unet(base_channels=4, up_kernel=4).eval()
    x = torch.randn(2, 3, 16, 16, 16)
    with torch.no_grad():
        y = model(x)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        y_cl = model_cl(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norm_options_construct_train_and_run(norm):
    model = seeded_unet(base_channels=4, norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {"batch": "BatchNorm3d", "group": "GroupNorm", "none": None}[norm]
    assert expected is None and not kinds & {"BatchNorm3d", "GroupNorm"} or expected in kinds
    x = torch.randn(2, 3, 16, 16, 16)
    loss = model(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_gradients_reach_every_parameter():
    model = seeded_unet(base_channels=4)
    x = torch.randn(2, 3, 16, 16, 16)
    target = torch.randn_like(x)
    F.mse_loss(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_tiny_unet_overfits_two_samples():
    torch.manual_seed(0)
    model = build_model("unet", base_channels=8)
    x = torch.randn(2, 3, 16, 16, 16)
    target = torch.randn(2, 3, 16, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # below the best constant prediction (the target variance, ~1): it memorises noise
    assert losses[-1] < 0.9 * target.var().item(), losses


# --------------------------------------------------------------------------- registry
def test_build_model_unet():
    model = build_model("unet", base_channels=8)
    assert isinstance(model, UNet)
    assert model.channels == [8, 16, 32]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_build_model_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*'unet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad arguments for model 'unet'"):
        build_model("unet", widht=3)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("tiny")
    class Tiny(nn.Module):
        def __init__(self, width=2, scale=1.0):
            super().__init__()
            self.config = dict(width=width, scale=scale)
            self.lin = nn.Linear(width, width)

    assert "tiny" in registry.available_models()
    m = build_model("tiny", width=3)
    assert model_signature(m) == {"name": "tiny", "kwargs": {"width": 3, "scale": 1.0}}
    assert model_signature(Tiny(width=3)) == model_signature(m)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny")(UNet)
    with pytest.raises(ValueError, match=r"known models: 'paramnet', 'tiny', 'unet'"):
        build_model("resnet")


def test_model_signature_round_trip():
    model = build_model("unet", base_channels=8, norm="group")
    sig = model_signature(model)
    assert sig["name"] == "unet"
    assert sig["kwargs"]["base_channels"] == 8 and sig["kwargs"]["norm"] == "group"
    assert sig["kwargs"]["depth"] == 2 and sig["kwargs"]["residual"] is True  # defaults recorded
    stored = json.loads(json.dumps(sig))  # as written into a checkpoint
    rebuilt = build_from_signature(stored)
    assert model_signature(rebuilt) == sig
    rebuilt.load_state_dict(model.state_dict())
    check_signature(stored, rebuilt)
    x = torch.randn(1, 3, 16, 16, 16)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    # a model built directly has the same signature as one from the registry
    assert model_signature(UNet(base_channels=8, norm="group")) == sig


def test_checkpoint_from_another_model_is_detected():
    sig = model_signature(build_model("unet", base_channels=8))
    other = build_model("unet", base_channels=16)
    with pytest.raises(ValueError, match=r"base_channels: 8 vs 16"):
        check_signature(sig, other)
    with pytest.raises(ValueError, match=r"model 'paramnet' vs 'unet'"):
        check_signature({"name": "paramnet", "kwargs": {}}, other)
    with pytest.raises(ValueError, match="not a model signature"):
        check_signature({"weights": 1}, other)
    with pytest.raises(ValueError, match="cannot tell the signature"):
        model_signature(nn.Linear(2, 2))


def unet_parameter_formula(cin, cout, c, depth):
    ch = [c * 2 ** i for i in range(depth + 1)]
    conv = lambda a, b, k: a * b * k ** 3  # noqa: E731  (no bias: followed by BatchNorm)
    bn = lambda a: 2 * a  # noqa: E731
    total = conv(cin, ch[0], 3) + conv(ch[0], ch[0], 3) + 2 * bn(ch[0])
    for i in range(1, depth + 1):
        total += conv(ch[i - 1], ch[i], 4) + bn(ch[i]) + 2 * (conv(ch[i], ch[i], 3) + bn(ch[i]))
    for i in range(depth):
        total += conv(ch[i + 1], ch[i], 2) + bn(ch[i])
        total += conv(2 * ch[i], ch[i], 3) + conv(ch[i], ch[i], 3) + 2 * bn(ch[i])
    return total + ch[0] * cout + cout


@pytest.mark.parametrize("c,depth", [(64, 2), (16, 2), (8, 3)])
def test_count_parameters(c, depth):
    model = UNet(base_channels=c, depth=depth)
    assert count_parameters(model) == unet_parameter_formula(3, 3, c, depth)
    for p in model.head.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == unet_parameter_formula(3, 3, c, depth) - (3 * c + 3)
    assert count_parameters(model, trainable_only=False) == unet_parameter_formula(3, 3, c, depth)


def unet_forward_flops_formula(c, n):
    """Convolution FLOPs per sample of the depth-2 U-Net (down kernel 4, up kernel 2)."""
    v0, v1, v2 = n ** 3, (n // 2) ** 3, (n // 4) ** 3
    f = lambda a, b, k, vox: 2 * a * b * k ** 3 * vox  # noqa: E731
    return (f(3, c, 3, v0) + f(c, c, 3, v0)                                 # enc0
            + f(c, 2 * c, 4, v1) + 2 * f(2 * c, 2 * c, 3, v1)               # down1, enc1
            + f(2 * c, 4 * c, 4, v2) + 2 * f(4 * c, 4 * c, 3, v2)           # down2, enc2
            + f(4 * c, 2 * c, 2, v2) + f(4 * c, 2 * c, 3, v1) + f(2 * c, 2 * c, 3, v1)  # up2 (input voxels), dec1
            + f(2 * c, c, 2, v1) + f(2 * c, c, 3, v0) + f(c, c, 3, v0)      # up1, dec0
            + f(c, 3, 1, v0))                                               # head


@pytest.mark.parametrize("c", [64, 16])
def test_count_flops_matches_the_formula(c):
    model = UNet(base_channels=c)
    report = count_flops(model, (2, 3, 32, 32, 32))
    fwd = unet_forward_flops_formula(c, 32)
    assert report.forward_per_sample == fwd
    assert report.forward == 2 * fwd
    first = 2 * 3 * c * 27 * 32 ** 3  # the first conv needs no input gradient
    assert report.train_step_per_sample == 3 * fwd - first
    assert len(report.layers) == 15
    assert sum(count for _, count in report.distinct_shapes()) == 15
    assert not report.layers[0].input_requires_grad and all(r.input_requires_grad for r in report.layers[1:])
    # the model itself is untouched (counted on a meta copy)
    assert next(model.parameters()).device.type == "cpu"


def test_count_flops_without_meta_agrees():
    model = UNet(base_channels=4, up_kernel=4)
    a = count_flops(model, (1, 3, 16, 16, 16))
    b = count_flops(model, (1, 3, 16, 16, 16), use_meta=False)
    assert a.forward == b.forward and a.backward == b.backward
    assert [r.input_shape for r in a.layers] == [r.input_shape for r in b.layers]
    # the kernel-4 upsampling runs on the padded coarse grid: 2 Cin Cout 4^3 (n/2+2)^3
    up_top = [r for r in a.layers if r.kind == "conv_transpose3d"][-1]
    assert up_top.forward_flops == 2 * 8 * 4 * 64 * 10 ** 3
    assert math.isclose(a.as_dict()["forward_flops_per_sample"], a.forward)
