"""Evaluation of a displacement emulator (D3M) on held-out pairs, against 2LPT and ZA.

Measures, over the test boxes:

- the mean relative displacement error  <|psi_x - psi_true|> / <|psi_true|>  (means over
  all particles of all boxes; a ratio of means, stable where |psi_true| is small);
- T(k) = P_x / P_true and r(k) = P_x,true / sqrt(P_x P_true) of the displacement field
  (power summed over the three components) and of the CIC density of the particles at
  q + psi (painted on the nc^3 grid, CIC window divided out), with the powers averaged
  over boxes before the ratios are taken; beside each curve its scatter over boxes
  (``T_x_scatter``, ``r_x_scatter``: the standard deviation of the single-box T and r,
  ddof = 1, present with two or more boxes).

The report names its boxes (``indices``, ``shards``) and their ``cosmology`` (each
parameter's value, or its [min, max] when the boxes differ), and the figures' titles say them.

Writes a JSON report and PNG figures: density slices (truth, 2LPT, model, and both
residuals, as in the talk) and T(k), 1 - r(k)^2 curves.
"""
import os

import numpy as np
import torch
from mpi4py import MPI

from ..errors import InputError
from ..io.simfile import lagrangian_grid
from ..mesh import ParticleMesh
from .power import binned_power, density_k, vector_power

METHODS = ("model", "lpt2", "za")
METHOD_LABELS = {"model": "U-Net", "lpt2": "2LPT", "za": "ZA"}


class PowerAccumulator:
    """Binned auto and cross powers of every box, for T(k) and r(k) of the box-averaged
    powers and for their scatter over boxes."""

    def __init__(self):
        self.boxes = {}
        self.k = None
        self.n = 0

    def add(self, key, res):
        self.k = res["k"]
        self.boxes.setdefault(key, []).append(np.asarray(res["power"], dtype=np.float64))

    def per_box(self, key):
        """(n_boxes, bins) array of the powers ``key`` of each box."""
        return np.stack(self.boxes[key])

    def mean(self, key):
        return self.per_box(key).sum(axis=0) / self.n


def evaluate_d3m(model, dataset, scale, device="cpu", max_boxes=None):
    """Report dict for ``model`` on ``dataset`` (fields za/disp, lpt2/disp, fastpm/disp)."""
    box, nc = float(dataset.box_size), int(dataset.nc)
    pm = ParticleMesh(nc, box, MPI.COMM_SELF, dtype=np.float64)
    q = lagrangian_grid(nc, box)
    err_num = {m: 0.0 for m in METHODS}
    err_den = 0.0
    disp_acc, dens_acc = PowerAccumulator(), PowerAccumulator()
    first = None
    n = len(dataset) if max_boxes is None else min(len(dataset), max_boxes)
    infos = [dataset.sample_info(i) if hasattr(dataset, "sample_info") else {"index": i} for i in range(n)]
    model.eval()
    for i in range(n):
        za, lpt2, true = (t.numpy().astype(np.float64) for t in dataset[i][:3])
        for name, f in zip(dataset.fields, (za, lpt2, true)):
            bad = int(np.count_nonzero(~np.isfinite(f)))
            if bad:
                info = dataset.sample_info(i) if hasattr(dataset, "sample_info") else {"index": i}
                raise InputError(f"{getattr(dataset, 'root', 'the test set')}: simulation {info['index']} has "
                                 f"{bad} non-finite values in {name}; evaluate refuses it (rerun that shard)")
        with torch.no_grad():
            pred = model(torch.from_numpy((za / scale).astype(np.float32))[None].to(device))[0]
        pred = pred.cpu().numpy().astype(np.float64) * scale
        fields = {"model": pred, "lpt2": lpt2, "za": za}
        true_norm = np.sqrt((true ** 2).sum(axis=0))
        err_den += true_norm.mean()
        for m, f in fields.items():
            err_num[m] += np.sqrt(((f - true) ** 2).sum(axis=0)).mean()
        positions = {m: np.mod(q + f, box).reshape(3, -1).T for m, f in list(fields.items()) + [("true", true)]}
        dens = {m: density_k(pm, pos, nc ** 3, "cic") for m, pos in positions.items()}
        disp_acc.add("true", vector_power(pm, true))
        dens_acc.add("true", binned_power(pm, dens["true"]))
        for m, f in fields.items():
            disp_acc.add(m, vector_power(pm, f))
            disp_acc.add(m + "_x_true", vector_power(pm, f, true))
            dens_acc.add(m, binned_power(pm, dens[m]))
            dens_acc.add(m + "_x_true", binned_power(pm, dens[m], dens["true"]))
        disp_acc.n += 1
        dens_acc.n += 1
        if first is None:       # density contrast slices (plain CIC, no window correction)
            first = {m: pm.paint(pos) - 1.0 for m, pos in positions.items()}   # one particle per cell
    report = {"n_boxes": n, "box_size": box, "nc": nc,
              "displacement_error": {m: err_num[m] / err_den for m in METHODS},
              "displacement_error_definition": "<|psi_x - psi_true|> / <|psi_true|> over all particles",
              "k": dens_acc.k.tolist(), **box_identity(infos),
              "scatter_definition": "T_x_scatter, r_x_scatter: standard deviation (ddof 1) over boxes of each "
                                    "box's own T(k) and r(k)"}
    for name, acc in (("density", dens_acc), ("displacement", disp_acc)):
        section = {}
        p_true = acc.mean("true")
        for m in METHODS:
            p, x = acc.mean(m), acc.mean(m + "_x_true")
            section[f"T_{m}"] = (p / p_true).tolist()
            section[f"r_{m}"] = (x / np.sqrt(p * p_true)).tolist()
            if n >= 2:
                pb, xb, tb = acc.per_box(m), acc.per_box(m + "_x_true"), acc.per_box("true")
                section[f"T_{m}_scatter"] = (pb / tb).std(axis=0, ddof=1).tolist()
                section[f"r_{m}_scatter"] = (xb / np.sqrt(pb * tb)).std(axis=0, ddof=1).tolist()
        report[name] = section
    return report, first


