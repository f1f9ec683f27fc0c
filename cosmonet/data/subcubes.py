"""Density sub-cubes with their cosmological parameters, for parameter inference.

Each simulation of a campaign stores its z = 0 density contrast on an M^3 mesh
(``density``, shape (1, M, M, M)). :class:`SubcubeDataset` cuts every box of a split into
(M / s)^3 non-overlapping cubes of s^3 cells and pairs each with the box's parameters,
scaled to the unit interval over the prior box::

    theta_unit = (theta - lo) / (hi - lo)

The ranges (lo, hi) come from the campaign's Latin hypercube (``cosmology.lhs`` in
``campaign.yaml``) when it has one, else from the minimum and maximum over the split
(``ranges=`` fixes them explicitly, as evaluation does with the training ranges).

The split is by simulation, never by sub-cube: a dataset holds the sub-cubes of the
simulations of one campaign split, and ``sim_index(j)`` gives the campaign index of the
simulation sub-cube ``j`` was cut from (tests check that two splits share none).

Item ``epoch * len + j`` is sub-cube ``j`` under the cube symmetry drawn from
(seed, epoch, j) when ``augment`` (the 48 rotations and reflections; the parameters do
not change under them), as :class:`cosmonet.train.sampler.ShardedBatchSampler` yields:
the transforms of :mod:`cosmonet.data` (RandomCubeSymmetry, then FieldNormalizer), drawn
as for every other training dataset.
"""
import math

import numpy as np
import torch

from ..errors import InputError
from ..campaign.store import PARAM_COLUMNS, read_config
from .augment import Compose, RandomCubeSymmetry, call_transform, sample_rng
from .dataset import ShardDataset
from .normalize import FieldNormalizer

__all__ = ["SubcubeDataset", "campaign_ranges", "check_subcube"]


def check_subcube(size, nmesh):
    """The sub-cube side in cells (0 means the whole box); InputError unless it divides ``nmesh``."""
    size = nmesh if size in (0, None) else size
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise InputError(f"sub-cube size must be an integer >= 2 (got {size!r})")
    if nmesh % size:
        raise InputError(f"sub-cube size {size} does not divide the density mesh of {nmesh}^3 cells "
                         f"(use one of {', '.join(str(d) for d in range(2, nmesh + 1) if nmesh % d == 0)})")
    return size


def campaign_ranges(root):
    """{parameter: (lo, hi)} of the campaign's Latin hypercube, or {} when it has none."""
    cosmology = read_config(root).cosmology
    lhs = cosmology.get("lhs") if isinstance(cosmology, dict) else None
    if not isinstance(lhs, dict):
        return {}
    return {k: (float(v[0]), float(v[1])) for k, v in lhs.items()}


