"""Plane-wave inputs on the training box, and the spectral measurement of a prediction.

The input is one Zel'dovich displacement mode on the Lagrangian grid q = (i, j, k) L / nc,

    psi(q) = A k_hat cos(k.q + phi)          (Mpc/h; k on the box's grid of modes),

whose linear density is delta = -div psi = A |k| sin(k.q + phi); the engine's linear
field at a = 1 for it is ``delta / D1(a_final)`` (:func:`planewave_linear_field`), so that
``run_simulation(..., linear_field=...)`` reproduces psi as its ``za/disp`` (tested) and
evolves the same initial condition with FastPM.

Measurement (:func:`measure_modes`): the FFT of each component, normalised by 1/N^3 as
nbodykit, gives the *mode variance* |psi_k|^2 summed over components, in (Mpc/h)^2; a plane
wave of amplitude A puts A^2 / 2 into the pair of modes +-k and nothing anywhere else.
Reported: the variance kept at +-k, its fraction of the total (all k != 0), the harmonics
+-m k (m = 2, 3, ... while below the Nyquist frequency), the largest other mode, the
longitudinal fraction of the main mode (1 for a curl-free displacement along k_hat). The
density contrast of the particles at q + psi at +-k and its harmonics comes from exact
sums over the particles (:func:`density_modes`; a ZA plane wave gives Bessel functions).
For figures: the binned power spectra P(k) = V <|psi_k|^2> of the displacement ((Mpc/h)^5,
summed over components, :func:`cosmonet.analysis.power.vector_power`) and of the
density ((Mpc/h)^3, CIC on a 4x finer mesh, window divided out), against k in h/Mpc.
"""
import math
import sys
from dataclasses import dataclass

import numpy as np

from ..analysis.power import binned_power, density_k, displacement_error, k_edges, vector_power
from ..errors import InputError
from ..extras import MPI   # COMM_SELF: mpi4py's, or a one-process stand-in without it
from ..cosmology import growth_for
from ..io.simfile import lagrangian_grid
from ..mesh import ParticleMesh
from ..sim.simulation import SimConfig

UNITS = {"k": "h/Mpc", "amplitude": "Mpc/h", "displacement": "Mpc/h", "variance": "(Mpc/h)^2",
         "displacement_power": "(Mpc/h)^5", "density_power": "(Mpc/h)^3", "phase": "rad",
         "mode": "integer multiples of k_f = 2 pi / L"}

#: bins whose mean power is below this fraction of the largest bin count as empty (spread: null)
EMPTY_BIN = 1e-12


@dataclass(frozen=True)
class ProbeSetup(SimConfig):
    """The box, mesh, cosmology and FastPM settings of the training pairs (Mpc/h): a
    :class:`SimConfig` whose seed is unused (the plane wave is the initial condition)."""

    @property
    def k_fundamental(self):
        """2 pi / L in h/Mpc."""
        return 2 * math.pi / self.box

    @property
    def k_nyquist(self):
        """pi nc / L in h/Mpc."""
        return math.pi * self.nc / self.box

    def describe(self):
        return {"nc": self.nc, "box_size": self.box, "steps": self.steps, "boost": float(self.boost),
                "a_start": self.a_start, "a_final": self.a_final, "cosmology": self.cosmology.to_dict(),
                "k_fundamental": self.k_fundamental, "k_nyquist": self.k_nyquist}

    @classmethod
    def from_record(cls, record):
        """The set-up from a checkpoint's ``training_setup`` record (:func:`training_setup_record`)."""
        from ..cosmology import Cosmology
        fields = {k: record[k] for k in ("nc", "box", "steps", "boost", "a_start", "a_final")}
        return cls(cosmology=Cosmology.from_dict(record["cosmology"]), **fields)

    @classmethod
    def from_campaign(cls, root):
        """(setup, note) from a campaign directory's ``campaign.yaml`` (the training pairs).

        ``note`` is None, or one line saying which cosmology was taken when the campaign
        has several (its most common one, as a checkpoint's ``training_setup`` records).
        """
        from ..campaign.plan import cosmology_counts, plan, resolve_cosmology_block
        from ..campaign.store import read_config
        from ..cosmology import parse_cosmology

        cfg = read_config(root)
        note = None
        if resolve_cosmology_block(cfg.cosmology) == "fixed":
            cosmo = parse_cosmology(cfg.cosmology)
        else:
            counts = cosmology_counts(plan(cfg))
            cosmo, n = counts[0]
            note = (f"training campaign {root} has {len(counts)} cosmologies; FastPM runs use its most common "
                    f"one ({n} of {sum(c for _, c in counts)} simulations)")
        return cls(cosmology=cosmo, **cfg.sim_fields()), note


