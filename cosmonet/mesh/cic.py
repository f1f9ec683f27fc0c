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
import numpy as np

from ..extras import numba   # without numba: the numpy kernels of cosmonet/numpy_kernels.py


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
def _gindex(index, start, p):
    """Global lattice index of particle ``p``: ``start + p``, or ``index[p]`` when the
    particles carry their index (routed particles of several ranks)."""
    if index is None:
        return start + p
    return np.int64(index[p])


@numba.njit(cache=True, nogil=True, inline="always")
def _position(arr, p, d, nc, start, spacing, index=None):
    """Coordinate ``d`` of particle ``p``: ``arr[p, d]`` when ``nc == 0`` (absolute
    positions), else the lattice point of global index ``start + p`` (``index[p]`` when
    ``index`` is given) on an ``nc^3`` lattice of spacing ``spacing`` plus the
    displacement ``arr[p, d]`` (float64 sum, not wrapped: :func:`_cell` wraps). The MPI
    path forms the same sum in :func:`lattice_positions`, so both give the same bits."""
    if nc == 0:
        return np.float64(arr[p, d])
    g = _gindex(index, start, p)
    if d == 0:
        i = g // (nc * nc)
    elif d == 1:
        i = (g // nc) % nc
    else:
        i = g % nc
    return i * spacing + np.float64(arr[p, d])


@numba.njit(cache=True, nogil=True, inline="always")
def _lattice_xyz(arr, p, nc, start, spacing, index=None):
    """The three coordinates of :func:`_position` for particle ``p`` at once (the same
    float64 values, one lattice-index decomposition instead of three)."""
    if nc == 0:
        return np.float64(arr[p, 0]), np.float64(arr[p, 1]), np.float64(arr[p, 2])
    g = _gindex(index, start, p)
    nc2 = nc * nc
    i = g // nc2
    r = g - i * nc2
    j = r // nc
    k = r - j * nc
    return (i * spacing + np.float64(arr[p, 0]), j * spacing + np.float64(arr[p, 1]),
            k * spacing + np.float64(arr[p, 2]))


@numba.njit(cache=True, nogil=True)
def lattice_positions(disp, nc, start, spacing, out, index=None):
    """``out[p] = q(start + p) + disp[p]`` in float64 (not wrapped), Mpc/h; ``q(index[p])``
    when ``index`` (per-particle global lattice indices) is given."""
    for p in range(disp.shape[0]):
        for d in range(3):
            out[p, d] = _position(disp, p, d, nc, start, spacing, index)


@numba.njit(cache=True, nogil=True)
def plane_order(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index=None):
    """Stable counting sort of the particles by their lower x-plane: ``order`` (n_p,)
    lists the particles plane by plane (in their original order within a plane) and the
    particles of local plane ``l`` are ``order[first[l]:first[l + 1]]``; ``first`` has
    nx + 1 entries. A particle outside the slab raises ValueError. ``index``: per-particle
    global lattice indices in place of ``start + p`` (see :func:`_position`)."""
    scale = n / boxsize
    first[:] = 0
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)[0] - x0
        if lx < 0 or lx >= nx:
            raise ValueError("paint: a particle lies outside this rank's slab")
        first[lx + 1] += 1
    for l in range(nx):
        first[l + 1] += first[l]
    fill = first[:nx].copy()
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)[0] - x0
        order[fill[lx]] = p
        fill[lx] += 1


