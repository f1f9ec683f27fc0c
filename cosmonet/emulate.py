"""Apply a trained displacement emulator to a box of any size, by periodic tiles.

The network is fully convolutional with periodic padding, so on a box of the training
size it sees the whole periodic box. On a larger box (256^3 for a network trained on
32^3) the box is cut into cubes of ``tile`` cells; each is extended periodically by
``margin`` cells on every side (wrapping around the big box), passed through the network,
and only its centre is kept. With a margin at least the network's receptive-field radius
the result equals what the network computes on the whole box (tested), while memory stays
that of one tile batch.

That holds only for a network whose every layer is local. A normalisation that takes its
statistics over the input it is given (GroupNorm, InstanceNorm, LayerNorm, or BatchNorm
without running statistics / in training mode) sees the tile instead of the box, so the
tiles differ from the whole box (by up to 3.3 Mpc/h with ``norm: group``): such models
are refused for tiling (:func:`tiling_blockers`). Tiles and margins must also be multiples
of the network's downsampling factor 2**depth (otherwise the stride-2 grid of a tile is
shifted against the box's), and the margin at least the receptive radius.
"""
import numpy as np
import torch

from .errors import InputError
from .train.checkpoint import load_checkpoint


def load_emulator(path, device="cpu"):
    """(model in eval mode, normalisation dict, checkpoint) from a checkpoint file."""
    from .models import build_model
    state = load_checkpoint(path)
    sig = state["model_signature"]
    try:
        model = build_model(sig["name"], **sig.get("kwargs", {}))
        if not isinstance(state["model"], dict):
            raise TypeError(f"its 'model' entry is {type(state['model']).__name__}, not a state dict")
        fault = weights_fault(model, state["model"])
        if fault is None:
            model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"checkpoint {path}: its model cannot be rebuilt ({first})") from None
    if fault is not None:
        raise InputError(f"checkpoint {path}: {fault}")
    if not isinstance(state.get("normalization"), dict):
        raise InputError(f"checkpoint {path}: has no normalisation record")
    check_normalization(path, state["normalization"], sig.get("name"))
    model.to(device).eval()
    return model, state["normalization"], state


def weights_fault(model, weights):
    """None, or what is wrong with the checkpoint's ``weights`` (a state dict) for ``model``:
    data that loading would convert (integer, boolean or complex where the model holds
    floating point; something that is not a tensor) or a NaN or an infinity."""
    from .io.schema import count_nonfinite
    own = model.state_dict()
    for name, value in weights.items():
        if name not in own:
            continue                                   # load_state_dict names unexpected keys
        if not isinstance(value, torch.Tensor):
            return f"weight {name} is {type(value).__name__}, not a tensor"
        if own[name].is_floating_point() and (not value.is_floating_point() or value.is_complex()):
            return f"weight {name} holds {value.dtype} values, expected floating point"
        bad = count_nonfinite(value) if value.is_floating_point() else 0
        if bad:
            return f"weight {name} has {bad} non-finite values (NaN or infinity)"
    return None


def check_normalization(path, norm, model_name=None):
    """InputError unless the normalisation record is usable: ``scale`` a finite number > 0;
    for paramnet ``params`` (names), ``subcube`` (integer >= 2) and ``ranges`` (finite,
    lo < hi, one per parameter)."""
    import math

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if "scale" not in norm:
        raise InputError(f"checkpoint {path}: its normalization record has no scale")
    if not (number(norm["scale"]) and norm["scale"] > 0):
        raise InputError(f"checkpoint {path}: normalization scale is {norm['scale']!r}, expected a finite number > 0")
    if model_name == "paramnet":
        params, size = norm.get("params"), norm.get("subcube")
        if not (isinstance(params, (list, tuple)) and params and all(isinstance(p, str) for p in params)):
            raise InputError(f"checkpoint {path}: normalization params is {params!r}, expected a list of names")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 2):
            raise InputError(f"checkpoint {path}: normalization subcube is {size!r}, expected an integer >= 2")
        missing = [p for p in params if p not in (norm.get("ranges") or {})]
        if missing:
            raise InputError(f"checkpoint {path}: normalization ranges has no range for {missing[0]}")
    ranges = norm.get("ranges", {})
    if not isinstance(ranges, dict):
        raise InputError(f"checkpoint {path}: normalization ranges is {type(ranges).__name__}, expected a mapping")
    for name, r in ranges.items():
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(number(v) for v in r) and r[0] < r[1]):
            raise InputError(f"checkpoint {path}: normalization range of {name} is {r!r}, expected [lo, hi], "
                             f"finite, lo < hi")