# --------------------------------------------------------------------------- modes
def _fmt_vec(v):
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def check_mode(mode, setup):
    """Validate an integer mode vector (multiples of k_f); returns a tuple of ints."""
    m = np.asarray(mode)
    if m.shape != (3,) or not np.all(np.mod(m, 1) == 0):
        raise InputError(f"mode must be three integers (multiples of k_f), got {mode!r}")
    m = tuple(int(x) for x in m)
    if not any(m):
        raise InputError("the plane-wave mode must not be k = 0")
    half = setup.nc // 2
    if any(abs(x) >= half for x in m):
        k = np.asarray(m) * setup.k_fundamental
        raise InputError(f"k = {_fmt_vec(k)} h/Mpc is at or above the mesh Nyquist frequency "
                         f"k_N = pi nc / L = {setup.k_nyquist:.4g} h/Mpc ({setup.nc}^3 particles in "
                         f"{setup.box:g} Mpc/h): every |k_i| must be below k_N (|mode_i| < {half})")
    return m


def resolve_mode(k, setup, exact=False):
    """Integer mode (multiples of k_f) nearest to ``k`` (h/Mpc: a number, along x, or a 3-vector).

    Returns ``(mode, note)``; ``note`` is None when k is on the box's grid of modes, else one
    line naming the nearest mode used. With ``exact`` an off-grid k raises InputError
    instead. k above the mesh Nyquist frequency, or rounding to k = 0, raises InputError.
    """
    kv = np.atleast_1d(np.asarray(k, dtype=float))
    if kv.shape == (1,):
        kv = np.array([kv[0], 0.0, 0.0])
    if kv.shape != (3,) or not np.all(np.isfinite(kv)):
        raise InputError(f"k must be a number or three numbers in h/Mpc (got {k!r})")
    kf = setup.k_fundamental
    m = np.rint(kv / kf).astype(int)
    if np.any(np.abs(kv) >= setup.k_nyquist):
        raise InputError(f"k = {_fmt_vec(kv)} h/Mpc is above the mesh Nyquist frequency k_N = pi nc / L = "
                         f"{setup.k_nyquist:.4g} h/Mpc ({setup.nc}^3 particles in {setup.box:g} Mpc/h)")
    if not m.any():
        raise InputError(f"k = {_fmt_vec(kv)} h/Mpc is below the box's fundamental mode k_f = 2 pi / L = "
                         f"{kf:.4g} h/Mpc (the nearest mode is k = 0)")
    mode = check_mode(m, setup)
    note = None
    if np.any(np.abs(kv - m * kf) > 1e-6 * kf):
        where = (f"k = {_fmt_vec(kv)} h/Mpc is not on the grid of modes of the {setup.box:g} Mpc/h box "
                 f"(k_f = 2 pi / L = {kf:.4g} h/Mpc)")
        used = f"the nearest mode {mode} k_f, |k| = {np.linalg.norm(m) * kf:.4g} h/Mpc"
        if exact:
            raise InputError(f"{where}; {used} (drop --exact to use it)")
        note = f"{where}; using {used}"
    return mode, note


def mode_k(mode, setup):
    """|k| of an integer mode, h/Mpc."""
    return float(np.linalg.norm(mode) * setup.k_fundamental)


