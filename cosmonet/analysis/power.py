"""Power spectra of periodic fields: auto, cross, T(k) and r(k), as nbodykit's FFTPower.

Conventions (nbodykit): delta_k is the forward FFT normalised by 1/N^3, so that
P(k) = V <|delta_k|^2> in (Mpc/h)^3. Bins are ``arange(kmin, kmax, dk)`` with
dk = 2 pi / L and kmin = 0 by default and kmax the Nyquist wavenumber plus dk / 2; a bin
reports the mode-weighted mean |k|, the mean power and the number of modes counted over
the full (both-hemisphere) k space. The k = 0 mode is excluded; empty bins are dropped.
:func:`gaussian_errors` gives each bin's Gaussian error from that mode count.
"""
import numpy as np

COMPENSATIONS = ("none", "cic", "cic_shotnoise")


def cic_window(pm, compensation):
    """Factor that divides delta_k to undo CIC painting on ``pm``'s complex slab.

    ``"cic"``: the CIC window prod_i sinc^2(k_i H / 2); ``"cic_shotnoise"``: Jing (2005)
    aliasing-averaged form prod_i [1 - 2/3 sin^2(k_i H / 2)]^(1/2), nbodykit's default for
    non-interlaced CIC; ``"none"``: 1.
    """
    if compensation not in COMPENSATIONS:
        raise ValueError(f"compensation must be one of {COMPENSATIONS} (got {compensation!r})")
    w = np.ones(pm.complex_shape)
    if compensation == "none":
        return w
    H = pm.cell_size
    for k in pm.k:
        half = 0.5 * k * H
        if compensation == "cic":
            w = w * np.sinc(half / np.pi) ** 2
        else:
            w = w * np.sqrt(1.0 - 2.0 / 3.0 * np.sin(half) ** 2)
    return w


def density_k(pm, pos, n_total, compensation="cic_shotnoise"):
    """delta_k of particles at local positions ``pos`` (n, 3) Mpc/h; ``n_total`` over all ranks."""
    rho = pm.paint(pos)
    nbar = n_total / pm.Nmesh ** 3
    delta_k = pm.r2c(rho.astype(pm.dtype)) / nbar
    return delta_k / cic_window(pm, compensation)


def k_edges(pm, dk=None, kmin=0.0, kmax=None):
    """Bin edges in h/Mpc (defaults: dk = k_fundamental, kmax = k_Nyquist + dk / 2)."""
    dk = pm.k_fundamental if dk is None else float(dk)
    kmax = pm.k_nyquist + 0.5 * dk if kmax is None else float(kmax)
    return np.arange(kmin, kmax, dk)


def binned_power(pm, a_k, b_k=None, edges=None):
    """Spherically averaged P_ab(k); returns dict with k, power, modes (numpy arrays).

    Collective over ``pm.comm``; every rank gets the result.
    """
    edges = k_edges(pm) if edges is None else np.asarray(edges)
    kk = np.sqrt(pm.k2)
    w = pm.hermitian_weights()
    prod = (a_k * np.conj(a_k if b_k is None else b_k)).real * pm.BoxSize ** 3
    valid = kk > 0
    idx = np.digitize(kk[valid], edges) - 1
    inside = (idx >= 0) & (idx < len(edges) - 1)
    idx = idx[inside]
    wv = w[valid][inside]
    nb = len(edges) - 1
    sums = np.stack([np.bincount(idx, weights=wv, minlength=nb),
                     np.bincount(idx, weights=wv * kk[valid][inside], minlength=nb),
                     np.bincount(idx, weights=wv * prod[valid][inside], minlength=nb)])
    sums = pm.comm.allreduce(sums)
    modes, ksum, psum = sums
    keep = modes > 0
    return {"k": ksum[keep] / modes[keep], "power": psum[keep] / modes[keep],
            "modes": modes[keep], "edges": edges}


