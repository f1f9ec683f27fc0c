"""Cloud-in-cell (CIC) paint and readout kernels, compiled with numba.

Positions are in Mpc/h in [0, BoxSize); the mesh has ``N`` cells of size ``H =
BoxSize / N`` per side, cell ``i`` sitting at ``x = i H`` (cell corners, as pmesh and
nbodykit). A rank holds the x-planes ``[x0, x0 + nx)`` of a slab; the plane above its
last one (``x0 + nx``, periodically) belongs to the next rank and is handled as a ghost
plane. ``y`` and ``z`` are periodic within the slab. Paint and readout are exact
adjoints of each other. No kernel indexes out of bounds whatever its input: cell indices
are wrapped with a true modulo (NaN and inf give cell 0 and a NaN weight), and a particle
outside the rank's slab raises ValueError. Every kernel computes a particle's cell as
``floor(x * (N / BoxSize))``, the same arithmetic, so routing and painting agree.
"""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(x, scale, n):
    """Lower cell index in [0, n) and the fractional offset in [0, 1), for any ``x``.

    The index is a true modulo of ``floor(x * scale)``, so it lies in ``[0, n)`` whatever
    ``x`` is: positions outside the box wrap periodically, and NaN, inf or a value too
    large for an integer give cell 0 with a NaN offset (the NaN then shows in the mesh
    or the result; nothing is written or read out of bounds).
    """
    f = x * scale
    if f >= 0.0 and f < n:                    # the common case: inside the box
        i = int(f)
        return i, f - i
    if not (abs(f) < 4.0e18):                 # NaN, inf, or beyond int64: no safe cast
        return 0, f - f                       # NaN offset
    fl = np.floor(f)
    d = f - fl
    i = int(fl) % n                           # Python semantics in numba: result in [0, n)
    if i < 0 or i >= n:                       # (defensive; cannot happen for n > 0)
        i = 0
    return i, d


@numba.njit(cache=True, nogil=True, inline="always")
def _position(arr, p, d, nc, start, spacing):
    """Coordinate ``d`` of particle ``p``: ``arr[p, d]`` when ``nc == 0`` (absolute
    positions), else the lattice point of global index ``start + p`` on an ``nc^3``
    lattice of spacing ``spacing`` plus the displacement ``arr[p, d]`` (float64 sum, not
    wrapped: :func:`_cell` wraps). The MPI path forms the same sum in
    :func:`lattice_positions`, so both give the same bits."""
    if nc == 0:
        return np.float64(arr[p, d])
    g = start + p
    if d == 0:
        i = g // (nc * nc)
    elif d == 1:
        i = (g // nc) % nc
    else:
        i = g % nc
    return i * spacing + np.float64(arr[p, d])


@numba.njit(cache=True, nogil=True)
def lattice_positions(disp, nc, start, spacing, out):
    """``out[p] = q(start + p) + disp[p]`` in float64 (not wrapped), Mpc/h."""
    for p in range(disp.shape[0]):
        for d in range(3):
            out[p, d] = _position(disp, p, d, nc, start, spacing)


@numba.njit(cache=True, nogil=True)
def plane_order(arr, nc, start, spacing, x0, nx, boxsize, n, order, first):
    """Stable counting sort of the particles by their lower x-plane: ``order`` (n_p,)
    lists the particles plane by plane (in their original order within a plane) and the
    particles of local plane ``l`` are ``order[first[l]:first[l + 1]]``; ``first`` has
    nx + 1 entries. A particle outside the slab raises ValueError."""
    scale = n / boxsize
    first[:] = 0
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing), scale, n)[0] - x0
        if lx < 0 or lx >= nx:
            raise ValueError("paint: a particle lies outside this rank's slab")
        first[lx + 1] += 1
    for l in range(nx):
        first[l + 1] += first[l]
    fill = first[:nx].copy()
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing), scale, n)[0] - x0
        order[fill[lx]] = p
        fill[lx] += 1


@numba.njit(cache=True, nogil=True)
def paint_ghost(arr, nc, start, spacing, mass, order, first, slab, upper, ghost, x0, boxsize):
    """CIC-paint the particles into ``slab`` (nx, N, N, overwritten) plane by plane, in
    the mesh's dtype, in an order that does not depend on the number of ranks.

    Positions come from :func:`_position` (``nc == 0``: ``arr`` holds them); ``mass``
    has one weight per particle, or is empty for unit weights; ``order``/``first`` from
    :func:`plane_order`. Every cell of plane ``l`` ends as ``L_l + U_(l-1)``: ``L_l`` the
    sum of the lower-x weights of the particles of plane ``l``, ``U_(l-1)`` that of the
    upper-x weights of the particles of plane ``l - 1``, each summed in particle order.
    ``U_(-1)`` is not added: ``ghost`` (N, N) receives ``U_(nx-1)``, the plane above the
    slab, for the caller to add to the next rank's first plane. ``upper`` is (2, N, N)
    scratch. So a rank boundary changes no sum, even in float32.
    """
    nx, n = slab.shape[0], slab.shape[1]
    scale = n / boxsize
    unit = mass.shape[0] == 0
    slab[...] = 0
    upper[...] = 0
    for l in range(nx):
        cur = upper[l % 2]
        cur[...] = 0
        for idx in range(first[l], first[l + 1]):
            p = order[idx]
            dx = _cell(_position(arr, p, 0, nc, start, spacing), scale, n)[1]
            iy, dy = _cell(_position(arr, p, 1, nc, start, spacing), scale, n)
            iz, dz = _cell(_position(arr, p, 2, nc, start, spacing), scale, n)
            jy = iy + 1 if iy + 1 < n else 0
            jz = iz + 1 if iz + 1 < n else 0
            m = 1.0 if unit else np.float64(mass[p])
            wx0 = m * (1.0 - dx)
            wx1 = m * dx
            wy0 = 1.0 - dy
            wz0 = 1.0 - dz
            slab[l, iy, iz] += wx0 * wy0 * wz0
            slab[l, iy, jz] += wx0 * wy0 * dz
            slab[l, jy, iz] += wx0 * dy * wz0
            slab[l, jy, jz] += wx0 * dy * dz
            cur[iy, iz] += wx1 * wy0 * wz0
            cur[iy, jz] += wx1 * wy0 * dz
            cur[jy, iz] += wx1 * dy * wz0
            cur[jy, jz] += wx1 * dy * dz
        if l > 0:
            slab[l] += upper[(l - 1) % 2]
    ghost[...] = upper[(nx - 1) % 2]