def cube_orbit(mode, which="axes"):
    """Images of an integer mode under the cube's symmetries, first the mode itself.

    ``"axes"``: the three cyclic permutations of its components, as in the seed talk:
    (n, 0, 0), (0, n, 0), (0, 0, n). ``"all"``: the distinct images under all 48
    symmetries (axis permutations and sign flips): 6 for an axis mode, 48 for a general one.
    ``"shell"``: every mode of the same |k| (e.g. for (5, 0, 0) also (3, 4, 0) and its
    images, 30 in all): directions that no cube symmetry relates, so a network equivariant
    under the cube group alone (which augmentation teaches) need not agree on them.
    """
    import itertools
    m = tuple(int(x) for x in mode)
    if which == "shell":
        r2 = sum(x * x for x in m)
        top = int(math.isqrt(r2))
        shell = [v for v in itertools.product(range(-top, top + 1), repeat=3) if sum(x * x for x in v) == r2]
        # the mode first, then its cube images, then the rest, each group in a fixed order
        first = cube_orbit(m, "all")
        return first + sorted((v for v in shell if v not in first), key=lambda v: (sorted(map(abs, v)), v))
    if which == "axes":
        cands = [m, (m[2], m[0], m[1]), (m[1], m[2], m[0])]
    elif which == "all":
        cands = [m] + [tuple(s * m[p] for s, p in zip(signs, perm))
                       for perm in itertools.permutations(range(3))
                       for signs in itertools.product((1, -1), repeat=3)]
    else:
        raise InputError(f"symmetries must be 'axes', 'all' or 'shell' (got {which!r})")
    out = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


# --------------------------------------------------------------------------- inputs
def _phase_field(setup, mode, phase):
    q = lagrangian_grid(setup.nc, setup.box)
    kvec = np.asarray(mode, dtype=float) * setup.k_fundamental
    return np.tensordot(kvec, q, axes=1) + phase, kvec


#: the smallest amplitude, as a fraction of the box, that a float32 network resolves
MIN_AMPLITUDE_FRACTION = 1e-7


def check_amplitude(amplitude, setup, what="amplitude"):
    """InputError unless the plane-wave amplitude (Mpc/h) lies in ``[1e-7 L, L]`` for the box L
    of ``setup``. Above L a particle would move further than the box (the stored displacement
    wraps; A = 1e30 gave a transfer of 0.15 with exit 0); below 1e-7 L the wave is lost in
    the float32 rounding of the network's output (A = 1e-30 gave a transfer of 0)."""
    lo, hi = MIN_AMPLITUDE_FRACTION * setup.box, setup.box
    try:
        a = float(amplitude)
    except (TypeError, ValueError):
        a = float("nan")
    if not (math.isfinite(a) and a > 0):
        raise InputError(f"{what} must be a number > 0 in Mpc/h (got {amplitude!r})")
    if a > hi:
        raise InputError(f"{what} {a:g} Mpc/h is larger than the {setup.box:g} Mpc/h box: a displacement beyond "
                         f"the box is meaningless (use at most {hi:g})")
    if a < lo:
        raise InputError(f"{what} {a:g} Mpc/h is below {lo:.3g} Mpc/h (1e-7 of the box): the float32 network "
                         f"cannot resolve it")
    return a


def planewave_displacement(setup, mode, amplitude, phase=0.0):
    """psi(q) = A k_hat cos(k.q + phi), (3, nc, nc, nc) float64 in Mpc/h, on the Lagrangian grid."""
    theta, kvec = _phase_field(setup, mode, phase)
    khat = kvec / np.linalg.norm(kvec)
    return amplitude * khat[:, None, None, None] * np.cos(theta)[None]


def planewave_linear_field(setup, mode, amplitude, phase=0.0):
    """Real-space delta_lin at a = 1 (nc^3, float64) whose ZA displacement at ``a_final`` is
    :func:`planewave_displacement`: delta = A |k| sin(k.q + phi) / D1(a_final), since
    div psi = -delta and psi_ZA(a) = D1(a) psi_1 (see :mod:`cosmonet.sim.lpt`)."""
    theta, kvec = _phase_field(setup, mode, phase)
    d1 = float(growth_for(setup.cosmology).D1(setup.a_final))
    return amplitude * np.linalg.norm(kvec) / d1 * np.sin(theta)


