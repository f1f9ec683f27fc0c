"""The linear density field delta_lin(k) at a = 1 for a batch of boxes.

The white noise is the MPI engine's own (:mod:`cosmonet.torchpm.noise`), drawn on the host
and moved to the device; the amplitude is :func:`cosmonet.sim.linear.power_on_mesh` of a
one-rank :class:`~cosmonet.mesh.ParticleMesh` of the particle grid. Normalisation as
:func:`cosmonet.sim.linear.linear_density_k`: ``<|delta_k|^2> = P_lin(k) / V``.
"""
import numpy as np
import torch

from ..errors import InputError
from ..extras import MPI   # COMM_SELF: mpi4py's, or a one-process stand-in without it
from ..mesh import get_mesh
from ..sim.linear import power_on_mesh


def host_mesh(nc, box):
    """The cached one-rank float64 :class:`~cosmonet.mesh.ParticleMesh` of the particle grid."""
    return get_mesh(nc, box, MPI.COMM_SELF, dtype=np.float64)


def amplitude(mesh, cosmologies):
    """sqrt(P_lin(k) N^3 / V) of each box's cosmology, (B, N, N, N//2+1) on the device, or
    (1, ...) when all boxes share one (float64 numpy evaluation, one per distinct cosmology)."""
    pm = host_mesh(mesh.Nmesh, mesh.BoxSize)
    volume = mesh.BoxSize ** 3
    cache = {}
    for c in cosmologies:
        if c not in cache:
            cache[c] = np.sqrt(power_on_mesh(pm, c.linear_power) * mesh.Nmesh ** 3 / volume)
    if len(cache) == 1:
        return mesh.to_device(next(iter(cache.values()))[None])
    return mesh.to_device(np.stack([cache[c] for c in cosmologies]))


def linear_density_k(mesh, noise, cosmologies):
    """delta_lin(k) at a = 1 from real white noise (B, N, N, N) (numpy or tensor) and
    one cosmology per box (or one for all): (B, N, N, N//2+1) complex on the device."""
    noise = torch.as_tensor(noise).to(device=mesh.device, dtype=mesh.dtype)
    delta_k = mesh.r2c(noise)
    del noise
    delta_k *= amplitude(mesh, cosmologies)
    return delta_k


def check_linear_fields(nc, delta):
    """User real-space fields (B, nc, nc, nc) at a = 1 (numpy, a tensor or nested
    sequences), checked: shape, a float dtype, finite values. Returns them as an array or
    tensor without copying an array or tensor; InputError naming the problem."""
    if not torch.is_tensor(delta):
        delta = np.asarray(delta)
    N = int(nc)
    if delta.ndim != 4 or tuple(delta.shape[1:]) != (N, N, N):
        raise InputError(f"linear fields must have shape (B, {N}, {N}, {N}) (got {tuple(delta.shape)})")
    if torch.is_tensor(delta):
        floating, finite = torch.is_floating_point(delta), lambda: bool(torch.isfinite(delta).all())
    else:
        floating, finite = np.issubdtype(delta.dtype, np.floating), lambda: bool(np.isfinite(delta).all())
    if not floating:
        raise InputError(f"linear fields must be a float array (got {delta.dtype})")
    if not finite():
        raise InputError("linear fields contain NaN or infinite values")
    return delta


def linear_field_k(mesh, delta):
    """delta_lin(k) from user real-space fields (B, N, N, N) at a = 1 (as
    :func:`cosmonet.sim.linear.load_linear_field`), checked by :func:`check_linear_fields`."""
    delta = check_linear_fields(mesh.Nmesh, delta)
    delta = delta if torch.is_tensor(delta) else torch.from_numpy(np.array(delta))   # a copy: memmaps are read-only
    return mesh.r2c(delta.to(device=mesh.device, dtype=mesh.dtype))
