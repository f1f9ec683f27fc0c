"""Figures a reader does not have to decode: log-k labels that never overlap, legends that
name the fields of a ratio."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cosmonet.analysis.plots import format_log_axis, power_figure, save_png  # noqa: E402


def visible_tick_labels(fig, ax):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    labels = [t for t in ax.xaxis.get_ticklabels(minor=False) + ax.xaxis.get_ticklabels(minor=True)
              if t.get_text() and lo <= t.get_position()[0] <= hi]
    return labels, [t.get_window_extent(renderer) for t in labels]


@pytest.mark.parametrize("k_range", [(0.05, 0.8), (0.02, 1.6), (0.25, 0.45), (0.003, 3.0)])
def test_log_k_labels_do_not_overlap(k_range):
    fig, ax = plt.subplots(figsize=(4, 3))
    k = np.geomspace(*k_range, 30)
    ax.semilogx(k, k ** -1.5)
    format_log_axis(ax.xaxis)
    labels, boxes = visible_tick_labels(fig, ax)
    assert len(labels) >= 2, [t.get_text() for t in labels]
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b), [t.get_text() for t in labels]
    for t in labels:                       # plain decimals, no "3 x 10^-1"
        float(t.get_text())
    plt.close(fig)


def test_matplotlib_default_would_overlap_here():
    """The test above can fail: matplotlib's own labels of a short log axis collide."""
    fig, ax = plt.subplots(figsize=(4, 3))
    k = np.geomspace(0.25, 0.45, 30)
    ax.semilogx(k, k)
    labels, boxes = visible_tick_labels(fig, ax)
    texts = [t.get_text() for t in labels]
    overlaps = any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    assert overlaps or any("10^" in t for t in texts), texts
    plt.close(fig)


def test_power_figure_names_the_fields_of_the_ratios(tmp_path):
    k = np.geomspace(0.05, 0.8, 12)
    res = {"k": k, "power": 1e3 * k ** -1, "power_second": 9e2 * k ** -1, "T": np.full(12, 1.1),
           "r": np.full(12, 0.99), "field": "fastpm", "second": "lpt2", "shotnoise": 64.0}
    fig = power_figure(res)
    legend_text = " ".join(t.get_text() for ax in fig.axes if ax.get_legend()
                           for t in ax.get_legend().get_texts())
    assert "fastpm" in legend_text and "lpt2" in legend_text, legend_text
    assert r"P_{\rm fastpm}/P_{\rm lpt2}" in legend_text, legend_text
    path = save_png(fig, str(tmp_path / "pk.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
