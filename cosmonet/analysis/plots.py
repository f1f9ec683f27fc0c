"""Figures (PNG) for power spectra, written with matplotlib's non-interactive backend, and
the conventions every cosmonet figure shares (:func:`save_png`): log-k axes labelled with
plain decimals spaced for their range (matplotlib's default labels the minor ticks of a
short log axis as 3 and 4 x 10^-1, which collide), written atomically."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402


def format_log_axis(axis):
    """Label a log axis (``ax.xaxis``/``ax.yaxis``) of a finished plot in plain decimals
    (``0.05``, ``0.1``, ``0.2``) at ticks spaced for its range: 1 x 10^n beyond 2.5 decades,
    1, 2, 5 x 10^n beyond one, more inside one decade; minor ticks unlabelled."""
    lo, hi = sorted(axis.get_view_interval())
    if not (lo > 0 and np.isfinite(hi)):
        return
    decades = np.log10(hi / lo)
    exps = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    for subs in ([1.0] if decades >= 2.5 else [1.0, 2.0, 5.0] if decades >= 1 else [1.0, 2.0, 3.0, 5.0],
                 [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]):
        ticks = [m * 10.0 ** e for e in exps for m in subs if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 2:
            break
    else:
        ticks = MaxNLocator(3).tick_values(lo, hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) / 1.0))
    axis.set_minor_formatter(NullFormatter())


def save_png(fig, path, dpi=100):
    """Lay out ``fig``, give every log-x axis readable k labels, write it to ``path``
    atomically and close it. Returns ``path``."""
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            format_log_axis(ax.xaxis)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def plot_power(result, path, title="", linear=None):
    """P(k) (and T(k), r(k) when present) of a ``cosmonet power`` result to ``path`` (PNG).

    ``linear``: optional (k, P_lin) pair drawn as the linear-theory reference.
    """
    return save_png(power_figure(result, title, linear), path, dpi=110)


def power_figure(result, title="", linear=None):
    """The figure of :func:`plot_power` (not yet saved); the legend names the two fields
    of the ratios T(k) and r(k)."""
    k = np.asarray(result["k"])
    has_cross = "r" in result
    fig, axes = plt.subplots(2 if has_cross else 1, 1, figsize=(6, 7 if has_cross else 4.5),
                             sharex=True, squeeze=False)
    ax = axes[0, 0]
    a, b = (str(result.get(key) or default).replace("_", r"\_") for key, default in (("field", "a"), ("second", "b")))
    ax.set_xscale("log")
    ax.set_yscale("log")
    _curve(ax, k, result["power"], result.get("power_error"), "o-", f"{a} ($P_a$)" if has_cross else a, log=True)
    if has_cross:
        _curve(ax, k, result["power_second"], result.get("power_second_error"), "s-", f"{b} ($P_b$)", log=True)
    if linear is not None:
        ax.loglog(linear[0], linear[1], "k--", lw=1, label="linear theory")
    if "shotnoise" in result:
        ax.axhline(result["shotnoise"], color="gray", lw=0.8, ls=":", label="shot noise")
    ax.set_ylabel(r"$P(k)$ [$(h^{-1}\mathrm{Mpc})^3$]")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    if has_cross:
        ax = axes[1, 0]
        ax.set_xscale("log")
        _curve(ax, k, result["T"], result.get("T_error"), "o-", rf"$T(k)=P_{{\rm {a}}}/P_{{\rm {b}}}$")
        _curve(ax, k, result["r"], result.get("r_error"), "s-",
               rf"$r(k)=P_{{\rm {a}\times {b}}}/\sqrt{{P_{{\rm {a}}}P_{{\rm {b}}}}}$")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("ratio")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    if "power_error" in result:
        axes[-1, 0].annotate(r"bars: Gaussian $1\sigma$ of each bin, $P\sqrt{2/N_{\rm modes}}$", (0.01, 0.01),
                             xycoords="figure fraction", fontsize=7, color="gray")
    return fig


def _curve(ax, k, y, err, style, label, log=False):
    """A curve with 1-sigma error bars when ``err`` is given; on a log axis a bar's lower
    end stops at 1% of the value (a bin of few modes has sigma ~ P)."""
    y = np.asarray(y, dtype=float)
    if err is None:
        return ax.plot(k, y, style, ms=3, label=label)
    err = np.asarray(err, dtype=float)
    lower = np.minimum(err, 0.99 * np.abs(y)) if log else err
    return ax.errorbar(k, y, yerr=[lower, err], fmt=style, ms=3, capsize=2, elinewidth=0.8, label=label)
