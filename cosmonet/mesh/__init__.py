"""Distributed periodic meshes: FFTs, CIC paint/readout, particle exchange."""
from .layout import Layout
from .pm import ParticleMesh, clear_mesh_cache, get_mesh

__all__ = ["Layout", "ParticleMesh", "clear_mesh_cache", "get_mesh"]
