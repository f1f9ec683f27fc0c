"""Training pairs made on the fly (``data.source: generate``): a data set that never runs out.

Every training step of every rank simulates its share of the global batch with the batched
torch engine (:func:`cosmonet.torchpm.run_batch`) on the training device, from seeds never
used before, and trains on ``(data.input, data.target)`` of those boxes divided by
``data.scale``. The simulation settings and the cosmology are those of the campaign at
``data.root``, whose validation and test splits stay the fixed held-out sets (evaluate
reads them as usual).

Seeds. Sample ``j`` of global batch ``t`` of epoch ``e`` (``j`` in 0 .. global batch - 1;
rank ``r`` of ``R`` takes ``j = r, r + R, ...``, as the sampler does) has the seed

    SeedSequence([train.seed, GENERATE_TAG, e, t * global_batch + j]) -> 63 bits,

a hash in a domain of its own (the campaign's seeds hash ``(seed, index)``), re-hashed in
the vanishing case that it equals a seed of the campaign. So no two samples of a run share
a field, none is a held-out box, and a resumed run regenerates exactly the batches of the
run it continues. An "epoch" keeps the length of the campaign's training split, so
``epochs``, ``max_steps``, the schedule and the time budget mean what they mean for a
campaign. Cube symmetries are not applied: every field is new.
"""
import numpy as np
import torch

from ..errors import InputError

#: separates generated seeds from the campaign's (seed, index) hashes
GENERATE_TAG = 0x67656E


def generated_seed(train_seed, epoch, position, taken=frozenset()):
    """The seed of global sample ``position`` of ``epoch`` (a 63-bit int, not in ``taken``)."""
    words = [int(train_seed), GENERATE_TAG, int(epoch), int(position)]
    while True:
        state = np.random.SeedSequence(words).generate_state(2, np.uint32)
        seed = (int(state[0]) << 31) ^ int(state[1])
        if seed not in taken:
            return seed
        words.append(0)                        # re-hash; never in practice


def campaign_simulation(root):
    """(SimConfig of the campaign at ``root`` with its one cosmology, the campaign's seeds)."""
    from ..campaign.plan import plan
    from ..campaign.store import read_config
    cfg = read_config(root)
    specs = plan(cfg)
    cosmologies = {s.cosmology for s in specs}
    if len(cosmologies) != 1:
        raise InputError(f"train config: data.source: generate needs a campaign of one cosmology; {root} has "
                         f"{len(cosmologies)} (its test split stays the held-out set)")
    return cfg.sim_config(seed=0, cosmology=specs[0].cosmology), frozenset(s.seed for s in specs)


class GeneratedBatches:
    """Batches simulated on the fly: ``epoch(e, start)`` yields this rank's ``(x, y, idx)`` of
    the global batches ``start ..`` of epoch ``e`` (``idx``: the seeds, an int64 tensor).

    root: the campaign directory (settings, cosmology, held-out seeds); sampler: the trainer's
    ShardedBatchSampler (its global batch, batches per epoch, rank and size); fields: (input,
    target); scale: divisor of both; seed: ``train.seed``; device: where the engine runs and
    the batches live.
    """

    def __init__(self, root, sampler, fields, scale, seed, device):
        self.sim, self.taken = campaign_simulation(root)
        self.sampler, self.fields = sampler, tuple(fields)
        self.scale, self.seed, self.device = float(scale), int(seed), device
        from ..torchpm.simulate import FIELDS
        for name in self.fields:
            if name not in FIELDS:
                raise InputError(f"train config: data.source: generate makes displacement and velocity fields, "
                                 f"not {name!r}")

    def seeds(self, epoch, batch):
        """This rank's seeds of global batch ``batch`` of ``epoch``."""
        g, s = self.sampler.global_batch, self.sampler
        return [generated_seed(self.seed, epoch, batch * g + j, self.taken) for j in range(s.rank, g, s.size)]

    def epoch(self, epoch, start=0):
        from ..torchpm import run_batch
        for t in range(start, self.sampler.batches_per_epoch):
            seeds = self.seeds(epoch, t)
            out = run_batch(self.sim, seeds, device=self.device, fields=list(self.fields), as_numpy=False)
            x, y = (out[name].to(torch.float32) / self.scale for name in self.fields)
            yield x, y, torch.as_tensor(seeds, dtype=torch.int64)
