"""numpy versions of the numba kernels, for an install without numba (no ``[mpi]`` extra).

When numba is absent, the ``njit`` of :mod:`cosmonet.extras` puts the function of the same
module and name from :data:`KERNELS` in place of a compiled kernel: the CIC paint and
readout of :mod:`cosmonet.mesh.cic`, the particle ordering of :mod:`cosmonet.mesh.layout`
and the FastPM drift and axpy of :mod:`cosmonet.sim.fastpm`. Each computes the same
arithmetic in the same order as its kernel (a particle's cell is ``floor(x * (N /
BoxSize))``, paint adds the eight corners particle after particle), so the results agree
with the compiled ones to rounding (tests/test_install.py). Particles are taken in chunks
of :data:`CHUNK` to bound the temporaries (about 130 bytes per particle of a chunk).
Positions in Mpc/h, as the kernels they replace.
"""
import numpy as np

#: particles per chunk of the vectorised kernels
CHUNK = 1 << 20


def _chunks(n):
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def _cell(x, scale, n):
    """Lower cell index in [0, n) and the fractional offset in [0, 1), as cic._cell."""
    f = x * scale
    fl = np.floor(f)
    d = f - fl
    i = fl.astype(np.int64)
    i = np.where(i >= n, i - n, np.where(i < 0, i + n, i))
    return i, d


def _corners(pos, scale, n, x0):
    ix, dx = _cell(pos[:, 0], scale, n)
    iy, dy = _cell(pos[:, 1], scale, n)
    iz, dz = _cell(pos[:, 2], scale, n)
    jy = np.where(iy + 1 < n, iy + 1, 0)
    jz = np.where(iz + 1 < n, iz + 1, 0)
    return ix - x0, dx, iy, jy, iz, jz, dy, dz


def paint_slab(pos, mass, slab, x0, boxsize):
    """cic.paint_slab: add the CIC-weighted ``mass`` of each particle to ``slab`` (nx + 1, N, N)."""
    n = slab.shape[1]
    scale = n / boxsize
    flat = slab.reshape(-1)
    for s in _chunks(pos.shape[0]):
        lx, dx, iy, jy, iz, jz, dy, dz = _corners(pos[s], scale, n, x0)
        m = mass[s]
        wx0 = m * (1.0 - dx)
        wx1 = m * dx
        wy0 = 1.0 - dy
        wz0 = 1.0 - dz
        cells = np.stack([((lx + a) * n + y) * n + z for a in (0, 1) for y, z in
                          ((iy, iz), (iy, jz), (jy, iz), (jy, jz))], axis=1)
        weights = np.stack([wx * wy * wz for wx in (wx0, wx1) for wy, wz in
                            ((wy0, wz0), (wy0, dz), (dy, wz0), (dy, dz))], axis=1)
        np.add.at(flat, cells.reshape(-1), weights.reshape(-1))   # particle after particle, as the loop


def _plane(f, lx, iy, jy, iz, jz, w):
    return w[0] * f[lx, iy, iz] + w[1] * f[lx, iy, jz] + w[2] * f[lx, jy, iz] + w[3] * f[lx, jy, jz]


def _ghost(g, iy, jy, iz, jz, w):
    return w[0] * g[iy, iz] + w[1] * g[iy, jz] + w[2] * g[jy, iz] + w[3] * g[jy, jz]


def _readout(pos, fields, ghosts, x0, boxsize, out):
    nx, n = fields[0].shape[0], fields[0].shape[1]
    scale = n / boxsize
    for s in _chunks(pos.shape[0]):
        lx, dx, iy, jy, iz, jz, dy, dz = _corners(pos[s], scale, n, x0)
        w = ((1.0 - dy) * (1.0 - dz), (1.0 - dy) * dz, dy * (1.0 - dz), dy * dz)
        inside = lx + 1 < nx
        up = np.where(inside, lx + 1, 0)
        for c, (f, g) in enumerate(zip(fields, ghosts)):
            lo = _plane(f, lx, iy, jy, iz, jz, w)
            hi = np.where(inside, _plane(f, up, iy, jy, iz, jz, w), _ghost(g, iy, jy, iz, jz, w))
            out[s, c] = (1.0 - dx) * lo + dx * hi


def readout_slab(pos, field, ghost, x0, boxsize, out):
    """cic.readout_slab: interpolate ``field`` (nx, N, N) at ``pos`` into ``out`` (n,)."""
    _readout(pos, (field,), (ghost,), x0, boxsize, out.reshape(-1, 1))


def readout_slab3(pos, f0, f1, f2, g0, g1, g2, x0, boxsize, out):
    """cic.readout_slab3: the three components of a vector field into ``out`` (n, 3)."""
    _readout(pos, (f0, f1, f2), (g0, g1, g2), x0, boxsize, out)


def owner_plane(pos_x, boxsize, n_mesh, out):
    """cic.owner_plane: the mesh plane of each particle's lower CIC corner."""
    out[:] = _cell(np.asarray(pos_x), n_mesh / boxsize, n_mesh)[0]


def counting_order(dest, n_ranks):
    """layout._counting_order: the stable permutation that groups particles by rank."""
    return np.argsort(np.asarray(dest, dtype=np.int64), kind="stable")


def drift_wrap(pos, mom, factor, boxsize):
    """fastpm.drift_wrap: pos += factor * mom, wrapped into [0, boxsize) (in place)."""
    for s in _chunks(pos.shape[0]):
        x = pos[s] + factor * mom[s]
        x -= boxsize * np.floor(x / boxsize)
        x[x >= boxsize] = 0.0
        pos[s] = x


def axpy(y, alpha, x):
    """fastpm.axpy: y += alpha * x in place."""
    if not (y.flags.c_contiguous and x.flags.c_contiguous):
        y += alpha * x
        return
    yf, xf = y.reshape(-1), x.reshape(-1)
    for s in _chunks(yf.shape[0]):
        yf[s] += alpha * xf[s]


#: (module, kernel name) -> its numpy version
KERNELS = {
    ("cosmonet.mesh.cic", "paint_slab"): paint_slab,
    ("cosmonet.mesh.cic", "readout_slab"): readout_slab,
    ("cosmonet.mesh.cic", "readout_slab3"): readout_slab3,
    ("cosmonet.mesh.cic", "owner_plane"): owner_plane,
    ("cosmonet.mesh.layout", "_counting_order"): counting_order,
    ("cosmonet.sim.fastpm", "drift_wrap"): drift_wrap,
    ("cosmonet.sim.fastpm", "axpy"): axpy,
}
