"""Gaussian error bars of binned power spectra (``gaussian_errors``), proved on Gaussian
random fields: over many realisations the scatter of each bin's measured P(k), cross power,
T(k) and r(k) equals the predicted sigma within the sampling error of a scatter; the mode
count is the full-k-space one (counting only half the modes would be off by sqrt(2)). Also:
``cosmonet power`` writes the errors to its JSON and its plot draws them.
"""
import contextlib
import io
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from cosmonet.analysis.power import binned_power, cross_power, gaussian_errors
from cosmonet.mesh import ParticleMesh

NMESH, BOX, REALISATIONS = 32, 200.0, 400
GAIN, RHO = 1.3, 0.8            # b = GAIN (RHO a + sqrt(1 - RHO^2) c): T = P_a / P_b = 1 / GAIN^2, r = RHO


def _pk(k):
    return 1e4 * (k / 0.1) ** -1.5          # any smooth positive spectrum, (Mpc/h)^3


@pytest.fixture(scope="module")
def ensemble():
    """Binned auto, second, cross, T and r of REALISATIONS pairs of correlated Gaussian
    fields, and the expected (ensemble) spectrum with its modes."""
    pm = ParticleMesh(NMESH, BOX, MPI.COMM_SELF, dtype=np.float64)
    kk = np.sqrt(pm.k2)
    amp = np.sqrt(np.where(kk > 0, _pk(np.where(kk > 0, kk, 1.0)), 0.0) * NMESH ** 3 / BOX ** 3)
    rng = np.random.default_rng(17)
    rows = []
    for _ in range(REALISATIONS):
        a = pm.r2c(rng.standard_normal((NMESH,) * 3)) * amp      # <|a_k|^2> V = P(k)
        c = pm.r2c(rng.standard_normal((NMESH,) * 3)) * amp
        b = GAIN * (RHO * a + np.sqrt(1 - RHO ** 2) * c)
        res = cross_power(pm, a, b)
        rows.append(np.stack([res[key] for key in ("power", "power_second", "cross", "T", "r")]))
    samples = np.stack(rows)                                      # (M, 5, bins)
    exact = binned_power(pm, (amp / NMESH ** 1.5).astype(complex))   # |a_k|^2 V = P(k): each bin's mean input P
    p = exact["power"]
    expected = {"k": exact["k"], "modes": exact["modes"], "power": p, "power_second": GAIN ** 2 * p,
                "cross": GAIN * RHO * p, "T": np.full_like(p, GAIN ** -2), "r": np.full_like(p, RHO)}
    return samples, expected, gaussian_errors(expected)


def _variance_ratio(x, sigma):
    """s^2 / sigma^2 per bin of samples ``x`` (M, bins), and its standard error from the
    samples' own fourth moment (the bins of few modes are far from Gaussian)."""
    m = x.shape[0]
    d = x - x.mean(axis=0)
    s2 = (d ** 2).sum(axis=0) / (m - 1)
    m4 = (d ** 4).mean(axis=0)
    return s2 / sigma ** 2, np.sqrt((m4 / s2 ** 2 - (m - 3) / (m - 1)) / m)


@pytest.mark.parametrize("col, key", [(0, "power_error"), (1, "power_second_error"), (2, "cross_error")])
def test_scatter_of_power_matches_gaussian_error_in_every_bin(ensemble, col, key):
    samples, expected, err = ensemble
    ratio, se = _variance_ratio(samples[:, col], err[key])
    assert len(ratio) >= 10 and expected["modes"][0] == 26   # the first bin: |k| = k_f, sqrt(2) k_f, sqrt(3) k_f
    pull = (ratio - 1) / se
    assert np.all(np.abs(pull) < 4.5), (ratio, se)
    # all bins together: the variance is 2 P^2 / N to a few per cent; a half-space mode
    # count (N / 2) would predict twice the variance, ratio 0.5
    pooled = np.average(ratio, weights=1 / se ** 2)
    assert abs(pooled - 1) < 0.06, pooled


def test_scatter_of_transfer_and_correlation_matches_first_order_errors(ensemble):
    samples, expected, err = ensemble
    many = expected["modes"] >= 300                           # first order in 1 / N
    assert many.sum() >= 3
    for col, key, truth in ((3, "T_error", GAIN ** -2), (4, "r_error", RHO)):
        x = samples[:, col][:, many]
        assert np.abs(x.mean(axis=0) - truth).max() < 4 * err[key][many].max() / np.sqrt(REALISATIONS) + 2e-3
        ratio, se = _variance_ratio(x, err[key][many])
        assert np.all(np.abs(ratio - 1) < 4.5 * se + 0.05), (key, ratio, se)
        assert abs(np.average(ratio, weights=1 / se ** 2) - 1) < 0.1, (key, ratio)   # measured: 1.03, 1.00