#: relative difference beyond which an input's setting counts as outside the training set-up
SETUP_TOLERANCE = 1e-3


def outside_training(setup, attrs):
    """Lines naming each way the input file (root ``attrs`` of a simulation file) lies
    outside what the network was trained on (``setup``: a checkpoint's ``training_setup``):
    cell size (Mpc/h), a_final and each cosmological parameter, with both values. A network
    trained on several cosmologies (``setup["cosmologies"]``) is warned about only for a
    parameter outside the range they span ("sigma8 1.5, trained on 0.258 to 1.15"; each
    parameter is checked on its own, not their combination). Empty when the checkpoint
    records no set-up or everything agrees."""
    if not isinstance(setup, dict):
        return []
    lines = []

    def differs(a, b):
        return abs(float(a) - float(b)) > SETUP_TOLERANCE * max(abs(float(a)), abs(float(b)), 1e-12)

    try:
        cell_in = float(attrs["box_size"]) / float(attrs["nc"])
        cell_tr = float(setup["box"]) / float(setup["nc"])
        if differs(cell_in, cell_tr):
            lines.append(f"cell size {cell_in:g} Mpc/h (box {float(attrs['box_size']):g} / {int(attrs['nc'])}), "
                         f"trained on {cell_tr:g} Mpc/h")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    if "a_final" in attrs and differs(attrs["a_final"], setup["a_final"]):
        lines.append(f"a_final {float(attrs['a_final']):g}, trained on {float(setup['a_final']):g}")
    trained = [c for c in (setup.get("cosmologies") or []) if isinstance(c, dict)] or [setup.get("cosmology") or {}]
    for key in sorted(trained[0]):
        values = [c.get(key) for c in trained]
        if key == "n_sims" or key not in attrs or not all(isinstance(v, (int, float)) for v in values):
            continue
        try:
            given = float(attrs[key])
        except (TypeError, ValueError):
            continue
        lo, hi = float(min(values)), float(max(values))
        if (given < lo and differs(given, lo)) or (given > hi and differs(given, hi)):     # NaN: neither
            span = f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"
            lines.append(f"{key} {given:g}, trained on {span}")
    return lines


def _local_part(model):
    """(function, input channels) of the local part of ``model``: its convolutions after the
    whole-box features (the U-Net's 2LPT prior, :meth:`~cosmonet.models.UNet.features`),
    or the model itself."""
    if hasattr(model, "from_features"):
        return model.from_features, model.feature_channels
    return model, None


