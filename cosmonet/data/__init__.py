"""Training data: campaign shards as a torch Dataset, cube-symmetry augmentation, normalization."""
from .augment import (Compose, RandomCubeSymmetry, all_symmetries, apply_symmetry, compose, identity,
                      inverse, symmetry_matrix, vector_flags)
from .normalize import FieldNormalizer, estimate
from .dataset import ShardDataset

__all__ = ["ShardDataset", "RandomCubeSymmetry", "Compose", "all_symmetries", "apply_symmetry", "compose",
           "identity", "inverse", "symmetry_matrix", "vector_flags", "FieldNormalizer", "estimate"]
