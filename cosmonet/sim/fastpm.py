"""FastPM particle-mesh N-body (Feng et al. 2016): kick-drift-kick with growth-based factors.

State: float32 displacements x - q from the Lagrangian lattice (Mpc/h; positions are
q + disp modulo L) and float32 momenta p = a^2 dx/dt / H0 (Mpc/h).
Equations of motion in H0 = 1 units:

    dx/da = p / (a^3 E),   dp/da = 1.5 Omega_m F / (a^2 E),   F(k) = i k / k^2 delta(k)

with delta the density contrast painted (CIC) on the force mesh. The kick and drift
factors of :class:`cosmonet.growth.Growth` integrate these exactly for a linearly
growing mode, so a single step reproduces the Zel'dovich approximation.
Steps are uniform in a from ``a_start`` to ``a_end`` (with outputs at several scale
factors, uniform within each segment between outputs: :func:`step_schedule`); each step costs one force
evaluation (1 forward + 1 inverse FFT on the force mesh: the FD4 gradient is taken in
real space, see :class:`GravitySolver`).
"""
from dataclasses import dataclass

import numpy as np

from ..extras import numba   # without numba: the numpy kernels of cosmonet/numpy_kernels.py


from ..mesh import cic


# --------------------------------------------------------------------------- in-place updates
@numba.njit(cache=True, nogil=True)
def drift_disp(disp, mom, factor):
    """disp += factor * mom in place: float64 arithmetic, rounded to the arrays' dtype."""
    for p in range(disp.shape[0]):
        for d in range(3):
            disp[p, d] = np.float64(disp[p, d]) + factor * np.float64(mom[p, d])


@numba.njit(cache=True, nogil=True)
def kick_mom(mom, coef, force):
    """mom += coef * force in place: float64 arithmetic, rounded to ``mom``'s dtype."""
    for p in range(mom.shape[0]):
        for d in range(3):
            mom[p, d] = np.float64(mom[p, d]) + coef * np.float64(force[p, d])


@numba.njit(cache=True, nogil=True)
def kick_mom_at(mom, idx, coef, force):
    """mom[idx[i]] += coef * force[i] in place: :func:`kick_mom` for the particles ``idx``
    (a round of forces coming home, :meth:`GravitySolver.kick_state`)."""
    for i in range(idx.shape[0]):
        p = idx[i]
        for d in range(3):
            mom[p, d] = np.float64(mom[p, d]) + coef * np.float64(force[i, d])


@numba.njit(cache=True, nogil=True)
def scale_by_inverse_k2(c, kx, ky, kz, factor):
    """c *= factor / k^2 in place (0 at k = 0), with |k|^2 built from the 1-D wavevector
    components ``kx`` (c.shape[0],), ``ky``, ``kz`` (h/Mpc): no full-size k^2 array."""
    for i in range(c.shape[0]):
        kx2 = kx[i] * kx[i]
        for j in range(c.shape[1]):
            kxy2 = kx2 + ky[j] * ky[j]
            for m in range(c.shape[2]):
                k2 = kxy2 + kz[m] * kz[m]
                c[i, j, m] = c[i, j, m] * (factor / k2) if k2 > 0 else 0.0


