"""The 48 symmetries of the periodic cube (3! axis permutations x 2^3 flips) as data augmentation.

Conventions
-----------
A field is channel first, ``(C, D, H, W)`` or batched ``(B, C, D, H, W)``; its last three
dimensions are the spatial axes 0, 1, 2 (x, y, z), and grid point ``(i, j, k)`` sits at the
cell corner ``q = (i, j, k) L / n`` of the periodic box (as in the shards, see
docs/data-format.md). A vector field (``C == 3``) holds the x, y, z components along the
spatial axes 0, 1, 2.

A symmetry is ``(perm, flips)``: ``perm`` a permutation of ``(0, 1, 2)``, ``flips`` three
bools. Its signed permutation matrix is ``R[a, perm[a]] = -1 if flips[a] else +1`` (zero
elsewhere): output axis ``a`` is input axis ``perm[a]``, reversed when ``flips[a]``. It maps
the point ``x`` to ``x' = R x`` (mod L), so a flip is the reflection about the origin, which on
the periodic grid maps index ``i`` to ``(-i) mod n`` (not ``n - 1 - i``: index 0 stays put).

:func:`apply_symmetry` transforms a scalar field as ``s'(x') = s(R^-1 x')`` and a vector field
as ``v'(x') = R v(R^-1 x')``: the components are permuted like the axes and negated along
flipped axes. So a displacement field stays a displacement field: the particle at ``q`` moved
to ``x = q + d(q)`` is, after the symmetry, at ``R x = R q + d'(R q)`` exactly.
"""
import itertools

import numpy as np
import torch

__all__ = ["all_symmetries", "apply_symmetry", "symmetry_matrix", "from_matrix", "compose",
           "inverse", "identity", "vector_flags", "RandomCubeSymmetry", "Compose", "takes_rng",
           "call_transform", "sample_rng"]


def identity():
    """The identity symmetry ``((0, 1, 2), (False, False, False))``."""
    return (0, 1, 2), (False, False, False)


def all_symmetries():
    """The 48 symmetries of the cube as a list of ``(perm, flips)``; the identity comes first."""
    return [(tuple(perm), tuple(bool(f) for f in flips))
            for perm in itertools.permutations(range(3))
            for flips in itertools.product((False, True), repeat=3)]


def _check(perm, flips):
    perm, flips = tuple(int(p) for p in perm), tuple(bool(f) for f in flips)
    if sorted(perm) != [0, 1, 2] or len(flips) != 3:
        raise ValueError(f"a cube symmetry needs perm a permutation of (0, 1, 2) and 3 flips "
                         f"(got perm={perm}, flips={flips})")
    return perm, flips


def symmetry_matrix(perm, flips):
    """The 3x3 signed permutation matrix R (int) with ``R[a, perm[a]] = -1 if flips[a] else 1``."""
    perm, flips = _check(perm, flips)
    r = np.zeros((3, 3), dtype=int)
    for a in range(3):
        r[a, perm[a]] = -1 if flips[a] else 1
    return r


def from_matrix(r):
    """The ``(perm, flips)`` of a signed permutation matrix (inverse of :func:`symmetry_matrix`)."""
    r = np.asarray(r)
    if r.shape != (3, 3) or not np.array_equal(np.abs(r).sum(0), [1, 1, 1]) \
            or not np.array_equal(np.abs(r).sum(1), [1, 1, 1]) or not np.all(np.isin(r, (-1, 0, 1))):
        raise ValueError(f"not a signed permutation matrix: {r.tolist()}")
    perm = tuple(int(np.flatnonzero(r[a])[0]) for a in range(3))
    flips = tuple(bool(r[a, perm[a]] < 0) for a in range(3))
    return perm, flips


def compose(second, first):
    """The symmetry ``second o first`` (apply ``first``, then ``second``), as ``(perm, flips)``."""
    return from_matrix(symmetry_matrix(*second) @ symmetry_matrix(*first))


def inverse(sym):
    """The inverse symmetry (R^-1 = R^T)."""
    return from_matrix(symmetry_matrix(*sym).T)


def _flip_index(n, like):
    """Index array ``(-i) mod n`` for i in 0..n-1."""
    idx = (-np.arange(n)) % n
    return torch.as_tensor(idx, device=like.device) if isinstance(like, torch.Tensor) else idx


