"""Linear growth factors D1, D2 and the FastPM kick/drift factors for flat LambdaCDM (no radiation).

The growth ODEs in x = ln a,
    D1'' + (2 + dlnE/dlna) D1' = 1.5 Omega_m(a) D1
    D2'' + (2 + dlnE/dlna) D2' - 1.5 Omega_m(a) D2 = -1.5 Omega_m(a) D1^2,
with dlnE/dlna = -1.5 Omega_m(a), are solved for u = D1/a and v = D2/a^2, which are O(1) and constant
(u = 1, v = -3/7) in matter domination. With w = 1 - Omega_m(a):
    u'' = -(2.5 + 1.5 w) u' - 3 w u
    v'' = -(4.5 + 1.5 w) v' - (3.5 + 4.5 w) v - 1.5 (1 - w) u^2
Initial conditions carry the first order in w: u = 1 - 2/11 w, v = -3/7 + 153/1001 w (w ~ a^3).
u and v are tabulated on a uniform ln a grid and interpolated with quintic Hermite splines built from
(y, y', y'') at the nodes (interpolation error ~1e-12). Below the table the same O(w) series is used
(error O(w^2) < 1e-17 below a = 1e-3).

Time-integration functions (Feng et al. 2016, H0 = 1): momentum p = a^2 dx/dt / H0,
    dp/da = 1.5 Omega_m F / (a^2 E),  dx/da = p / (a^3 E).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.integrate import odeint

from cosmonet.errors import InputError

__all__ = ["Growth"]

_DX = 0.02  # ln a spacing of the tables


class _Quintic:
    """Quintic Hermite interpolant on a uniform grid x0 + i*dx from values, 1st and 2nd derivatives."""

    def __init__(self, x0, dx, y, d1, d2):
        h = dx
        y0, y1 = y[:-1], y[1:]
        p0, p1 = h * d1[:-1], h * d1[1:]
        s0, s1 = h * h * d2[:-1], h * h * d2[1:]
        A = y1 - y0 - p0 - 0.5 * s0
        B = p1 - p0 - s0
        C = s1 - s0
        self.c = np.stack([y0, p0, 0.5 * s0, 10 * A - 4 * B + 0.5 * C, -15 * A + 7 * B - C,
                           6 * A - 3 * B + 0.5 * C], axis=-1)
        self.x0, self.dx, self.n = x0, dx, len(y) - 1

    def __call__(self, x):
        """Value and x-derivative at x (array, inside the grid)."""
        s = (x - self.x0) / self.dx
        i = np.clip(np.floor(s).astype(np.intp), 0, self.n - 1)
        t = s - i
        c = self.c[i]
        val = c[..., 0] + t * (c[..., 1] + t * (c[..., 2] + t * (c[..., 3] + t * (c[..., 4] + t * c[..., 5]))))
        der = c[..., 1] + t * (2 * c[..., 2] + t * (3 * c[..., 3] + t * (4 * c[..., 4] + t * 5 * c[..., 5])))
        return val, der / self.dx


class Growth:
    """Normalised growth factors (D1(1) = 1, D2 ~ -3/7 D1^2 early) and FastPM integration factors.

    All methods take a scalar (returning float) or an array of scale factors.
    """

    def __init__(self, cosmo, a_min: float = 1e-3, a_max: float = 4.0):
        """cosmo: a :class:`~cosmonet.cosmology.Cosmology` (only its Omega_m enters); a
        cached instance per cosmology comes from :func:`cosmonet.cosmology.growth_for`."""
        if not 0.0 < a_min < 1.0 < a_max:
            raise InputError(f"growth table needs 0 < a_min < 1 < a_max (got a_min={a_min}, a_max={a_max})")
        self.cosmo = cosmo
        self.Omega_m = om = cosmo.Omega_m
        self.a_max = float(a_max)
        x0 = math.log(min(a_min, 1e-2))  # series ICs are accurate to O(w^2) ~ 1e-11 at a = 0.01
        n = int(math.ceil((math.log(a_max) - x0) / _DX))
        dx = (math.log(a_max) - x0) / n
        xs = x0 + dx * np.arange(n + 1)
        self.a_min = math.exp(x0)
        r = (1.0 - om) / om

        def w_of(x):
            q = r * math.exp(3.0 * x)
            return q / (1.0 + q)

        def rhs(y, x):
            u, du, v, dv = y
            w = w_of(x)
            return (du, -(2.5 + 1.5 * w) * du - 3.0 * w * u,
                    dv, -(4.5 + 1.5 * w) * dv - (3.5 + 4.5 * w) * v - 1.5 * (1.0 - w) * u * u)

        w0 = w_of(x0)
        y0 = [1.0 - 2.0 / 11.0 * w0, -6.0 / 11.0 * w0, -3.0 / 7.0 + 153.0 / 1001.0 * w0, 459.0 / 1001.0 * w0]
        if r == 0.0:  # Einstein-de Sitter: u = 1, v = -3/7 exactly
            ys = np.array(y0)[:, None] * np.ones(n + 1)
        else:
            # LSODA (compiled) is ~10x faster here than solve_ivp; u, v are O(1) so atol is safe
            ys, info = odeint(rhs, y0, xs, rtol=1e-12, atol=1e-14, mxstep=20000, full_output=True)
            if info["message"] != "Integration successful.":
                raise RuntimeError(f"growth ODE failed: {info['message']}")
            ys = ys.T
        u, du, v, dv = ys
        q = r * np.exp(3.0 * xs)
        w = q / (1.0 + q)
        ddu = -(2.5 + 1.5 * w) * du - 3.0 * w * u
        ddv = -(4.5 + 1.5 * w) * dv - (3.5 + 4.5 * w) * v - 1.5 * (1.0 - w) * u * u
        # normalise: D1(a=1) = 1, D2 by the same factor squared
        u1 = float(_Quintic(x0, dx, u, du, ddu)(np.zeros(()))[0])
        self._u = _Quintic(x0, dx, u / u1, du / u1, ddu / u1)
        self._v = _Quintic(x0, dx, v / u1**2, dv / u1**2, ddv / u1**2)
        self._x0, self._r, self._norm = x0, r, 1.0 / u1

    # ------------------------------------------------------------------ internals
    def _prep(self, a):
        scalar = np.ndim(a) == 0
        a = np.asarray(a, dtype=float)
        if np.any(a > self.a_max * (1 + 1e-12)) or np.any(~(a > 0)):
            bad = a[(a > self.a_max * (1 + 1e-12)) | ~(a > 0)].flat[0]
            raise InputError(f"scale factor a={bad:g} outside the growth table (0, {self.a_max:g}]")
        return a, scalar

    def _uv(self, a):
        """u = D1/a, du/dlna, v = D2/a^2, dv/dlna; below the table the O(w) series of the ICs."""
        lna = np.log(a)
        x = np.maximum(lna, self._x0)
        u, du = self._u(x)
        v, dv = self._v(x)
        early = lna < self._x0
        if np.any(early):
            q = self._r * a**3
            w = q / (1.0 + q)
            n = self._norm
            u = np.where(early, n * (1.0 - 2.0 / 11.0 * w), u)
            du = np.where(early, n * (-6.0 / 11.0) * w, du)
            v = np.where(early, n * n * (-3.0 / 7.0 + 153.0 / 1001.0 * w), v)
            dv = np.where(early, n * n * (459.0 / 1001.0) * w, dv)
        return u, du, v, dv

    @staticmethod
    def _out(x, scalar):
        return float(x) if scalar else x

    def _E(self, a):
        return np.sqrt(self.Omega_m / a**3 + (1.0 - self.Omega_m))

    # ------------------------------------------------------------------ growth factors
    def D1(self, a):
        a, s = self._prep(a)
        u, _, _, _ = self._uv(a)
        return self._out(a * u, s)

    def D2(self, a):
        a, s = self._prep(a)
        _, _, v, _ = self._uv(a)
        return self._out(a * a * v, s)

    def f1(self, a):
        """dlnD1/dlna."""
        a, s = self._prep(a)
        u, du, _, _ = self._uv(a)
        return self._out(1.0 + du / u, s)

    def f2(self, a):
        """dlnD2/dlna (~ 2 Omega_m(a)^(6/11))."""
        a, s = self._prep(a)
        _, _, v, dv = self._uv(a)
        return self._out(2.0 + dv / v, s)

    # ------------------------------------------------------------------ FastPM functions (H0 = 1)
    def Gp(self, a):
        return self.D1(a)

    def gp(self, a):
        """dD1/da = u + du/dlna."""
        a, s = self._prep(a)
        u, du, _, _ = self._uv(a)
        return self._out(u + du, s)

    def Gf(self, a):
        """a^3 E dD1/da."""
        a, s = self._prep(a)
        u, du, _, _ = self._uv(a)
        return self._out(a**3 * self._E(a) * (u + du), s)

    def gf(self, a):
        """dGf/da = 1.5 Omega_m D1 / (a^2 E) (growth equation)."""
        a, s = self._prep(a)
        u, _, _, _ = self._uv(a)
        return self._out(1.5 * self.Omega_m * u / (a * self._E(a)), s)

    def kick_factor(self, a_i, a_c, a_f):
        """p += 1.5 Omega_m F(a_c) * kick_factor, exact for linear growth."""
        a_c = np.asarray(a_c, dtype=float)
        out = (np.asarray(self.Gf(a_f)) - self.Gf(a_i)) / self.gf(a_c) / (a_c**2 * self._E(a_c))
        return self._out(out, np.ndim(out) == 0)

    def drift_factor(self, a_i, a_c, a_f):
        """x += p(a_c) * drift_factor, exact for linear growth."""
        a_c = np.asarray(a_c, dtype=float)
        out = (np.asarray(self.Gp(a_f)) - self.Gp(a_i)) / self.gp(a_c) / (a_c**3 * self._E(a_c))
        return self._out(out, np.ndim(out) == 0)

