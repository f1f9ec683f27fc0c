"""Apply a trained displacement emulator to a box of any size, by periodic tiles.

The network is fully convolutional with periodic padding, so on a box of the training
size it sees the whole periodic box. On a larger box (256^3 for a network trained on
32^3) the box is cut into cubes of ``tile`` cells; each is extended periodically by
``margin`` cells on every side (wrapping around the big box), passed through the network,
and only its centre is kept. With a margin at least the network's receptive-field radius
the result equals what the network computes on the whole box (tested), while memory stays
that of one tile batch.
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
    model = build_model(sig["name"], **sig.get("kwargs", {}))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, state["normalization"], state


def receptive_radius(model, n=32, channels=3, device="cpu"):
    """Cells over which one input voxel influences the output (measured, not assumed):
    the half-width of the output's response to a point perturbation at the centre."""
    x = torch.zeros(1, channels, n, n, n, device=device)
    with torch.no_grad():
        base = model(x)
        x[0, :, n // 2, n // 2, n // 2] = 1.0
        diff = (model(x) - base - x).abs().sum(dim=(0, 1))
    idx = torch.nonzero(diff > 1e-7 * diff.max())
    if len(idx) == 0:
        return 0
    return int((idx - n // 2).abs().max())


def _tiles(n, tile):
    return [(i, j, k) for i in range(0, n, tile) for j in range(0, n, tile) for k in range(0, n, tile)]


def emulate_box(model, disp, scale, tile=None, margin=None, batch=8, device="cpu"):
    """Predicted displacement (3, n, n, n) for the input displacement ``disp`` (3, n, n, n), Mpc/h.

    ``tile=None`` (or tile >= n) runs the whole box at once; otherwise tiles of ``tile``
    cells with ``margin`` cells of periodic context (default: the measured receptive
    radius rounded up to the network's downsampling factor).
    """
    disp = np.asarray(disp, dtype=np.float32)
    n = disp.shape[-1]
    if disp.shape != (3, n, n, n):
        raise InputError(f"emulate: input displacement must be (3, n, n, n), got {disp.shape}")
    x = torch.from_numpy(disp / scale)
    factor = 2 ** getattr(model, "depth", 0)
    if tile is None or tile >= n:
        if n % factor:
            raise InputError(f"emulate: box of {n}^3 cells is not divisible by the network's {factor}")
        with torch.no_grad():
            return (model(x[None].to(device))[0].cpu().numpy() * scale).astype(np.float32)
    if n % tile:
        raise InputError(f"emulate: tile {tile} does not divide the box of {n} cells")
    if margin is None:
        r = receptive_radius(model, n=min(n, 64), device=device)
        margin = -(-r // factor) * factor
    if (tile + 2 * margin) % factor:
        raise InputError(f"emulate: tile + 2 margin must be divisible by {factor}")
    out = np.empty_like(disp)
    corners = _tiles(n, tile)
    span = np.arange(-margin, tile + margin)
    with torch.no_grad():
        for b in range(0, len(corners), batch):
            group = corners[b:b + batch]
            cubes = []
            for (i, j, k) in group:
                ix, iy, iz = (np.mod(c + span, n) for c in (i, j, k))
                cubes.append(x[:, ix][:, :, iy][:, :, :, iz])
            pred = model(torch.stack(cubes).to(device)).cpu().numpy()
            for (i, j, k), p in zip(group, pred):
                core = p[:, margin:margin + tile, margin:margin + tile, margin:margin + tile]
                out[:, i:i + tile, j:j + tile, k:k + tile] = core * scale
    return out
