"""Cloud-in-cell (CIC) paint and readout kernels, compiled with numba.

Positions are in Mpc/h in [0, BoxSize); the mesh has ``N`` cells of size ``H =
BoxSize / N`` per side, cell ``i`` sitting at ``x = i H`` (cell corners, as pmesh and
nbodykit). A rank holds the x-planes ``[x0, x0 + nx)`` of a slab; the plane above its
last one (``x0 + nx``, periodically) belongs to the next rank and is handled as a ghost
plane. ``y`` and ``z`` are periodic within the slab. Paint and readout are exact
adjoints of each other. Every kernel computes a particle's cell as
``floor(x * (N / BoxSize))``, the same arithmetic, so routing and painting agree.
"""
import numpy as np

from ..extras import numba   # without numba: the numpy kernels of cosmonet/numpy_kernels.py


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(x, scale, n):
    """Lower cell index in [0, n) and the fractional offset in [0, 1)."""
    f = x * scale
    i = int(np.floor(f))
    d = f - i
    if i >= n:
        i -= n
    elif i < 0:
        i += n
    return i, d


@numba.njit(cache=True, nogil=True)
def paint_slab(pos, mass, slab, x0, boxsize):
    """Add CIC-weighted ``mass`` of each particle to ``slab`` (shape (nx + 1, N, N)).

    ``mass`` has one weight per particle. Every particle must have its lower x-cell in
    the local planes ``[x0, x0 + nx)``; the plane above the slab is ``slab[nx]``.
    """
    n = slab.shape[1]
    scale = n / boxsize
    for p in range(pos.shape[0]):
        ix, dx = _cell(pos[p, 0], scale, n)
        iy, dy = _cell(pos[p, 1], scale, n)
        iz, dz = _cell(pos[p, 2], scale, n)
        lx = ix - x0
        jy = iy + 1 if iy + 1 < n else 0
        jz = iz + 1 if iz + 1 < n else 0
        m = mass[p]
        wx0 = m * (1.0 - dx)
        wx1 = m * dx
        wy0 = 1.0 - dy
        wz0 = 1.0 - dz
        slab[lx, iy, iz] += wx0 * wy0 * wz0
        slab[lx, iy, jz] += wx0 * wy0 * dz
        slab[lx, jy, iz] += wx0 * dy * wz0
        slab[lx, jy, jz] += wx0 * dy * dz
        slab[lx + 1, iy, iz] += wx1 * wy0 * wz0
        slab[lx + 1, iy, jz] += wx1 * wy0 * dz
        slab[lx + 1, jy, iz] += wx1 * dy * wz0
        slab[lx + 1, jy, jz] += wx1 * dy * dz


@numba.njit(cache=True, nogil=True, inline="always")
def _corner_weights(pos, p, scale, n, x0):
    ix, dx = _cell(pos[p, 0], scale, n)
    iy, dy = _cell(pos[p, 1], scale, n)
    iz, dz = _cell(pos[p, 2], scale, n)
    jy = iy + 1 if iy + 1 < n else 0
    jz = iz + 1 if iz + 1 < n else 0
    return (ix - x0, dx, iy, jy, iz, jz,
            (1.0 - dy) * (1.0 - dz), (1.0 - dy) * dz, dy * (1.0 - dz), dy * dz)


@numba.njit(cache=True, nogil=True, inline="always")
def _plane(f, lx, iy, jy, iz, jz, w00, w01, w10, w11):
    """Bilinear value on plane ``lx`` of the 3D array ``f`` (direct indexing, no views)."""
    return w00 * f[lx, iy, iz] + w01 * f[lx, iy, jz] + w10 * f[lx, jy, iz] + w11 * f[lx, jy, jz]


@numba.njit(cache=True, nogil=True, inline="always")
def _ghost(g, iy, jy, iz, jz, w00, w01, w10, w11):
    return w00 * g[iy, iz] + w01 * g[iy, jz] + w10 * g[jy, iz] + w11 * g[jy, jz]


@numba.njit(cache=True, nogil=True)
def readout_slab(pos, field, ghost, x0, boxsize, out):
    """Interpolate ``field`` (nx, N, N) at ``pos`` into ``out`` (n,).

    ``ghost`` (N, N) is the plane above the slab (the next rank's first plane).
    """
    nx, n = field.shape[0], field.shape[1]
    scale = n / boxsize
    for p in range(pos.shape[0]):
        lx, dx, iy, jy, iz, jz, w00, w01, w10, w11 = _corner_weights(pos, p, scale, n, x0)
        lo = _plane(field, lx, iy, jy, iz, jz, w00, w01, w10, w11)
        if lx + 1 < nx:
            hi = _plane(field, lx + 1, iy, jy, iz, jz, w00, w01, w10, w11)
        else:
            hi = _ghost(ghost, iy, jy, iz, jz, w00, w01, w10, w11)
        out[p] = (1.0 - dx) * lo + dx * hi


@numba.njit(cache=True, nogil=True)
def readout_slab3(pos, f0, f1, f2, g0, g1, g2, x0, boxsize, out):
    """:func:`readout_slab` for the three components of a vector field; ``out`` (n, 3).

    One weight computation per particle serves all three components.
    """
    nx, n = f0.shape[0], f0.shape[1]
    scale = n / boxsize
    for p in range(pos.shape[0]):
        lx, dx, iy, jy, iz, jz, w00, w01, w10, w11 = _corner_weights(pos, p, scale, n, x0)
        lo0 = _plane(f0, lx, iy, jy, iz, jz, w00, w01, w10, w11)
        lo1 = _plane(f1, lx, iy, jy, iz, jz, w00, w01, w10, w11)
        lo2 = _plane(f2, lx, iy, jy, iz, jz, w00, w01, w10, w11)
        if lx + 1 < nx:
            hi0 = _plane(f0, lx + 1, iy, jy, iz, jz, w00, w01, w10, w11)
            hi1 = _plane(f1, lx + 1, iy, jy, iz, jz, w00, w01, w10, w11)
            hi2 = _plane(f2, lx + 1, iy, jy, iz, jz, w00, w01, w10, w11)
        else:
            hi0 = _ghost(g0, iy, jy, iz, jz, w00, w01, w10, w11)
            hi1 = _ghost(g1, iy, jy, iz, jz, w00, w01, w10, w11)
            hi2 = _ghost(g2, iy, jy, iz, jz, w00, w01, w10, w11)
        out[p, 0] = (1.0 - dx) * lo0 + dx * hi0
        out[p, 1] = (1.0 - dx) * lo1 + dx * hi1
        out[p, 2] = (1.0 - dx) * lo2 + dx * hi2


@numba.njit(cache=True, nogil=True)
def owner_plane(pos_x, boxsize, n_mesh, out):
    """Mesh plane that holds each particle's lower CIC corner (as the kernels compute it)."""
    scale = n_mesh / boxsize
    for p in range(pos_x.shape[0]):
        out[p] = _cell(pos_x[p], scale, n_mesh)[0]