def gaussian_errors(res):
    """Gaussian (cosmic variance) 1-sigma errors of the bins of a :func:`binned_power` or
    :func:`cross_power` result, from each bin's number of modes N (``res["modes"]``).

    N counts k and -k as two modes (the full k space, as nbodykit and :func:`binned_power`
    count them: a half-space r2c mode with 0 < kz < Nyquist weighs 2, a kz = 0 or Nyquist
    mode 1 and its mirror in the same plane 1 more), so a pair of conjugate modes, which is
    one independent complex Gaussian number, adds 2 to N and a self-conjugate (real) mode
    adds 1. With that count the variance of the bin's mean power is exactly 2 P^2 / N for
    a Gaussian field (a pair's |delta|^2 is exponential, variance P^2; a real mode's is
    P chi^2_1, variance 2 P^2), hence

    - ``power_error`` = P sqrt(2 / N) (and ``power_second_error`` likewise);
    - ``cross_error`` = sqrt((P_ab^2 + P_a P_b) / N);
    - ``T_error`` = T sqrt(4 (1 - r^2) / N) and ``r_error`` = (1 - r^2) / sqrt(N) (first
      order in 1/N, for a and b drawn together from one realisation; good for N >~ 100).

    Returns a dict of these arrays (those whose inputs are present), in the units of the
    powers, ready to merge into ``res``.
    """
    n = np.asarray(res["modes"], dtype=float)
    pa = np.asarray(res["power"], dtype=float)
    out = {"power_error": pa * np.sqrt(2.0 / n)}
    if "power_second" in res:
        pb = np.asarray(res["power_second"], dtype=float)
        out["power_second_error"] = pb * np.sqrt(2.0 / n)
        if "cross" in res:
            pab = np.asarray(res["cross"], dtype=float)
            out["cross_error"] = np.sqrt((pab ** 2 + pa * pb) / n)
        if "T" in res and "r" in res:
            r2 = np.clip(np.asarray(res["r"], dtype=float) ** 2, 0.0, 1.0)
            out["T_error"] = np.abs(np.asarray(res["T"], dtype=float)) * np.sqrt(4.0 * (1.0 - r2) / n)
            out["r_error"] = (1.0 - r2) / np.sqrt(n)
    return out


def transfer_function(p_a, p_b):
    """T(k) = P_a / P_b."""
    return np.asarray(p_a) / np.asarray(p_b)


def correlation_coefficient(p_ab, p_a, p_b):
    """r(k) = P_ab / sqrt(P_a P_b)."""
    return np.asarray(p_ab) / np.sqrt(np.asarray(p_a) * np.asarray(p_b))


def cross_power(pm, a_k, b_k, edges=None):
    """Auto powers of a and b, their cross power, T = P_a / P_b and r, on common bins."""
    pa = binned_power(pm, a_k, edges=edges)
    pb = binned_power(pm, b_k, edges=pa["edges"])
    pab = binned_power(pm, a_k, b_k, edges=pa["edges"])
    return {"k": pa["k"], "power": pa["power"], "modes": pa["modes"],
            "power_second": pb["power"], "cross": pab["power"],
            "T": transfer_function(pa["power"], pb["power"]),
            "r": correlation_coefficient(pab["power"], pa["power"], pb["power"])}


def vector_power(pm, a, b=None, edges=None):
    """Binned power of a vector field summed over its 3 components (or the cross power of
    ``a`` and ``b``): ``a``, ``b`` real (3, ...) slabs of ``pm``, e.g. displacements in
    Mpc/h, giving P in (Mpc/h)^5. Returns :func:`binned_power`'s dict."""
    total = None
    for c in range(3):
        ak = pm.r2c(a[c])
        bk = None if b is None else pm.r2c(b[c])
        res = binned_power(pm, ak, bk, edges=edges)
        total = res if total is None else {**res, "power": total["power"] + res["power"]}
    return total


def displacement_error(pred, true):
    """<|psi_pred - psi_true|> / <|psi_true|> over all particles (dimensionless; None when
    psi_true is zero): ``pred``, ``true`` (3, ...) displacement fields in the same units."""
    den = np.sqrt((true ** 2).sum(axis=0)).mean()
    return float(np.sqrt(((pred - true) ** 2).sum(axis=0)).mean() / den) if den > 0 else None