def receptive_radius(model, n=32, channels=3, device="cpu"):
    """Cells over which one input voxel influences the output (measured, not assumed):
    the half-width of the output's response to a point perturbation at the centre, for
    the local part of the model (after its whole-box features, see :func:`_local_part`)."""
    fn, feature_channels = _local_part(model)
    x = torch.zeros(1, feature_channels or channels, n, n, n, device=device)
    with torch.no_grad():
        base = fn(x)
        x[0, :, n // 2, n // 2, n // 2] = 1.0
        out = fn(x)
        diff = (out - base - x[:, -out.shape[1]:]).abs().sum(dim=(0, 1))
    idx = torch.nonzero(diff > 1e-7 * diff.max())
    if len(idx) == 0:
        return 0
    return int((idx - n // 2).abs().max())


#: layers whose output at a voxel depends on statistics over the whole input
_GLOBAL_NORMS = (torch.nn.GroupNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
                 torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def tiling_blockers(model):
    """Names of the layers that make tiles differ from the whole box (empty: tiling is exact).

    GroupNorm / InstanceNorm / LayerNorm normalise by statistics over the input (the tile);
    BatchNorm does too in training mode or without running statistics. BatchNorm in eval
    mode with running statistics is a fixed affine map per channel: local.
    """
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, _GLOBAL_NORMS):
            names.append(f"{name} ({type(mod).__name__})")
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            if mod.training or mod.running_mean is None:
                names.append(f"{name} ({type(mod).__name__} with batch statistics)")
    return names


def check_tiling(model, n, tile, margin, radius=None, device="cpu"):
    """The margin to use for tiles of ``tile`` cells on an n^3 box; InputError naming the
    option when tiling cannot reproduce the whole-box result. ``radius``: the measured
    receptive radius (measured here when None and needed)."""
    factor = 2 ** getattr(model, "depth", 0)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise InputError(f"emulate: --tile must be an integer >= 1 (got {tile!r})")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0):
        raise InputError(f"emulate: --margin must be an integer >= 0 (got {margin!r})")
    check_margin(n, tile, margin)
    if tile >= n:
        return 0
    if n % tile:
        raise InputError(f"emulate: --tile {tile} does not divide the box of {n} cells")
    if tile % factor:
        raise InputError(f"emulate: --tile {tile} must be a multiple of the network's downsampling factor {factor}")
    blockers = tiling_blockers(model)
    if blockers:
        raise InputError(f"emulate: --tile cannot reproduce the whole box for this model: {blockers[0]} normalises "
                         f"by statistics over the tile ({len(blockers)} such layers); run without --tile")
    if radius is None:
        radius = receptive_radius(model, n=min(n, 64), device=device)
    needed = -(-radius // factor) * factor
    if margin is None:
        margin = needed
    if margin % factor:
        raise InputError(f"emulate: --margin {margin} must be a multiple of the network's downsampling factor "
                         f"{factor}")
    if margin < radius:
        raise InputError(f"emulate: --margin {margin} is below the network's receptive radius of {radius} cells "
                         f"(use >= {needed}): tiles would differ from the whole box")
    return margin


def check_margin(n, tile, margin):
    """InputError for a ``--margin`` that makes no sense on an n^3 box: one given without
    tiling (``tile`` None or >= n: the whole box is one periodic pass), or one larger than
    the box (a tile would hold its own box several times over)."""
    if margin is None:
        return
    if tile is None or tile >= n:
        raise InputError(f"emulate: --margin {margin} applies to tiles: give --tile smaller than the box of "
                         f"{n} cells (the whole box runs as one periodic pass without a margin)")
    if margin > n:
        raise InputError(f"emulate: --margin {margin} is larger than the box of {n} cells (a tile of {tile} with "
                         f"that context would span {tile + 2 * margin} cells)")


def memory_need(model, n, tile=None, margin=0, batch=8):
    """``(bytes, parts)``: the memory of :func:`emulate_box` on an n^3 box, estimated on the
    meta device (:mod:`cosmonet.models.memory`, nothing allocated): the interpreter and
    libraries (``resources.BASE``), four float32 copies of the 3-component field (input,
    normalised input, output, the network's output before scaling), the weights, and the
    network's peak on what it sees at once: the whole box, or a batch of ``min(batch,
    tiles)`` tiles of ``tile + 2 margin`` cells plus their gathered input (and, for a model
    with whole-box features such as the 2LPT prior, those features on the whole box)."""
    from .models.memory import as_meta, forward_peak, parameter_count
    from .resources import BASE, FIELD_COPIES_PER_CELL
    meta = as_meta(model)
    parts = {"base": BASE, "fields": n ** 3 * FIELD_COPIES_PER_CELL, "weights": 4 * parameter_count(meta)}
    tiled = tile is not None and tile < n
    if not tiled:
        parts["network"] = forward_peak(meta, (1, 3, n, n, n))
    else:
        fn, feature_channels = _local_part(meta)
        ext = tile + 2 * margin
        at_once = min(batch, (n // tile) ** 3)
        cin = feature_channels or 3
        shape = (at_once, cin, ext, ext, ext)
        parts["tiles"] = 2 * at_once * cin * ext ** 3 * 4 + at_once * 3 * ext ** 3 * 4   # cubes, stack, output
        parts["network"] = forward_peak(meta, shape, fn=fn)
        if feature_channels is not None:
            parts["features"] = forward_peak(meta, (1, 3, n, n, n), fn=meta.features) + n ** 3 * cin * 4
    return sum(parts.values()), parts


def _tiles(n, tile):
    return [(i, j, k) for i in range(0, n, tile) for j in range(0, n, tile) for k in range(0, n, tile)]


def emulate_box(model, disp, scale, tile=None, margin=None, batch=8, device="cpu", progress=None):
    """Predicted displacement (3, n, n, n) for the input displacement ``disp`` (3, n, n, n), Mpc/h.

    ``tile=None`` (or tile >= n) runs the whole box at once; otherwise tiles of ``tile``
    cells with ``margin`` cells of periodic context (default: the measured receptive
    radius rounded up to the network's downsampling factor). Tiling is refused
    (InputError) where it would not equal the whole box: see :func:`check_tiling`.
    ``progress(done, total)`` is called after every batch of tiles.
    """
    disp = np.asarray(disp, dtype=np.float32)
    n = disp.shape[-1]
    if disp.shape != (3, n, n, n):
        raise InputError(f"emulate: input displacement must be (3, n, n, n), got {disp.shape}")
    x = torch.from_numpy(disp / scale)
    factor = 2 ** getattr(model, "depth", 0)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1):
        raise InputError(f"emulate: --tile must be an integer >= 1 (got {tile!r})")
    if tile is None or tile >= n:
        if n % factor:
            raise InputError(f"emulate: box of {n}^3 cells is not divisible by the network's {factor}")
        with torch.no_grad():
            return (model(x[None].to(device))[0].cpu().numpy() * scale).astype(np.float32)
    margin = check_tiling(model, n, tile, margin, device=device)
    return emulate_tiles(model, x, scale, tile, margin, batch, device, progress)


def emulate_tiles(model, x, scale, tile, margin, batch=8, device="cpu", progress=None):
    """The tiled pass of :func:`emulate_box` on the normalised field ``x`` (3, n, n, n),
    without its checks (tests use it to show what a short margin or a GroupNorm does).
    Whole-box features (the 2LPT prior) are computed once on the whole box; the tiles run
    the local part of the model on them."""
    n = x.shape[-1]
    out = np.empty(tuple(x.shape), dtype=np.float32)
    fn, feature_channels = _local_part(model)
    if feature_channels is not None:
        with torch.no_grad():
            x = model.features(x[None].to(device))[0].cpu()
    corners = _tiles(n, tile)
    span = np.arange(-margin, tile + margin)
    with torch.no_grad():
        for b in range(0, len(corners), batch):
            group = corners[b:b + batch]
            cubes = []
            for (i, j, k) in group:
                ix, iy, iz = (np.mod(c + span, n) for c in (i, j, k))
                cubes.append(x[:, ix][:, :, iy][:, :, :, iz])
            pred = fn(torch.stack(cubes).to(device)).cpu().numpy()
            for (i, j, k), p in zip(group, pred):
                core = p[:, margin:margin + tile, margin:margin + tile, margin:margin + tile]
                out[:, i:i + tile, j:j + tile, k:k + tile] = core * scale
            if progress is not None:
                progress(min(b + batch, len(corners)), len(corners))
    return out
