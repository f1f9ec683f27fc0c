"""Flat LambdaCDM cosmology: parameters, background expansion and the linear power spectrum.

Conventions (as in FastPM): no radiation in the background, E(a)^2 = Omega_m a^-3 + 1 - Omega_m;
k in h/Mpc, P(k) in (Mpc/h)^3, time is the scale factor a.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from cosmonet.errors import InputError
from cosmonet.growth import Growth

__all__ = ["Cosmology", "parse_cosmology", "KEYS", "TRANSFERS"]

KEYS = ("Omega_m", "Omega_b", "h", "n_s", "sigma8", "A_s", "transfer")
_FLOAT_KEYS = KEYS[:-1]
# pyccl's transfer-function names. Analytic ones need sigma8 normalisation (pyccl refuses A_s).
TRANSFERS = ("eisenstein_hu", "eisenstein_hu_nowiggles", "bbks", "boltzmann_camb", "boltzmann_class")
_ANALYTIC = ("eisenstein_hu", "eisenstein_hu_nowiggles", "bbks")
_PRESETS = {
    "planck15": dict(Omega_m=0.3089, Omega_b=0.0486, h=0.6774, n_s=0.9667, sigma8=0.8159, A_s=None,
                     transfer="eisenstein_hu"),
}
_KEY_LOOKUP = {k.lower(): k for k in KEYS}


def _scalar_or_array(x: np.ndarray, scalar: bool):
    return float(x) if scalar else x


@dataclass(frozen=True)
class Cosmology:
    """Flat LambdaCDM parameters. Exactly one of ``sigma8`` and ``A_s`` is set."""

    Omega_m: float
    Omega_b: float
    h: float
    n_s: float
    sigma8: float | None
    A_s: float | None
    transfer: str = "eisenstein_hu"

    def __post_init__(self):
        for key in _FLOAT_KEYS:
            val = getattr(self, key)
            if val is None:
                if key in ("sigma8", "A_s"):
                    continue
                raise InputError(f"cosmology key '{key}' is required")
            object.__setattr__(self, key, _to_float(key, val))
        t = self.transfer
        if isinstance(t, bytes):
            t = t.decode()
        if not isinstance(t, str) or t not in TRANSFERS:
            raise InputError(f"cosmology key 'transfer' must be one of {', '.join(TRANSFERS)} (got {t!r})")
        object.__setattr__(self, "transfer", str(t))
        om, ob = self.Omega_m, self.Omega_b
        if not 0.0 < om <= 1.0:
            raise InputError(f"cosmology key 'Omega_m' must satisfy 0 < Omega_m <= 1 (got {om:g})")
        if not 0.0 < ob < om:
            raise InputError(f"cosmology key 'Omega_b' must satisfy 0 < Omega_b < Omega_m (got Omega_b={ob:g}, "
                             f"Omega_m={om:g})")
        if not 0.0 < self.h < 2.0:
            raise InputError(f"cosmology key 'h' must satisfy 0 < h < 2 (got {self.h:g})")
        if (self.sigma8 is None) == (self.A_s is None):
            raise InputError("cosmology needs exactly one of 'sigma8' and 'A_s' "
                             f"(got sigma8={self.sigma8}, A_s={self.A_s})")
        if self.sigma8 is not None and not self.sigma8 > 0.0:
            raise InputError(f"cosmology key 'sigma8' must be > 0 (got {self.sigma8:g})")
        if self.A_s is not None:
            if not self.A_s > 0.0:
                raise InputError(f"cosmology key 'A_s' must be > 0 (got {self.A_s:g})")
            if self.transfer in _ANALYTIC:
                raise InputError(f"cosmology key 'A_s' needs a Boltzmann transfer (transfer=boltzmann_camb); "
                                 f"with transfer={self.transfer} give sigma8 instead")

    # ------------------------------------------------------------------ construction
    @classmethod
    def planck15(cls) -> "Cosmology":
        """Planck 2015 (TT,TE,EE+lowP+lensing+ext) best fit."""
        return cls(**_PRESETS["planck15"])

    @classmethod
    def from_string(cls, text: str) -> "Cosmology":
        """``"planck15"``, ``"Omega_m=0.3,sigma8=0.8"`` (overrides on planck15) or ``"planck15,h=0.7"``."""
        tokens = [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else []
        if not tokens:
            raise InputError(f"empty cosmology specification {text!r}")
        base = _PRESETS["planck15"]
        if "=" not in tokens[0]:
            name = tokens.pop(0)
            if name.lower() not in _PRESETS:
                raise InputError(f"unknown cosmology preset '{name}' (known: {', '.join(_PRESETS)}; "
                                 "parameters need key=value)")
            base = _PRESETS[name.lower()]
        over = {}
        for tok in tokens:
            key, sep, val = tok.partition("=")
            key, val = key.strip(), val.strip()
            if not sep:
                raise InputError(f"bad cosmology item '{tok}' (expected key=value)")
            canon = _canonical_key(key)
            if canon in over:
                raise InputError(f"cosmology key '{canon}' given twice")
            over[canon] = val if canon == "transfer" else _to_float(canon, val)
        return cls._from_base(base, over)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Cosmology":
        """Inverse of :meth:`to_dict` (e.g. HDF5 attributes). All parameters except ``transfer`` required."""
        kw = {}
        for key, val in d.items():
            kw[_canonical_key(str(key))] = val
        for key in ("Omega_m", "Omega_b", "h", "n_s"):
            if key not in kw:
                raise InputError(f"cosmology key '{key}' missing")
        kw.setdefault("sigma8", None)
        kw.setdefault("A_s", None)
        return cls(**kw)

    @classmethod
    def _from_base(cls, base: Mapping[str, Any], over: Mapping[str, Any]) -> "Cosmology":
        if "sigma8" in over and "A_s" in over:
            raise InputError("give only one of cosmology keys 'sigma8' and 'A_s'")
        kw = dict(base)
        if "A_s" in over:
            kw["sigma8"] = None
        if "sigma8" in over:
            kw["A_s"] = None
        kw.update(over)
        return cls(**kw)

    def with_params(self, **kw) -> "Cosmology":
        """Validated copy with some parameters changed (A_s clears sigma8 and vice versa)."""
        over = {_canonical_key(k): v for k, v in kw.items()}
        return self._from_base(asdict(self), over)

    def to_dict(self) -> dict:
        """Plain floats/str, None entries omitted (suitable for HDF5 attributes / YAML)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    # ------------------------------------------------------------------ background
    def E(self, a):
        """H(a)/H0 = sqrt(Omega_m a^-3 + 1 - Omega_m)."""
        scalar = np.ndim(a) == 0
        a = np.asarray(a, dtype=float)
        return _scalar_or_array(np.sqrt(self.Omega_m / a**3 + (1.0 - self.Omega_m)), scalar)

    def Omega_m_a(self, a):
        """Omega_m(a) = Omega_m a^-3 / E(a)^2."""
        scalar = np.ndim(a) == 0
        a = np.asarray(a, dtype=float)
        om = self.Omega_m
        return _scalar_or_array(om / (om + (1.0 - om) * a**3), scalar)

    # ------------------------------------------------------------------ linear power
    def linear_power(self, k, a=1.0):
        """Linear matter P(k, a) in (Mpc/h)^3 for k in h/Mpc; P(k<=0) = 0.

        The z=0 spectrum comes from pyccl (``transfer``, sigma8 or A_s normalisation). For a != 1 it is
        scaled by D1(a)^2 of :mod:`cosmonet.growth` (radiation-free, as the simulation evolves it), not by
        pyccl's growth, which includes radiation and differs by ~1% at a ~ 0.02.
        """
        scalar = np.ndim(k) == 0
        k = np.asarray(k, dtype=float)
        out = np.zeros(k.shape)
        pos = k > 0
        if np.any(pos):
            h = self.h
            cc = _ccl_cosmology(self)
            try:
                out[pos] = _ccl().linear_matter_power(cc, k[pos] * h, 1.0) * h**3
            except ImportError as err:  # boltzmann_camb without camb installed
                raise InputError(f"cosmology transfer={self.transfer} needs a missing package ({err})") from err
            if np.ndim(a) != 0 or float(a) != 1.0:
                out = out * np.asarray(growth_for(self).D1(a)) ** 2
        return _scalar_or_array(out, scalar and np.ndim(out) == 0)

    def sigma8_value(self) -> float:
        """sigma8 at z=0 (the parameter, or computed by pyccl when A_s is given)."""
        if self.sigma8 is not None:
            return self.sigma8
        try:
            return float(_ccl().sigma8(_ccl_cosmology(self)))
        except ImportError as err:
            raise InputError(f"cosmology transfer={self.transfer} needs a missing package ({err})") from err

    def ccl(self):
        """The (cached) pyccl.Cosmology with these parameters (pyccl's default radiation included)."""
        return _ccl_cosmology(self)


