"""A distributed sampler whose batches do not depend on the number of ranks.

Each epoch shuffles the indices with a generator seeded by (seed, epoch). Global batch t
is ``perm[t * B : (t + 1) * B]`` with B = batch_per_rank * size, and rank r takes its
elements r, r + size, ... So 2 ranks with batch b see, together, exactly the samples that
1 rank with batch 2b sees, step by step; with gradients averaged over ranks the training
trajectories agree. ``set_start(t)`` skips the first t batches (resume mid-epoch).

The sampler yields ``epoch * n + index``: the dataset decodes the epoch from it, so
DataLoader workers that persist across epochs still draw each epoch's augmentation.
"""
import numpy as np
from torch.utils.data import Sampler


class ShardedBatchSampler(Sampler):
    def __init__(self, n, rank, size, batch_per_rank, seed=0, shuffle=True):
        self.n, self.rank, self.size = int(n), int(rank), int(size)
        self.batch_per_rank = int(batch_per_rank)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch = 0
        self.start = 0
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} samples make no global batch of {self.global_batch}")

    @property
    def global_batch(self):
        return self.batch_per_rank * self.size

    @property
    def batches_per_epoch(self):
        return self.n // self.global_batch

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def set_start(self, batch):
        self.start = int(batch)

    def global_batches(self):
        """The list of global batches (index arrays) of the current epoch."""
        perm = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                else np.arange(self.n))
        B = self.global_batch
        return [perm[t * B:(t + 1) * B] for t in range(self.batches_per_epoch)]

    def __iter__(self):
        offset = self.epoch * self.n
        for batch in self.global_batches()[self.start:]:
            yield from (offset + int(i) for i in batch[self.rank::self.size])

    def __len__(self):
        return (self.batches_per_epoch - self.start) * self.batch_per_rank
