"""The blocked CIC kernels (cosmonet.mesh.cic: positions, cells and weights of a block of
particles in a vectorised loop, then the scatter/gather) against the per-particle
arithmetic they replace: bit for bit on random and hostile inputs (NaN, inf, 1e30,
positions one or many periods outside the box, -0.0, the box edges), over blocks that
are full, partial and empty, for the lattice split with shifts (nc a power of two) and
with division (any other nc), with and without per-particle lattice indices.

The references are the numpy twins (cosmonet.numpy_kernels, the per-particle
expressions of the kernels before blocking) and the scalar helpers ``_cell`` and
``_lattice_xyz``.
"""
import numpy as np
import pytest

from cosmonet import numpy_kernels as nk
from cosmonet.mesh import cic

BOX = 40.0


def _bits(a):
    return np.ascontiguousarray(a).tobytes()


def _hostile_values(n):
    """x * (n / BOX) on both sides of every boundary of _cell's fast range [-n, 2n)."""
    h = BOX / n
    tiny = np.nextafter(0.0, 1.0)
    vals = [0.0, -0.0, tiny, -tiny, BOX, -BOX, 2 * BOX, -2 * BOX, np.nextafter(2 * BOX, 0.0),
            np.nextafter(-BOX, 0.0), np.nextafter(-BOX, -np.inf), np.nextafter(BOX, 0.0),
            np.nextafter(BOX, np.inf), h, -h, 3 * BOX + 0.3, -5 * BOX - 0.7, 1e30, -1e30,
            4e18 * h, -4e18 * h, 5e18, 1e300, -1e300, np.nan, -np.nan, np.inf, -np.inf, -1e-300, 1e-300]
    return np.array(vals)


@pytest.mark.parametrize("n", [12, 64, 7])
def test_block_cells_equal_cell(n):
    rng = np.random.default_rng(n)
    x = np.concatenate([_hostile_values(n), rng.uniform(-3 * BOX, 4 * BOX, 300),
                        rng.uniform(-0.01, 0.01, 50)])
    rng.shuffle(x)
    scale = n / BOX
    ref = [cic._cell(v, scale, n) for v in x]
    ref_i = np.array([r[0] for r in ref], np.int64)
    ref_d = np.array([r[1] for r in ref], np.float64)
    pos = np.zeros((3, cic.BLOCK))
    ci = np.full((3, cic.BLOCK), -7, np.int64)
    cd = np.zeros((3, cic.BLOCK))
    got_i, got_d = [], []
    for b0 in range(0, len(x), cic.BLOCK):
        cnt = min(cic.BLOCK, len(x) - b0)
        pos[1, :cnt] = x[b0:b0 + cnt]
        cic._block_cells(pos, 1, scale, n, cnt, ci, cd)
        got_i.append(ci[1, :cnt].copy())
        got_d.append(cd[1, :cnt].copy())
    got_i, got_d = np.concatenate(got_i), np.concatenate(got_d)
    assert got_i.min() >= 0 and got_i.max() < n
    assert _bits(got_i) == _bits(ref_i)
    assert _bits(got_d) == _bits(ref_d)           # NaN payloads and the sign of zero too
    assert np.signbit(got_d[x == 0.0]).tolist() == np.signbit(ref_d[x == 0.0]).tolist()


@pytest.mark.parametrize("nc", [8, 6, 1])
def test_block_positions_equal_lattice_xyz(nc):
    rng = np.random.default_rng(nc)
    n_p = 150
    disp = (rng.standard_normal((n_p, 3)) * 5).astype(np.float32)
    disp[:3] = [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -3e30]]
    order = rng.permutation(n_p).astype(np.int32)
    index = rng.integers(-3 * nc ** 3, 4 * nc ** 3, n_p)       # negative: floor semantics
    sp = BOX / nc
    shift = cic._lattice_shift(nc)
    assert (shift >= 0) == (nc & (nc - 1) == 0)
    for c, st, ix in ((nc, 5, None), (nc, 0, index), (0, 0, None)):
        arr = disp.astype(np.float64) if c == 0 else disp
        pos = np.zeros((3, cic.BLOCK))
        got = []
        for b0 in range(0, n_p, cic.BLOCK):
            cnt = min(cic.BLOCK, n_p - b0)
            cic._block_positions(arr, c, st, sp if c else 0.0, ix, order, b0, cnt, shift, pos)
            got.append(pos[:, :cnt].T.copy())
        ref = np.array([cic._lattice_xyz(arr, p, c, st, sp if c else 0.0, ix) for p in order])
        assert _bits(np.concatenate(got)) == _bits(ref)


