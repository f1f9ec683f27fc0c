"""A batched particle-mesh engine in torch: many small boxes at once on one device.

The same physics as the MPI engine (:mod:`cosmonet.sim`): white noise from the same seeds,
linear field, ZA and 2LPT, FastPM kick-drift-kick with the same growth-based factors, the
same 4-point finite-difference gradient and exact inverse Laplacian, CIC paint and
readout -- with a leading batch axis on every field. ``run_batch`` is the entry point.
"""
__all__ = ["run_batch"]


def __getattr__(name):
    # lazy, so that importing a light submodule (the noise workers import
    # cosmonet.torchpm.noise) does not import torch and MPI
    if name == "run_batch":
        from .simulate import run_batch
        return run_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