def box_identity(infos):
    """``indices`` and ``shards`` (one entry per box, None where unknown) of the boxes
    (``sample_info`` dicts) and their ``cosmology``: per parameter its value when all boxes
    share it, else [min, max] (parameters that no box sets are left out)."""
    from ..campaign.store import PARAM_COLUMNS
    cosmo = {}
    for c in PARAM_COLUMNS:
        vals = sorted({float(info[c]) for info in infos if info.get(c) is not None})
        if vals:
            cosmo[c] = vals[0] if len(vals) == 1 else [vals[0], vals[-1]]
    return {"indices": [int(info["index"]) for info in infos],
            "shards": [None if info.get("shard") is None else int(info["shard"]) for info in infos],
            "cosmology": cosmo}


def _ranges(values):
    """'3', '3-5' or '0-2, 7' for integers."""
    values = sorted(set(values))
    out, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def boxes_title(report, first_only=False):
    """Which boxes a figure shows, 'shard 0, simulation 8' (``first_only``) or '4 boxes: shards
    0-1, simulations 8-11', and their cosmology ('Omega_m=0.3089, sigma8=0.8159'; a range
    where the boxes differ)."""
    idx = list(report.get("indices") or [])
    shards = list(report.get("shards") or [])
    if first_only:
        idx, shards = idx[:1], shards[:1]
    shards = [sh for sh in shards if sh is not None]
    parts = []
    if shards:
        parts.append(f"shard{'s' if len(set(shards)) > 1 else ''} {_ranges(shards)}")
    if idx:
        parts.append(f"simulation{'s' if len(idx) > 1 else ''} {_ranges(idx)}")
    what = ", ".join(parts)
    if not first_only:
        n = report["n_boxes"]
        what = f"{n} box{'es' if n != 1 else ''}" + (f": {what}" if what else "")
    cosmo = ", ".join(f"{k}={v:.4g}" if not isinstance(v, list) else f"{k} {v[0]:.4g}-{v[1]:.4g}"
                      for k, v in (report.get("cosmology") or {}).items() if k in ("Omega_m", "sigma8", "A_s", "h"))
    return what + (f"; {cosmo}" if cosmo else "")