def _particles(rng, n_p, box, hostile):
    """Lattice displacements (float32) that reach out of the box; a few hostile ones."""
    disp = (rng.standard_normal((n_p, 3)) * 6).astype(np.float32)
    disp[: n_p // 10] *= 30                           # many periods away
    if hostile:
        disp[-6:] = [[0, np.nan, 0], [0, 0, np.inf], [0, -np.inf, 1e30], [0, 1e30, -1e30],
                     [0, -box, box], [0, 2 * box, -2 * box]]
    return disp


CASES = [  # nc, mesh n, rank slab (x0, nx), index?, hostile?, mass?, mesh dtype
    (16, 32, (0, 32), False, True, False, np.float32),    # shifts; > BLOCK particles a plane
    (12, 24, (0, 24), True, True, True, np.float64),      # division; routed indices; masses
    (12, 16, (5, 6), True, False, False, np.float32),     # a slab of a bigger mesh
    (10, 13, (0, 13), False, False, True, np.float32),
]


@pytest.mark.parametrize("nc, n, slab, routed, hostile, with_mass, dtype", CASES)
def test_paint_and_readout_equal_the_per_particle_kernels(nc, n, slab, routed, hostile, with_mass, dtype):
    rng = np.random.default_rng(nc * 100 + n)
    x0, nx = slab
    disp = _particles(rng, nc ** 3, BOX, hostile)
    index = np.arange(nc ** 3) if routed else None
    sp = BOX / nc
    pos = np.empty((len(disp), 3))
    cic.lattice_positions(disp, nc, 0, sp, pos)
    plane = np.empty(len(disp), np.int64)
    cic.owner_plane(np.ascontiguousarray(pos[:, 0]), BOX, n, plane)
    keep = np.flatnonzero((plane >= x0) & (plane < x0 + nx))
    if routed:                                    # the particles of one rank, shuffled
        keep = rng.permutation(keep)
        arr, idx = disp[keep], keep.astype(np.int32)
    else:                                         # the whole lattice on one slab
        assert len(keep) == len(disp)
        arr, idx = disp, None
    mass = rng.uniform(0.5, 2.0, len(arr)) if with_mass else np.empty(0)
    order = np.zeros(len(arr), np.int32)
    first = np.zeros(nx + 1, np.int64)
    cic.plane_order(arr, nc, 0, sp, x0, nx, BOX, n, order, first, idx)
    assert np.diff(first).max() > cic.BLOCK       # full and partial blocks
    if True:                                      # one mesh dtype a case (compile time)
        outs = []
        for mod in (cic, nk):
            slab_, upper, ghost = np.ones((nx, n, n), dtype), np.ones((2, n, n), dtype), np.ones((n, n), dtype)
            mod.paint_ghost(arr, nc, 0, sp, mass, order, first, slab_, upper, ghost, x0, BOX, idx)
            outs.append((slab_, ghost))
        assert _bits(outs[0][0]) == _bits(outs[1][0]) and _bits(outs[0][1]) == _bits(outs[1][1])
        if hostile:
            assert np.isnan(outs[0][0]).any()
        phi, lo, hi = (rng.standard_normal((m, n, n)).astype(dtype) for m in (nx, 2, 3))
        vals = []
        for mod in (cic, nk):
            out = np.zeros((len(arr), 3), dtype)
            mod.readout_fd4_gradient(arr, nc, 0, sp, phi, lo, hi, x0, BOX, out, idx, order, first)
            vals.append(out)
        assert _bits(vals[0]) == _bits(vals[1])
        if not routed:                            # without a given plane order
            out = np.zeros((len(arr), 3), dtype)
            cic.readout_fd4_gradient(arr, nc, 0, sp, phi, lo, hi, x0, BOX, out, idx)
            assert _bits(out) == _bits(vals[1])


def test_readout_raises_when_the_order_lies():
    rng = np.random.default_rng(3)
    n, nc = 16, 8
    disp = _particles(rng, nc ** 3, BOX, True)
    order = np.zeros(len(disp), np.int32)
    first = np.zeros(n + 1, np.int64)
    cic.plane_order(disp, nc, 0, BOX / nc, 0, n, BOX, n, order, first)
    k = int(np.argmax(np.diff(first)))
    bad = first.copy()
    bad[k + 1] -= 1                               # the last particle of plane k moves to k + 1
    phi, lo, hi = (np.zeros((m, n, n), np.float32) for m in (n, 2, 3))   # a signature of the test above
    with pytest.raises(ValueError, match="outside the plane its order gives"):
        cic.readout_fd4_gradient(disp, nc, 0, BOX / nc, phi, lo, hi, 0, BOX,
                                 np.zeros((len(disp), 3), np.float32), None, order, bad)