def run_planewave_nbody(setup, mode, amplitude, phase=0.0):
    """ZA, 2LPT and FastPM displacements ((3, nc, nc, nc) float64, Mpc/h) of the engine run on
    the plane-wave linear field, through the ``linear_field`` input of
    :func:`cosmonet.sim.simulation.run_simulation` on one process."""
    from ..sim.simulation import run_simulation
    delta = planewave_linear_field(setup, mode, amplitude, phase)
    res = run_simulation(setup, MPI.COMM_SELF, linear_field=delta, fields={"za/disp", "lpt2/disp", "fastpm/disp"})
    return {name.split("/")[0]: np.asarray(v, dtype=np.float64) for name, v in res.fields.items()}


def check_prediction(pred, like):
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != like.shape:
        raise ValueError(f"predict returned shape {pred.shape}, expected {like.shape}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("predict returned NaN or infinite displacements")
    return pred


# --------------------------------------------------------------------------- measurement
def _idx(mode, n):
    return tuple(int(c) % n for c in mode)


def _signed(idx, n):
    return tuple(int(i) if i < n // 2 else int(i) - n for i in idx)


def fourier_modes(field):
    """FFT / N^3 of each component of a (C, n, n, n) or (n, n, n) real field (complex, (C, n, n, n))."""
    f = np.asarray(field, dtype=np.float64)
    if f.ndim == 3:
        f = f[None]
    n = f.shape[-1]
    return np.fft.fftn(f, axes=(-3, -2, -1)) / n ** 3


#: the binned density spectrum is CIC-painted on a mesh this many times finer than the
#: particle grid (window divided out) and binned to the particle grid's Nyquist frequency:
#: painting a displaced lattice on a mesh of the lattice's own spacing aliases strongly
DENSITY_BOOST = 4


def _fine_mesh(setup):
    return ParticleMesh(DENSITY_BOOST * setup.nc, setup.box, MPI.COMM_SELF, dtype=np.float64)


def _positions(disp, setup):
    q = lagrangian_grid(setup.nc, setup.box)
    return np.mod(q + disp, setup.box).reshape(3, -1).T


def density_modes(disp, setup, modes):
    """Exact Fourier modes of the density contrast of the particles at q + psi, at integer
    ``modes`` (multiples of k_f): delta(k) = <exp(-i k.(q + psi))> over the particles, a
    direct sum, no mesh (a mesh's painting aliases by more than the harmonics it measures).
    For a ZA plane wave psi = A k_hat cos(k.q + phi): |delta(m k)| = J_m(m |k| A), tested."""
    q = lagrangian_grid(setup.nc, setup.box)
    x = (q + np.asarray(disp, dtype=np.float64)).reshape(3, -1)
    kf = setup.k_fundamental
    return np.array([np.mean(np.exp(-1j * kf * np.tensordot(np.asarray(m, dtype=float), x, axes=1)))
                     for m in modes])


def harmonic_orders(mode, setup, max_order=4):
    """Orders m = 1, 2, ... max_order whose mode m * mode is below the Nyquist frequency."""
    orders = []
    for order in range(1, max_order + 1):
        if np.any(np.abs(order * np.asarray(mode)) >= setup.nc // 2):
            break
        orders.append(order)
    return orders


def measure_density(disp, mode, setup, max_order=4):
    """Density contrast at +-mode and its harmonics (exact particle sums, :func:`density_modes`):
    ``main`` variance 2 |delta_k|^2 (dimensionless), ``harmonics`` with their ratio to the main."""
    orders = harmonic_orders(mode, setup, max_order)
    d = density_modes(disp, setup, [o * np.asarray(mode) for o in orders])
    var = 2 * np.abs(d) ** 2
    return {"mode": [int(x) for x in mode], "k": mode_k(mode, setup), "main": {"variance": float(var[0])},
            "harmonics": [{"order": o, "mode": [int(o * x) for x in mode], "k": mode_k(np.multiply(o, mode), setup),
                           "variance": float(v), "ratio_to_main": float(v / var[0]) if var[0] > 0 else None}
                          for o, v in zip(orders[1:], var[1:])]}, d


def measure_modes(fk, mode, setup, vector=True, max_order=4):
    """Where the variance of a field lies, given its Fourier modes ``fk`` (C, n, n, n).

    Returns a dict: ``total`` (sum of |f_k|^2 over k != 0, (Mpc/h)^2 for a displacement),
    ``main`` (variance at +-mode, fraction of total), ``off_mode_fraction`` (the rest over
    the total, summed directly), ``harmonics`` (+-m mode for m = 2..max_order below the
    Nyquist frequency: variance and ratio to the main mode), ``largest_other`` (the
    strongest mode that is not +-mode or k = 0: signed mode, |k|, ratio to the main mode)
    and, for a vector field, ``longitudinal_fraction`` (|k_hat . f_k|^2 / |f_k|^2 at mode).
    """
    n = fk.shape[-1]
    v = (np.abs(fk) ** 2).sum(axis=0)
    m = np.asarray(mode)
    i_p, i_m = _idx(m, n), _idx(-m, n)
    main = v[i_p] + v[i_m]
    other = v.copy()
    other[0, 0, 0] = other[i_p] = other[i_m] = 0.0
    rest = float(other.sum())
    total = float(main + rest)
    out = {"mode": [int(x) for x in m], "k": mode_k(m, setup), "total_variance": total,
           "main": {"variance": float(main), "fraction_of_total": float(main / total) if total > 0 else None},
           "off_mode_fraction": rest / total if total > 0 else None}
    harmonics = []
    for order in harmonic_orders(m, setup, max_order)[1:]:
        h = order * m
        var = v[_idx(h, n)] + v[_idx(-h, n)]
        harmonics.append({"order": order, "mode": [int(x) for x in h], "k": mode_k(h, setup),
                          "variance": float(var), "ratio_to_main": float(var / main) if main > 0 else None})
    out["harmonics"] = harmonics
    j = np.unravel_index(int(np.argmax(other)), other.shape)
    sj = _signed(j, n)
    out["largest_other"] = {"mode": list(sj), "k": mode_k(sj, setup),
                            "variance": float(v[j] + v[_idx(-np.asarray(sj), n)]) if other[j] > 0 else 0.0}
    out["largest_other"]["ratio_to_main"] = out["largest_other"]["variance"] / float(main) if main > 0 else None
    if vector and fk.shape[0] == 3:
        khat = m / np.linalg.norm(m)
        c = fk[(slice(None),) + i_p]
        along = abs(np.dot(khat, c)) ** 2
        full = float((np.abs(c) ** 2).sum())
        out["longitudinal_fraction"] = float(along / full) if full > 0 else None
    return out


def compare_modes(fk_a, fk_b, mode):
    """Field a against field b at +-mode: ``transfer`` = variance ratio a / b (a power ratio:
    a linear filter W gives |W(k)|^2), ``r`` = Re(a_k . b_k*) / (|a_k| |b_k|), and ``phase_shift``
    = arg(a_k . b_k*) in rad, the shift of a's wave relative to b's (0 for no shift)."""
    n = fk_a.shape[-1]
    i = _idx(mode, n)
    a, b = fk_a[(slice(None),) + i], fk_b[(slice(None),) + i]
    cross = complex(np.vdot(b, a))       # sum_c a_c conj(b_c)
    pa, pb = float((np.abs(a) ** 2).sum()), float((np.abs(b) ** 2).sum())
    if pa == 0 or pb == 0:
        return {"transfer": pa / pb if pb > 0 else None, "r": None, "phase_shift": None}
    return {"transfer": pa / pb, "r": cross.real / math.sqrt(pa * pb),
            "phase_shift": math.atan2(cross.imag, cross.real)}


def _bin_of_mode(pm, res, mode):
    """Index in a binned result of the bin holding ``mode`` (same arithmetic as binned_power)."""
    n = pm.Nmesh
    kk = float(np.sqrt(pm.k2[mode[0] % n, mode[1] % n, abs(mode[2])]))   # |k| even in k: rfft half
    b = int(np.digitize([kk], res["edges"])[0]) - 1
    lo, hi = res["edges"][b], res["edges"][b + 1]
    return int(np.nonzero((res["k"] >= lo) & (res["k"] < hi))[0][0])


def binned_spectra(disp, setup, mode=None):
    """Binned P(k) of the displacement ((Mpc/h)^5, summed over components) and of the
    density of the particles at q + psi ((Mpc/h)^3; CIC on the DENSITY_BOOST-times finer mesh,
    window divided out), to the particle grid's Nyquist frequency: dicts with k (h/Mpc),
    power, modes, edges, and with ``mode`` the index ``injected_bin`` of the bin holding it."""
    pm = ParticleMesh(setup.nc, setup.box, MPI.COMM_SELF, dtype=np.float64)
    fine = _fine_mesh(setup)
    dens = density_k(fine, _positions(disp, setup), setup.nc ** 3, "cic")
    out = {"displacement": vector_power(pm, disp), "density": binned_power(fine, dens, edges=k_edges(pm))}
    if mode is not None:
        for mesh, key in ((pm, "displacement"), (fine, "density")):
            out[key]["injected_bin"] = _bin_of_mode(mesh, out[key], mode)
    return out


def other_bins_max_ratio(res, j0):
    """Largest binned power outside bin j0, over the power of bin j0."""
    p = np.asarray(res["power"])
    others = np.delete(p, j0)
    return float(others.max() / p[j0]) if len(others) and p[j0] > 0 else None


def spread(powers):
    """Spread between rows of ``powers`` (rows: orientations or phases; columns: k bins or
    a single number): population standard deviation over the mean, per column; None where the
    mean is below EMPTY_BIN of the largest column mean (no power there)."""
    p = np.asarray(powers, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    mean = p.mean(axis=0)
    std = p.std(axis=0)
    top = mean.max() if mean.size else 0.0
    return [float(s / m) if m > EMPTY_BIN * top and m > 0 else None for s, m in zip(std, mean)]


def _spec_json(res):
    return {"k": np.asarray(res["k"]).tolist(), "power": np.asarray(res["power"]).tolist(),
            "modes": np.asarray(res["modes"]).astype(int).tolist()}


def say(progress, msg):
    if progress is not None:
        progress(msg)


def stderr_progress(prefix):
    def progress(msg):
        print(f"{prefix}: {msg}", file=sys.stderr, flush=True)
    return progress


# --------------------------------------------------------------------------- the probe
def describe_field(disp, mode, setup, max_order=4):
    """Mode statistics and binned spectra of one displacement field and of its density."""
    fk = fourier_modes(disp)
    spectra = binned_spectra(disp, setup, mode)
    dens, dk = measure_density(disp, mode, setup, max_order)
    j_disp = spectra["displacement"]["injected_bin"]
    return {"displacement": {**measure_modes(fk, mode, setup, True, max_order),
                             "other_bins_max_ratio": other_bins_max_ratio(spectra["displacement"], j_disp),
                             "spectrum": _spec_json(spectra["displacement"]), "injected_bin": j_disp},
            "density": {**dens, "spectrum": _spec_json(spectra["density"]),
                        "injected_bin": spectra["density"]["injected_bin"]}}, fk, dk


def zero_input(predict, setup):
    """The prediction for a zero input (no displacement), and its summary: the part of every
    prediction that does not depend on the input (biases; a trained network need not map 0
    to 0). Returns (pred0 (3, nc, nc, nc) Mpc/h, dict with mean displacement (Mpc/h), rms
    about the mean (Mpc/h) and the strongest mode)."""
    zero = np.zeros((3, setup.nc, setup.nc, setup.nc))
    pred0 = check_prediction(predict(zero), zero)
    fk = fourier_modes(pred0)
    v = (np.abs(fk) ** 2).sum(axis=0)
    v[0, 0, 0] = 0.0
    j = np.unravel_index(int(np.argmax(v)), v.shape)
    sj = _signed(j, setup.nc)
    return pred0, {"mean_displacement": pred0.mean(axis=(1, 2, 3)).tolist(),
                   "rms_about_mean": float(np.sqrt(v.sum())),
                   "largest_mode": {"mode": list(sj), "k": mode_k(sj, setup),
                                    "variance": float(v[j] + v[_idx(-np.asarray(sj), setup.nc)]) if v[j] > 0 else 0.0}}


def probe_planewave(predict, setup, mode, amplitude, phase=0.0, with_nbody=False, max_order=4,
                    progress=None):
    """Plane-wave probe: report dict (JSON-able) for one mode psi = A k_hat cos(k.q + phi).

    ``predict``: (3, nc, nc, nc) ZA displacement in Mpc/h -> predicted displacement.
    ``mode``: integer mode (multiples of k_f); ``amplitude`` A in Mpc/h; ``phase`` in rad.
    ``fields`` of the report: "input" (the ZA plane wave), "model", "response" (model minus
    the prediction for a zero input, ``zero_input``: what the wave itself causes), and with
    ``with_nbody`` "fastpm" and "za_engine" (the engine's ZA on the same linear field).
    ``kept`` (model vs input at +-k): transfer = variance ratio (1 for the identity, W(k)^2
    for a filter W), r, phase shift, fraction of the total variance at +-k and the rest
    (off_mode_fraction); ``kept_response`` the same for the response; with FastPM also
    ``model_vs_fastpm``, ``response_vs_fastpm`` and ``input_vs_fastpm``.
    """
    mode = check_mode(mode, setup)
    amplitude = check_amplitude(amplitude, setup)
    if not np.isfinite(phase):
        raise InputError(f"phase must be a finite number of radians (got {phase})")
    kmag = mode_k(mode, setup)
    psi = planewave_displacement(setup, mode, amplitude, phase)
    say(progress, f"plane wave mode {mode} k_f, |k| = {kmag:.4g} h/Mpc, A = {amplitude:g} Mpc/h, phi = {phase:.4g}")
    pred = check_prediction(predict(psi), psi)
    pred0, zero = zero_input(predict, setup)
    fields = {"input": psi, "model": pred, "response": pred - pred0}
    if with_nbody:
        say(progress, "FastPM on the same plane-wave linear field")
        sims = run_planewave_nbody(setup, mode, amplitude, phase)
        fields["fastpm"] = sims["fastpm"]
        fields["za_engine"] = sims["za"]
    stats, fks = {}, {}
    for name, f in fields.items():
        stats[name], fks[name], _ = describe_field(f, mode, setup, max_order)
    report = {"probe": "planewave", "units": UNITS, "setup": setup.describe(), "mode": list(mode), "k": kmag,
              "k_vector": (np.asarray(mode) * setup.k_fundamental).tolist(), "amplitude": amplitude,
              "amplitude_times_k": amplitude * kmag, "phase": phase, "fields": stats,
              "zero_input": zero,
              "kept": compare_modes(fks["model"], fks["input"], mode),
              "kept_response": compare_modes(fks["response"], fks["input"], mode)}
    for key, name in (("kept", "model"), ("kept_response", "response")):
        report[key]["fraction_of_total"] = stats[name]["displacement"]["main"]["fraction_of_total"]
        report[key]["off_mode_fraction"] = stats[name]["displacement"]["off_mode_fraction"]
    if with_nbody:
        report["model_vs_fastpm"] = compare_modes(fks["model"], fks["fastpm"], mode)
        report["input_vs_fastpm"] = compare_modes(fks["input"], fks["fastpm"], mode)
        report["model_vs_fastpm"]["displacement_error"] = displacement_error(pred, fields["fastpm"])
        report["response_vs_fastpm"] = compare_modes(fks["response"], fks["fastpm"], mode)
        report["response_vs_fastpm"]["displacement_error"] = displacement_error(fields["response"], fields["fastpm"])
        report["input_vs_fastpm"]["displacement_error"] = displacement_error(psi, fields["fastpm"])
        report["za_engine_max_abs_difference"] = float(np.abs(fields["za_engine"] - psi).max())
    return report
