"""Figures (PNG) for power spectra, written with matplotlib's non-interactive backend."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402


def plot_power(result, path, title="", linear=None):
    """P(k) (and T(k), r(k) when present) of a ``cosmonet power`` result to ``path`` (PNG).

    ``linear``: optional (k, P_lin) pair drawn as the linear-theory reference.
    """
    k = np.asarray(result["k"])
    has_cross = "r" in result
    fig, axes = plt.subplots(2 if has_cross else 1, 1, figsize=(6, 7 if has_cross else 4.5),
                             sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.loglog(k, result["power"], "o-", ms=3, label=result.get("field", "field"))
    if has_cross:
        ax.loglog(k, result["power_second"], "s-", ms=3, label=result.get("second", "second"))
    if linear is not None:
        ax.loglog(linear[0], linear[1], "k--", lw=1, label="linear theory")
    if "shotnoise" in result:
        ax.axhline(result["shotnoise"], color="gray", lw=0.8, ls=":", label="shot noise")
    ax.set_ylabel(r"$P(k)$ [$(h^{-1}\mathrm{Mpc})^3$]")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    if has_cross:
        ax = axes[1, 0]
        ax.semilogx(k, result["T"], "o-", ms=3, label=r"$T(k)=P_a/P_b$")
        ax.semilogx(k, result["r"], "s-", ms=3, label=r"$r(k)=P_{ab}/\sqrt{P_aP_b}$")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("ratio")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
