"""FastPM particle-mesh N-body (Feng et al. 2016): kick-drift-kick with growth-based factors.

State: positions x (Mpc/h, wrapped into [0, L)) and momenta p = a^2 dx/dt / H0 (Mpc/h).
Equations of motion in H0 = 1 units:

    dx/da = p / (a^3 E),   dp/da = 1.5 Omega_m F / (a^2 E),   F(k) = i k / k^2 delta(k)

with delta the density contrast painted (CIC) on the force mesh. The kick and drift
factors of :class:`cosmonet.growth.Growth` integrate these exactly for a linearly
growing mode, so a single step reproduces the Zel'dovich approximation.
Steps are uniform in a from ``a_start`` to ``a_end``; each step costs one force
evaluation (1 forward + 3 inverse FFTs on the force mesh).
"""
from dataclasses import dataclass

import numpy as np

from ..extras import numba   # without numba: the numpy kernels of cosmonet/numpy_kernels.py


# --------------------------------------------------------------------------- in-place updates
@numba.njit(cache=True, nogil=True)
def drift_wrap(pos, mom, factor, boxsize):
    """pos += factor * mom, wrapped periodically into [0, boxsize) (in place)."""
    for p in range(pos.shape[0]):
        for d in range(3):
            x = pos[p, d] + factor * mom[p, d]
            x = x - boxsize * np.floor(x / boxsize)
            if x >= boxsize:
                x = 0.0
            pos[p, d] = x


@numba.njit(cache=True, nogil=True)
def axpy(y, alpha, x):
    """y += alpha * x in place (flat loop, no temporaries)."""
    yf = y.reshape(-1)
    xf = x.reshape(-1)
    for i in range(yf.shape[0]):
        yf[i] += alpha * xf[i]


@dataclass
class ParticleState:
    """Local particles: positions (n, 3) Mpc/h in [0, L), momenta (n, 3) Mpc/h, scale factor."""

    pos: np.ndarray
    mom: np.ndarray
    a: float

    def __post_init__(self):
        self.pos = np.ascontiguousarray(self.pos, dtype=np.float64)
        self.mom = np.ascontiguousarray(self.mom, dtype=np.float64)


GRADIENTS = ("fd4", "fd2", "exact")


def gradient_wavenumber(k, cell, kind):
    """Effective wavenumber of a derivative on a mesh of spacing ``cell`` (Mpc/h).

    ``"fd4"``: 4-point central difference, (8 sin kH - sin 2kH) / 6H (FastPM's default);
    ``"fd2"``: 2-point, sin(kH) / H; ``"exact"``: k. The finite-difference kernels vanish
    at the Nyquist frequency. That matters: particles on the Lagrangian lattice painted
    on a finer force mesh (boost > 1) make a strong near-Nyquist lattice pattern, and an
    exact gradient of it, read out at the particles, adds a spurious ~7% to the force of
    a large-scale mode (measured with boost 2); the finite-difference kernels suppress it.
    """
    if kind == "fd4":
        return (8 * np.sin(k * cell) - np.sin(2 * k * cell)) / (6 * cell)
    if kind == "fd2":
        return np.sin(k * cell) / cell
    if kind == "exact":
        return k
    raise ValueError(f"gradient must be one of {GRADIENTS} (got {kind!r})")


class GravitySolver:
    """Long-range PM force on a :class:`~cosmonet.mesh.ParticleMesh` (the force mesh).

    F(k) = i D(k) / k^2 delta(k): exact inverse Laplacian, gradient ``D`` from
    :func:`gradient_wavenumber` (``"fd4"`` default). Kernels and work buffers live in
    the mesh's cache, so a cached mesh serves every simulation without reallocating.
    """

    def __init__(self, pm, n_particles_total, gradient="fd4"):
        self.pm = pm
        self.nbar = n_particles_total / pm.Nmesh ** 3
        key = ("gravity", gradient)
        if key not in pm.cache:
            k2 = pm.k2
            with np.errstate(divide="ignore"):
                inv_k2 = np.where(k2 > 0, 1.0 / k2, 0.0)
            ctype = np.complex64 if pm.dtype == np.float32 else np.complex128
            kernels = [(1j * gradient_wavenumber(pm.gradient_k(d), pm.cell_size, gradient) * inv_k2).astype(ctype)
                       for d in range(3)]
            buffers = dict(delta_k=np.empty(pm.complex_shape, ctype),
                           forces=[pm.create_real() for _ in range(3)])
            pm.cache[key] = (kernels, buffers)
        self.kernels, self._buf = pm.cache[key]

    def force(self, pos):
        """F = i D / k^2 delta at each local particle, shape (n, 3), Mpc/h."""
        pm, buf = self.pm, self._buf
        layout = pm.decompose(pos)
        rho = pm.paint(pos, layout=layout, out=pm.real_workspace)
        delta_k = pm.r2c(rho, out=buf["delta_k"])
        delta_k *= 1.0 / self.nbar
        for d in range(3):
            pm.c2r(delta_k, out=buf["forces"][d], kernel=self.kernels[d])
        return pm.readout(buf["forces"], pos, layout=layout)


def kick(state, force, factor, omega_m):
    """p += 1.5 Omega_m F(a_c) * factor, with factor = growth.kick_factor(a_i, a_c, a_f)."""
    axpy(state.mom, 1.5 * omega_m * float(factor), force)


def drift(state, factor, a_f, boxsize):
    """x += p(a_c) * factor, wrapped into the box; factor = growth.drift_factor(a_i, a_c, a_f)."""
    drift_wrap(state.pos, state.mom, float(factor), float(boxsize))
    state.a = a_f


def time_steps(a_start, a_end, steps):
    """Scale factors of the step boundaries: ``steps + 1`` values uniform in a."""
    return np.linspace(a_start, a_end, steps + 1)


def run_fastpm(state, solver, growth, omega_m, a_end, steps, progress=None):
    """Evolve ``state`` in place from ``state.a`` to ``a_end`` in ``steps`` KDK steps.

    ``progress(step, a)`` is called after each step when given.
    """
    boxsize = solver.pm.BoxSize
    a = time_steps(state.a, a_end, steps)
    a0, a1 = a[:-1], a[1:]
    ah = 0.5 * (a0 + a1)
    first_kick = growth.kick_factor(a0, a0, ah)
    drifts = growth.drift_factor(a0, ah, a1)
    second_kick = growth.kick_factor(ah, a1, a1)
    force = solver.force(state.pos)
    kick(state, force, first_kick[0], omega_m)
    for n in range(steps):
        drift(state, drifts[n], a1[n], boxsize)
        force = solver.force(state.pos)
        # the closing kick of step n and the opening kick of step n + 1 share F(a_n+1)
        closing = second_kick[n] + (first_kick[n + 1] if n + 1 < steps else 0.0)
        kick(state, force, closing, omega_m)
        if progress is not None:
            progress(n + 1, float(a1[n]))
    return state