@numba.njit(cache=True, nogil=True, inline="always")
def _halo_plane(phi, lo, hi, l):
    """Plane ``l`` (local index, -2 <= l < nx + 3) of the potential with its halo."""
    nx = phi.shape[0]
    if l < 0:
        return lo[l + 2]
    if l >= nx:
        return hi[l - nx]
    return phi[l]


@numba.njit(cache=True, nogil=True)
def readout_fd4_gradient(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out):
    """CIC readout of the 4-point finite-difference gradient of ``phi`` at each particle.

    At a mesh node the gradient along an axis is
    ``(8 (phi[i+1] - phi[i-1]) - (phi[i+2] - phi[i-2])) / (12 H)``, whose Fourier
    transform is ``i (8 sin kH - sin 2kH) / (6H)``: the k-space FD4 kernel of
    :func:`cosmonet.sim.fastpm.gradient_wavenumber`. It is formed on the fly at the 8
    corners of each particle's cell, so no gradient mesh is stored. ``phi`` (nx, N, N)
    is the local slab, ``lo`` (2, N, N) the planes ``x0 - 2, x0 - 1`` and ``hi``
    (3, N, N) the planes ``x0 + nx .. x0 + nx + 2`` (periodic, from other ranks).
    ``out`` (n, 3) receives the three components (Mpc/h units of 1 / H times phi).
    """
    nx, n = phi.shape[0], phi.shape[1]
    scale = n / boxsize
    c1 = 8.0 / (12.0 * (boxsize / n))
    c2 = 1.0 / (12.0 * (boxsize / n))
    for p in range(arr.shape[0]):
        ix, dx = _cell(_position(arr, p, 0, nc, start, spacing), scale, n)
        iy, dy = _cell(_position(arr, p, 1, nc, start, spacing), scale, n)
        iz, dz = _cell(_position(arr, p, 2, nc, start, spacing), scale, n)
        lx = ix - x0
        if lx < 0 or lx >= nx:
            raise ValueError("readout: a particle lies outside this rank's slab")
        gx = 0.0
        gy = 0.0
        gz = 0.0
        for a in range(2):
            wa = dx if a == 1 else 1.0 - dx
            l = lx + a
            pm2 = _halo_plane(phi, lo, hi, l - 2)
            pm1 = _halo_plane(phi, lo, hi, l - 1)
            p0 = _halo_plane(phi, lo, hi, l)
            pp1 = _halo_plane(phi, lo, hi, l + 1)
            pp2 = _halo_plane(phi, lo, hi, l + 2)
            for b in range(2):
                wab = wa * (dy if b == 1 else 1.0 - dy)
                j = iy + b
                j = j - n if j >= n else j
                jm1 = j - 1 if j >= 1 else j - 1 + n
                jm2 = j - 2 if j >= 2 else j - 2 + n
                jp1 = j + 1 if j + 1 < n else j + 1 - n
                jp2 = j + 2 if j + 2 < n else j + 2 - n
                for c in range(2):
                    w = wab * (dz if c == 1 else 1.0 - dz)
                    k = iz + c
                    k = k - n if k >= n else k
                    km1 = k - 1 if k >= 1 else k - 1 + n
                    km2 = k - 2 if k >= 2 else k - 2 + n
                    kp1 = k + 1 if k + 1 < n else k + 1 - n
                    kp2 = k + 2 if k + 2 < n else k + 2 - n
                    gx += w * (c1 * (np.float64(pp1[j, k]) - pm1[j, k]) - c2 * (np.float64(pp2[j, k]) - pm2[j, k]))
                    gy += w * (c1 * (np.float64(p0[jp1, k]) - p0[jm1, k]) - c2 * (np.float64(p0[jp2, k]) - p0[jm2, k]))
                    gz += w * (c1 * (np.float64(p0[j, kp1]) - p0[j, km1]) - c2 * (np.float64(p0[j, kp2]) - p0[j, km2]))
        out[p, 0] = gx
        out[p, 1] = gy
        out[p, 2] = gz


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
        if lx < 0 or lx >= nx:
            raise ValueError("readout: a particle lies outside this rank's slab")
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
        if lx < 0 or lx >= nx:
            raise ValueError("readout: a particle lies outside this rank's slab")
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