@dataclass
class ParticleState:
    """Local particles of a Lagrangian lattice, stored compactly.

    disp (n, 3) float32: x - q in Mpc/h (not wrapped; positions are q + disp modulo L);
    mom (n, 3) float32: momenta p in Mpc/h; a: scale factor; lattice = (nc, start, box):
    particle ``p`` is the lattice point of global C-order index ``start + p`` on the
    ``nc^3`` lattice q = (i, j, k) box / nc. The lattice positions are never stored.
    """

    disp: np.ndarray
    mom: np.ndarray
    a: float
    lattice: tuple

    def __post_init__(self):
        self.disp = np.ascontiguousarray(self.disp, dtype=np.float32)
        self.mom = np.ascontiguousarray(self.mom, dtype=np.float32)

    def positions(self):
        """Positions (n, 3) in [0, box) Mpc/h, float64 (a new array)."""
        nc, start, box = self.lattice
        pos = np.empty(self.disp.shape, np.float64)
        cic.lattice_positions(self.disp, nc, start, box / nc, pos)
        return np.mod(pos, box)


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

    F = -grad phi with nabla^2 phi = delta: the potential psi = delta(k) / k^2 (= -phi,
    exact inverse Laplacian, 0 at k = 0) is built in k space from 1-D wavevectors, and

    - ``gradient="fd4"``, ``method="real"`` (default): ONE inverse FFT brings psi to the
      mesh; the 4-point finite-difference gradient is taken in real space, two x-planes
      at a time (from the local slab plus a halo of 2 planes below and 3 above exchanged
      with the neighbouring ranks), and CIC-interpolated at the particles of each plane
      in paint's plane order (:func:`cosmonet.mesh.cic.readout_fd4_gradient`). Its Fourier
      transform is i (8 sin kH - sin 2kH) / 6H, the k-space FD4 kernel, so the two
      methods agree to round-off (``tests/test_engine_memory.py``).
    - ``method="kspace"`` (and ``gradient="fd2"`` or ``"exact"``): F_d(k) = i D_d(k) psi(k)
      of :func:`gradient_wavenumber`, three inverse FFTs, three force meshes.

    Buffers live in the mesh's cache, so a cached mesh serves every simulation; the real
    method keeps nothing but the mesh's two FFT buffers (the readout's gradient planes
    use the complex one, free by then).
    """

    def __init__(self, pm, n_particles_total, gradient="fd4", method=None):
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS} (got {gradient!r})")
        method = ("real" if gradient == "fd4" else "kspace") if method is None else method
        if method not in ("real", "kspace") or (method == "real" and gradient != "fd4"):
            raise ValueError(f"method must be 'kspace', or 'real' with gradient 'fd4' (got {method!r})")
        self.pm, self.gradient, self.method = pm, gradient, method
        self.nbar = n_particles_total / pm.Nmesh ** 3
        self._k1 = [np.ascontiguousarray(np.asarray(k, dtype=np.float64).ravel()) for k in pm.k]

    def force(self, pos):
        """F at local particle positions ``pos`` (n, 3) Mpc/h, shape (n, 3) float64."""
        return self._force(np.ascontiguousarray(pos, dtype=np.float64), None, np.float64)

    def force_state(self, state):
        """F at the particles of a :class:`ParticleState`, (n, 3) float32."""
        return self._force(state.disp, self._lattice(state), state.disp.dtype)

    def kick_state(self, state, coef):
        """``state.mom += coef * F`` (float64 arithmetic, rounded: :func:`kick_mom`), the
        same bits as ``kick_mom(state.mom, coef, force_state(state))``. On several ranks
        the forces are read out over the routed displacements they come from and kick the
        momenta as they arrive home, so neither an owner-side nor a home-side force array
        (12 bytes a particle each) exists."""
        mom = state.mom

        def kick_rows(idx, rows):
            kick_mom_at(mom, idx, coef, rows)
        force = self._force(state.disp, self._lattice(state), state.disp.dtype, kick_rows=kick_rows)
        if force is not None:
            kick_mom(mom, coef, force)

    def _lattice(self, state):
        nc, start, box = state.lattice
        if box != self.pm.BoxSize:
            raise ValueError(f"particle lattice box {box} differs from the mesh's {self.pm.BoxSize}")
        return nc, start

    def _potential_k(self, opos, lattice, index=None):
        """Paint, forward FFT, psi(k) = delta(k) / k^2 in the mesh's complex buffer;
        returns it and the particles' plane order (paint's, for the readout)."""
        pm = self.pm
        with pm.timers("paint"):
            rho, order, first = pm.paint_into(pm.real_workspace, opos, lattice=lattice, index=index,
                                              return_order=True)
        psi_k = pm.r2c(rho, out=pm.complex_workspace)
        kx, ky, kz = self._k1          # not under a timer: the split books it as "rest"
        scale_by_inverse_k2(psi_k, kx, ky, kz, 1.0 / self.nbar)
        return psi_k, order, first

    def _gradient_planes(self):
        """Scratch (2, 3, N, N) float64 for the readout's gradient planes: a view of the
        complex FFT buffer, free once psi is on the mesh (the c2r has consumed it), when
        it is large enough (always on one rank; on several ranks when the local complex
        slab has about 12 y-planes or more); else a new array (48 N^2 bytes)."""
        n = self.pm.Nmesh
        buf, need = self.pm.complex_workspace, 2 * 3 * n * n
        if buf.flags.c_contiguous and buf.nbytes >= 8 * need:
            return buf.reshape(-1).view(np.float64)[:need].reshape(2, 3, n, n)
        return np.empty((2, 3, n, n), np.float64)

    def _force(self, arr, lattice, dtype, kick_rows=None):
        """F at the particles, (n, 3) of ``dtype``; with ``kick_rows`` on several ranks,
        ``kick_rows(idx, F)`` for each round of the way home instead, and None
        (:meth:`kick_state`)."""
        pm = self.pm
        if pm.comm.size > 1 or self.method == "kspace":
            with pm.timers("paint"):
                if lattice is not None:      # owned displacements + lattice indices (kspace: positions)
                    layout, opos, index = pm.route_lattice(arr, lattice[0], lattice[1],
                                                           absolute=self.method == "kspace")
                    lattice = None if index is None else (lattice[0], 0)
                else:
                    layout, index = pm.decompose(arr), None
                    opos = layout.exchange(arr)
            del arr                          # only the routed copy is needed from here
        else:
            layout, opos, index = None, arr, None
        psi_k, order, first = self._potential_k(opos, lattice, index)
        if self.method == "kspace":
            del order, first
            return self._kspace_force(psi_k, opos, layout).astype(dtype, copy=False)
        psi = pm.c2r(psi_k, out=pm.real_workspace)
        del psi_k
        with pm.timers("readout"):
            lo, hi = pm.halo(psi, 2, 3)
            nc, start = (0, 0) if lattice is None else lattice
            # routed lattice rows (float32 displacements + int32 index, Layout.rows): the
            # forces overwrite the displacements they are read from (a particle's first)
            rows = None if layout is None else layout.rows
            in_rows = rows is not None and rows.dtype == dtype
            values = opos if in_rows else np.empty((len(opos), 3), dtype)
            cic.readout_fd4_gradient(opos, nc, start, pm.BoxSize / nc if nc else 0.0, psi, lo, hi,
                                     pm.x0, pm.BoxSize, values, index, order, first, self._gradient_planes())
            del opos, index, order, first    # the routed particles go before the gather
            if layout is None:
                return values                # one rank: the caller kicks (kick_mom)
            if in_rows:                      # 3 of the 4 columns travel home
                del values
                return layout.gather(rows, columns=3, into=kick_rows)
            return layout.gather(values, into=kick_rows)

    def _kspace_force(self, psi_k, pos, layout):
        """Three inverse FFTs of i D_d psi(k), CIC readout at the owner-side ``pos``."""
        pm = self.pm
        key = ("gravity-kspace",)
        if key not in pm.cache:
            pm.cache[key] = dict(psi_k=np.empty(pm.complex_shape, psi_k.dtype),
                                 forces=[pm.create_real() for _ in range(3)])
        buf = pm.cache[key]
        buf["psi_k"][...] = psi_k
        for d in range(3):
            kernel = (1j * gradient_wavenumber(pm.gradient_k(d), pm.cell_size, self.gradient)).astype(psi_k.dtype)
            pm.c2r(buf["psi_k"], out=buf["forces"][d], kernel=kernel)
        fields = buf["forces"]
        with pm.timers("readout"):
            ghosts = [pm.halo(f, 0, 1)[1][0] for f in fields]      # the plane above each slab
            values = np.empty((len(pos), 3))
            cic.readout_slab3(pos, *fields, *ghosts, pm.x0, pm.BoxSize, values)
            return layout.gather(values)


def drift(state, factor, a_f):
    """x += p(a_c) * factor (displacements, so no wrapping); factor = growth.drift_factor(a_i, a_c, a_f)."""
    drift_disp(state.disp, state.mom, float(factor))
    state.a = a_f


def time_steps(a_start, a_end, steps):
    """Scale factors of the step boundaries: ``steps + 1`` values uniform in a."""
    return np.linspace(a_start, a_end, steps + 1)


def segment_steps(a_start, outputs, steps):
    """Steps of each segment [a_start, outputs[0]], [outputs[0], outputs[1]], ...: every
    segment gets one step, then each further step goes to the segment whose step
    (length / its steps, in a) is largest, the earliest on a tie (steps within 1e-9
    relative count as equal). ``outputs``: ascending scale factors > a_start, the last
    the end; ``steps >= len(outputs)``. One output: ``[steps]``."""
    edges = [float(a_start)] + [float(a) for a in outputs]
    lengths = [hi - lo for lo, hi in zip(edges[:-1], edges[1:])]
    if steps < len(lengths):
        raise ValueError(f"{steps} steps cannot reach {len(lengths)} outputs")
    counts = [1] * len(lengths)
    for _ in range(steps - len(lengths)):
        sizes = [ln / c for ln, c in zip(lengths, counts)]
        top = max(sizes)
        counts[next(i for i, s in enumerate(sizes) if s >= top * (1 - 1e-9))] += 1
    return counts


def step_schedule(a_start, outputs, steps):
    """The step boundaries of a run with outputs at ``outputs`` (ascending, last = the
    end): one array per segment, ``time_steps(lo, hi, n)`` with n of
    :func:`segment_steps`. So every output is a step boundary, and the first segments of a
    run are those of a run that ends at one of its outputs with the steps it gave them."""
    counts = segment_steps(a_start, outputs, steps)
    edges = [float(a_start)] + [float(a) for a in outputs]
    return [time_steps(lo, hi, n) for lo, hi, n in zip(edges[:-1], edges[1:], counts)]


def run_fastpm(state, solver, growth, omega_m, a_end, steps, progress=None, outputs=None, on_output=None):
    """Evolve ``state`` in place from ``state.a`` to ``a_end`` in ``steps`` KDK steps.

    ``outputs``: ascending scale factors in (state.a, a_end] at which the run must stop
    on a step boundary (:func:`step_schedule`; ``None``: a_end only, steps uniform in a).
    At each output but the last, the momenta are synchronised (the closing half kick is
    applied alone), ``on_output(a)`` is called, and the next segment starts with its own
    opening half kick: each segment is exactly a run from the state at its start.
    ``progress(step, a)`` is called after each step when given.
    """
    outputs = [a_end] if outputs is None else list(outputs)
    if outputs[-1] != a_end:
        outputs.append(a_end)
    done = 0
    for a in step_schedule(state.a, outputs, steps):
        _run_segment(state, solver, growth, omega_m, a, progress, done)
        done += len(a) - 1
        if a[-1] != a_end and on_output is not None:
            on_output(float(a[-1]))
    return state


def _run_segment(state, solver, growth, omega_m, a, progress, done):
    """KDK steps between the boundaries ``a`` (from the state's a), momenta synchronised at the end."""
    steps = len(a) - 1
    a0, a1 = a[:-1], a[1:]
    ah = 0.5 * (a0 + a1)
    first_kick = growth.kick_factor(a0, a0, ah)
    drifts = growth.drift_factor(a0, ah, a1)
    second_kick = growth.kick_factor(ah, a1, a1)
    # p += 1.5 Omega_m F(a_c) * factor, with factor = growth.kick_factor(a_i, a_c, a_f)
    solver.kick_state(state, 1.5 * omega_m * float(first_kick[0]))
    for n in range(steps):
        drift(state, drifts[n], a1[n])
        # the closing kick of step n and the opening kick of step n + 1 share F(a_n+1)
        closing = second_kick[n] + (first_kick[n + 1] if n + 1 < steps else 0.0)
        solver.kick_state(state, 1.5 * omega_m * float(closing))
        if progress is not None:
            progress(done + n + 1, float(a1[n]))
    return state
