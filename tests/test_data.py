"""cosmonet.data: the shard Dataset, cube-symmetry augmentation and the normalizer.

One small campaign (6 simulations of 8^3 particles, 3 shards, splits 4/1/1, density on a 4^3
mesh) is made once for the module; bad-input cases work on copies of it.
"""
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from cosmonet.data import (Compose, EpochItems, FieldNormalizer, RandomCubeSymmetry, ShardDataset, all_symmetries,
                           apply_symmetry, compose, estimate, identity, inverse, symmetry_matrix,
                           vector_flags)
from cosmonet.errors import InputError

FIELDS = ("za/disp", "lpt2/disp", "fastpm/disp", "density")
SPLITS = {"train": 4, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from mpi4py import MPI

    from cosmonet.campaign.runner import prepare_directory, run_campaign
    from cosmonet.campaign.config import validate
    out = tmp_path_factory.mktemp("data") / "campaign"
    cfg = validate({"n_sims": 6, "nc": 8, "steps": 2, "shard_size": 2, "fields": list(FIELDS),
                    "density_nmesh": 4, "splits": dict(SPLITS), "out": str(out)})
    prepare_directory(cfg)
    run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    return str(out)


@pytest.fixture()
def copy(campaign, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(campaign, dst)
    return str(dst)


def shard_file(root, s):
    return os.path.join(root, "shards", f"shard_{s:06d}.h5")


def h5_sample(root, index, name):
    with h5py.File(shard_file(root, index // 2), "r") as f:
        k = int(np.flatnonzero(f["params/index"][...] == index)[0])
        return f[name][k]


def open_shard_fds(root):
    """Shard files of ``root`` this process holds open at the OS level."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(os.path.realpath(root)) and target.endswith(".h5"):
            out.append(target)
    return out


# ------------------------------------------------------------------------- dataset


def test_split_sizes_and_selection(campaign):
    for name, count in SPLITS.items():
        ds = ShardDataset(campaign, split=name)
        assert len(ds) == count
    start = {"train": 0, "val": 4, "test": 5}
    for name in SPLITS:
        ds = ShardDataset(campaign, split=name)
        assert ds.indices == tuple(range(start[name], start[name] + SPLITS[name]))
    assert len(ShardDataset(campaign, split=None)) == 6
    ds = ShardDataset(campaign, indices=[5, 0, 3])
    assert len(ds) == 3 and ds.indices == (5, 0, 3)
    assert [ds.sample_info(i)["index"] for i in range(3)] == [5, 0, 3]


def test_values_equal_h5py(campaign):
    ds = ShardDataset(campaign, split=None, fields=FIELDS)
    assert ds.nc == 8 and ds.box_size == 128.0
    assert ds.field_shapes == {"za/disp": (3, 8, 8, 8), "lpt2/disp": (3, 8, 8, 8),
                               "fastpm/disp": (3, 8, 8, 8), "density": (1, 4, 4, 4)}
    assert ds.vector == (True, True, True, False)
    for i in range(len(ds)):
        sample = ds[i]
        assert isinstance(sample, tuple) and len(sample) == 4
        for name, t in zip(FIELDS, sample):
            assert t.dtype == torch.float32 and tuple(t.shape) == ds.field_shapes[name]
            np.testing.assert_array_equal(t.numpy(), h5_sample(campaign, i, name))
    # displacements are not trivially zero, and the three fields differ
    za, fp = ds[0][0], ds[0][2]
    assert float(za.abs().max()) > 0.1 and float((za - fp).abs().max()) > 1e-3
    # negative indices, IndexError at the end (iteration protocol)
    np.testing.assert_array_equal(ds[-1][0].numpy(), h5_sample(campaign, 5, "za/disp"))
    with pytest.raises(IndexError):
        ds[6]
    assert len(list(iter(ds))) == 6
    ds.close()


def test_sample_info_matches_params(campaign):
    ds = ShardDataset(campaign, split="train", fields="density")
    for i in range(len(ds)):
        info = ds.sample_info(i)
        with h5py.File(shard_file(campaign, info["index"] // 2), "r") as f:
            p = f["params"]
            k = int(np.flatnonzero(p["index"][...] == info["index"])[0])
            assert info["seed"] == int(p["seed"][k])
            assert info["split"] == p["split"][k].decode() == "train"
            for col in ("Omega_m", "Omega_b", "h", "n_s", "sigma8", "A_s"):
                v = float(p[col][k])
                assert info[col] == (None if np.isnan(v) else v)
        assert info["index"] == i and info["shard"] == i // 2
    assert ShardDataset(campaign, split="val").sample_info(0)["split"] == "val"
    # seeds differ between simulations
    assert len({ShardDataset(campaign, split=None).sample_info(i)["seed"] for i in range(6)}) == 6


def test_lazy_open_and_lru(campaign):
    ds = ShardDataset(campaign, split=None, fields=("za/disp",), max_open_files=2)
    assert ds.open_files == [] and open_shard_fds(campaign) == []
    ds[0]
    assert ds.open_files == [shard_file(campaign, 0)] and len(open_shard_fds(campaign)) == 1
    ds[1]                                    # same shard: no new handle
    assert len(ds.open_files) == 1
    for i in range(6):
        ds[i]
    assert ds.open_files == [shard_file(campaign, 1), shard_file(campaign, 2)]   # LRU of 2
    assert len(open_shard_fds(campaign)) == 2
    state = pickle.loads(pickle.dumps(ds))   # handles are not pickled
    assert state.open_files == []
    np.testing.assert_array_equal(state[3][0].numpy(), ds[3][0].numpy())
    state.close()
    ds.close()
    assert ds.open_files == [] and open_shard_fds(campaign) == []


def _collect(ds, workers, **kw):
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers, **kw)
    return [tuple(t.clone() for t in batch) for batch in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))


def test_dataloader_workers(campaign):
    ds = ShardDataset(campaign, split=None, fields=("fastpm/disp", "density"))
    ds[5]                                    # the parent holds a handle before the workers fork
    serial = _collect(ds, 0)
    parallel = _collect(ds, 2)
    assert _same(serial, parallel)
    assert [tuple(t.shape) for t in parallel[0]] == [(2, 3, 8, 8, 8), (2, 1, 4, 4, 4)]
    np.testing.assert_array_equal(parallel[2][0][1].numpy(), h5_sample(campaign, 5, "fastpm/disp"))
    # the parent's handle still works after the workers closed theirs
    np.testing.assert_array_equal(ds[5][0].numpy(), h5_sample(campaign, 5, "fastpm/disp"))
    ds.close()


def test_seeded_augmentation_independent_of_workers(campaign):
    fields = ("za/disp", "density")
    aug = RandomCubeSymmetry.for_fields(fields)
    ds = ShardDataset(campaign, split=None, fields=fields, transform=aug, seed=7)
    serial = _collect(ds, 0)
    assert _same(serial, _collect(ds, 2))
    raw = ShardDataset(campaign, split=None, fields=fields)
    # each sample is the raw sample under the symmetry its own generator draws
    for i in range(6):
        sym = aug.draw(ds.rng(i))
        want = (apply_symmetry(raw[i][0], *sym, vector=True), apply_symmetry(raw[i][1], *sym, vector=False))
        got = ds[i]
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(serial[i // 2][0][i % 2], want[0])
    drawn = {aug.draw(ds.rng(i)) for i in range(6)}
    assert len(drawn) > 1                    # not always the same symmetry
    ds.set_epoch(1)
    assert [aug.draw(ds.rng(i)) for i in range(6)] != [aug.draw(np.random.default_rng([7, 0, i])) for i in range(6)]


def test_training_items_draw_per_seed_epoch_and_position(campaign):
    """What the trainer reads (EpochItems over a ShardDataset with symmetry then normaliser):
    item epoch * n + i is sample i divided by its scale under the symmetry drawn from
    default_rng([seed, epoch, i]), exactly (the draws of the trainer before the one pipeline)."""
    fields = ("za/disp", "density")
    norm = FieldNormalizer({"za/disp": 6.0, "density": 2.0})
    ds = ShardDataset(campaign, split="train", fields=fields, seed=7,
                      transform=Compose(RandomCubeSymmetry.for_fields(fields), norm))
    raw = ShardDataset(campaign, split="train", fields=fields)
    items, n, drawn = EpochItems(ds), len(ds), set()
    for epoch in (0, 3):
        for i in range(n):
            x, d, j = items[epoch * n + i]
            perm, flips = all_symmetries()[int(np.random.default_rng([7, epoch, i]).integers(48))]
            drawn.add((perm, flips))
            assert j == i
            assert torch.equal(x, apply_symmetry(raw[i][0] / 6.0, perm, flips, vector=True))
            assert torch.equal(d, apply_symmetry(raw[i][1] / 2.0, perm, flips, vector=False))
    assert len(drawn) > 1


def test_unseeded_augmentation_in_workers_reproducible_with_loader_seed(campaign):
    aug = RandomCubeSymmetry.for_fields(("za/disp",))
    ds = ShardDataset(campaign, split=None, fields=("za/disp",), transform=aug)
    a = _collect(ds, 2, generator=torch.Generator().manual_seed(3))
    b = _collect(ds, 2, generator=torch.Generator().manual_seed(3))
    c = _collect(ds, 2, generator=torch.Generator().manual_seed(4))
    assert _same(a, b) and not _same(a, c)


def test_plain_transform_and_compose(campaign):
    norm = FieldNormalizer({"za/disp": 6.0})
    ds = ShardDataset(campaign, split="val", fields=("za/disp",), transform=norm)
    raw = ShardDataset(campaign, split="val", fields=("za/disp",))
    assert torch.allclose(ds[0][0], raw[0][0] / 6.0)
    ds2 = ShardDataset(campaign, split="val", fields=("za/disp",), seed=1,
                       transform=Compose(RandomCubeSymmetry((True,)), norm))
    sym = RandomCubeSymmetry((True,)).draw(ds2.rng(0))
    assert torch.allclose(ds2[0][0], apply_symmetry(raw[0][0], *sym, vector=True) / 6.0)
    ds3 = ShardDataset(campaign, split="val", fields=("za/disp",), transform=lambda t: (t[0] * 2,))
    assert torch.equal(ds3[0][0], raw[0][0] * 2)


def test_records_without_manifest(copy):
    os.unlink(os.path.join(copy, "manifest.json"))
    ds = ShardDataset(copy, split=None)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds[4][1].numpy(), h5_sample(copy, 4, "fastpm/disp"))


# ------------------------------------------------------------------------- bad input


def _error(**kw):
    with pytest.raises(InputError) as exc:
        ShardDataset(**kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_not_a_campaign(tmp_path):
    msg = _error(root=str(tmp_path))
    assert str(tmp_path) in msg and "not a campaign directory" in msg and "campaign.yaml" in msg
    msg = _error(root=str(tmp_path / "nowhere"))
    assert "nowhere" in msg and "not a campaign directory" in msg
    (tmp_path / "campaign.yaml").write_text("- just\n- a list\n")
    msg = _error(root=str(tmp_path))
    assert "campaign.yaml" in msg and "not a campaign configuration" in msg


def test_missing_shard_file(copy):
    os.unlink(shard_file(copy, 1))
    msg = _error(root=copy, split="train")
    assert shard_file(copy, 1) in msg and "missing" in msg and "manifest.json" in msg
    assert len(ShardDataset(copy, split="test")) == 1          # shard 2 alone is fine
    # neither manifest nor record: the missing shard is still named
    os.unlink(os.path.join(copy, "manifest.json"))
    os.unlink(os.path.join(copy, "shards", "shard_000001.json"))
    msg = _error(root=copy, split=None)
    assert shard_file(copy, 1) in msg and "simulation 2" in msg


def test_no_shards(copy):
    os.unlink(os.path.join(copy, "manifest.json"))
    for s in range(3):
        os.unlink(os.path.join(copy, "shards", f"shard_{s:06d}.json"))
    msg = _error(root=copy)
    assert copy in msg and "no shards" in msg


def test_missing_field(campaign):
    msg = _error(root=campaign, fields=("za/disp", "fastpm/vel"))
    assert "'fastpm/vel'" in msg and shard_file(campaign, 0) in msg and "za/disp" in msg


def test_mismatched_shards(copy):
    with h5py.File(shard_file(copy, 2), "r+") as f:
        f.attrs["box_size"] = 256.0
    msg = _error(root=copy, split=None)
    assert "mismatched" in msg and shard_file(copy, 2) in msg and shard_file(copy, 0) in msg
    assert "box_size=256" in msg
    assert len(ShardDataset(copy, split="train")) == 4         # shards 0 and 1 agree


def test_mismatched_field_shape(copy):
    with h5py.File(shard_file(copy, 1), "r+") as f:
        del f["density"]
        f.create_dataset("density", data=np.zeros((2, 1, 8, 8, 8), np.float32))
        f.attrs["density_nmesh"] = 8        # the shard agrees with itself (the schema), not with shard 0
    msg = _error(root=copy, split=None, fields=("za/disp", "density"))
    assert "mismatched" in msg and shard_file(copy, 1) in msg and "'density'" in msg


def test_unknown_split_and_empty_selection(copy):
    msg = _error(root=copy, split="bogus")
    assert "'bogus'" in msg and os.path.join(copy, "campaign.yaml") in msg and "train, val, test" in msg
    msg = _error(root=copy, indices=[])
    assert copy in msg and "empty selection" in msg
    msg = _error(root=copy, indices=[1, 6])
    assert "6" in msg and "out of range" in msg
    path = os.path.join(copy, "campaign.yaml")
    raw = yaml.safe_load(open(path))
    raw["splits"] = {"train": 5, "val": 1, "test": 0}
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    msg = _error(root=copy, split="test")
    assert path in msg and "'test'" in msg and "no simulations" in msg
    assert len(ShardDataset(copy, split="train")) == 5


# ------------------------------------------------------------------------- symmetries


def grad(phi):
    """Central-difference gradient of a periodic scalar field (1, n, n, n) -> (3, n, n, n)."""
    return np.stack([(np.roll(phi[0], -1, a) - np.roll(phi[0], 1, a)) / 2 for a in range(3)])


def div(v):
    """Central-difference divergence of a periodic vector field (3, n, n, n) -> (1, n, n, n)."""
    return sum((np.roll(v[a], -1, a) - np.roll(v[a], 1, a)) / 2 for a in range(3))[None]


def test_48_symmetries_form_a_group():
    syms = all_symmetries()
    assert len(syms) == 48 and len(set(syms)) == 48
    assert syms[0] == identity() == ((0, 1, 2), (False, False, False))
    mats = {tuple(symmetry_matrix(*s).ravel()) for s in syms}
    assert len(mats) == 48
    for s in syms:
        r = symmetry_matrix(*s)
        assert np.array_equal(r @ r.T, np.eye(3, dtype=int)) and abs(round(np.linalg.det(r))) == 1
        assert compose(inverse(s), s) == identity() == compose(s, inverse(s))
        assert inverse(s) in syms
        for t in syms:
            c = compose(t, s)
            assert c in syms
            assert np.array_equal(symmetry_matrix(*c), symmetry_matrix(*t) @ symmetry_matrix(*s))
    # rotations (det +1) are a subgroup of 24
    assert sum(round(np.linalg.det(symmetry_matrix(*s))) == 1 for s in syms) == 24


def test_apply_is_a_group_action():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 2, 3, 4))           # distinct sizes catch axis mix-ups
    syms = all_symmetries()
    images = {s: apply_symmetry(v, *s, vector=True) for s in syms}
    assert len({im.tobytes() for im in images.values()}) == 48     # all act differently
    assert np.array_equal(images[identity()], v)
    for s in syms:
        assert images[s].shape == (3,) + tuple(v.shape[1 + p] for p in s[0])
        np.testing.assert_array_equal(apply_symmetry(images[s], *inverse(s), vector=True), v)
        for t in syms[::5]:
            np.testing.assert_array_equal(apply_symmetry(images[s], *t, vector=True), images[compose(t, s)])


def test_flip_maps_index_to_minus_index_mod_n():
    x = np.arange(5.0)[None, :, None, None] * np.ones((1, 5, 2, 2))
    y = apply_symmetry(x, (0, 1, 2), (True, False, False))
    assert y[0, :, 0, 0].tolist() == [0.0, 4.0, 3.0, 2.0, 1.0]      # i -> -i mod 5
    v = np.zeros((3, 4, 4, 4))
    v[0, 1, 2, 3], v[1, 1, 2, 3], v[2, 1, 2, 3] = 1.0, 2.0, 3.0
    w = apply_symmetry(v, (2, 0, 1), (False, True, False), vector=True)
    # R[a, perm[a]] = sign: point (1, 2, 3) -> (3, -1, 2) = (3, 3, 2) mod 4; v -> (3, -1, 2)
    assert w[:, 3, 3, 2].tolist() == [3.0, -1.0, 2.0]
    assert np.count_nonzero(w) == 3


def test_gradient_equivariance_all_48():
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((1, 6, 6, 6))
    g = grad(phi)
    for perm, flips in all_symmetries():
        lhs = apply_symmetry(g, perm, flips, vector=True)
        rhs = grad(apply_symmetry(phi, perm, flips, vector=False))
        np.testing.assert_allclose(lhs, rhs, atol=1e-6, rtol=0)
    # the check can fail: treating the gradient as 3 scalars is wrong for a flip or a swap
    bad = [s for s in all_symmetries()
           if not np.allclose(apply_symmetry(g, *s, vector=False), grad(apply_symmetry(phi, *s)), atol=1e-6)]
    assert len(bad) == 47


def test_divergence_is_a_scalar_all_48():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((3, 6, 6, 6))
    d = div(v)
    for perm, flips in all_symmetries():
        np.testing.assert_allclose(apply_symmetry(d, perm, flips), div(apply_symmetry(v, perm, flips, vector=True)),
                                   atol=1e-6, rtol=0)


def _flip_n_minus_1(x, perm, flips, vector):
    """The wrong convention i -> n - 1 - i (reflection about the box centre of cell centres)."""
    y = np.transpose(x, (0,) + tuple(1 + p for p in perm))
    y = np.flip(y, [1 + a for a in range(3) if flips[a]]) if any(flips) else y
    if vector:
        y = y[list(perm)] * np.array([-1.0 if f else 1.0 for f in flips])[:, None, None, None]
    return y


def test_displacements_move_particles_exactly(campaign):
    """Particle at q moved to x = q + d(q): after the symmetry it is at R x = R q + d'(R q) (mod L)."""
    L, n = 128.0, 8
    d = h5_sample(campaign, 0, "fastpm/disp").astype(np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"))            # (3, n, n, n)
    x = idx * (L / n) + d
    for perm, flips in all_symmetries():
        r = symmetry_matrix(perm, flips)
        src = np.einsum("ab,a...->b...", r, idx) % n        # j = R^-1 i' = R^T i'  (mod n)
        want = np.einsum("ab,b...->a...", r, x[:, src[0], src[1], src[2]])      # R x(j)
        got = idx * (L / n) + apply_symmetry(d, perm, flips, vector=True)
        err = (got - want + L / 2) % L - L / 2
        assert np.abs(err).max() < 1e-9
        if any(flips):                                       # the n-1-i convention is off by a cell
            bad = idx * (L / n) + _flip_n_minus_1(d, perm, flips, True)
            assert np.abs((bad - want + L / 2) % L - L / 2).max() > 1.0


def cic(pos, L, m):
    """Cloud-in-cell mass assignment to grid points at i L / m of a periodic box: (1, m, m, m)."""
    u = pos / (L / m)
    i0 = np.floor(u).astype(int)
    f = u - i0
    rho = np.zeros((m, m, m))
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([f[:, a] if c else 1 - f[:, a] for a, c in enumerate(corner)], axis=0)
        np.add.at(rho, tuple((i0[:, a] + c) % m for a, c in enumerate(corner)), w)
    return rho[None]


def test_density_of_moved_particles_moves_as_a_scalar():
    L, m = 100.0, 8
    pos = np.random.default_rng(3).uniform(0, L, (300, 3))
    rho = cic(pos, L, m)
    for perm, flips in all_symmetries():
        r = symmetry_matrix(perm, flips)
        moved = cic((pos @ r.T) % L, L, m)
        np.testing.assert_allclose(apply_symmetry(rho, perm, flips), moved, atol=1e-9)
        if any(flips):
            assert not np.allclose(_flip_n_minus_1(rho, perm, flips, False), moved, atol=1e-3)


def test_torch_numpy_batched_agree():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((2, 3, 4, 4, 4)).astype(np.float32)
    for s in all_symmetries()[::7]:
        batched = apply_symmetry(torch.from_numpy(v), *s, vector=True)
        assert isinstance(batched, torch.Tensor) and batched.is_contiguous()
        for b in range(2):
            np.testing.assert_array_equal(batched[b].numpy(), apply_symmetry(v[b], *s, vector=True))
    with pytest.raises(ValueError):
        apply_symmetry(np.zeros((2, 4, 4, 4)), (0, 1, 2), (True, False, False), vector=True)


def test_random_cube_symmetry_same_draw_for_all_fields():
    assert vector_flags(["za/disp", "fastpm/vel", "density"]) == (True, True, False)
    aug = RandomCubeSymmetry((True, True, False), seed=0)
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.standard_normal((3, 4, 4, 4)))
    b = torch.from_numpy(rng.standard_normal((3, 4, 4, 4)))
    c = torch.from_numpy(rng.standard_normal((1, 2, 2, 2)))
    seen = set()
    for _ in range(200):
        out = aug((a, b, c))
        s = aug.last
        seen.add(s)
        assert torch.equal(out[0], apply_symmetry(a, *s, vector=True))
        assert torch.equal(out[1], apply_symmetry(b, *s, vector=True))
        assert torch.equal(out[2], apply_symmetry(c, *s, vector=False))
    assert len(seen) > 40                                    # 200 draws reach nearly all 48
    assert [RandomCubeSymmetry((True,), seed=9).draw() for _ in range(1)] == \
        [RandomCubeSymmetry((True,), seed=9).draw() for _ in range(1)]
    with pytest.raises(ValueError):
        aug((a, b))


# ------------------------------------------------------------------------- normalizer


def test_normalizer_round_trip_and_state():
    norm = FieldNormalizer({"za/disp": 6.0, "density": 2.5}, shift={"density": 1.0})
    rng = np.random.default_rng(6)
    d = torch.from_numpy(rng.standard_normal((3, 4, 4, 4)).astype(np.float32)) * 6
    rho = torch.from_numpy(rng.standard_normal((1, 4, 4, 4)).astype(np.float32))
    fd, frho = norm((d, rho))
    assert torch.allclose(fd, d / 6.0) and torch.allclose(frho, (rho - 1.0) / 2.5)
    back = norm.inverse((fd, frho))
    assert torch.allclose(back[0], d, atol=1e-6) and torch.allclose(back[1], rho, atol=1e-6)
    assert torch.allclose(norm.inverse(norm.forward(rho, "density"), "density"), rho, atol=1e-6)
    state = norm.state_dict()
    assert state == {"fields": ["za/disp", "density"], "scale": [6.0, 2.5], "shift": [0.0, 1.0]}
    again = FieldNormalizer.from_state_dict(pickle.loads(pickle.dumps(state)))
    assert again == norm and again.fields == norm.fields
    assert torch.equal(again.forward(d, "za/disp"), norm.forward(d, "za/disp"))
    # a torch checkpoint round trip (weights_only loading accepts the plain data)
    import io
    buf = io.BytesIO()
    torch.save({"normalizer": state}, buf)
    buf.seek(0)
    assert FieldNormalizer.from_state_dict(torch.load(buf, weights_only=True)["normalizer"]) == norm
    for bad in ({"za/disp": 0.0}, {"za/disp": "six"}, {}, {"za/disp": float("nan")}):
        with pytest.raises(InputError):
            FieldNormalizer(bad)
    with pytest.raises(InputError):
        FieldNormalizer({"za/disp": 6.0}, shift={"density": 1.0})
    with pytest.raises(ValueError):
        norm.forward(d)                                     # two fields: name one


def test_estimate(campaign):
    ds = ShardDataset(campaign, split=None, fields=("za/disp", "density"),
                      transform=FieldNormalizer({"za/disp": 1000.0, "density": 1000.0}))
    est = estimate(ds, n=6)
    assert set(est) == {"za/disp", "density"}
    allz = np.concatenate([h5_sample(campaign, i, "za/disp").ravel() for i in range(6)]).astype(np.float64)
    assert est["za/disp"]["std"] == pytest.approx(allz.std(), rel=1e-9)     # raw values, no transform
    assert est["za/disp"]["mean"] == pytest.approx(allz.mean(), abs=1e-9)
    assert 0.1 < est["za/disp"]["std"] < 50
    allr = np.concatenate([h5_sample(campaign, i, "density").ravel() for i in range(6)]).astype(np.float64)
    assert FieldNormalizer.estimate(ds, 6)["density"]["std"] == pytest.approx(allr.std(), rel=1e-9)
