"""Power-spectrum baseline for cosmological parameter inference from density sub-cubes.

The baseline the 3D conv-net of issue 6 is compared with: each sub-cube is reduced to its
binned power spectrum (:func:`subcube_power`), and :class:`PowerSpectrumEstimator` fits a
Gaussian likelihood in log P(k) whose mean is a quadratic polynomial in the parameters and
whose covariance is that of the training residuals. Parameters are either the
maximum-likelihood point inside the prior box, with errors from the Fisher matrix there,
or (``point="posterior_mean"``, what ``cosmonet evaluate`` uses) the mean and standard
deviation of the posterior under a flat prior on the box.

Sub-cubes of a nonlinear z = 0 field carry their own mean density delta_b (rms 0.08 for
128 Mpc/h cubes of the params_lhs campaign), and the small-scale power responds to it
("super-sample" variance; about 2 delta_b of the response is only the reference density).
``subcube_power(..., local_mean=True)`` measures the contrast relative to the cube's own
mean, (1 + delta) / (1 + delta_b) - 1, which removed a third of the sigma8 error there
(0.059 -> 0.040 per 128 Mpc/h sub-cube).

Units: k in h/Mpc, P(k) in (Mpc/h)^3, sides in Mpc/h; conventions of
:mod:`cosmonet.analysis.power` (nbodykit: delta_k = FFT / N^3, P = V |delta_k|^2).
"""
import itertools

import numpy as np

#: Default upper k (h/Mpc), used when below the sub-cube Nyquist wavenumber; see subcube_power.
DEFAULT_K_MAX = 0.5
#: Floor on the variance of a log-power residual (keeps C invertible when a bin is fitted exactly).
VAR_FLOOR = 1e-12
#: Coarse-grid points per parameter in predict, by number of parameters.
GRID_POINTS = {1: 401, 2: 61, 3: 21}


