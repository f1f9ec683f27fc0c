"""Evaluation of parameter inference: the conv-net (paramnet) against a power-spectrum
analysis and the constant predictor, on the same test sub-cubes.

- ``paramnet``: the network's prediction for each test sub-cube (and its sigma when it
  was trained with uncertainties);
- ``pk_baseline``: :class:`cosmonet.analysis.pk_baseline.PowerSpectrumEstimator` fitted on
  the binned P(k) of every *training* sub-cube, applied to the test sub-cubes;
- ``constant``: the mean of the training parameters (the predictor that knows nothing).

Metrics per parameter (physical units): ``rmse``, ``mean_relative_error`` (mean of
|pred - true| / true), ``bias`` (mean of pred - true), over the test sub-cubes, and the
same over boxes (``per_box``: the predictions of a box's sub-cubes averaged first), and
``per_box_combined``: the best each method makes of a box's sub-cubes together: for the
P(k) baseline one posterior from the likelihoods of all of them (what a P(k) analysis of
the box as 8 cubes would report), for paramnet with uncertainties the inverse-variance
weighted mean of its sub-cube predictions. Where a
method gives uncertainties, ``coverage_68`` / ``coverage_95``: the fraction of test truths
inside pred +- 1 sigma and pred +- 1.96 sigma.
"""
import os
import sys
import time

import numpy as np
import torch

from ..io.atomic import atomic_path
from .pk_baseline import DEFAULT_K_MAX, PowerSpectrumEstimator, subcube_power

METHODS = ("paramnet", "pk_baseline", "constant")
NOMINAL = np.linspace(0.05, 0.99, 40)          # central interval probabilities for the calibration curve


def _z_of(p):
    """Half-width in sigma of the central interval of probability p (Gaussian)."""
    from scipy.special import erfinv
    return np.sqrt(2.0) * erfinv(p)


def predict_paramnet(model, dataset, batch=32, device="cpu"):
    """(mean (n, P), sigma (n, P) or None) in physical units for every sub-cube of ``dataset``."""
    model.eval()
    mus, sigmas = [], []
    with torch.no_grad():
        for lo in range(0, len(dataset), batch):
            x = torch.stack([dataset[j][0] for j in range(lo, min(lo + batch, len(dataset)))]).to(device)
            mu, sigma = model.split(model(x))
            mus.append(mu.cpu().numpy())
            if sigma is not None:
                sigmas.append(sigma.cpu().numpy())
    lo_, hi_ = dataset._bounds()
    mu = dataset.from_unit(np.concatenate(mus))
    sigma = np.concatenate(sigmas) * (hi_ - lo_) if sigmas else None
    return mu, sigma