_TEARDOWN = []


def _ccl():
    """pyccl, imported on first use (training, evaluation and emulation never need it); a
    missing pyccl is one error line naming it. The first import also registers
    :func:`_free_ccl_objects` to run at interpreter exit."""
    from .extras import require

    pyccl = require("pyccl", "the linear power spectrum (pyccl)")
    if not _TEARDOWN:
        import atexit
        atexit.register(_free_ccl_objects)   # registered after pyccl's import: runs before pyccl is torn down
        _TEARDOWN.append(True)
    return pyccl


def _free_ccl_objects():
    """Free the cached pyccl objects while pyccl is still whole. Left to interpreter shutdown,
    a cached ``pyccl.Cosmology`` (and its ``Pk2D`` splines) can be destroyed after the pyccl
    modules' globals are cleared, and its ``__del__`` (``lib.cosmology_free``) then fails with
    an ``Exception ignored in ... __del__`` line on stderr (about 30 in a ``make test`` log)."""
    import gc
    _ccl_cosmology.cache_clear()
    _growth_cached.cache_clear()
    gc.collect()


@functools.lru_cache(maxsize=32)
def _ccl_cosmology(c: Cosmology):
    return _ccl().Cosmology(Omega_c=c.Omega_m - c.Omega_b, Omega_b=c.Omega_b, h=c.h, n_s=c.n_s,
                            sigma8=c.sigma8, A_s=c.A_s, transfer_function=c.transfer,
                            matter_power_spectrum="linear")


