"""The plane-by-plane FD4 readout (issue 18, D3M speed) against the per-particle stencil.

``cic.readout_fd4_gradient`` forms the three FD4 gradient components in float64 on two
x-planes at a time and CIC-interpolates them at the particles of a plane (in paint's
plane order); before, it summed a 6 x 2 x 2 stencil of the potential per component and
particle. The two are the same linear operator, so they agree to float64 round-off
(float32 outputs: to one rounding). Checked here:

- numba and numpy kernels against the stencil readout (kept below as the reference), on
  a full slab and a thin one with halos, float32 and float64, lattice displacements and
  absolute positions with wrapping; the order given or sorted in the kernel: same bits;
- the numba kernel equals its numpy version bit for bit with a given order and scratch
  (outputs and the scratch it leaves);
- the solver reuses paint's plane order and puts the gradient planes in the complex FFT
  buffer on one rank; its forces equal the stencil readout of the same potential;
- on 2 ranks (the scratch a view of the complex buffer at 32^3, a new array at 16^3)
  forces equal one rank's to float32 round-off;
- ``lpt.combine_into``, which builds the LPT and FastPM outputs in one compiled pass,
  gives the bits of the numpy expressions (``np.mod`` minimum image included) it replaced.
"""
import os

import numpy as np
import pytest
from mpi4py import MPI

from cosmonet import numpy_kernels
from cosmonet.mesh import ParticleMesh, cic
from cosmonet.numpy_kernels import _cell, _chunks, _position
from cosmonet.sim.fastpm import GravitySolver, ParticleState

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- reference
def _taps(w1, c1, c2):
    w0 = 1.0 - w1
    return (w0 * c2, w1 * c2 - w0 * c1, -w1 * c1, w0 * c1, w1 * c1 - w0 * c2, -w1 * c2)


def _stencil_readout(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, index=None):
    """The previous readout (float64): per particle and component, a 6 x 2 x 2 stencil of
    CIC weights times FD4 coefficients applied to ``phi`` and its halos."""
    nx, n = phi.shape[0], phi.shape[1]
    ext = np.concatenate([lo, phi, hi]).astype(np.float64)     # planes -2 .. nx + 2
    scale = n / boxsize
    c1, c2 = 8.0 / (12.0 * (boxsize / n)), 1.0 / (12.0 * (boxsize / n))
    out = np.empty((arr.shape[0], 3))
    for s in _chunks(arr.shape[0]):
        ix, dx = _cell(_position(arr, s, 0, nc, start, spacing, index), scale, n)
        iy, dy = _cell(_position(arr, s, 1, nc, start, spacing, index), scale, n)
        iz, dz = _cell(_position(arr, s, 2, nc, start, spacing, index), scale, n)
        lx = ix - x0 + 2
        assert lx.min() >= 2 and lx.max() < nx + 2
        jj = [(iy + t - 2) % n for t in range(6)]
        kk = [(iz + t - 2) % n for t in range(6)]
        tx, ty, tz = _taps(dx, c1, c2), _taps(dy, c1, c2), _taps(dz, c1, c2)
        wy0, wz0 = 1.0 - dy, 1.0 - dz
        j0, j1, k0, k1 = jj[2], jj[3], kk[2], kk[3]
        g = np.zeros((3, len(dx)))
        for t in range(6):
            f = ext[lx + t - 2]
            g[0] += tx[t] * (wy0 * (wz0 * f[np.arange(len(dx)), j0, k0] + dz * f[np.arange(len(dx)), j0, k1])
                             + dy * (wz0 * f[np.arange(len(dx)), j1, k0] + dz * f[np.arange(len(dx)), j1, k1]))
        for a, wa in ((0, 1.0 - dx), (1, dx)):
            l = lx + a
            for t in range(6):
                g[1] += wa * ty[t] * (wz0 * ext[l, jj[t], k0] + dz * ext[l, jj[t], k1])
                g[2] += wa * tz[t] * (wy0 * ext[l, j0, kk[t]] + dy * ext[l, j1, kk[t]])
        out[s] = g.T
    return out


