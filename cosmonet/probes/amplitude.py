"""Amplitude probe: a plane wave from linear to shell crossing, model against FastPM.

A ZA plane wave psi = A k_hat cos(k.q + phi) has density delta = A k sin / (1 - A k sin)
in Lagrangian form: its streams cross where A k = 1 (D1 A_lin k = 1). Before that, in one
dimension the Zel'dovich solution is exact, so FastPM should follow ZA up to its own
numerical errors; after it, particles cross and fall back while ZA keeps them moving out.

For each amplitude (Mpc/h) the probe runs the model on the ZA plane wave and FastPM on the
same linear field (the engine's ``linear_field`` input) and reports, against FastPM:
the displacement error <|psi_x - psi_fastpm|> / <|psi_fastpm|> of the model and of ZA,
the main-mode transfer (variance ratio) and correlation r, and the harmonic content of
model and FastPM, and the prediction for a zero input (``zero_input``: a trained network
need not map 0 to 0, and a constant offset dominates the error of small waves).
``departs_at`` is the first (smallest) amplitude whose model error exceeds
``tolerance``, ``agrees_at`` the values of A k where it does not, and
``worse_than_za_from`` the first amplitude where the model is further from FastPM than
its own ZA input.
"""
import math

import numpy as np

from ..analysis.power import displacement_error
from ..errors import InputError
from .planewave import (UNITS, check_amplitude, check_mode, check_prediction, compare_modes, fourier_modes, measure_density,
                        measure_modes, mode_k, planewave_displacement, run_planewave_nbody, say, zero_input)

#: default sweep, as A |k| (ZA shell crossing at 1)
DEFAULT_AK = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5)


def default_amplitudes(mode, setup):
    """Amplitudes (Mpc/h) giving A |k| = DEFAULT_AK."""
    k = mode_k(mode, setup)
    return [ak / k for ak in DEFAULT_AK]


def probe_amplitude(predict, setup, mode, amplitudes=None, phase=0.0, tolerance=0.1, max_order=4,
                    progress=None):
    """Amplitude probe report (JSON-able) for ``mode`` (multiples of k_f) over ``amplitudes``
    (Mpc/h, default :func:`default_amplitudes`); FastPM runs for every amplitude."""
    mode = check_mode(mode, setup)
    amplitudes = default_amplitudes(mode, setup) if amplitudes is None else [float(a) for a in amplitudes]
    if not amplitudes or not all(math.isfinite(a) and a > 0 for a in amplitudes):
        raise InputError(f"amplitudes must be numbers > 0 Mpc/h (got {amplitudes})")
    amplitudes = [check_amplitude(a, setup) for a in amplitudes]
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise InputError(f"tolerance must be > 0 (got {tolerance})")
    amplitudes = sorted(amplitudes)
    kk = mode_k(mode, setup)
    _, zero = zero_input(predict, setup)
    rows = []
    for i, amp in enumerate(amplitudes):
        say(progress, f"amplitude {i + 1}/{len(amplitudes)}: A = {amp:.4g} Mpc/h (A k = {amp * kk:.3g}), "
                      "model and FastPM")
        psi = planewave_displacement(setup, mode, amp, phase)
        pred = check_prediction(predict(psi), psi)
        fp = run_planewave_nbody(setup, mode, amp, phase)["fastpm"]
        fk_in, fk_m, fk_f = fourier_modes(psi), fourier_modes(pred), fourier_modes(fp)
        m_stats = measure_modes(fk_m, mode, setup, True, max_order)
        f_stats = measure_modes(fk_f, mode, setup, True, max_order)
        m_dens, _ = measure_density(pred, mode, setup, max_order)
        f_dens, _ = measure_density(fp, mode, setup, max_order)
        z_dens, _ = measure_density(psi, mode, setup, max_order)
        vs = compare_modes(fk_m, fk_f, mode)
        rows.append({
            "amplitude": amp, "amplitude_times_k": amp * kk,
            "error_model": displacement_error(pred, fp), "error_za": displacement_error(psi, fp),
            "error_model_vs_za": displacement_error(pred, psi),
            "transfer_model": vs["transfer"], "r_model": vs["r"], "phase_shift_model": vs["phase_shift"],
            "transfer_za": compare_modes(fk_in, fk_f, mode)["transfer"],
            "harmonic_ratios_model": [h["ratio_to_main"] for h in m_stats["harmonics"]],
            "harmonic_ratios_fastpm": [h["ratio_to_main"] for h in f_stats["harmonics"]],
            "off_mode_fraction_model": m_stats["off_mode_fraction"],
            "off_mode_fraction_fastpm": f_stats["off_mode_fraction"],
            "density_variance": {"model": m_dens["main"]["variance"], "fastpm": f_dens["main"]["variance"],
                                 "za": z_dens["main"]["variance"]}})

    def first(cond):
        hit = next((r for r in rows if cond(r)), None)
        return None if hit is None else {"amplitude": hit["amplitude"], "amplitude_times_k": hit["amplitude_times_k"]}

    return {"probe": "amplitude", "units": UNITS, "setup": setup.describe(), "mode": list(mode), "k": kk,
            "phase": phase, "shell_crossing_amplitude": 1.0 / kk, "tolerance": tolerance, "rows": rows,
            "zero_input": zero,
            "departs_at": first(lambda r: r["error_model"] > tolerance),
            "worse_than_za_from": first(lambda r: r["error_model"] > r["error_za"]),
            "agrees_at": [r["amplitude_times_k"] for r in rows if r["error_model"] <= tolerance],
            "definitions": {"error": "<|psi_x - psi_fastpm|> / <|psi_fastpm|> over all particles",
                            "agrees_at": "A k of the amplitudes with error_model <= tolerance",
                            "transfer": "variance ratio at +-k, x / FastPM",
                            "departs_at": "first amplitude with error_model > tolerance",
                            "worse_than_za_from": "first amplitude with error_model > error_za"}}


def amplitudes_from_ak(values, mode, setup):
    """Amplitudes in Mpc/h from values of A |k|."""
    k = mode_k(mode, setup)
    return [float(v) / k for v in np.atleast_1d(values)]
