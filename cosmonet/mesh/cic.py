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
:func:`paint_ghost` and :func:`readout_fd4_gradient` work on blocks of :data:`BLOCK`
particles: positions and cells of a block in loops LLVM vectorises
(:func:`_block_positions`, :func:`_block_cells`, bit for bit :func:`_lattice_xyz` and
:func:`_cell`), then the scatter or gather in particle order (the same sums).
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


BLOCK = 64    # particles per block of the paint and readout kernels (block buffers: ~4 KiB)


@numba.njit(cache=True, nogil=True, inline="always")
def _lattice_shift(nc):
    """``log2(nc)`` when ``nc`` is a power of two below 2^21 (the lattice index splits
    with shifts and masks, exactly as with ``//`` and ``%``), else -1."""
    if nc <= 0 or nc >= 1 << 21 or (nc & (nc - 1)) != 0:
        return -1
    s = 0
    while (1 << s) < nc:
        s += 1
    return s


@numba.njit(cache=True, nogil=True, inline="always")
def _block_positions(arr, nc, start, spacing, index, order, b0, cnt, shift, pos):
    """``pos[:, b]`` (3, BLOCK) float64 <- :func:`_lattice_xyz` of particle ``order[b0 + b]``,
    ``b < cnt`` (the same float64 values). ``shift``: :func:`_lattice_shift` of ``nc``; for
    a power of two the lattice index splits with shifts and masks (floor semantics, the
    same integers as ``//`` and ``%`` for any sign)."""
    if nc == 0:
        for b in range(cnt):
            p = order[b0 + b]
            pos[0, b] = np.float64(arr[p, 0])
            pos[1, b] = np.float64(arr[p, 1])
            pos[2, b] = np.float64(arr[p, 2])
    elif shift >= 0:
        mask = nc - 1
        s2 = 2 * shift
        for b in range(cnt):
            p = order[b0 + b]
            g = _gindex(index, start, p)
            pos[0, b] = (g >> s2) * spacing + np.float64(arr[p, 0])
            pos[1, b] = ((g >> shift) & mask) * spacing + np.float64(arr[p, 1])
            pos[2, b] = (g & mask) * spacing + np.float64(arr[p, 2])
    else:
        for b in range(cnt):
            px, py, pz = _lattice_xyz(arr, order[b0 + b], nc, start, spacing, index)
            pos[0, b] = px
            pos[1, b] = py
            pos[2, b] = pz


@numba.njit(cache=True, nogil=True, inline="always")
def _block_cells(pos, d, scale, n, cnt, ci, cd):
    """``ci[d, b], cd[d, b] = _cell(pos[d, b], scale, n)`` for ``b < cnt``, bit for bit.

    A branch-free loop (LLVM vectorises it) covers ``x * scale`` in ``[-n, 2n)``: there
    ``floor`` is exact, and the offset ``f - float(int(floor(f)))`` and the index wrapped
    by one period are :func:`_cell`'s (``-0.0`` included: ``f - 0``). Any other lane (one
    period or more outside the box, NaN, inf) is redone with :func:`_cell` itself."""
    lo = -np.float64(n)
    hi = 2.0 * n
    bad = 0
    for b in range(cnt):
        f = pos[d, b] * scale
        ok = (f >= lo) & (f < hi)
        i = np.int64(np.floor(f if ok else 0.0))
        cd[d, b] = f - i
        i = i + n if i < 0 else i
        ci[d, b] = i - n if i >= n else i
        bad += not ok
    if bad:
        for b in range(cnt):
            f = pos[d, b] * scale
            if not (f >= lo and f < hi):
                ci[d, b], cd[d, b] = _cell(pos[d, b], scale, n)


@numba.njit(cache=True, nogil=True)
def lattice_positions(disp, nc, start, spacing, out, index=None):
    """``out[p] = q(start + p) + disp[p]`` in float64 (not wrapped), Mpc/h; ``q(index[p])``
    when ``index`` (per-particle global lattice indices) is given."""
    for p in range(disp.shape[0]):
        for d in range(3):
            out[p, d] = _position(disp, p, d, nc, start, spacing, index)


@numba.njit(cache=True, nogil=True, inline="always")
def _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index):
    """:func:`plane_order`'s counting sort; False (``order`` unfilled) when a particle lies
    outside the slab, for the caller to raise with its own name."""
    scale = n / boxsize
    first[:] = 0
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)[0] - x0
        if lx < 0 or lx >= nx:
            return False
        first[lx + 1] += 1
    for l in range(nx):
        first[l + 1] += first[l]
    fill = first[:nx].copy()
    for p in range(arr.shape[0]):
        lx = _cell(_position(arr, p, 0, nc, start, spacing, index), scale, n)[0] - x0
        order[fill[lx]] = p
        fill[lx] += 1
    return True


