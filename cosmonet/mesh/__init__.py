"""Distributed periodic meshes: FFTs, CIC paint/readout, particle exchange."""
from .layout import Layout
from .pm import ParticleMesh

__all__ = ["Layout", "ParticleMesh"]