def _as_array(x, dtype=np.float64):
    if hasattr(x, "detach"):                       # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def subcube_power(cubes, side, k_max=None, dk=None, chunk=256, local_mean=False):
    """Binned power spectra of ``n`` cubes of density contrast, in one vectorised pass.

    Parameters
    ----------
    cubes : array (n, s, s, s), numpy or torch
        Density contrast delta on s^3 cells.
    side : float
        Side of a cube in Mpc/h (cell size side / s).
    k_max : float, optional
        Upper k in h/Mpc: bins whose upper edge is <= k_max are kept. Default
        ``min(DEFAULT_K_MAX, k_Nyquist)`` = min(0.5, pi s / side). For the params_lhs
        campaign (64^3 particles, CIC on a 64^3 mesh of 256 Mpc/h, k_Nyquist = 0.785 h/Mpc)
        0.5 h/Mpc stops where the uncompensated CIC window drops below 0.7 along an axis and
        aliasing, shot noise (1/nbar = 64 (Mpc/h)^3) and the 10-step FastPM resolution take
        over the measured power: the baseline uses the scales a P(k) analysis of these
        simulations would trust.
    dk : float, optional
        Bin width in h/Mpc; default the sub-cube fundamental k_f = 2 pi / side.
    chunk : int
        Cubes per FFT batch (bounds memory).
    local_mean : bool
        Measure the contrast against the cube's own mean density: (1 + delta) / (1 + mean) - 1
        (removes the reference-density part of the super-sample response; see the module).

    Returns
    -------
    k : (nb,) mode-weighted mean |k| per bin, h/Mpc.
    power : (n, nb) mean V |delta_k|^2 per bin, (Mpc/h)^3, V = side^3.
    modes : (nb,) modes per bin, counted over the full (both-hemisphere) k space.

    Bins are [i dk, (i + 1) dk) from 0, as :func:`cosmonet.analysis.power.binned_power`
    (which this reproduces exactly for a periodic cube); k = 0 is excluded and empty bins
    are dropped. The cube is treated as periodic for the FFT although a sub-cube cut from a
    box is not: the edges leak power between bins, so this is not an unbiased estimate of
    the parent box's P(k), but it is a consistent summary statistic, applied identically
    to training and test cubes, which is all the baseline needs. The cube mean only changes
    the excluded k = 0 mode, so it need not be subtracted.
    """
    a = _as_array(cubes, dtype=None)               # converted to float64 chunk by chunk
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"cubes must be a real array (got dtype {a.dtype})")
    if a.ndim != 4 or not (a.shape[1] == a.shape[2] == a.shape[3]) or a.shape[1] < 2:
        raise ValueError(f"cubes must have shape (n, s, s, s) with s >= 2 (got {a.shape})")
    if a.shape[0] == 0:
        raise ValueError("cubes is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError("cubes contain NaN or infinite values")
    side = float(side)
    if not (np.isfinite(side) and side > 0):
        raise ValueError(f"side must be a positive length in Mpc/h (got {side})")
    n, s = a.shape[0], a.shape[1]
    kf = 2 * np.pi / side
    dk = kf if dk is None else float(dk)
    k_max = min(DEFAULT_K_MAX, np.pi * s / side) if k_max is None else float(k_max)
    if not (dk > 0 and np.isfinite(dk)):
        raise ValueError(f"dk must be > 0 h/Mpc (got {dk})")
    if not np.isfinite(k_max):
        raise ValueError(f"k_max must be finite (got {k_max})")
    nbins = int(np.floor(k_max / dk + 1e-9))
    if nbins < 1:
        raise ValueError(f"k_max = {k_max} h/Mpc is below the bin width dk = {dk:.4g} h/Mpc")
    edges = np.arange(nbins + 1) * dk

    # |k| of the rfftn modes, computed as ParticleMesh does, and their hermitian multiplicity
    full = np.fft.fftfreq(s, 1.0 / s) * kf
    half = np.fft.rfftfreq(s, 1.0 / s) * kf
    kk = np.sqrt(full.reshape(-1, 1, 1) ** 2 + full.reshape(1, -1, 1) ** 2
                 + half.reshape(1, 1, -1) ** 2).ravel()
    iz = np.broadcast_to(np.arange(s // 2 + 1), (s, s, s // 2 + 1)).ravel()
    mult = np.where((iz == 0) | ((s % 2 == 0) & (iz == s // 2)), 1.0, 2.0)
    idx = np.digitize(kk, edges) - 1
    sel = np.flatnonzero((kk > 0) & (idx >= 0) & (idx < nbins))
    weights = np.zeros((sel.size, nbins))
    weights[np.arange(sel.size), idx[sel]] = mult[sel]
    modes = weights.sum(0)
    kmean = kk[sel] @ weights

    power = np.empty((n, nbins))
    for i in range(0, n, chunk):
        block = np.asarray(a[i:i + chunk], dtype=np.float64)
        if local_mean:
            mean = 1.0 + block.mean(axis=(1, 2, 3), keepdims=True)
            if np.any(mean <= 0):
                raise ValueError("local_mean needs cubes of positive mean density (1 + delta)")
            block = (1.0 + block) / mean - 1.0
        fk = np.fft.rfftn(block, axes=(1, 2, 3)).reshape(-1, kk.size)[:, sel]
        power[i:i + chunk] = (fk.real ** 2 + fk.imag ** 2) @ weights
    power *= side ** 3 / float(s) ** 6
    keep = modes > 0
    return kmean[keep] / modes[keep], power[:, keep] / modes[keep], modes[keep]


# ---------------------------------------------------------------------- the estimator
def _features(u):
    """Quadratic design matrix [1, u_i, u_i u_j (i <= j)] of unit coordinates u (m, p)."""
    p = u.shape[1]
    cols = [np.ones(len(u))] + [u[:, i] for i in range(p)]
    cols += [u[:, i] * u[:, j] for i, j in itertools.combinations_with_replacement(range(p), 2)]
    return np.stack(cols, axis=1)


def _feature_jacobian(u):
    """d features / d u_k, shape (m, p, n_coef)."""
    m, p = u.shape
    pairs = list(itertools.combinations_with_replacement(range(p), 2))
    jac = np.zeros((m, p, 1 + p + len(pairs)))
    for k in range(p):
        jac[:, k, 1 + k] = 1.0
        for c, (i, j) in enumerate(pairs):
            jac[:, k, 1 + p + c] = (i == k) * u[:, j] + (j == k) * u[:, i]
    return jac


def _log_power(power, nb=None):
    p = _as_array(power)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"power must have shape (n, n_bins) with n, n_bins >= 1 (got {p.shape})")
    if nb is not None and p.shape[1] != nb:
        raise ValueError(f"power has {p.shape[1]} bins, the estimator was fitted on {nb}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("power must be finite and > 0 in every bin (log P is modelled)")
    return np.log(p)


def _check_bounds(bounds):
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 2 or not 1 <= b.shape[0] <= 3:
        raise ValueError(f"bounds must be [(lo, hi)] for 1 to 3 parameters (got shape {b.shape})")
    if not np.all(np.isfinite(b)) or np.any(b[:, 1] <= b[:, 0]):
        raise ValueError(f"bounds need finite lo < hi (got {b.tolist()})")
    return b


def _shrunk_covariance(resid, dof):
    """Residual covariance with correlations shrunk toward 0 (target: the diagonal).

    Intensity lambda from Schafer & Strimmer (2005, target "D"):
    sum_{i!=j} Var(r_ij) / sum_{i!=j} r_ij^2 clipped to [0, 1], r the residual correlation
    matrix (regression degrees of freedom ``dof``). It is ~1 when the measured correlations
    are consistent with sampling noise (then C is diagonal) and goes to 0 as the training
    set grows when they are real.
    """
    n, nb = resid.shape
    var = np.maximum((resid ** 2).sum(0) / dof, VAR_FLOOR)
    z = resid / np.sqrt(var)
    corr = z.T @ z / dof
    wbar = z.T @ z / n
    var_corr = ((z ** 2).T @ (z ** 2) - n * wbar ** 2) * n / dof ** 3
    off = ~np.eye(nb, dtype=bool)
    denom = np.sum(corr[off] ** 2)
    lam = 1.0 if denom == 0 else float(np.clip(np.sum(var_corr[off]) / denom, 0.0, 1.0))
    shrunk = np.where(off, (1.0 - lam) * corr, 1.0)
    sd = np.sqrt(var)
    return shrunk * sd[:, None] * sd[None, :], lam


def _posterior(chi2, grid):
    """Mean and standard deviation (rows, p) of exp(-chi^2 / 2) over the ``grid`` points."""
    w = np.exp(-0.5 * (chi2 - chi2.min(axis=1, keepdims=True)))
    w /= w.sum(axis=1, keepdims=True)
    mean = w @ grid
    return mean, np.sqrt(np.maximum(w @ grid ** 2 - mean ** 2, 0.0))


class PowerSpectrumEstimator:
    """Maximum-likelihood parameters from binned power spectra, Gaussian in log P(k).

    Model: log P_b | theta ~ N(mu_b(theta), C) with mu_b a quadratic polynomial in the
    parameters rescaled to u = (2 theta - lo - hi) / (hi - lo) in [-1, 1] (1 + p + p(p+1)/2
    coefficients per bin, least squares over the training cubes) and C the covariance of the
    training residuals log P - mu, its correlations shrunk toward 0 by the fitted intensity
    ``shrinkage`` (Schafer & Strimmer 2005; variances floored at VAR_FLOOR).
    The estimate maximises the likelihood inside the prior box; its error is the inverse
    Fisher matrix (J^T C^-1 J)^-1 at the estimate, J = d mu / d theta.

    Parameters
    ----------
    grid_points : int, optional
        Coarse-grid points per parameter for the global search (default 401 / 61 / 21 for
        1 / 2 / 3 parameters).
    gauss_newton_steps : int
        Refinement steps after the grid: each tries 1, 1/2, 1/4, 1/8 of the Gauss-Newton
        step, clipped to the box, and keeps the best if it lowers chi^2.
    point : str
        ``"max_likelihood"`` (default) or ``"posterior_mean"``: the mean and standard
        deviation of exp(-chi^2 / 2) over the prior box (flat prior), summed on the grid.
        Where the spectra hardly constrain a parameter the posterior mean stays near the
        middle of the box while the maximum-likelihood point wanders to its edges, so the
        posterior mean never does much worse than the constant predictor.
    """

    POINTS = ("max_likelihood", "posterior_mean")

    def __init__(self, grid_points=None, gauss_newton_steps=8, point="max_likelihood"):
        if grid_points is not None and int(grid_points) < 2:
            raise ValueError(f"grid_points must be >= 2 (got {grid_points})")
        if point not in self.POINTS:
            raise ValueError(f"point must be one of {', '.join(self.POINTS)} (got {point!r})")
        self.point = point
        self.grid_points = None if grid_points is None else int(grid_points)
        self.gauss_newton_steps = int(gauss_newton_steps)
        self.bounds = self.coef = self.cov = None
        self.shrinkage = None
        self.n_train = 0

    # ------------------------------------------------------------------ fitting
    def fit(self, power, theta, bounds):
        """Fit the mean model and covariance.

        ``power`` (n, n_bins) training spectra in (Mpc/h)^3 (e.g. from :func:`subcube_power`),
        ``theta`` (n, p) their true parameters, ``bounds`` [(lo, hi)] * p the prior box
        (training parameters must lie in it). Returns self.
        """
        y = _log_power(power)
        th = _as_array(theta)
        if th.ndim == 1:
            th = th[:, None]
        b = _check_bounds(bounds)
        if th.ndim != 2 or th.shape != (y.shape[0], b.shape[0]):
            raise ValueError(f"theta must have shape (n, p) = ({y.shape[0]}, {b.shape[0]}) "
                             f"matching power and bounds (got {th.shape})")
        if not np.all(np.isfinite(th)):
            raise ValueError("theta contains NaN or infinite values")
        tol = 1e-9 * (b[:, 1] - b[:, 0])
        if np.any(th < b[:, 0] - tol) or np.any(th > b[:, 1] + tol):
            raise ValueError("training parameters lie outside the bounds")
        self.bounds = b
        X = _features(self._to_unit(th))
        n, n_coef = X.shape
        if n < n_coef + 2:
            raise ValueError(f"{n} training spectra are too few for {n_coef} coefficients per bin "
                             f"(need at least {n_coef + 2})")
        self.coef = np.linalg.lstsq(X, y, rcond=None)[0]
        self.cov, self.shrinkage = _shrunk_covariance(y - X @ self.coef, n - n_coef)
        self.n_train = n
        self._prepare()
        return self

    def _to_unit(self, theta):
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return (2 * theta - lo - hi) / (hi - lo)

    def _from_unit(self, u):
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return np.clip(0.5 * (lo + hi) + 0.5 * (hi - lo) * u, lo, hi)

    def _prepare(self):
        """Whiten: with C = L L^T, chi^2 = |L^-1 (log P - mu)|^2."""
        try:
            self._chol = np.linalg.cholesky(self.cov)
        except np.linalg.LinAlgError:
            raise ValueError("the residual covariance is singular; use more training spectra "
                             "or fewer bins") from None
        self._coef_w = np.linalg.solve(self._chol, self.coef.T).T

    # ------------------------------------------------------------------ prediction
    def predict(self, power):
        """Estimates and 1-sigma errors for spectra ``power`` (m, n_bins) in (Mpc/h)^3.

        Returns ``theta_hat`` (m, p), inside the bounds, and ``sigma`` (m, p), the square
        root of the diagonal of the inverse Fisher matrix at theta_hat (or, with
        ``point="posterior_mean"``, the posterior mean and standard deviation).
        """
        if self.coef is None:
            raise ValueError("the estimator is not fitted")
        yw = self._whitened(power)
        p = self.bounds.shape[0]
        grid, model = self._grid()
        u = np.empty((len(yw), p))
        post_mean, post_sd = np.empty((len(yw), p)), np.empty((len(yw), p))
        for i, chi2 in self._grid_chi2(yw, model):
            u[i:i + len(chi2)] = grid[np.argmin(chi2, axis=1)]
            if self.point == "posterior_mean":
                post_mean[i:i + len(chi2)], post_sd[i:i + len(chi2)] = _posterior(chi2, grid)
        if self.point == "posterior_mean":
            half = 0.5 * (self.bounds[:, 1] - self.bounds[:, 0])
            return self._from_unit(post_mean), post_sd * half
        for _ in range(self.gauss_newton_steps):
            u = self._gauss_newton_step(u, yw)
        jac = _feature_jacobian(u) @ self._coef_w                   # (m, p, nb), whitened
        fisher_u = jac @ jac.transpose(0, 2, 1)
        half = 0.5 * (self.bounds[:, 1] - self.bounds[:, 0])
        sigma = np.sqrt(np.diagonal(np.linalg.inv(fisher_u), axis1=1, axis2=2)) * half
        return self._from_unit(u), sigma

    def predict_joint(self, power, groups):
        """Posterior mean and standard deviation (flat prior on the box) for groups of
        spectra taken together: chi^2 summed over the members of a group, as if they were
        independent (sub-cubes of one box are not quite: the errors are then somewhat too
        small, the means are fine). ``groups`` (m,) integers 0 .. G-1; returns (G, p) each."""
        if self.coef is None:
            raise ValueError("the estimator is not fitted")
        yw = self._whitened(power)
        groups = np.asarray(groups)
        if groups.shape != (len(yw),) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
            raise ValueError(f"groups must be {len(yw)} non-negative integers, one per spectrum")
        grid, model = self._grid()
        total = np.zeros((int(groups.max()) + 1, len(grid)))
        for i, chi2 in self._grid_chi2(yw, model):
            np.add.at(total, groups[i:i + len(chi2)], chi2)
        mean, sd = _posterior(total, grid)
        return self._from_unit(mean), sd * 0.5 * (self.bounds[:, 1] - self.bounds[:, 0])

    @staticmethod
    def _grid_chi2(yw, model):
        """(first row, chi^2 (rows, G)) in chunks of ~32 MB: chi^2 on the grid up to a
        per-spectrum constant |yw|^2, which cancels in argmin and in posterior weights."""
        model_sq = (model ** 2).sum(1)[None, :]
        chunk = max(1, 2 ** 22 // len(model))
        for i in range(0, len(yw), chunk):
            yield i, model_sq - 2 * yw[i:i + chunk] @ model.T

    def _whitened(self, power):
        y = _log_power(power, nb=self.coef.shape[1])
        return np.linalg.solve(self._chol, y.T).T

    def _grid(self):
        """(grid of unit coordinates (G, p), whitened mean model on it (G, n_bins))."""
        p = self.bounds.shape[0]
        g = self.grid_points or GRID_POINTS[p]
        axes = [np.linspace(-1.0, 1.0, g)] * p
        grid = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
        return grid, _features(grid) @ self._coef_w

    def _chi2(self, u, yw):
        return ((yw - _features(u) @ self._coef_w) ** 2).sum(1)

    def _gauss_newton_step(self, u, yw):
        r = yw - _features(u) @ self._coef_w
        jac = _feature_jacobian(u) @ self._coef_w                   # (m, p, nb)
        jtj = jac @ jac.transpose(0, 2, 1)
        jtj += 1e-12 * np.trace(jtj, axis1=1, axis2=2)[:, None, None] * np.eye(u.shape[1])
        du = np.linalg.solve(jtj, (jac @ r[:, :, None]))[:, :, 0]
        best, best_chi2 = u, self._chi2(u, yw)
        for f in (1.0, 0.5, 0.25, 0.125):
            cand = np.clip(u + f * du, -1.0, 1.0)
            c = self._chi2(cand, yw)
            better = c < best_chi2
            best = np.where(better[:, None], cand, best)
            best_chi2 = np.where(better, c, best_chi2)
        return best

    # ------------------------------------------------------------------ storage
    def to_dict(self):
        """JSON-serialisable state (plain lists and floats)."""
        if self.coef is None:
            raise ValueError("the estimator is not fitted")
        return {"model": "gaussian_logpk_quadratic_mean", "bounds": self.bounds.tolist(),
                "coef": self.coef.tolist(), "cov": self.cov.tolist(),
                "shrinkage": self.shrinkage, "n_train": self.n_train,
                "grid_points": self.grid_points, "gauss_newton_steps": self.gauss_newton_steps,
                "point": self.point}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        if d.get("model") != "gaussian_logpk_quadratic_mean":
            raise ValueError(f"not a PowerSpectrumEstimator state (model={d.get('model')!r})")
        est = cls(d.get("grid_points"), d.get("gauss_newton_steps", 8), d.get("point", "max_likelihood"))
        est.bounds = _check_bounds(d["bounds"])
        est.coef = np.asarray(d["coef"], dtype=np.float64)
        est.cov = np.asarray(d["cov"], dtype=np.float64)
        p, nb = est.bounds.shape[0], est.coef.shape[-1]
        if est.coef.shape != (1 + p + p * (p + 1) // 2, nb) or est.cov.shape != (nb, nb):
            raise ValueError(f"inconsistent shapes: coef {est.coef.shape}, cov {est.cov.shape} "
                             f"for {p} parameters")
        est.shrinkage = float(d["shrinkage"])
        est.n_train = int(d["n_train"])
        est._prepare()
        return est
