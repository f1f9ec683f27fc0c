"""numpy versions of the numba kernels, for an install without numba (no ``[mpi]`` extra).

When numba is absent, the ``njit`` of :mod:`cosmonet.extras` puts the function of the same
module and name from :data:`KERNELS` in place of a compiled kernel: the particle-mesh
kernels of :mod:`cosmonet.mesh.cic` (lattice positions, plane ordering, CIC paint, CIC and
FD4-gradient readout, owner planes), the particle ordering of :mod:`cosmonet.mesh.layout`
and the in-place updates of :mod:`cosmonet.sim.fastpm` (drift, kick, 1/k^2). The inline
helpers that only kernels call (``_cell``, ``_position``, ...) have no entry: they stay
plain Python, and the numpy kernels use the vectorised :func:`_cell` and :func:`_position`
below instead.

Each computes the same arithmetic in the same order and dtypes as its kernel: a
particle's cell is the true modulo of ``floor(x * (N / BoxSize))`` (NaN, inf and values
beyond int64 give cell 0 and the offset ``f - f``, as ``cic._cell``), positions are formed
in float64, paint adds a cell's contributions particle after particle in the kernel's
order and in the mesh's dtype (``np.add.at`` rounds each addition as the kernel's
``slab[...] += w`` does), and the readouts sum their terms in the kernel's order, so the
results are the compiled ones bit for bit (tests/test_install.py checks it). Particles are
taken in chunks of :data:`CHUNK` (a quarter of it for the FD4 readout, whose 30-odd
per-particle temporaries take about 550 bytes each) to bound the temporaries to some
50 MB (tracemalloc: at most about 170 bytes per particle of a chunk). They run some
10x slower than the compiled kernels (64^3 particles: paint 0.16 s, FD4 readout 0.18 s
of CPU). Positions in Mpc/h, as the kernels they replace.
"""
import numpy as np

#: particles per chunk of the vectorised kernels
CHUNK = 1 << 18


