"""PNG figures of the probes (matplotlib, Agg backend). Each function returns the paths written."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.plots import save_png  # noqa: E402

DPI = 90


def _save(fig, path):
    return save_png(fig, path, dpi=DPI)


def _pos(p):
    return np.maximum(np.asarray(p, dtype=float), 1e-300)


def bin_variance(spectrum, box):
    """Variance in each k bin: the bin's mean power times its number of modes over the volume,
    so that the bins add up to the field's variance (Mpc/h)^2 for a displacement, 1 for a
    density contrast); a single mode shows its own variance whatever the bin's size."""
    return np.asarray(spectrum["power"]) * np.asarray(spectrum["modes"]) / box ** 3


def _mark(ax, report, orders=True):
    k = report["k"]
    ax.axvline(k, color="gray", lw=0.8, ls=":")
    if orders:
        for m in (2, 3):
            if m * k < report["setup"]["k_nyquist"]:
                ax.axvline(m * k, color="gray", lw=0.5, ls=":")


def plot_planewave(report, path):
    """Displacement and density variance per k bin of input, model, response (and FastPM)."""
    box = report["setup"]["box_size"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"input": ("k", "--", "ZA input"), "model": ("C0", "-", "model"),
              "response": ("C2", "-.", "model - model(0)"), "fastpm": ("C3", ":", "FastPM")}
    for ax, key, unit in ((axes[0], "displacement", r"$(h^{-1}\mathrm{Mpc})^2$"), (axes[1], "density", "")):
        tops = []
        for name, (c, ls, label) in styles.items():
            if name not in report["fields"]:
                continue
            v = bin_variance(report["fields"][name][key]["spectrum"], box)
            tops.append(v.max())
            ax.loglog(report["fields"][name][key]["spectrum"]["k"], _pos(v), ls, color=c, marker="o", ms=3, label=label)
        _mark(ax, report)
        ax.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
        ax.set_ylabel(f"{key} variance per $k$ bin" + (f" [{unit}]" if unit else ""))
        ax.set_ylim(max(tops) * 1e-8, max(tops) * 3)
        ax.legend(fontsize=8)
    kept = report["kept"]
    fig.suptitle(f"plane wave k = {report['k']:.4g} h/Mpc {tuple(report['mode'])} k_f, A = {report['amplitude']:.3g} "
                 f"Mpc/h (A k = {report['amplitude_times_k']:.2f}): model keeps T = {kept['transfer']:.3f}, "
                 f"off-mode fraction {kept['off_mode_fraction']:.2e}", fontsize=9)
    return [_save(fig, path)]