def subcube_spectra(dataset, k_max=None, progress=None):
    """(k, power (n, nb)) of every sub-cube of ``dataset`` (raw density contrast)."""
    powers, k = [], None
    chunk = max(1, 4096 // dataset.per_box) * dataset.per_box
    for lo in range(0, len(dataset), chunk):
        cubes = np.stack([dataset.cube(j)[0].numpy() for j in range(lo, min(lo + chunk, len(dataset)))])
        k, p, _ = subcube_power(cubes, dataset.side, k_max=k_max, local_mean=True)
        powers.append(p)
        if progress:
            progress(min(lo + chunk, len(dataset)), len(dataset))
    return k, np.concatenate(powers)


def metrics(pred, true, sigma=None):
    """{rmse, mean_relative_error, bias[, coverage_68, coverage_95]} for one parameter."""
    err = pred - true
    out = {"rmse": float(np.sqrt(np.mean(err ** 2))), "mean_relative_error": float(np.mean(np.abs(err) / true)),
           "bias": float(np.mean(err))}
    if sigma is not None:
        out["coverage_68"] = float(np.mean(np.abs(err) <= sigma))
        out["coverage_95"] = float(np.mean(np.abs(err) <= 1.96 * sigma))
    return out


def coverage_curve(pred, true, sigma):
    """Empirical coverage of the central Gaussian intervals of probability NOMINAL."""
    z = np.abs(pred - true) / sigma
    return [float(np.mean(z <= _z_of(p))) for p in NOMINAL]


def _per_box(values, boxes, n_boxes):
    out = np.zeros((n_boxes,) + values.shape[1:])
    np.add.at(out, boxes, values)
    return out / np.bincount(boxes, minlength=n_boxes).reshape((-1,) + (1,) * (values.ndim - 1))


def evaluate_params(model, train, test, k_max=None, log=sys.stderr):
    """Report dict and the raw predictions, for ``model`` on SubcubeDataset ``test``;
    the P(k) baseline and the constant predictor are fitted on SubcubeDataset ``train``."""
    t0 = time.perf_counter()

    def say(msg):
        if log is not None:
            print(f"evaluate: {msg} ({time.perf_counter() - t0:.0f} s)", file=log, flush=True)

    params = list(test.params)
    boxes = np.array([test.box_of(j) for j in range(len(test))])
    true = test.theta[boxes]
    bounds = [test.ranges[p] for p in params]
    say(f"paramnet on {len(test)} test sub-cubes of {test.size}^3 cells from {len(test.base)} boxes")
    pred, sigma = {}, {}
    pred["paramnet"], sigma["paramnet"] = predict_paramnet(model, test)
    say(f"P(k) of {len(train)} training sub-cubes")
    k, p_train = subcube_spectra(train, k_max)
    _, p_test = subcube_spectra(test, k_max)
    train_boxes = np.array([train.box_of(j) for j in range(len(train))])
    theta_train = train.theta[train_boxes]
    baseline = PowerSpectrumEstimator(point="posterior_mean").fit(p_train, theta_train, bounds)
    pred["pk_baseline"], sigma["pk_baseline"] = baseline.predict(p_test)
    joint_box, _ = baseline.predict_joint(p_test, boxes)
    pred["constant"] = np.broadcast_to(theta_train.mean(axis=0), true.shape).copy()
    sigma["constant"] = np.broadcast_to(theta_train.std(axis=0), true.shape).copy()
    say("metrics")
    n_boxes = len(test.base)
    combined = {"pk_baseline": joint_box}
    if sigma["paramnet"] is not None:
        w = 1.0 / sigma["paramnet"] ** 2
        combined["paramnet"] = _per_box(w * pred["paramnet"], boxes, n_boxes) / _per_box(w, boxes, n_boxes)
    true_box = test.theta
    report = {"n_test_boxes": n_boxes, "n_test_subcubes": len(test), "n_train_subcubes": len(train),
              "subcube_cells": test.size, "subcube_side_mpc_h": test.side, "params": params,
              "ranges": {p: list(test.ranges[p]) for p in params},
              "k_max_h_mpc": float(k_max) if k_max is not None else min(DEFAULT_K_MAX, np.pi * test.size / test.side),
              "k_h_mpc": np.asarray(k).tolist(), "pk_baseline_fit": baseline.to_dict()}
    calibration = {}
    for m in METHODS:
        sec = {}
        box_pred = _per_box(pred[m], boxes, n_boxes)
        for i, p in enumerate(params):
            s = sigma[m][:, i] if sigma[m] is not None else None
            sec[p] = metrics(pred[m][:, i], true[:, i], s)
            sec[p]["per_box"] = metrics(box_pred[:, i], true_box[:, i])
            if m in combined:
                sec[p]["per_box_combined"] = metrics(combined[m][:, i], true_box[:, i])
        report[m] = sec
        if sigma[m] is not None and m != "constant":
            calibration[m] = {p: coverage_curve(pred[m][:, i], true[:, i], sigma[m][:, i])
                              for i, p in enumerate(params)}
    report["calibration"] = {"nominal": NOMINAL.tolist(), **calibration}
    report["seconds"] = time.perf_counter() - t0
    raw = {"true": true, "pred": pred, "sigma": sigma, "boxes": boxes, "true_box": true_box, "combined": combined}
    return report, raw


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_params(report, raw, out_dir):
    """predicted_vs_true.png (one panel per parameter, both methods, as the seed's Figure 2)
    and calibration.png; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    params = report["params"]
    labels = {"Omega_m": r"$\Omega_m$", "sigma8": r"$\sigma_8$"}
    fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4.8), squeeze=False)
    n_boxes = report["n_test_boxes"]
    for i, p in enumerate(params):
        ax = axes[0, i]
        lo, hi = report["ranges"][p]
        for m, color, marker in (("pk_baseline", "tab:orange", "s"), ("paramnet", "tab:blue", "o")):
            r = report[m][p]
            if m in raw["combined"]:
                box_pred, box_rmse = raw["combined"][m][:, i], r["per_box_combined"]["rmse"]
            else:
                box_pred, box_rmse = _per_box(raw["pred"][m], raw["boxes"], n_boxes)[:, i], r["per_box"]["rmse"]
            ax.scatter(raw["true"][:, i], raw["pred"][m][:, i], s=4, alpha=0.15, color=color)
            ax.scatter(raw["true_box"][:, i], box_pred, s=22, marker=marker, color=color, edgecolor="k", lw=0.4,
                       label=f"{m}: rmse {r['rmse']:.4f} per sub-cube, {box_rmse:.4f} per box")
        c = report["constant"][p]["rmse"]
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.set_xlabel(f"true {labels.get(p, p)}")
        ax.set_ylabel(f"predicted {labels.get(p, p)}")
        ax.set_title(f"{labels.get(p, p)}: constant predictor rmse {c:.4f}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{report['n_test_subcubes']} test sub-cubes ({report['subcube_side_mpc_h']:g} Mpc/h) "
                 f"from {n_boxes} boxes; dots: sub-cubes; markers: boxes (sub-cubes combined)", fontsize=10)
    fig.tight_layout()
    paths = [os.path.join(out_dir, "predicted_vs_true.png")]
    _save(fig, paths[0])
    plt.close(fig)

    cal = report["calibration"]
    methods = [m for m in ("paramnet", "pk_baseline") if m in cal]
    if methods:
        fig, axes = plt.subplots(1, len(params), figsize=(4.6 * len(params), 4.2), squeeze=False)
        for i, p in enumerate(params):
            ax = axes[0, i]
            for m, style in zip(methods, ("o-", "s--")):
                r = report[m][p]
                ax.plot(cal["nominal"], cal[m][p], style, ms=3,
                        label=f"{m}: 68% -> {r['coverage_68']:.2f}, 95% -> {r['coverage_95']:.2f}")
            ax.plot([0, 1], [0, 1], "k-", lw=0.8)
            ax.set_xlabel("nominal probability of the central interval")
            ax.set_ylabel("fraction of test truths inside")
            ax.set_title(labels.get(p, p))
            ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "calibration.png"))
        _save(fig, paths[-1])
        plt.close(fig)
    return paths
