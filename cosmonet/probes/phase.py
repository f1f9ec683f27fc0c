"""Phase probe: the same plane wave at several phases; theory says the power does not change.

A phase phi shifts the wave by phi / |k| along k_hat: a translation, under which the
physics (and a translation-equivariant map) leaves the power spectrum unchanged. A CNN on
the grid is exactly equivariant only to whole-cell translations; the seed's phases
0, pi/6, pi/3, pi/2, 2 pi/3, pi shift a k = 5 k_f wave (128 Mpc/h box) by 0.53-cell steps,
so a spread measures what the network does between grid points.

The spread (population std / mean over the phases, per k bin and at the injected mode)
is computed as in :mod:`cosmonet.probes.rotation`. For example the position-dependent
operator psi -> psi (1 + e cos(2 k.q)) turns psi = A k_hat cos(k.q + phi) into a main-mode
variance (A^2 / 2)(1 + e^2 / 4 + e cos 2 phi): phase dependent, with a known spread (tested).
"""
import math

from ..errors import InputError
from .planewave import UNITS, check_mode, mode_k
from .rotation import probe_family

SEED_PHASES = (0.0, math.pi / 6, math.pi / 3, math.pi / 2, 2 * math.pi / 3, math.pi)


def probe_phase(predict, setup, mode, amplitude, phases=SEED_PHASES, with_nbody=False, max_order=4,
                progress=None):
    """Phase probe report (JSON-able): the plane wave of ``mode`` (multiples of k_f), amplitude A
    (Mpc/h), at each phase of ``phases`` (rad); spread over phases as in the rotation probe."""
    mode = check_mode(mode, setup)
    phases = [float(p) for p in phases]
    if len(phases) < 2 or not all(math.isfinite(p) for p in phases):
        raise InputError(f"phases must be at least two finite numbers in rad (got {phases})")
    rows, spreads, spectra, nbody = probe_family(predict, setup, [(mode, p) for p in phases], amplitude,
                                                 with_nbody, max_order, progress, "phase")
    kk = mode_k(mode, setup)
    report = {"probe": "phase", "units": UNITS, "setup": setup.describe(), "mode": list(mode), "k": kk,
              "amplitude": amplitude, "amplitude_times_k": amplitude * kk, "phases": phases,
              "shift_cells": [p / kk / (setup.box / setup.nc) for p in phases],
              "cases": rows, "spread": spreads, "spread_definition": "population std / mean over phases",
              "spectra": spectra}
    if nbody is not None:
        report["fastpm"] = nbody
    return report