def _canonical_key(key: str) -> str:
    canon = _KEY_LOOKUP.get(key.strip().lower())
    if canon is None:
        raise InputError(f"unknown cosmology key '{key}' (known: {', '.join(KEYS)})")
    return canon


def _to_float(key: str, val) -> float:
    if isinstance(val, bytes):
        val = val.decode()
    try:
        out = float(val)
    except (TypeError, ValueError):
        raise InputError(f"cosmology key '{key}' needs a number (got {val!r})") from None
    if not math.isfinite(out):
        raise InputError(f"cosmology key '{key}' must be finite (got {val!r})")
    return out


def parse_cosmology(spec: "str | Mapping[str, Any] | Cosmology | None") -> Cosmology:
    """A Cosmology from a string (see :meth:`Cosmology.from_string`), a dict of overrides on planck15
    (an optional ``preset`` entry picks another base), a Cosmology (returned as is) or None (planck15)."""
    if spec is None:
        return Cosmology.planck15()
    if isinstance(spec, Cosmology):
        return spec
    if isinstance(spec, str):
        return Cosmology.from_string(spec)
    if isinstance(spec, Mapping):
        over = dict(spec)
        name = str(over.pop("preset", "planck15")).lower()
        if name not in _PRESETS:
            raise InputError(f"unknown cosmology preset '{name}' (known: {', '.join(_PRESETS)})")
        over = {_canonical_key(str(k)): v for k, v in over.items()}
        return Cosmology._from_base(_PRESETS[name], over)
    raise InputError(f"cannot make a cosmology from {type(spec).__name__} {spec!r}")


def growth_for(cosmo) -> Growth:
    """The :class:`~cosmonet.growth.Growth` of a Cosmology (or anything parse_cosmology takes),
    built once per cosmology."""
    return _growth_cached(parse_cosmology(cosmo))


@functools.lru_cache(maxsize=64)
def _growth_cached(cosmo: Cosmology) -> Growth:
    return Growth(cosmo)
