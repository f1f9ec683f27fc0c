"""Probes of a trained displacement emulator: what did the network learn?

The experiments of the seed talk (``seed/seed-talk.md``, "Interrogating the learned
model"), each a function that takes a ``predict`` callable -- a (3, n, n, n) ZA
displacement in Mpc/h to the predicted (3, n, n, n) displacement in Mpc/h -- so the
arithmetic can be checked on operators whose answer is known (identity, a fixed Fourier
filter, an axis-dependent or position-dependent operator), and the command
``cosmonet probe KIND --checkpoint CKPT --out DIR`` wraps a checkpoint's network:

- :func:`~cosmonet.probes.planewave.probe_planewave`: one plane-wave ZA mode
  psi(q) = A k_hat cos(k.q + phi); where does the predicted power go?
- :func:`~cosmonet.probes.rotation.probe_rotation`: the same mode along the cube's
  symmetric directions; spread of the predicted power between orientations.
- :func:`~cosmonet.probes.phase.probe_phase`: the same mode at several phases.
- :func:`~cosmonet.probes.cosmology_probe.probe_cosmology`: other cosmologies' test pairs;
  model and 2LPT against FastPM.
- :func:`~cosmonet.probes.amplitude.probe_amplitude`: plane-wave amplitude from linear to
  shell crossing, model against FastPM on the same initial condition.

Units everywhere: k in h/Mpc, displacement and amplitude in Mpc/h, mode variance in
(Mpc/h)^2, displacement power in (Mpc/h)^5 (V |psi_k|^2 summed over the three
components), density power in (Mpc/h)^3, phases in radians. See docs/probes.md.
"""
__all__ = ["ProbeSetup", "measure_modes", "planewave_displacement", "planewave_linear_field",
           "probe_planewave", "resolve_mode"]


def __getattr__(name):
    """Import the probes on first use: ``cosmonet --help`` and argument errors must not pay
    for torch and scipy (several seconds)."""
    if name in __all__:
        from . import planewave
        return getattr(planewave, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