@numba.njit(cache=True, nogil=True)
def plane_order(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index=None):
    """Stable counting sort of the particles by their lower x-plane: ``order`` (n_p,)
    lists the particles plane by plane (in their original order within a plane) and the
    particles of local plane ``l`` are ``order[first[l]:first[l + 1]]``; ``first`` has
    nx + 1 entries. A particle outside the slab raises ValueError. ``index``: per-particle
    global lattice indices in place of ``start + p`` (see :func:`_position`)."""
    if not _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, order, first, index):
        raise ValueError("paint: a particle lies outside this rank's slab")


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
    shift = _lattice_shift(nc)
    pos = np.empty((3, BLOCK), np.float64)
    ci = np.empty((3, BLOCK), np.int64)
    cd = np.empty((3, BLOCK), np.float64)
    one, zero, nu = np.uint64(1), np.uint64(0), np.uint64(n)
    slab[...] = 0
    upper[...] = 0
    for l in range(nx):
        cur = upper[l % 2]
        cur[...] = 0
        for b0 in range(first[l], first[l + 1], BLOCK):
            cnt = min(BLOCK, first[l + 1] - b0)
            _block_positions(arr, nc, start, spacing, index, order, b0, cnt, shift, pos)
            for d in range(3):
                _block_cells(pos, d, scale, n, cnt, ci, cd)
            for b in range(cnt):
                dx, dy, dz = cd[0, b], cd[1, b], cd[2, b]
                iy, iz = np.uint64(ci[1, b]), np.uint64(ci[2, b])
                jy = iy + one if iy + one < nu else zero
                jz = iz + one if iz + one < nu else zero
                m = 1.0 if unit else np.float64(mass[order[b0 + b]])
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
    """Local x-plane ``l`` in [-2, nx + 3): the slab's, or a halo plane below/above it."""
    nx = phi.shape[0]
    if l < 0:
        return lo[l + 2]
    if l >= nx:
        return hi[l - nx]
    return phi[l]


@numba.njit(cache=True, nogil=True, inline="always")
def _fd4_plane(phi, lo, hi, l, c1, c2, g):
    """The FD4 gradient ``c1 (f[i+1] - f[i-1]) - c2 (f[i+2] - f[i-2])`` of ``phi`` on local
    x-plane ``l`` (0 .. nx), all three components, into ``g`` (3, N, N) float64; y and z
    periodic, x from the slab and its halos. Loops over contiguous rows (vectorised)."""
    n = phi.shape[1]
    fm2 = _halo_plane(phi, lo, hi, l - 2)
    fm1 = _halo_plane(phi, lo, hi, l - 1)
    f0 = _halo_plane(phi, lo, hi, l)
    fp1 = _halo_plane(phi, lo, hi, l + 1)
    fp2 = _halo_plane(phi, lo, hi, l + 2)
    gx, gy, gz = g[0], g[1], g[2]
    for j in range(n):
        for k in range(n):
            gx[j, k] = (c1 * (np.float64(fp1[j, k]) - np.float64(fm1[j, k]))
                        - c2 * (np.float64(fp2[j, k]) - np.float64(fm2[j, k])))
    for j in range(n):
        jm2, jm1, jp1, jp2 = (j - 2) % n, (j - 1) % n, (j + 1) % n, (j + 2) % n
        for k in range(n):
            gy[j, k] = (c1 * (np.float64(f0[jp1, k]) - np.float64(f0[jm1, k]))
                        - c2 * (np.float64(f0[jp2, k]) - np.float64(f0[jm2, k])))
    for j in range(n):
        row, out = f0[j], gz[j]
        for k in range(2, n - 2):
            out[k] = (c1 * (np.float64(row[k + 1]) - np.float64(row[k - 1]))
                      - c2 * (np.float64(row[k + 2]) - np.float64(row[k - 2])))
        for k in (0, 1, n - 2, n - 1):      # the periodic ends (n < 4: some twice, the same)
            out[k] = (c1 * (np.float64(row[(k + 1) % n]) - np.float64(row[(k - 1) % n]))
                      - c2 * (np.float64(row[(k + 2) % n]) - np.float64(row[(k - 2) % n])))