def plot_family(report, path, labels, title):
    """Predicted displacement P(k) per case, and the spread between cases per k bin."""
    sp = report["spectra"]
    k = np.asarray(sp["k"])
    modes = np.asarray(sp["modes"])
    box = report["setup"]["box_size"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    n = len(sp["displacement"])
    for i, (p, lab) in enumerate(zip(sp["displacement"], labels)):
        axes[0].loglog(k, _pos(np.asarray(p) * modes / box ** 3), "-", color=cmap(i / max(n - 1, 1)), lw=1.2, alpha=0.8,
                       label=lab if n <= 8 else (lab if i in (0, n - 1) else None))
    _mark(axes[0], report)
    top = max((np.asarray(p) * modes / box ** 3).max() for p in sp["displacement"])
    axes[0].set_ylim(top * 1e-8, top * 3)
    axes[0].set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    axes[0].set_ylabel(r"predicted displacement variance per $k$ bin [$(h^{-1}\mathrm{Mpc})^2$]")
    axes[0].legend(fontsize=7)
    for key, style, lab in (("displacement_per_bin", "o-", "model, displacement"),
                            ("density_per_bin", "s--", "model, density")):
        s = np.array([np.nan if v is None else v for v in report["spread"][key]])
        axes[1].semilogy(k, np.maximum(s, 1e-17), style, ms=3, label=lab)
    if "fastpm" in report:
        s = np.array([np.nan if v is None else v for v in report["fastpm"]["spread"]["displacement_per_bin"]])
        axes[1].semilogy(k, np.maximum(s, 1e-17), "^:", color="C3", ms=3, label="FastPM, displacement")
    _mark(axes[1], report)
    axes[1].set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    axes[1].set_ylabel("spread: std / mean of P(k)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}: spread at the injected mode {report['spread']['main_mode']:.2e}", fontsize=9)
    return [_save(fig, path)]


def plot_amplitude(report, path):
    """Errors against FastPM and main-mode transfer versus A k."""
    rows = report["rows"]
    ak = [r["amplitude_times_k"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].semilogy(ak, [r["error_model"] for r in rows], "o-", label="model vs FastPM")
    axes[0].semilogy(ak, [r["error_za"] for r in rows], "s--", label="ZA vs FastPM")
    axes[0].axhline(report["tolerance"], color="gray", lw=0.8, ls=":", label="tolerance")
    axes[0].set_ylabel("displacement error")
    axes[1].plot(ak, [r["transfer_model"] for r in rows], "o-", label="model / FastPM")
    axes[1].plot(ak, [r["transfer_za"] for r in rows], "s--", label="ZA / FastPM")
    axes[1].axhline(1, color="gray", lw=0.8)
    axes[1].set_ylabel("main-mode transfer (variance ratio)")
    h_m = [r["harmonic_ratios_model"][0] if r["harmonic_ratios_model"] else np.nan for r in rows]
    h_f = [r["harmonic_ratios_fastpm"][0] if r["harmonic_ratios_fastpm"] else np.nan for r in rows]
    axes[2].semilogy(ak, _pos(h_m), "o-", label="model")
    axes[2].semilogy(ak, _pos(h_f), "^:", color="C3", label="FastPM")
    axes[2].set_ylabel("2nd harmonic / main (displacement variance)")
    for ax in axes:
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        if report["departs_at"]:
            ax.axvline(report["departs_at"]["amplitude_times_k"], color="C1", lw=0.8)
        ax.set_xlabel(r"$A\,k$ (ZA shell crossing at 1)")
        ax.legend(fontsize=8)
    dep = report["departs_at"]
    fig.suptitle(f"amplitude sweep at k = {report['k']:.4g} h/Mpc: model departs from FastPM (error > "
                 f"{report['tolerance']:g}) at " + (f"A k = {dep['amplitude_times_k']:.3g}" if dep else "no amplitude"),
                 fontsize=9)
    return [_save(fig, path)]


def plot_cosmology(report, out_dir):
    """cosmology_error.png, cosmology_T.png, cosmology_r.png (dotted: model, dashed: 2LPT)."""
    cos = report["cosmologies"]
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cos) + 2), 4))
    x = np.arange(len(cos))
    for j, (m, lab) in enumerate((("model", "model"), ("lpt2", "2LPT"), ("za", "ZA"))):
        ax.bar(x + (j - 1) * 0.27, [100 * c["displacement_error"][m] for c in cos], 0.27, label=lab)
    ax.set_xticks(x)
    ax.set_xticklabels([c["label"] for c in cos], fontsize=8, rotation=20)
    ax.set_ylabel(r"displacement error [%]")
    ax.set_title(r"$\langle|\psi_x-\psi_{\rm FastPM}|\rangle / \langle|\psi_{\rm FastPM}|\rangle$ per cosmology",
                 fontsize=9)
    ax.legend(fontsize=8)
    paths.append(_save(fig, os.path.join(out_dir, "cosmology_error.png")))
    ref = report.get("reference_params")
    relative = ref is not None
    ref_text = ("; labels relative to " + ", ".join(f"{k}={v:.4g}" for k, v in ref.items()
                                                    if k in ("Omega_m", "sigma8", "A_s") and v is not None)) if ref else ""
    for q, ylabel, fname in (("T", r"$T(k) = P_x / P_{\rm FastPM}$", "cosmology_T.png"),
                             ("r", r"$r(k) = P_{x,\rm FastPM} / \sqrt{P_x P_{\rm FastPM}}$", "cosmology_r.png")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for col, field in enumerate(("density", "displacement")):
            ax = axes[col]
            for i, c in enumerate(cos):
                color = f"C{i % 10}"
                ax.semilogx(c["k"], c[field][f"{q}_model"], "-", color=color, lw=1.8, label=_cosmology_legend(c, relative))
                ax.semilogx(c["k"], c[field][f"{q}_lpt2"], "--", color=color, lw=1.0)
                for m, alpha in (("model", 0.2), ("lpt2", 0.08)):      # the scatter over the boxes
                    if f"{q}_{m}_scatter" in c[field]:
                        y, dy = np.asarray(c[field][f"{q}_{m}"]), np.asarray(c[field][f"{q}_{m}_scatter"])
                        ax.fill_between(c["k"], y - dy, y + dy, color=color, alpha=alpha, lw=0)
            ax.axhline(1, color="gray", lw=0.8)
            ax.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
            ax.set_ylabel(ylabel)
            ax.set_title(field, fontsize=9)
            if q == "r":
                lo = min(min(c[field]["r_lpt2"] + c[field]["r_model"]) for c in cos)
                ax.set_ylim(max(lo - 0.02, 0.0), 1.01)
        handles, labels = axes[0].get_legend_handles_labels()
        styles = [Line2D([], [], color="k", ls="-", lw=1.8), Line2D([], [], color="k", ls="--", lw=1.0)]
        axes[0].legend(handles + styles, labels + ["model (solid)", "2LPT (dashed)"], fontsize=7)
        scatter = any(f"{q}_model_scatter" in c["density"] for c in cos)
        fig.suptitle(f"cosmology probe, {q}(k) per cosmology of {report.get('data', '')}{ref_text}"
                     + ("\nbands: scatter (std) over each cosmology's boxes" if scatter else ""), fontsize=9)
        paths.append(_save(fig, os.path.join(out_dir, fname)))
    return paths


def _cosmology_legend(c, relative):
    """Legend entry of a cosmology of the probe: its label ('A_s x 0.2', relative to the
    training cosmology) or, without a reference, its Omega_m, sigma8 or A_s; then its number
    of boxes and their shards ('A_s x 0.2: 2 boxes, shard 1')."""
    from ..analysis.d3m_eval import _ranges
    name = c["label"] if relative else ", ".join(
        f"{k}={v:.4g}" for k, v in (c.get("params") or {}).items() if k in ("Omega_m", "sigma8", "A_s") and v is not None)
    shards = [s for s in c.get("shards") or [] if s is not None]
    where = f", shard{'s' if len(set(shards)) > 1 else ''} {_ranges(shards)}" if shards else ""
    n = c.get("n_boxes")
    return f"{name}: {n} box{'es' if n != 1 else ''}{where}"
