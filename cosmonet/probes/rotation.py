"""Rotation probe: the same plane wave along symmetric directions; is the response the same?

The seed talk injects power at k = (0.25, 0, 0), (0, 0.25, 0) and (0, 0, 0.25) h/Mpc and
compares the predicted power spectra. Here the mode goes through the images chosen by
``symmetries`` (:func:`~cosmonet.probes.planewave.cube_orbit`: ``axes`` as in the talk,
``all`` the 48 cube symmetries, ``shell`` every mode of the same |k|), and the spread
between orientations is reported per k bin, and for the injected mode itself, as

    spread = std / mean   (population standard deviation over the orientations)

of the predicted power (a fraction: 0 for a rotation-invariant model). For example an
operator that multiplies the x component of the displacement by (1 + e) gives, with
``axes``, variances (1 + e)^2, 1, 1 (times A^2 / 2) and so a spread of
std([(1 + e)^2, 1, 1]) / mean([(1 + e)^2, 1, 1]) at the injected k (tested).
"""
import numpy as np

from .planewave import (EMPTY_BIN, UNITS, check_amplitude, check_mode, check_prediction, compare_modes, cube_orbit, describe_field,
                        fourier_modes, mode_k, planewave_displacement, run_planewave_nbody, say, spread)


def _summary(stats, kept=None):
    d, e = stats["displacement"], stats["density"]
    row = {"main_variance": d["main"]["variance"], "fraction_of_total": d["main"]["fraction_of_total"],
           "off_mode_fraction": d["off_mode_fraction"],
           "harmonic_ratios": [h["ratio_to_main"] for h in d["harmonics"]],
           "longitudinal_fraction": d.get("longitudinal_fraction"),
           "density_main_variance": e["main"]["variance"],
           "density_harmonic_ratios": [h["ratio_to_main"] for h in e["harmonics"]]}
    if kept is not None:
        row.update(transfer=kept["transfer"], r=kept["r"], phase_shift=kept["phase_shift"])
    return row


def _spreads(rows, stats):
    """Spread over the cases of the main-mode numbers and, per bin, of the binned spectra."""
    out = {"main_mode": spread([r["main_variance"] for r in rows])[0],
           "density_main_mode": spread([r["density_main_variance"] for r in rows])[0]}
    n_h = min(len(r["harmonic_ratios"]) for r in rows)
    out["harmonics"] = []
    for i in range(n_h):      # null for a harmonic without power (below EMPTY_BIN of the main mode)
        h = [r["main_variance"] * r["harmonic_ratios"][i] for r in rows]
        main = np.mean([r["main_variance"] for r in rows])
        out["harmonics"].append(spread(h)[0] if np.mean(h) > EMPTY_BIN * main else None)
    out["displacement_per_bin"] = spread([s["displacement"]["spectrum"]["power"] for s in stats])
    out["density_per_bin"] = spread([s["density"]["spectrum"]["power"] for s in stats])
    j = stats[0]["displacement"]["injected_bin"]
    out["injected_bin"] = out["displacement_per_bin"][j]
    return out


def probe_family(predict, setup, cases, amplitude, with_nbody=False, max_order=4, progress=None, what="case"):
    """Run plane waves ``cases`` = [(mode, phase), ...] (same |k|) through ``predict`` (and FastPM).

    Returns (rows, spreads, spectra, nbody) where rows are per-case summaries, spreads the
    spread over cases of the model's predictions (see module doc), spectra the binned
    displacement and density spectra per case (for figures), and nbody the same for
    FastPM on the same initial conditions (None without ``with_nbody``).
    """
    amplitude = check_amplitude(amplitude, setup)
    rows, stats, nb_rows, nb_stats = [], [], [], []
    for i, (mode, phase) in enumerate(cases):
        mode = check_mode(mode, setup)
        say(progress, f"{what} {i + 1}/{len(cases)}: mode {mode} k_f, phi = {phase:.4g}")
        psi = planewave_displacement(setup, mode, amplitude, phase)
        pred = check_prediction(predict(psi), psi)
        st, fk, _ = describe_field(pred, mode, setup, max_order)
        kept = compare_modes(fk, fourier_modes(psi), mode)
        rows.append({"mode": list(mode), "phase": phase, **_summary(st, kept)})
        stats.append(st)
        if with_nbody:
            fp = run_planewave_nbody(setup, mode, amplitude, phase)["fastpm"]
            st_n, fk_n, _ = describe_field(fp, mode, setup, max_order)
            kept_n = compare_modes(fk_n, fourier_modes(psi), mode)
            rows[-1]["model_vs_fastpm"] = compare_modes(fk, fk_n, mode)
            nb_rows.append({"mode": list(mode), "phase": phase, **_summary(st_n, kept_n)})
            nb_stats.append(st_n)
    spectra = {"k": stats[0]["displacement"]["spectrum"]["k"], "modes": stats[0]["displacement"]["spectrum"]["modes"],
               "displacement": [s["displacement"]["spectrum"]["power"] for s in stats],
               "density": [s["density"]["spectrum"]["power"] for s in stats],
               "injected_bin": stats[0]["displacement"]["injected_bin"]}
    nbody = None
    if with_nbody:
        nbody = {"cases": nb_rows, "spread": _spreads(nb_rows, nb_stats),
                 "displacement": [s["displacement"]["spectrum"]["power"] for s in nb_stats]}
    return rows, _spreads(rows, stats), spectra, nbody


def probe_rotation(predict, setup, mode, amplitude, phase=0.0, symmetries="axes", with_nbody=False,
                   max_order=4, progress=None):
    """Rotation probe report (JSON-able): the plane wave of ``mode`` (integer multiples of k_f)
    and amplitude A (Mpc/h) along each direction of ``cube_orbit(mode, symmetries)``.

    ``spread``: std / mean over orientations of the predicted displacement variance at the
    injected mode (``main_mode``), of its harmonics, of the density variance there, and per
    k bin of the binned displacement power (``displacement_per_bin``, k in ``k``) and density
    power (``density_per_bin``); null where a bin holds no power.
    """
    mode = check_mode(mode, setup)
    modes = cube_orbit(mode, symmetries)
    rows, spreads, spectra, nbody = probe_family(predict, setup, [(m, phase) for m in modes], amplitude,
                                                 with_nbody, max_order, progress, "orientation")
    report = {"probe": "rotation", "units": UNITS, "setup": setup.describe(), "mode": list(mode),
              "k": mode_k(mode, setup), "amplitude": amplitude, "amplitude_times_k": amplitude * mode_k(mode, setup),
              "phase": phase, "symmetries": symmetries, "orientations": rows, "spread": spreads,
              "spread_definition": "population std / mean over orientations", "spectra": spectra}
    if nbody is not None:
        report["fastpm"] = nbody
    return report