class SubcubeDataset(torch.utils.data.Dataset):
    """(density sub-cube (1, s, s, s) / scale, parameters in unit range (P,), index) samples.

    root, split: the campaign and split (see :class:`ShardDataset`).
    size: sub-cube side in cells (must divide the density mesh; 0: whole box).
    params: parameter names (columns of the campaign's params table), e.g. ("Omega_m", "sigma8").
    scale: the density contrast is divided by it before the network.
    ranges: {name: (lo, hi)} for the unit scaling (default: see the module docstring).
    augment, seed: random cube symmetry per (seed, epoch, sub-cube).
    max_boxes: keep only the split's first ``max_boxes`` simulations.
    check_finite: reads refuse a NaN or an infinity (see :class:`ShardDataset`).
    """

    def __init__(self, root, split, size, params=("Omega_m", "sigma8"), scale=1.0, ranges=None,
                 augment=False, seed=0, max_boxes=None, check_finite=True):
        self.base = ShardDataset(root, split=split, fields=("density",), check_finite=check_finite)
        if max_boxes is not None:
            if max_boxes < 1:
                raise InputError(f"the number of boxes must be >= 1 (got {max_boxes})")
            if max_boxes < len(self.base):       # the first max_boxes simulations of the split
                first = [self.base.sample_info(i)["index"] for i in range(max_boxes)]
                self.base = ShardDataset(root, fields=("density",), indices=first, check_finite=check_finite)
        nmesh = self.base.field_shapes["density"][-1]
        self.size = check_subcube(size, nmesh)
        self.per_side = nmesh // self.size
        self.per_box = self.per_side ** 3
        self.nmesh = nmesh
        self.side = float(self.base.box_size) * self.size / nmesh      # Mpc/h
        self.params = tuple(params)
        if not self.params:
            raise InputError("data.params must name at least one parameter (e.g. [Omega_m, sigma8])")
        unknown = [p for p in self.params if p not in PARAM_COLUMNS]
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r} (known: {', '.join(PARAM_COLUMNS)})")
        infos = [self.base.sample_info(i) for i in range(len(self.base))]
        theta = np.array([[math.nan if info[p] is None else info[p] for p in self.params] for info in infos],
                         dtype=np.float64)
        if np.isnan(theta).any():
            p = self.params[int(np.argwhere(np.isnan(theta))[0, 1])]
            raise InputError(f"campaign {root} records no {p} for its simulations: it has no parameters to infer")
        self.theta = theta                                   # physical values, per simulation
        self.sim_indices = [info["index"] for info in infos]
        if ranges is None:
            lhs = campaign_ranges(root)
            ranges = {p: lhs.get(p, (float(theta[:, k].min()), float(theta[:, k].max())))
                      for k, p in enumerate(self.params)}
        self.ranges = {p: (float(ranges[p][0]), float(ranges[p][1])) for p in self.params}
        for p, (lo, hi) in self.ranges.items():
            if not hi > lo:
                raise InputError(f"parameter {p} does not vary across split {split!r} of {root} "
                                 f"(all {lo:g}): a campaign without parameters to infer")
        self.scale = float(scale)
        self.augment, self.seed = bool(augment), int(seed)
        norm = FieldNormalizer({"density": self.scale})
        self.transform = Compose(RandomCubeSymmetry((False,)), norm) if augment else norm

    # ------------------------------------------------------------------ parameters
    def to_unit(self, theta):
        """Physical parameters (..., P) -> unit range."""
        lo, hi = self._bounds()
        return (np.asarray(theta, dtype=np.float64) - lo) / (hi - lo)

    def from_unit(self, u):
        """Unit range (..., P) -> physical parameters."""
        lo, hi = self._bounds()
        return np.asarray(u, dtype=np.float64) * (hi - lo) + lo

    def _bounds(self):
        lo = np.array([self.ranges[p][0] for p in self.params])
        hi = np.array([self.ranges[p][1] for p in self.params])
        return lo, hi

    # ------------------------------------------------------------------ indexing
    def __len__(self):
        return len(self.base) * self.per_box

    def locate(self, j):
        """(simulation position in the split, (i, j, k) cube corner in cells) of sub-cube ``j``."""
        box, c = divmod(int(j), self.per_box)
        a, rest = divmod(c, self.per_side ** 2)
        b, d = divmod(rest, self.per_side)
        return box, (a * self.size, b * self.size, d * self.size)

    def sim_index(self, j):
        """Campaign index of the simulation sub-cube ``j`` comes from."""
        return self.sim_indices[self.locate(j)[0]]

    def box_of(self, j):
        """Position of sub-cube ``j``'s simulation within this split (0 .. n_boxes - 1)."""
        return self.locate(j)[0]

    def cube(self, j):
        """Raw density contrast of sub-cube ``j`` (1, s, s, s), float32 tensor."""
        box, corner = self.locate(j)
        region = (slice(None),) + tuple(slice(c, c + self.size) for c in corner)
        return self.base.read_region(box, "density", region)

    def sample(self, j, epoch=0):
        """(density sub-cube / scale under the symmetry of (seed, epoch, j), unit parameters)."""
        (x,) = call_transform(self.transform, (self.cube(j),), sample_rng(self.seed, epoch, j))
        y = torch.from_numpy(self.to_unit(self.theta[self.box_of(j)]).astype(np.float32))
        return x, y

    def __getitem__(self, item):
        epoch, j = divmod(int(item), len(self))
        return self.sample(j, epoch) + (j,)

    def __repr__(self):
        return (f"SubcubeDataset({self.base.root!r}, split={self.base.split!r}, {len(self.base)} boxes x "
                f"{self.per_box} sub-cubes of {self.size}^3 cells ({self.side:g} Mpc/h), params={self.params})")