def report_table(report, ks=(0.1, 0.3, 0.5)):
    """The report as a small text table: per method the displacement error and the density
    T(k) and r(k) at the bins nearest ``ks`` (h/Mpc)."""
    k = np.asarray(report["k"], dtype=float)
    finite = np.flatnonzero(np.isfinite(k))
    picks = sorted({int(finite[np.argmin(np.abs(k[finite] - kk))]) for kk in ks})
    names = {"model": "model", "lpt2": "2LPT", "za": "ZA"}
    head = f"{'vs FastPM':<10}{'error':>8}" + "".join(f"{'T(' + format(k[i], '.2f') + ')':>9}" for i in picks) \
        + "".join(f"{'r(' + format(k[i], '.2f') + ')':>9}" for i in picks)
    rows = [f"{report['n_boxes']} boxes of {report['nc']}^3 in {report['box_size']:g} Mpc/h; density T(k) = "
            f"P/P_FastPM and r(k), k in h/Mpc", head]
    for m in METHODS:
        dens = report["density"]
        rows.append(f"{names[m]:<10}{100 * report['displacement_error'][m]:>7.2f}%"
                    + "".join(f"{dens['T_' + m][i]:>9.3f}" for i in picks)
                    + "".join(f"{dens['r_' + m][i]:>9.4f}" for i in picks))
    return "\n".join(rows)


def plot_report(report, slices, out_dir):
    """density_slices.png and transfer.png in ``out_dir``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_png

    os.makedirs(out_dir, exist_ok=True)
    nc = report["nc"]
    s = nc // 2
    panels = [("FastPM (truth)", slices["true"], False), ("2LPT", slices["lpt2"], False),
              ("U-Net", slices["model"], False), ("FastPM minus 2LPT", slices["true"] - slices["lpt2"], True),
              ("FastPM minus U-Net", slices["true"] - slices["model"], True)]
    vmax = np.percentile(np.abs(slices["true"][s]), 99)
    cell = report["box_size"] / nc
    fig, axes = plt.subplots(1, 5, figsize=(17, 4.1))
    for ax, (title, field, residual) in zip(axes, panels):
        im = ax.imshow(field[s], origin="lower", cmap="RdBu_r" if residual else "magma",
                       vmin=-vmax if residual else -1, vmax=vmax,
                       extent=[0, report["box_size"], 0, report["box_size"]])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("y [Mpc/h]")
        ax.set_ylabel("z [Mpc/h]")
        fig.colorbar(im, ax=ax, shrink=0.75, label=r"$\delta$" if not residual else r"$\Delta\delta$")
    fig.suptitle(f"CIC density contrast of the first test box ({boxes_title(report, first_only=True)}), one cell "
                 f"thick: x = {s * cell:g} to {(s + 1) * cell:g} Mpc/h ({cell:g} Mpc/h of {report['box_size']:g})",
                 fontsize=10)
    path = save_png(fig, os.path.join(out_dir, "density_slices.png"), dpi=90)

    k = np.asarray(report["k"])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for col, name in enumerate(("density", "displacement")):
        sec = report[name]
        for j, (m, style) in enumerate((("model", "o-"), ("lpt2", "s--"), ("za", "^:"))):
            t, r = np.asarray(sec[f"T_{m}"]), np.asarray(sec[f"r_{m}"])
            axes[0, col].semilogx(k, t, style, color=f"C{j}", ms=3, label=f"{METHOD_LABELS[m]} / FastPM")
            axes[1, col].loglog(k, np.maximum(1 - r ** 2, 1e-6), style, color=f"C{j}", ms=3,
                                label=f"{METHOD_LABELS[m]} x FastPM")
            if f"T_{m}_scatter" in sec:          # the scatter over boxes, as a band
                ts, rs = np.asarray(sec[f"T_{m}_scatter"]), np.asarray(sec[f"r_{m}_scatter"])
                axes[0, col].fill_between(k, t - ts, t + ts, color=f"C{j}", alpha=0.2, lw=0)
                axes[1, col].fill_between(k, np.maximum(1 - np.minimum(r + rs, 1) ** 2, 1e-6),
                                          np.maximum(1 - (r - rs) ** 2, 1e-6), color=f"C{j}", alpha=0.2, lw=0)
        axes[0, col].axhline(1, color="gray", lw=0.8)
        axes[0, col].set_title(name)
        axes[0, col].set_ylabel(r"$T(k) = P_x / P_{\rm FastPM}$")
        axes[1, col].set_ylabel(r"$1 - r(k)^2$")
        axes[1, col].set_xlabel(r"$k$ [$h$/Mpc]")
        axes[0, col].legend(fontsize=8)
    band = "; bands: scatter (std) over boxes" if "T_model_scatter" in report["density"] else ""
    fig.suptitle(f"D3M evaluation of {boxes_title(report)}\ndisplacement error " + ", ".join(
        f"{m} {100 * v:.1f}%" for m, v in report["displacement_error"].items()) + band, fontsize=10)
    path2 = save_png(fig, os.path.join(out_dir, "transfer.png"), dpi=100)
    return [path, path2]