@numba.njit(cache=True, nogil=True)
def paint_ghost(arr, nc, start, spacing, mass, order, first, slab, upper, ghost, x0, boxsize, index=None):
    """CIC-paint the particles into ``slab`` (nx, N, N, overwritten) plane by plane, in
    the mesh's dtype, in an order that does not depend on the number of ranks.

    Positions come from :func:`_position` (``nc == 0``: ``arr`` holds them; ``index``:
    per-particle global lattice indices in place of ``start + p``); ``mass``
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
            px, py, pz = _lattice_xyz(arr, p, nc, start, spacing, index)
            dx = _cell(px, scale, n)[1]
            iy, dy = _cell(py, scale, n)
            iz, dz = _cell(pz, scale, n)
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
def _taps(w1, c1, c2, out):
    """The 6 weights, offsets -2 .. 3 from the lower cell, of the CIC interpolation
    (1 - w1, w1) of the FD4 derivative c1 (f[i+1] - f[i-1]) - c2 (f[i+2] - f[i-2])."""
    w0 = 1.0 - w1
    out[0] = w0 * c2
    out[1] = w1 * c2 - w0 * c1
    out[2] = -w1 * c1
    out[3] = w0 * c1
    out[4] = w1 * c1 - w0 * c2
    out[5] = -w1 * c2


@numba.njit(cache=True, nogil=True)
def readout_fd4_gradient(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index=None):
    """CIC readout of the 4-point finite-difference gradient of ``phi`` at each particle.

    At a mesh node the gradient along an axis is
    ``(8 (phi[i+1] - phi[i-1]) - (phi[i+2] - phi[i-2])) / (12 H)``, whose Fourier
    transform is ``i (8 sin kH - sin 2kH) / (6H)``: the k-space FD4 kernel of
    :func:`cosmonet.sim.fastpm.gradient_wavenumber`. Interpolating it with CIC weights
    is a 6 x 2 x 2 stencil per component (:func:`_taps`), applied directly to ``phi``:
    no gradient mesh is stored. ``phi`` (nx, N, N) is the local slab, ``lo`` (2, N, N)
    the planes ``x0 - 2, x0 - 1`` and ``hi`` (3, N, N) the planes ``x0 + nx .. x0 + nx + 2``
    (periodic, from other ranks). ``out`` (n, 3) receives the three components.
    ``index``: per-particle global lattice indices in place of ``start + p``.
    """
    nx, n = phi.shape[0], phi.shape[1]
    scale = n / boxsize
    c1 = 8.0 / (12.0 * (boxsize / n))
    c2 = 1.0 / (12.0 * (boxsize / n))
    jj = np.empty(6, np.int64)
    kk = np.empty(6, np.int64)
    tx = np.empty(6)
    ty = np.empty(6)
    tz = np.empty(6)
    for p in range(arr.shape[0]):
        px, py, pz = _lattice_xyz(arr, p, nc, start, spacing, index)
        ix, dx = _cell(px, scale, n)
        iy, dy = _cell(py, scale, n)
        iz, dz = _cell(pz, scale, n)
        lx = ix - x0
        if lx < 0 or lx >= nx:
            raise ValueError("readout: a particle lies outside this rank's slab")
        for t in range(6):
            j = iy + t - 2
            jj[t] = j + n if j < 0 else (j - n if j >= n else j)
            k = iz + t - 2
            kk[t] = k + n if k < 0 else (k - n if k >= n else k)
        _taps(dx, c1, c2, tx)
        _taps(dy, c1, c2, ty)
        _taps(dz, c1, c2, tz)
        wy0 = 1.0 - dy
        wz0 = 1.0 - dz
        j0 = jj[2]
        j1 = jj[3]
        k0 = kk[2]
        k1 = kk[3]
        gx = 0.0
        gy = 0.0
        gz = 0.0
        if lx >= 2 and lx + 3 < nx:          # interior: no halo, plain 3-D indexing
            for t in range(6):
                l = lx + t - 2
                gx += tx[t] * (wy0 * (wz0 * phi[l, j0, k0] + dz * phi[l, j0, k1])
                               + dy * (wz0 * phi[l, j1, k0] + dz * phi[l, j1, k1]))
            for a in range(2):
                l = lx + a
                wa = dx if a == 1 else 1.0 - dx
                sy = 0.0
                sz = 0.0
                for t in range(6):
                    sy += ty[t] * (wz0 * phi[l, jj[t], k0] + dz * phi[l, jj[t], k1])
                    sz += tz[t] * (wy0 * phi[l, j0, kk[t]] + dy * phi[l, j1, kk[t]])
                gy += wa * sy
                gz += wa * sz
            out[p, 0] = gx
            out[p, 1] = gy
            out[p, 2] = gz
            continue
        for t in range(6):
            l = lx + t - 2
            if l < 0:
                f = lo[l + 2]
            elif l >= nx:
                f = hi[l - nx]
            else:
                f = phi[l]
            gx += tx[t] * (wy0 * (wz0 * f[j0, k0] + dz * f[j0, k1]) + dy * (wz0 * f[j1, k0] + dz * f[j1, k1]))
        for a in range(2):
            l = lx + a
            if l >= nx:
                f = hi[l - nx]
            else:
                f = phi[l]
            wa = dx if a == 1 else 1.0 - dx
            sy = 0.0
            sz = 0.0
            for t in range(6):
                sy += ty[t] * (wz0 * f[jj[t], k0] + dz * f[jj[t], k1])
                sz += tz[t] * (wy0 * f[j0, kk[t]] + dy * f[j1, kk[t]])
            gy += wa * sy
            gz += wa * sz
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