@numba.njit(cache=True, nogil=True, inline="always")
def _readout_planes(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index, order, first, g):
    """:func:`readout_fd4_gradient` given the plane order; returns False when a particle
    is not in the plane that ``order`` lists it in."""
    nx, n = phi.shape[0], phi.shape[1]
    scale = n / boxsize
    c1 = 8.0 / (12.0 * (boxsize / n))
    c2 = 1.0 / (12.0 * (boxsize / n))
    held = -1                                # the plane whose gradient sits in g[held % 2]
    shift = _lattice_shift(nc)
    pos = np.empty((3, BLOCK), np.float64)
    ci = np.empty((3, BLOCK), np.int64)
    cd = np.empty((3, BLOCK), np.float64)
    one, zero, nu = np.uint64(1), np.uint64(0), np.uint64(n)
    for l in range(nx):
        if first[l + 1] == first[l]:
            continue
        for m in range(l + 1 if held == l else l, l + 2):     # planes l (unless held) and l + 1
            _fd4_plane(phi, lo, hi, m, c1, c2, g[m % 2])
        held = l + 1
        g0, g1 = g[l % 2], g[(l + 1) % 2]
        for b0 in range(first[l], first[l + 1], BLOCK):
            cnt = min(BLOCK, first[l + 1] - b0)
            _block_positions(arr, nc, start, spacing, index, order, b0, cnt, shift, pos)
            for d in range(3):
                _block_cells(pos, d, scale, n, cnt, ci, cd)
            wrong = 0
            for b in range(cnt):
                wrong += ci[0, b] - x0 != l
            if wrong:
                return False
            for b in range(cnt):
                p = order[b0 + b]
                dx, dy, dz = cd[0, b], cd[1, b], cd[2, b]
                iy, iz = np.uint64(ci[1, b]), np.uint64(ci[2, b])
                jy = iy + one if iy + one < nu else zero
                jz = iz + one if iz + one < nu else zero
                wx0 = 1.0 - dx
                wy0 = 1.0 - dy
                wz0 = 1.0 - dz
                for c in range(3):
                    a = wy0 * (wz0 * g0[c, iy, iz] + dz * g0[c, iy, jz]) + dy * (wz0 * g0[c, jy, iz] + dz * g0[c, jy, jz])
                    b1 = wy0 * (wz0 * g1[c, iy, iz] + dz * g1[c, iy, jz]) + dy * (wz0 * g1[c, jy, iz] + dz * g1[c, jy, jz])
                    out[p, c] = wx0 * a + dx * b1
    return True


@numba.njit(cache=True, nogil=True)
def readout_fd4_gradient(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index=None,
                         order=None, first=None, grad=None):
    """CIC readout of the 4-point finite-difference gradient of ``phi`` at each particle.

    At a mesh node the gradient along an axis is
    ``(8 (phi[i+1] - phi[i-1]) - (phi[i+2] - phi[i-2])) / (12 H)``, whose Fourier
    transform is ``i (8 sin kH - sin 2kH) / (6H)``: the k-space FD4 kernel of
    :func:`cosmonet.sim.fastpm.gradient_wavenumber`. The particles are visited plane by
    plane (lower CIC x-plane, :func:`plane_order`); for plane ``l`` the three gradient
    components are formed in float64 on the two x-planes ``l`` and ``l + 1`` (``grad``
    (2, 3, N, N) float64 holds them: no gradient mesh is stored) and CIC-interpolated
    at the particles of the plane. ``phi`` (nx, N, N) is the local slab, ``lo`` (2, N, N)
    the planes ``x0 - 2, x0 - 1`` and ``hi`` (3, N, N) the planes
    ``x0 + nx .. x0 + nx + 2`` (periodic, from other ranks). ``out`` (n, 3) receives the
    three components. ``index``: per-particle global lattice indices in place of
    ``start + p``. ``order``/``first``: the particles' :func:`plane_order` (paint's,
    reused; sorted here when None, for fewer than 2^31 particles); ``grad``: scratch
    (allocated when None). A particle outside the slab raises ValueError.
    """
    nx, n = phi.shape[0], phi.shape[1]
    if grad is None:
        g = np.empty((2, 3, n, n), np.float64)
    else:
        g = grad
    if order is None:                        # one call site below: the inlined code once
        if arr.shape[0] > 2 ** 31 - 1:
            raise ValueError("readout: pass the plane order of more than 2^31 particles")
        o = np.empty(arr.shape[0], np.int32)
        f = np.zeros(nx + 1, np.int64)
        if not _sort_by_plane(arr, nc, start, spacing, x0, nx, boxsize, n, o, f, index):
            raise ValueError("readout: a particle lies outside this rank's slab")
    else:
        o = order
        f = first
    if not _readout_planes(arr, nc, start, spacing, phi, lo, hi, x0, boxsize, out, index, o, f, g):
        raise ValueError("readout: a particle lies outside the plane its order gives")


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