def _cases(rng):
    """(arr, nc, start, spacing, x0, nx, dtype) of the particles of a slab of an n = 12 mesh."""
    n, box = 12, 50.0
    pos = rng.uniform(0, box, (4000, 3))
    pos[:6, 1:] = [[0.0, box * (1 - 1e-16)], [box, -1e-300], [-1e-12, box * (1 + 1e-15)],
                   [-3 * box, 7.5 * box], [box - 1e-9, 1e-9], [0.5 * box, box]]
    planes = np.floor(np.mod(pos[:, 0], box) * (n / box)).astype(int) % n
    nc, start = 10, 0
    disp = (rng.standard_normal((nc ** 3, 3)) * 3).astype(np.float32)
    disp[:4] += np.float32(60.0)                                 # wrapped lattice particles
    # two kernel signatures (numba compiles each once): absolute float64, lattice float32
    return n, box, [(pos[(planes >= 3) & (planes < 6)], 0, 0, 0.0, 3, 3, np.float64),   # thin slab, halos
                    (pos, 0, 0, 0.0, 0, n, np.float64),
                    (disp, nc, start, box / nc, 0, n, np.float32),
                    (disp[:0].copy(), nc, start, box / nc, 0, n, np.float32)]   # no particles


def _mesh_and_order(rng, kernels, arr, nc, start, sp, x0, nx, dtype, n, box):
    """A random potential slab with its halo planes (phi, lo, hi) and the particles' plane
    order (order, first) from ``kernels.plane_order``."""
    phi, lo, hi = (rng.standard_normal((m, n, n)).astype(dtype) for m in (nx, 2, 3))
    order, first = np.empty(len(arr), np.int32), np.zeros(nx + 1, np.int64)
    kernels.plane_order(arr, nc, start, sp, x0, nx, box, n, order, first)
    return phi, lo, hi, order, first


@pytest.mark.parametrize("kernels", [cic, numpy_kernels], ids=["numba", "numpy"])
def test_plane_readout_equals_the_stencil_readout(kernels):
    rng = np.random.default_rng(18)
    n, box, cases = _cases(rng)
    for arr, nc, start, sp, x0, nx, dtype in cases:
        phi, lo, hi, order, first = _mesh_and_order(rng, kernels, arr, nc, start, sp, x0, nx, dtype, n, box)
        given = np.zeros((len(arr), 3), dtype)
        kernels.readout_fd4_gradient(arr, nc, start, sp, phi, lo, hi, x0, box, given, None, order, first,
                                     np.full((2, 3, n, n), np.nan))
        sorted_here = np.zeros((len(arr), 3), dtype)
        kernels.readout_fd4_gradient(arr, nc, start, sp, phi, lo, hi, x0, box, sorted_here)
        assert np.array_equal(given, sorted_here)
        if not len(arr):
            continue
        ref = _stencil_readout(arr, nc, start, sp, phi, lo, hi, x0, box)
        scale = np.abs(ref).max()
        assert scale > 0.1
        rel = np.abs(given - ref).max() / scale
        assert rel <= (2e-7 if dtype == np.float32 else 1e-14), (dtype, rel)


def test_numba_and_numpy_plane_readouts_are_bitwise_equal():
    """Outputs and the scratch left by the kernels (the gradient of the last two planes
    computed) are the same bits; a particle outside the plane its order gives raises."""
    rng = np.random.default_rng(5)
    n, box, cases = _cases(rng)
    for arr, nc, start, sp, x0, nx, dtype in cases:
        phi, lo, hi, order, first = _mesh_and_order(rng, cic, arr, nc, start, sp, x0, nx, dtype, n, box)
        results = []
        for kernels in (cic, numpy_kernels):
            out, grad = np.zeros((len(arr), 3), dtype), np.full((2, 3, n, n), -1.0)
            kernels.readout_fd4_gradient(arr, nc, start, sp, phi, lo, hi, x0, box, out, None, order, first, grad)
            results.append((out, grad))
        assert np.array_equal(results[0][0], results[1][0])
        assert np.array_equal(results[0][1], results[1][1])
        if len(arr) > 10:
            bad = order.copy()
            bad[[0, -1]] = bad[[-1, 0]]          # the first plane's first particle and the last plane's last
            for kernels in (cic, numpy_kernels):
                with pytest.raises(ValueError, match="outside the plane its order gives"):
                    kernels.readout_fd4_gradient(arr, nc, start, sp, phi, lo, hi, x0, box,
                                                 np.zeros((len(arr), 3), dtype), None, bad, first,
                                                 np.zeros((2, 3, n, n)))


