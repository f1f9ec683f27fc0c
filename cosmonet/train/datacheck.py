"""Before the first step: the training and validation splits hold no NaN and no infinity.

A non-finite value in a shard used to reach the loss and stop the run with exit 3 after
some steps (the device flag of :mod:`cosmonet.train.staged`), or train on a wrong sample.
:func:`check_splits_finite` reads every selected field of every simulation once, each rank
a disjoint share (simulation ``j`` on rank ``j % size``), block by block
(:func:`cosmonet.io.schema.count_nonfinite`, no second copy of a sample in memory), sums
the counts over the ranks and raises the same one-line :class:`~cosmonet.errors.InputError`
on every rank, naming the shard, the field, the simulation and the count. Cost: one read of
the two splits, shared by the ranks.
"""
import time

import torch

from ..errors import InputError


def shard_dataset_of(dataset):
    """The :class:`~cosmonet.data.ShardDataset` under a training dataset (EpochItems,
    SubcubeDataset or the ShardDataset itself), or None."""
    from ..data import ShardDataset
    for attr in ("dataset", "base"):
        if not isinstance(dataset, ShardDataset) and hasattr(dataset, attr):
            dataset = getattr(dataset, attr)
    return dataset if isinstance(dataset, ShardDataset) else None


def check_splits_finite(splits, backend):
    """``splits``: [(split name, dataset)]; InputError on every rank of ``backend`` when a
    selected field of one of their simulations holds a NaN or an infinity (or cannot be
    read). Returns the seconds this rank spent reading."""
    t0 = time.perf_counter()
    items = []                                      # (split name, ShardDataset, item)
    for name, ds in splits:
        base = shard_dataset_of(ds)
        if base is not None:
            items += [(name, base, i) for i in range(len(base))]
    width = max((len(b.fields) for _, b, _ in items), default=1)
    counts = torch.zeros((len(items) + 1, width), dtype=torch.float64)
    error = None
    for j in range(backend.rank, len(items), backend.size):
        name, base, i = items[j]
        try:
            found = base.count_nonfinite(i)
        except InputError as exc:
            error = str(exc)
            break
        for c, field in enumerate(base.fields):
            counts[j, c] = found[field]
    failed = torch.zeros(backend.size, dtype=torch.float64)
    if error is not None:
        failed[backend.rank] = 1.0
    both = torch.cat([counts.flatten(), failed]).to(backend.device)
    both = backend.allreduce_sum(both).cpu()
    counts, failed = both[:counts.numel()].reshape(counts.shape), both[counts.numel():]
    if failed.any():
        src = int(torch.nonzero(failed)[0, 0])
        raise InputError(backend.broadcast_object(error, src=src))
    bad = torch.nonzero(counts)
    if len(bad):
        j, c = (int(v) for v in bad[0])
        name, base, i = items[j]
        path, _ = base._locs[i]
        sims = sorted({int(r) for r in bad[:, 0].tolist() if items[r][0] == name})
        from ..io.schema import nonfinite_message
        index = base.sample_info(i)["index"]
        more = f" ({len(sims)} simulations of it hold such values)" if len(sims) > 1 else ""
        raise InputError(nonfinite_message(path, base.fields[c], int(counts[j, c]), f"of simulation {index}")
                         + f"; train refuses the {name} split{more}")
    for _, ds in splits:
        base = shard_dataset_of(ds)
        if base is not None:
            base.close()                            # DataLoader workers open their own handles
    return time.perf_counter() - t0