def _chunks(n, size=CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------- helpers
def _cell(x, scale, n):
    """cic._cell for an array: lower cell index in [0, n) (int64) and the offset.

    ``floor(f)`` equals the kernel's ``int(f)`` inside the box, so both branches of the
    kernel are one formula here; |f| >= 4e18, inf and NaN give cell 0 and ``f - f``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.asarray(x, dtype=np.float64) * scale
        bad = ~(np.abs(f) < 4.0e18)
        fl = np.floor(f)
        d = f - fl
        if bad.any():
            fl[bad] = 0.0
            d[bad] = f[bad] - f[bad]
    return np.mod(fl.astype(np.int64), n), d


def _position(arr, p, d, nc, start, spacing, index=None):
    """cic._position for the particles ``p`` (a slice or an index array): coordinate
    ``d`` in float64, ``arr[p, d]`` or lattice point plus displacement (not wrapped);
    ``index``: per-particle global lattice indices in place of ``start + p``."""
    x = np.asarray(arr[p, d], dtype=np.float64)
    if nc == 0:
        return x
    if index is not None:
        g = np.asarray(index[p], dtype=np.int64)
    else:
        g = start + (np.arange(p.start, p.stop, dtype=np.int64) if isinstance(p, slice) else p)
    if d == 0:
        i = g // (nc * nc)
    elif d == 1:
        i = (g // nc) % nc
    else:
        i = g % nc
    return i * spacing + x


def _outside(lx, nx, what):
    if lx.size and (lx.min() < 0 or lx.max() >= nx):
        raise ValueError(f"{what}: a particle lies outside this rank's slab")


# --------------------------------------------------------------------------- cic
def lattice_positions(disp, nc, start, spacing, out, index=None):
    """cic.lattice_positions: ``out[p] = q(start + p) + disp[p]`` in float64, Mpc/h
    (``q(index[p])`` with per-particle global lattice indices ``index``)."""
    for s in _chunks(disp.shape[0]):
        for d in range(3):
            out[s, d] = _position(disp, s, d, nc, start, spacing, index)


def plane_order(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index=None):
    """cic.plane_order: stable counting sort of the particles by lower x-plane, into
    ``order`` (n_p,) and ``first`` (nx + 1,); ValueError for a particle outside the slab."""
    scale = n / boxsize
    n_p = arr.shape[0]
    counts = np.zeros(nx, dtype=np.int64)
    for s in _chunks(n_p):
        lx = _cell(_position(arr, s, 0, nc, start, spacing, index), scale, n)[0] - x0
        _outside(lx, nx, "paint")
        counts += np.bincount(lx, minlength=nx)
    first[0] = 0
    first[1:] = np.cumsum(counts)
    fill = np.array(first[:nx], dtype=np.int64)
    for s in _chunks(n_p):
        lx = _cell(_position(arr, s, 0, nc, start, spacing, index), scale, n)[0] - x0
        by_plane = np.argsort(lx, kind="stable")
        planes = lx[by_plane]
        in_chunk = np.bincount(lx, minlength=nx)
        rank = np.arange(len(planes)) - (np.cumsum(in_chunk) - in_chunk)[planes]
        order[fill[planes] + rank] = by_plane + s.start
        fill += in_chunk


def paint_ghost(arr, nc, start, spacing, mass, order, first, slab, upper, ghost, x0, boxsize, index=None):
    """cic.paint_ghost: CIC paint plane by plane, ``slab`` overwritten, ``ghost`` the plane
    above the slab; each cell's additions in the kernel's order and dtype (bitwise equal)."""
    nx, n = slab.shape[0], slab.shape[1]
    scale = n / boxsize
    unit = mass.shape[0] == 0
    slab[...] = 0
    upper[...] = 0
    for l in range(nx):
        cur = upper[l % 2]
        cur[...] = 0
        lower_flat, upper_flat = slab[l].reshape(-1), cur.reshape(-1)
        for s in _chunks(int(first[l + 1] - first[l])):
            p = np.asarray(order[first[l] + s.start:first[l] + s.stop], dtype=np.int64)
            dx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)[1]
            iy, dy = _cell(_position(arr, p, 1, nc, start, spacing, index), scale, n)
            iz, dz = _cell(_position(arr, p, 2, nc, start, spacing, index), scale, n)
            jy = np.where(iy + 1 < n, iy + 1, 0)
            jz = np.where(iz + 1 < n, iz + 1, 0)
            m = 1.0 if unit else np.asarray(mass[p], dtype=np.float64)
            wx0 = m * (1.0 - dx)
            wx1 = m * dx
            wy0 = 1.0 - dy
            wz0 = 1.0 - dz
            corners = ((iy, iz, wy0, wz0), (iy, jz, wy0, dz), (jy, iz, dy, wz0), (jy, jz, dy, dz))
            cells = np.stack([y * n + z for y, z, _, _ in corners], axis=1).reshape(-1)
            # particle after particle, its corners in the kernel's order: the same sums
            np.add.at(lower_flat, cells, np.stack([wx0 * wy * wz for _, _, wy, wz in corners], axis=1).reshape(-1))
            np.add.at(upper_flat, cells, np.stack([wx1 * wy * wz for _, _, wy, wz in corners], axis=1).reshape(-1))
        if l > 0:
            slab[l] += upper[(l - 1) % 2]
    ghost[...] = upper[(nx - 1) % 2]


def _taps(w1, c1, c2):
    """cic._taps: the 6 FD4-CIC weights, offsets -2 .. 3 from the lower cell."""
    w0 = 1.0 - w1
    return (w0 * c2, w1 * c2 - w0 * c1, -w1 * c1, w0 * c1, w1 * c1 - w0 * c2, -w1 * c2)


def _wrap(j, n):
    return np.where(j < 0, j + n, np.where(j >= n, j - n, j))


class _Planes:
    """Gathers ``f[l, j, k]`` over the slab ``phi`` (planes 0 .. nx-1) and its halos
    ``lo`` (planes -2, -1) and ``hi`` (planes nx .. nx+2), as the kernel picks ``f``."""

    def __init__(self, phi, lo, hi, lx):
        self.phi, self.lo, self.hi, self.nx = phi, lo, hi, phi.shape[0]
        self.inner = bool(lx.size == 0 or (lx.min() >= 2 and lx.max() + 3 < self.nx))

    def __call__(self, l, j, k):
        if self.inner:
            return self.phi[l, j, k]
        below, above = l < 0, l >= self.nx
        v = self.phi[np.where(below | above, 0, l), j, k]
        if below.any():
            v[below] = self.lo[l[below] + 2, j[below], k[below]]
        if above.any():
            v[above] = self.hi[l[above] - self.nx, j[above], k[above]]
        return v


def readout_fd4_gradient(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index=None):
    """cic.readout_fd4_gradient: CIC readout of the FD4 gradient of ``phi`` (nx, N, N)
    with halos ``lo`` (2, N, N), ``hi`` (3, N, N) into ``out`` (n, 3); the kernel's sums."""
    nx, n = phi.shape[0], phi.shape[1]
    scale = n / boxsize
    c1 = 8.0 / (12.0 * (boxsize / n))
    c2 = 1.0 / (12.0 * (boxsize / n))
    for s in _chunks(arr.shape[0], CHUNK // 4):
        ix, dx = _cell(_position(arr, s, 0, nc, start, spacing, index), scale, n)
        iy, dy = _cell(_position(arr, s, 1, nc, start, spacing, index), scale, n)
        iz, dz = _cell(_position(arr, s, 2, nc, start, spacing, index), scale, n)
        lx = ix - x0
        _outside(lx, nx, "readout")
        f = _Planes(phi, lo, hi, lx)
        jj = [_wrap(iy + t - 2, n) for t in range(6)]
        kk = [_wrap(iz + t - 2, n) for t in range(6)]
        tx, ty, tz = _taps(dx, c1, c2), _taps(dy, c1, c2), _taps(dz, c1, c2)
        wy0 = 1.0 - dy
        wz0 = 1.0 - dz
        j0, j1, k0, k1 = jj[2], jj[3], kk[2], kk[3]
        gx = 0.0
        for t in range(6):
            l = lx + (t - 2)
            gx = gx + tx[t] * (wy0 * (wz0 * f(l, j0, k0) + dz * f(l, j0, k1))
                               + dy * (wz0 * f(l, j1, k0) + dz * f(l, j1, k1)))
        gy = 0.0
        gz = 0.0
        for a in range(2):
            l = lx + a
            wa = dx if a == 1 else 1.0 - dx
            sy = 0.0
            sz = 0.0
            for t in range(6):
                sy = sy + ty[t] * (wz0 * f(l, jj[t], k0) + dz * f(l, jj[t], k1))
                sz = sz + tz[t] * (wy0 * f(l, j0, kk[t]) + dy * f(l, j1, kk[t]))
            gy = gy + wa * sy
            gz = gz + wa * sz
        out[s, 0] = gx
        out[s, 1] = gy
        out[s, 2] = gz


def _readout(pos, fields, ghosts, x0, boxsize, out):
    nx, n = fields[0].shape[0], fields[0].shape[1]
    scale = n / boxsize
    for s in _chunks(pos.shape[0]):
        ix, dx = _cell(pos[s, 0], scale, n)
        iy, dy = _cell(pos[s, 1], scale, n)
        iz, dz = _cell(pos[s, 2], scale, n)
        lx = ix - x0
        _outside(lx, nx, "readout")
        jy = np.where(iy + 1 < n, iy + 1, 0)
        jz = np.where(iz + 1 < n, iz + 1, 0)
        w = ((1.0 - dy) * (1.0 - dz), (1.0 - dy) * dz, dy * (1.0 - dz), dy * dz)
        inside = lx + 1 < nx
        up = np.where(inside, lx + 1, 0)
        for c, (f, g) in enumerate(zip(fields, ghosts)):
            lo = w[0] * f[lx, iy, iz] + w[1] * f[lx, iy, jz] + w[2] * f[lx, jy, iz] + w[3] * f[lx, jy, jz]
            hi = np.where(inside, w[0] * f[up, iy, iz] + w[1] * f[up, iy, jz] + w[2] * f[up, jy, iz]
                          + w[3] * f[up, jy, jz],
                          w[0] * g[iy, iz] + w[1] * g[iy, jz] + w[2] * g[jy, iz] + w[3] * g[jy, jz])
            out[s, c] = (1.0 - dx) * lo + dx * hi


def readout_slab(pos, field, ghost, x0, boxsize, out):
    """cic.readout_slab: interpolate ``field`` (nx, N, N) at ``pos`` into ``out`` (n,)."""
    _readout(pos, (field,), (ghost,), x0, boxsize, out.reshape(-1, 1))


def readout_slab3(pos, f0, f1, f2, g0, g1, g2, x0, boxsize, out):
    """cic.readout_slab3: the three components of a vector field into ``out`` (n, 3)."""
    _readout(pos, (f0, f1, f2), (g0, g1, g2), x0, boxsize, out)


def owner_plane(pos_x, boxsize, n_mesh, out):
    """cic.owner_plane: the mesh plane of each particle's lower CIC corner."""
    scale = n_mesh / boxsize
    for s in _chunks(pos_x.shape[0]):
        out[s] = _cell(pos_x[s], scale, n_mesh)[0]


# --------------------------------------------------------------------------- layout
def counting_order(dest, n_ranks):
    """layout._counting_order: the stable permutation that groups particles by rank."""
    return np.argsort(np.asarray(dest, dtype=np.int64), kind="stable")


# --------------------------------------------------------------------------- fastpm
def _update(y, coef, x):
    """y = y + coef * x in float64, rounded to ``y``'s dtype, in place (rows of (n, 3))."""
    for s in _chunks(y.shape[0]):
        y[s] = np.asarray(y[s], dtype=np.float64) + coef * np.asarray(x[s], dtype=np.float64)


def drift_disp(disp, mom, factor):
    """fastpm.drift_disp: disp += factor * mom in place (float64 arithmetic)."""
    _update(disp, factor, mom)


def kick_mom(mom, coef, force):
    """fastpm.kick_mom: mom += coef * force in place (float64 arithmetic)."""
    _update(mom, coef, force)


def scale_by_inverse_k2(c, kx, ky, kz, factor):
    """fastpm.scale_by_inverse_k2: c *= factor / k^2 in place, 0 where k^2 = 0; |k|^2
    summed as the kernel does, ((kx^2 + ky^2) + kz^2), from the 1-D components (h/Mpc)."""
    rows = max(1, CHUNK // max(1, c.shape[1] * c.shape[2]))
    kyz = [np.asarray(ky, dtype=np.float64)[:, None], np.asarray(kz, dtype=np.float64)[None, :]]
    for i in range(0, c.shape[0], rows):
        kx_i = np.asarray(kx[i:i + rows], dtype=np.float64)[:, None, None]
        k2 = (kx_i * kx_i + kyz[0] * kyz[0]) + kyz[1] * kyz[1]
        positive = k2 > 0
        with np.errstate(divide="ignore"):
            ratio = np.where(positive, factor / np.where(positive, k2, 1.0), 0.0)
        c[i:i + rows] = np.where(positive, c[i:i + rows] * ratio, 0.0)


#: (module, kernel name) -> its numpy version
KERNELS = {
    ("cosmonet.mesh.cic", "lattice_positions"): lattice_positions,
    ("cosmonet.mesh.cic", "plane_order"): plane_order,
    ("cosmonet.mesh.cic", "paint_ghost"): paint_ghost,
    ("cosmonet.mesh.cic", "readout_fd4_gradient"): readout_fd4_gradient,
    ("cosmonet.mesh.cic", "readout_slab"): readout_slab,
    ("cosmonet.mesh.cic", "readout_slab3"): readout_slab3,
    ("cosmonet.mesh.cic", "owner_plane"): owner_plane,
    ("cosmonet.mesh.layout", "_counting_order"): counting_order,
    ("cosmonet.sim.fastpm", "drift_disp"): drift_disp,
    ("cosmonet.sim.fastpm", "kick_mom"): kick_mom,
    ("cosmonet.sim.fastpm", "scale_by_inverse_k2"): scale_by_inverse_k2,
}
