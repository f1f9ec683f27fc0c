"""numpy versions of the numba kernels, for an install without numba (no ``[mpi]`` extra).

When numba is absent, the ``njit`` of :mod:`cosmonet.extras` puts the function of the same
module and name from :data:`KERNELS` in place of a compiled kernel: the particle-mesh
kernels of :mod:`cosmonet.mesh.cic` (lattice positions, plane ordering, CIC paint, CIC and
FD4-gradient readout, owner planes), the particle ordering of :mod:`cosmonet.mesh.layout`
the in-place updates of :mod:`cosmonet.sim.fastpm` (drift, kick, 1/k^2) and the LPT/FastPM
output combination of :mod:`cosmonet.sim.lpt`. The inline
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
taken in chunks of :data:`CHUNK` to bound the temporaries to some 50 MB (tracemalloc:
at most about 170 bytes per particle of a chunk). They run some
10x slower than the compiled kernels (64^3 particles: paint 0.16 s, FD4 readout 0.05 s
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


def _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index, what):
    """cic._sort_by_plane, raising ValueError named ``what`` for a particle outside the slab."""
    scale = n / boxsize
    n_p = arr.shape[0]
    counts = np.zeros(nx, dtype=np.int64)
    for s in _chunks(n_p):
        lx = _cell(_position(arr, s, 0, nc, start, spacing, index), scale, n)[0] - x0
        _outside(lx, nx, what)
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


def plane_order(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index=None):
    """cic.plane_order: stable counting sort of the particles by lower x-plane, into
    ``order`` (n_p,) and ``first`` (nx + 1,); ValueError for a particle outside the slab."""
    _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index, "paint")


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


def _halo_plane(phi, lo, hi, l):
    """cic._halo_plane: local x-plane ``l`` in [-2, nx + 3) from the slab or its halos."""
    nx = phi.shape[0]
    return lo[l + 2] if l < 0 else (hi[l - nx] if l >= nx else phi[l])


def _fd4_plane(phi, lo, hi, l, c1, c2, g):
    """cic._fd4_plane: the three FD4 gradient components on local x-plane ``l`` into
    ``g`` (3, N, N) float64, the kernel's arithmetic (y and z periodic)."""
    fm2, fm1, f0, fp1, fp2 = (np.asarray(_halo_plane(phi, lo, hi, l + t), dtype=np.float64)
                              for t in (-2, -1, 0, 1, 2))
    g[0] = c1 * (fp1 - fm1) - c2 * (fp2 - fm2)
    for axis in (0, 1):
        g[1 + axis] = (c1 * (np.roll(f0, -1, axis) - np.roll(f0, 1, axis))
                       - c2 * (np.roll(f0, -2, axis) - np.roll(f0, 2, axis)))


def readout_fd4_gradient(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index=None,
                         order=None, first=None, grad=None):
    """cic.readout_fd4_gradient: CIC readout of the FD4 gradient of ``phi`` (nx, N, N)
    with halos ``lo`` (2, N, N), ``hi`` (3, N, N) into ``out`` (n, 3), plane by plane in
    ``order`` (sorted here when None), the gradient of planes l and l + 1 in ``grad``
    (2, 3, N, N) float64 as the kernel leaves it; the kernel's sums."""
    nx, n = phi.shape[0], phi.shape[1]
    scale = n / boxsize
    c1 = 8.0 / (12.0 * (boxsize / n))
    c2 = 1.0 / (12.0 * (boxsize / n))
    g = np.empty((2, 3, n, n), np.float64) if grad is None else grad
    if order is None:
        if arr.shape[0] > 2 ** 31 - 1:
            raise ValueError("readout: pass the plane order of more than 2^31 particles")
        order, first = np.empty(arr.shape[0], np.int32), np.zeros(nx + 1, np.int64)
        _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index, "readout")
    held = -1
    for l in range(nx):
        if first[l + 1] == first[l]:
            continue
        for m in range(l + 1 if held == l else l, l + 2):     # planes l (unless held) and l + 1
            _fd4_plane(phi, lo, hi, m, c1, c2, g[m % 2])
        held = l + 1
        g0, g1 = g[l % 2], g[(l + 1) % 2]
        for s in _chunks(int(first[l + 1] - first[l])):
            p = np.asarray(order[first[l] + s.start:first[l] + s.stop], dtype=np.int64)
            ix, dx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)
            iy, dy = _cell(_position(arr, p, 1, nc, start, spacing, index), scale, n)
            iz, dz = _cell(_position(arr, p, 2, nc, start, spacing, index), scale, n)
            if (ix - x0 != l).any():
                raise ValueError("readout: a particle lies outside the plane its order gives")
            jy = np.where(iy + 1 < n, iy + 1, 0)
            jz = np.where(iz + 1 < n, iz + 1, 0)
            wx0 = 1.0 - dx
            wy0 = 1.0 - dy
            wz0 = 1.0 - dz
            for c in range(3):
                a = wy0 * (wz0 * g0[c, iy, iz] + dz * g0[c, iy, jz]) + dy * (wz0 * g0[c, jy, iz] + dz * g0[c, jy, jz])
                b = wy0 * (wz0 * g1[c, iy, iz] + dz * g1[c, iy, jz]) + dy * (wz0 * g1[c, jy, iz] + dz * g1[c, jy, jz])
                out[p, c] = wx0 * a + dx * b


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
def counting_order(dest, n_ranks, order):
    """layout._counting_order: the stable permutation that groups particles by rank, into
    ``order``."""
    order[:] = np.argsort(np.asarray(dest, dtype=np.int64), kind="stable")


def lattice_rows(disp, idx, start, rows, index):
    """layout.lattice_rows: rows[:, :3] = disp[idx], index = idx + start."""
    rows[:, :3] = disp[idx]
    index[:] = np.asarray(idx, dtype=np.int64) + start


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


def kick_mom_at(mom, idx, coef, force):
    """fastpm.kick_mom_at: mom[idx] += coef * force in place (float64 arithmetic)."""
    for s in _chunks(len(idx)):
        p = idx[s]
        mom[p] = np.asarray(mom[p], dtype=np.float64) + coef * np.asarray(force[s], dtype=np.float64)


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


# --------------------------------------------------------------------------- lpt
def combine_into(p1, p2, c1, c2, factor, box, use_p2, use_factor, wrap, out):
    """lpt.combine_into: ``out = float32(w(factor * (c1 p1 + c2 p2)))`` over 1-D arrays in
    float64, each part only when asked; ``w`` the minimum image with ``np.mod``."""
    for s in _chunks(p1.shape[0]):
        f = c1 * np.asarray(p1[s], dtype=np.float64)
        if use_p2:
            f = f + c2 * np.asarray(p2[s], dtype=np.float64)
        if use_factor:
            f = factor * f
        if wrap:
            with np.errstate(invalid="ignore"):      # inf or box 0: NaN, as the kernel
                f = np.mod(f + 0.5 * box, box) - 0.5 * box
        out[s] = f


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
    ("cosmonet.mesh.layout", "lattice_rows"): lattice_rows,
    ("cosmonet.sim.fastpm", "drift_disp"): drift_disp,
    ("cosmonet.sim.fastpm", "kick_mom"): kick_mom,
    ("cosmonet.sim.fastpm", "kick_mom_at"): kick_mom_at,
    ("cosmonet.sim.fastpm", "scale_by_inverse_k2"): scale_by_inverse_k2,
    ("cosmonet.sim.lpt", "combine_into"): combine_into,
}