def apply_symmetry(x, perm, flips, vector=False):
    """Apply the symmetry ``(perm, flips)`` to a field; see the module docstring for conventions.

    x: torch tensor or numpy array, ``(C, D, H, W)`` or ``(B, C, D, H, W)``.
    vector: True for a vector field (C == 3): components are permuted and negated with the axes.
    Returns a new array of the same kind (spatial dims permuted: ``out.shape[-3 + a] ==
    x.shape[-3 + perm[a]]``).
    """
    perm, flips = _check(perm, flips)
    is_torch = isinstance(x, torch.Tensor)
    if not is_torch:
        x = np.asarray(x)
    if x.ndim not in (4, 5):
        raise ValueError(f"apply_symmetry expects (C, D, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    lead = x.ndim - 3                       # spatial axes are lead, lead+1, lead+2
    order = list(range(lead)) + [lead + p for p in perm]
    y = x.permute(order) if is_torch else np.transpose(x, order)
    for a in range(3):
        if flips[a]:
            dim = lead + a
            idx = _flip_index(y.shape[dim], y)
            y = y.index_select(dim, idx) if is_torch else np.take(y, idx, axis=dim)
    if vector:
        cdim = lead - 1
        if x.shape[cdim] != 3:
            raise ValueError(f"a vector field needs 3 channels, got shape {tuple(x.shape)}")
        sign = [-1.0 if f else 1.0 for f in flips]
        if is_torch:
            comp = y.index_select(cdim, torch.as_tensor(perm, device=y.device))
            shape = [1] * y.ndim
            shape[cdim] = 3
            y = comp * torch.as_tensor(sign, dtype=y.dtype, device=y.device).reshape(shape)
        else:
            comp = np.take(y, list(perm), axis=cdim)
            shape = [1] * y.ndim
            shape[cdim] = 3
            y = comp * np.asarray(sign, dtype=y.dtype).reshape(shape)
    if is_torch:
        return y.contiguous()
    return np.ascontiguousarray(y)


def vector_flags(fields):
    """Per field name: True for displacement / velocity (vector) fields, False for ``density``."""
    return tuple(not (name == "density" or name.endswith("density")) for name in fields)


def sample_rng(seed, epoch, i):
    """The generator of the random transforms of sample ``i`` in ``epoch``:
    ``np.random.default_rng([seed, epoch, i])``, the same on every rank and worker."""
    return np.random.default_rng([int(seed), int(epoch), int(i)])


def takes_rng(transform):
    """Whether ``transform`` is called as ``transform(tensors, rng)`` (else ``transform(tensors)``):
    its ``takes_rng`` attribute if set, else whether it accepts a second positional argument."""
    flag = getattr(transform, "takes_rng", None)
    if flag is not None:
        return bool(flag)
    import inspect
    try:
        params = list(inspect.signature(transform).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params) or any(p.name == "rng" for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2


def call_transform(transform, tensors, rng=None):
    """Call a transform with or without ``rng`` (see :func:`takes_rng`)."""
    if takes_rng(transform):
        return transform(tensors, rng)
    return transform(tensors)


class RandomCubeSymmetry:
    """Transform: draw one of the 48 cube symmetries and apply it to every tensor of a sample.

    vector: one bool per tensor (see :func:`vector_flags`), e.g. ``(True, True, False)`` for
    ``("za/disp", "fastpm/disp", "density")``.
    seed: seed of the transform's own generator, used when the caller passes no ``rng``.
    Inside a DataLoader worker the own generator is re-seeded from the worker's torch seed
    (distinct per worker and epoch, reproducible when the DataLoader's generator is seeded),
    so workers do not repeat each other's draws. ``ShardDataset(seed=...)`` instead passes a
    per-sample ``rng``, which makes the draws independent of the number of workers.
    symmetries: restrict the draw to these ``(perm, flips)`` (default: all 48).
    """

    takes_rng = True

    def __init__(self, vector, seed=None, symmetries=None):
        self.vector = tuple(bool(v) for v in vector)
        self.seed = seed
        self.symmetries = [_check(*s) for s in (symmetries or all_symmetries())]
        if not self.symmetries:
            raise ValueError("RandomCubeSymmetry needs at least one symmetry")
        self._rng, self._pid = None, None
        self.last = None        # the symmetry applied by the latest call (in this process)

    @classmethod
    def for_fields(cls, fields, **kw):
        return cls(vector_flags(fields), **kw)

    def _own_rng(self):
        import os
        if self._rng is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            entropy = [] if self.seed is None else [int(self.seed)]
            if info is not None:
                entropy.append(int(info.seed) % (1 << 63))
            self._rng = np.random.default_rng(entropy or None)
            self._pid = os.getpid()
        return self._rng

    def draw(self, rng=None):
        rng = self._own_rng() if rng is None else rng
        return self.symmetries[int(rng.integers(len(self.symmetries)))]

    def __call__(self, tensors, rng=None):
        single = not isinstance(tensors, (tuple, list))
        items = (tensors,) if single else tuple(tensors)
        if len(items) != len(self.vector):
            raise ValueError(f"RandomCubeSymmetry was built for {len(self.vector)} tensors "
                             f"(vector={self.vector}), got {len(items)}")
        perm, flips = self.draw(rng)
        self.last = (perm, flips)
        out = tuple(apply_symmetry(t, perm, flips, vector=v) for t, v in zip(items, self.vector))
        return out[0] if single else out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rng"], state["_pid"] = None, None
        return state

    def __repr__(self):
        return f"RandomCubeSymmetry(vector={self.vector}, seed={self.seed}, n={len(self.symmetries)})"


class Compose:
    """Apply transforms in order, passing ``rng`` to those that take one (see :func:`takes_rng`)."""

    takes_rng = True

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, tensors, rng=None):
        for t in self.transforms:
            tensors = call_transform(t, tensors, rng)
        return tensors

    def __repr__(self):
        return f"Compose({', '.join(map(repr, self.transforms))})"