def test_power_json_and_plot_carry_the_errors(tmp_path):
    """``cosmonet power`` on a small FastPM box: every bin has power_error = P sqrt(2 / N)
    (and the cross, T and r errors with --second), and the figure draws them as error bars."""
    from mpi4py import MPI as _MPI

    from cosmonet.analysis.plots import power_figure
    from cosmonet.cli import main
    from cosmonet.cosmology import Cosmology
    from cosmonet.io.simfile import write_simulation
    from cosmonet.sim.simulation import SimConfig, run_simulation
    sim = tmp_path / "sim.h5"
    cfg = SimConfig(nc=8, box=32.0, steps=1, boost=1, seed=2, a_start=0.1, a_final=1.0,
                    cosmology=Cosmology.from_string("planck15"))
    write_simulation(str(sim), run_simulation(cfg, _MPI.COMM_SELF))
    out = tmp_path / "p.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["power", str(sim), "--second", "lpt2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    p, n = np.array(res["power"]), np.array(res["modes"])
    np.testing.assert_allclose(res["power_error"], p * np.sqrt(2 / n), rtol=1e-12)
    np.testing.assert_allclose(res["power_second_error"], np.array(res["power_second"]) * np.sqrt(2 / n), rtol=1e-12)
    for key in ("cross_error", "T_error", "r_error"):
        assert len(res[key]) == len(p) and np.all(np.isfinite(res[key]))
    fig = power_figure(res, "test")
    bars = [c for ax in fig.axes for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 4                                   # P_a, P_b; T, r
    lo, hi = bars[0].lines[2][0].get_segments()[0][:, 1]    # the first bin's bar spans P -/+ sigma
    assert hi == pytest.approx(p[0] + res["power_error"][0], rel=1e-9)


def test_evaluation_reports_and_draws_the_scatter_over_boxes(tiny_pairs, tmp_path):
    """evaluate_d3m on 3 boxes of two shards: T_x_scatter and r_x_scatter are the standard
    deviations of the T and r that each box alone gives; the report and the figures' titles
    name the shards, the simulations and the cosmology."""
    import torch

    from cosmonet.analysis.d3m_eval import boxes_title, evaluate_d3m, plot_report
    from cosmonet.data import ShardDataset
    fields = ("za/disp", "lpt2/disp", "fastpm/disp")
    model = torch.nn.Identity()                          # the "model" is ZA itself
    report, slices = evaluate_d3m(model, ShardDataset(tiny_pairs, indices=[2, 3, 4], fields=fields), 1.0)
    alone = [evaluate_d3m(model, ShardDataset(tiny_pairs, indices=[i], fields=fields), 1.0)[0] for i in (2, 3, 4)]
    assert report["indices"] == [2, 3, 4] and report["shards"] == [0, 0, 1]
    assert report["cosmology"]["Omega_m"] == pytest.approx(0.3089)
    for sec in ("density", "displacement"):
        for m in ("model", "lpt2", "za"):
            for q in ("T", "r"):
                single = np.array([a[sec][f"{q}_{m}"] for a in alone])
                np.testing.assert_allclose(report[sec][f"{q}_{m}_scatter"], single.std(axis=0, ddof=1), rtol=1e-9)
                assert "T_za_scatter" not in alone[0][sec]        # one box: no scatter
        assert np.max(report[sec]["T_lpt2_scatter"]) > 0
    title = boxes_title(report)
    assert title.startswith("3 boxes: shards 0-1, simulations 2-4; Omega_m=0.3089"), title
    assert boxes_title(report, first_only=True).startswith("shard 0, simulation 2;")
    paths = plot_report(report, slices, str(tmp_path / "plots"))
    assert all(os.path.getsize(p) > 10000 for p in paths)


def test_cosmology_probe_figures_show_the_scatter_and_name_the_boxes(tiny_pairs, tmp_path):
    """The cosmology probe's T(k) and r(k) figures draw each cosmology's scatter over its
    boxes as bands, and name its parameters, box count and shards."""
    from matplotlib.collections import PolyCollection

    import cosmonet.probes.figures as figures
    from cosmonet.probes.cosmology_probe import probe_cosmology
    rep = probe_cosmology(lambda za: za, tiny_pairs, max_boxes=3)
    (c,) = rep["cosmologies"]
    assert c["n_boxes"] == 3 and c["indices"] == [0, 1, 2] and c["shards"] == [0, 0, 0]
    assert len(c["density"]["T_lpt2_scatter"]) == len(c["k"])
    drawn = {}
    real_save = figures._save

    def keep(fig, path):
        drawn[os.path.basename(path)] = fig
        legend = " ".join(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        drawn[os.path.basename(path) + ":legend"] = legend
        drawn[os.path.basename(path) + ":bands"] = sum(isinstance(a, PolyCollection) for ax in fig.axes
                                                        for a in ax.collections)
        drawn[os.path.basename(path) + ":title"] = fig._suptitle.get_text() if fig._suptitle else ""
        return real_save(fig, path)
    figures._save = keep
    try:
        figures.plot_cosmology(rep, str(tmp_path))
    finally:
        figures._save = real_save
    for name in ("cosmology_T.png", "cosmology_r.png"):
        assert drawn[name + ":bands"] == 4, name               # model and 2LPT, density and displacement
        assert "Omega_m=0.3089" in drawn[name + ":legend"] and "3 boxes, shard 0" in drawn[name + ":legend"]
        assert "scatter (std) over each cosmology's boxes" in drawn[name + ":title"]