def test_solver_reuses_paint_order_and_the_complex_buffer():
    """nc 16 lattice, 32^3 float32 force mesh, one rank: the gradient planes are a view of
    the complex FFT buffer, and the forces equal the stencil readout of the potential the
    solver left in the real buffer (measured: the same bits)."""
    nc, box = 16, 64.0
    rng = np.random.default_rng(3)
    pm = ParticleMesh(32, box, MPI.COMM_SELF, dtype=np.float32)
    solver = GravitySolver(pm, nc ** 3)
    assert np.shares_memory(solver._gradient_planes(), pm.complex_workspace)
    state = ParticleState(disp=rng.normal(0.0, 2.0, (nc ** 3, 3)), mom=np.zeros((nc ** 3, 3)), a=0.5,
                          lattice=(nc, 0, box))
    force = solver.force_state(state)
    assert force.dtype == np.float32
    psi = pm.real_workspace
    lo, hi = pm.halo(psi, 2, 3)
    ref = _stencil_readout(state.disp, nc, 0, box / nc, psi, lo, hi, 0, box)
    assert np.abs(force - ref).max() <= 2e-7 * np.abs(ref).max()


@pytest.mark.mpi
def test_two_ranks_equal_one_rank(tmp_path):
    from mpi_util import mpirun
    out = tmp_path / "d3m.npz"
    mpirun(2, [os.sys.executable, os.path.join(HERE, "mpi", "check_d3m_readout.py"), out])
    r = np.load(out)
    assert list(r["view"]) == [True, False]         # 32^3: the complex buffer; 16^3: too small
    for n in (32, 16):
        one, two = r[f"one_{n}"], r[f"two_{n}"]
        assert np.abs(one).max() > 0.1
        assert np.abs(two - one).max() <= 1e-6 * np.abs(one).max(), n
        # kick_state (forces over the routed rows, kicking as they come home) = force + kick
        assert r[f"fused_{n}"].dtype == np.float32 and np.abs(r[f"fused_{n}"]).max() > 1.0
        assert r[f"fused_{n}"].tobytes() == r[f"apart_{n}"].tobytes(), n


@pytest.mark.parametrize("box", [128.0, 100.0, 1e-3, -128.0, 0.0])
def test_outputs_combine_as_the_numpy_expressions(box):
    """``lpt.combine_into`` (the LPT and FastPM outputs, the initial state) gives the bits of
    the numpy expressions it replaced, ``mod(f + box/2, box) - box/2`` included, on both
    sides of every branch of its fmod-free remainder (0, +-box/2, +-3 box/2, far, NaN, inf)."""
    from cosmonet.sim.lpt import combine_into
    rng = np.random.default_rng(2)
    b = abs(box)
    x = np.concatenate([rng.standard_normal(5000) * 2 * b, rng.uniform(-1, 1, 50) * 1e-300,
                        [0.0, -0.0, 1e300, -1e300, np.inf, -np.inf, np.nan, 5e-324, -5e-324]])
    for edge in (0.5 * b, 1.5 * b):
        x = np.concatenate([x, [edge, -edge, np.nextafter(edge, 0), np.nextafter(-edge, 0),
                                np.nextafter(edge, np.inf), np.nextafter(-edge, -np.inf)]])
    y = rng.standard_normal(len(x))
    with np.errstate(all="ignore"):
        for args, ref in (((x, y, 0.7, -0.3, 1.5, box, True, True, True), np.mod(1.5 * (0.7 * x + -0.3 * y) + 0.5 * box, box) - 0.5 * box),
                          ((x, y, 0.7, 0.0, 1.0, box, False, False, True), np.mod(0.7 * x + 0.5 * box, box) - 0.5 * box),
                          ((x, y, 0.7, -0.3, 2.0, box, True, True, False), 2.0 * (0.7 * x + -0.3 * y))):
            out = np.zeros((len(x), 2), np.float32)
            combine_into(*args, out[:, 1])
            assert np.array_equal(out[:, 1], ref.astype(np.float32), equal_nan=True)
            assert np.array_equal(np.signbit(out[:, 1]), np.signbit(ref.astype(np.float32)))
            assert not out[:, 0].any()
