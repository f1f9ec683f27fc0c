"""Cloud-in-cell (CIC) paint and readout kernels, compiled with numba.

Positions are in Mpc/h in [0, BoxSize); the mesh has ``N`` cells of size ``H =
BoxSize / N`` per side, cell ``i`` sitting at ``x = i H`` (cell corners, as pmesh and
nbodykit). A rank holds the x-planes ``[x0, x0 + nx)`` of a slab plus one ghost plane at
local index ``nx`` (the first plane of the next slab); ``y`` and ``z`` are periodic
within the slab. Paint and readout are exact adjoints of each other.
"""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def paint_slab(pos, mass, slab, x0, boxsize):
    """Add CIC-weighted ``mass`` of each particle to ``slab`` (shape (nx + 1, N, N)).

    ``mass`` is an array of per-particle weights (same length as ``pos``). Every
    particle must fall in the local planes ``[x0, x0 + nx)``; the plane above the slab
    goes into the ghost plane ``slab[nx]``.
    """
    n_mesh = slab.shape[1]
    cell = boxsize / n_mesh
    for p in range(pos.shape[0]):
        fx = pos[p, 0] / cell
        fy = pos[p, 1] / cell
        fz = pos[p, 2] / cell
        ix = int(np.floor(fx))
        iy = int(np.floor(fy))
        iz = int(np.floor(fz))
        dx = fx - ix
        dy = fy - iy
        dz = fz - iz
        lx = (ix % n_mesh) - x0
        iy0 = iy % n_mesh
        iz0 = iz % n_mesh
        iy1 = (iy0 + 1) % n_mesh
        iz1 = (iz0 + 1) % n_mesh
        m = mass[p]
        for ox in range(2):
            wx = dx if ox else 1.0 - dx
            for oy in range(2):
                wy = dy if oy else 1.0 - dy
                jy = iy1 if oy else iy0
                wxy = m * wx * wy
                slab[lx + ox, jy, iz0] += wxy * (1.0 - dz)
                slab[lx + ox, jy, iz1] += wxy * dz


@numba.njit(cache=True, nogil=True)
def readout_slab(pos, slab, x0, boxsize, out):
    """Interpolate ``slab`` (shape (nx + 1, N, N), ghost plane filled) at ``pos`` into ``out``."""
    n_mesh = slab.shape[1]
    cell = boxsize / n_mesh
    for p in range(pos.shape[0]):
        fx = pos[p, 0] / cell
        fy = pos[p, 1] / cell
        fz = pos[p, 2] / cell
        ix = int(np.floor(fx))
        iy = int(np.floor(fy))
        iz = int(np.floor(fz))
        dx = fx - ix
        dy = fy - iy
        dz = fz - iz
        lx = (ix % n_mesh) - x0
        iy0 = iy % n_mesh
        iz0 = iz % n_mesh
        iy1 = (iy0 + 1) % n_mesh
        iz1 = (iz0 + 1) % n_mesh
        acc = 0.0
        for ox in range(2):
            wx = dx if ox else 1.0 - dx
            for oy in range(2):
                wy = dy if oy else 1.0 - dy
                jy = iy1 if oy else iy0
                wxy = wx * wy
                acc += wxy * ((1.0 - dz) * slab[lx + ox, jy, iz0] + dz * slab[lx + ox, jy, iz1])
        out[p] = acc


@numba.njit(cache=True, nogil=True)
def owner_plane(pos_x, boxsize, n_mesh, out):
    """Mesh plane ``floor(x / H) mod N`` that holds each particle's lower CIC corner.

    Uses exactly the arithmetic of :func:`paint_slab`, so a particle is always sent to
    the rank whose planes the kernel will index.
    """
    cell = boxsize / n_mesh
    for p in range(pos_x.shape[0]):
        out[p] = int(np.floor(pos_x[p] / cell)) % n_mesh
