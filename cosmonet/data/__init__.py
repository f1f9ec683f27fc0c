"""Training data, one pipeline for every task: a dataset of campaign shards
(:class:`ShardDataset`, or :class:`~cosmonet.data.subcubes.SubcubeDataset` for density
sub-cubes) plus composable transforms (:class:`RandomCubeSymmetry`, the 48 cube symmetries
with vector components permuted and negated; :class:`FieldNormalizer`; :class:`Compose`),
drawn per (seed, epoch, sample) and served to the trainer by :class:`EpochItems`."""
from .augment import (Compose, RandomCubeSymmetry, all_symmetries, apply_symmetry, compose, identity,
                      inverse, sample_rng, symmetry_matrix, vector_flags)
from .normalize import FieldNormalizer, estimate
from .dataset import EpochItems, ShardDataset

__all__ = ["ShardDataset", "EpochItems", "sample_rng", "RandomCubeSymmetry", "Compose", "all_symmetries", "apply_symmetry", "compose",
           "identity", "inverse", "symmetry_matrix", "vector_flags", "FieldNormalizer", "estimate"]
