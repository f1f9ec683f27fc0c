"""Device-staged training data: the whole training split on the device, cube symmetries as
one batched gather, and a device-side non-finite flag instead of a host sync per step.

When ``data.staging`` is ``device`` (or ``auto`` and the split fits, see
:func:`staging_decision`) the trainer reads every training pair once, divides it by
``data.scale`` and keeps the two float32 arrays ``(N, C, n, n, n)`` on the device.

Batches are exactly those of the loader path (the trainer's :class:`~cosmonet.data.ShardDataset`
with its transforms :class:`~cosmonet.data.RandomCubeSymmetry` and
:class:`~cosmonet.data.FieldNormalizer`, behind :class:`cosmonet.train.sampler.ShardedBatchSampler`):
the sampler's global batches of the epoch, rank r taking elements r, r + size, ...; sample
i of epoch e under the symmetry number ``sample_rng(seed, e, i).integers(48)`` of
:func:`cosmonet.data.all_symmetries` (:func:`cosmonet.data.augment.sample_rng`), divided
by ``data.scale`` (a division commutes with the symmetry's permutations and signs, bit for
bit, so it is done once at staging). The indices and symmetry numbers of a whole epoch
are computed on the host (in a background thread during the previous epoch) and copied
to the device once per epoch.

A symmetry ``(perm, flips)`` of an n^3 field (conventions in :mod:`cosmonet.data.augment`)
is a gather: output voxel p of channel c reads input channel ``perm[c]`` (vector fields;
c for scalars) at voxel ``src[p]``, times -1 for a vector component along a flipped axis.
The 48 source maps ``(48, n^3)`` and channel maps are built once; a batch of B samples is
transformed by one ``torch.gather`` on the flattened ``(B, C n^3)`` arrays.

Memory estimate (bytes): ``N x (C_in + C_out) x n^3 x 4`` for the staged arrays, plus the
48 index maps ``48 x n^3 x 8``. It fits when estimate x ``MARGIN`` is at most
``data.staging_limit_gb`` GB (when > 0), and on CUDA also at most half of the free device
memory (``torch.cuda.mem_get_info``): the other half is left to the model, its
activations and the allocator. With ``staging_limit_gb: 0`` on a CPU the limit is 4 GB.
"""
import copy
import threading
import time

import numpy as np
import torch

from ..errors import InputError, TrainingError

MARGIN = 1.1               # on the staging estimate
CUDA_FREE_FRACTION = 0.5   # of torch.cuda.mem_get_info()[0]
CPU_DEFAULT_LIMIT_GB = 4.0
N_SYMMETRIES = 48


# --------------------------------------------------------------------- symmetry maps
def symmetry_tables(n, device="cpu"):
    """``(src, chan, sign)`` for the 48 cube symmetries of :func:`cosmonet.data.all_symmetries`
    on an n^3 grid: ``src (48, n^3)`` int64, the flat input voxel of each output voxel;
    ``chan (48, 3)`` int64, the input component of each output component of a vector field;
    ``sign (48, 3)`` float32, -1 along flipped axes."""
    from ..data import all_symmetries
    flat = np.arange(n ** 3).reshape(n, n, n)
    src, chan, sign = [], [], []
    for perm, flips in all_symmetries():
        y = np.transpose(flat, perm)                     # output axis a is input axis perm[a]
        for a in range(3):
            if flips[a]:
                y = np.take(y, (-np.arange(n)) % n, axis=a)   # i -> (-i) mod n
        src.append(y.reshape(-1))
        chan.append(perm)
        sign.append([-1.0 if f else 1.0 for f in flips])
    return (torch.as_tensor(np.stack(src), dtype=torch.int64, device=device),
            torch.as_tensor(chan, dtype=torch.int64, device=device),
            torch.as_tensor(sign, dtype=torch.float32, device=device))


class BatchSymmetry:
    """The 48 cube symmetries applied to batches on the device (see the module docstring).

    ``sym(x, k, vector)``: x ``(B, C, n, n, n)``, k ``(B,)`` int64 symmetry numbers (indices
    into ``all_symmetries()``), vector: whether x is a vector field (C == 3). Equals
    ``apply_symmetry(x[b], *all_symmetries()[k[b]], vector)`` for every b, bit for bit.
    """

    def __init__(self, n, device):
        self.n = int(n)
        self.src, self.chan, self.sign = symmetry_tables(self.n, device)

    def __call__(self, x, k, vector):
        B, C = x.shape[:2]
        n3 = self.n ** 3
        if tuple(x.shape[2:]) != (self.n,) * 3:
            raise ValueError(f"BatchSymmetry for {self.n}^3 fields got shape {tuple(x.shape)}")
        if vector:
            if C != 3:
                raise ValueError(f"a vector field needs 3 channels, got shape {tuple(x.shape)}")
            chan = self.chan[k]                                         # (B, 3)
        else:
            chan = torch.arange(C, device=x.device).expand(B, C)
        index = chan[:, :, None] * n3 + self.src[k][:, None, :]         # (B, C, n^3)
        y = torch.gather(x.reshape(B, C * n3), 1, index.reshape(B, C * n3)).reshape(B, C, n3)
        if vector:
            y = y * self.sign[k].to(y.dtype)[:, :, None]
        return y.reshape(x.shape)


# --------------------------------------------------------------------- staging decision
def staging_bytes(n_samples, field_shapes):
    """Bytes of the staged split: ``n_samples`` x the float32 fields of ``field_shapes``
    (a list of (C, n, n, n)), plus the 48 symmetry maps."""
    per = sum(int(np.prod(s)) for s in field_shapes) * 4
    n3 = int(np.prod(field_shapes[0][1:]))
    return int(n_samples) * per + N_SYMMETRIES * n3 * 8


def staging_decision(mode, nbytes, device, limit_gb=0.0, cubic=True):
    """(stage on the device?, one-line reason). ``mode``: auto | device | loader.

    InputError when ``mode`` is ``device`` but the data cannot be staged."""
    need = nbytes * MARGIN
    if mode == "loader":
        return False, "data.staging: loader"
    if not cubic:
        reason = "the fields are not cubic (the 48 symmetries need n^3 fields)"
        if mode == "device":
            raise InputError(f"train config: data.staging: device, but {reason}")
        return False, reason
    limits = []
    if limit_gb > 0:
        limits.append((limit_gb * 1e9, f"data.staging_limit_gb {limit_gb:g}"))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limits.append((free * CUDA_FREE_FRACTION, f"half of the {free / 1e9:.1f} GB free on {device}"))
    elif limit_gb <= 0:
        limits.append((CPU_DEFAULT_LIMIT_GB * 1e9, f"the default CPU limit of {CPU_DEFAULT_LIMIT_GB:g} GB"))
    for cap, what in limits:
        if need > cap:
            reason = f"{need / 1e9:.2f} GB (with margin) exceed {what}"
            if mode == "device":
                raise InputError(f"train config: data.staging: device, but the training split needs {reason}")
            return False, reason
    return True, f"{need / 1e9:.2f} GB (with margin) fit in " + " and ".join(w for _, w in limits)


# --------------------------------------------------------------------- the batch source
def read_all(base):
    """Every sample of a ShardDataset as one float32 tensor (N, C, n, n, n) per field.

    Runs of consecutive samples stored consecutively in one shard are read with one slice
    per field (an HDF5 read per shard instead of one per sample); equal to stacking
    ``base.read(i)`` (tested)."""
    shapes = [tuple(base.field_shapes[f]) for f in base.fields]
    out = [torch.empty((len(base),) + s, dtype=torch.float32) for s in shapes]
    locs = getattr(base, "_locs", None)
    i = 0
    while i < len(base):
        if locs is None:
            for j, t in enumerate(base.read(i)):
                out[j][i] = t
            i += 1
            continue
        path, k = locs[i]
        end = i + 1
        while end < len(base) and locs[end] == (path, k + end - i):
            end += 1
        f = base._file(path)
        for j, name in enumerate(base.fields):
            out[j][i:end] = torch.from_numpy(np.asarray(f[name][k:k + end - i], dtype=np.float32))
        i = end
    return out


class StagedBatches:
    """Batches of the training split from device memory, the same as the loader path's.

    base: the trainer's :class:`~cosmonet.data.ShardDataset` (read once, untransformed);
    sampler: its ShardedBatchSampler; scale: the divisor of every field (``data.scale``);
    augment: draw a cube symmetry per sample; seed: ``train.seed``.
    ``epoch(e, start)`` yields ``(x, y, idx)`` for the global batches ``start ..`` of epoch
    e (this rank's share), ``idx`` a device tensor of the sample indices.
    """

    def __init__(self, base, sampler, device, scale, augment, seed):
        from ..data import vector_flags
        self.sampler, self.device = sampler, device
        self.scale, self.augment, self.seed = float(scale), bool(augment), int(seed)
        self.vector = tuple(vector_flags(base.fields))
        t0 = time.perf_counter()
        # the same float32 division as the loader's FieldNormalizer (t / scale), done once
        self.data = [f.div_(self.scale).to(device) for f in read_all(base)]
        self.seconds = time.perf_counter() - t0
        self.n = int(self.data[0].shape[-1])
        self.sym = BatchSymmetry(self.n, device) if self.augment else None
        self.nbytes = sum(t.numel() * t.element_size() for t in self.data)

    def __len__(self):
        return len(self.data[0])

    def draws(self, epoch, indices):
        """Symmetry numbers of samples ``indices`` in ``epoch`` (as the loader's
        RandomCubeSymmetry draws them from ``sample_rng(seed, epoch, i)``)."""
        from ..data.augment import sample_rng
        return np.array([int(sample_rng(self.seed, epoch, int(i)).integers(N_SYMMETRIES)) for i in indices],
                        dtype=np.int64)

    def plan(self, epoch):
        """(indices, symmetry numbers) of this rank for every global batch of ``epoch``:
        two int64 arrays (steps, batch_per_rank), on the host."""
        s = copy.copy(self.sampler)           # the trainer's sampler is not touched (thread-safe)
        s.set_epoch(epoch)
        idx = np.stack([b[s.rank::s.size] for b in s.global_batches()]).astype(np.int64)
        ks = self.draws(epoch, idx.reshape(-1)).reshape(idx.shape) if self.augment else np.zeros_like(idx)
        return idx, ks

    def _prefetch(self, epoch):
        """Compute the plan of ``epoch`` in a background thread (the symmetry draws take
        ~0.3 s per 8,000 samples of host time, which would leave the device idle)."""
        box = {}
        th = threading.Thread(target=lambda: box.update(plan=self.plan(epoch)), daemon=True)
        th.start()
        self._next = (epoch, th, box)

    def _plan(self, epoch):
        nxt, self._next = getattr(self, "_next", None), None
        if nxt is not None and nxt[0] == epoch:
            nxt[1].join()
            if "plan" in nxt[2]:
                return nxt[2]["plan"]
        return self.plan(epoch)

    def epoch(self, epoch, start=0):
        idx, ks = self._plan(epoch)
        self._prefetch(epoch + 1)
        idx = torch.as_tensor(idx[start:]).to(self.device, non_blocking=True)
        ks = torch.as_tensor(ks[start:]).to(self.device, non_blocking=True)
        for t in range(idx.shape[0]):
            i, k = idx[t], ks[t]
            out = []
            for data, vec in zip(self.data, self.vector):
                x = data.index_select(0, i)
                if self.sym is not None:
                    x = self.sym(x, k, vec)
                out.append(x)
            yield out[0], out[1], i


def make_batch_source(cfg, base, sampler, device, say=print):
    """A :class:`StagedBatches` of the ShardDataset ``base`` when the config and the memory
    allow (see :func:`staging_decision`), else None (the DataLoader path). ``say`` gets one line."""
    d = cfg["data"]
    shapes = [tuple(base.field_shapes[f]) for f in base.fields]
    cubic = all(len(s) == 4 and s[1] == s[2] == s[3] for s in shapes) and len({s[1:] for s in shapes}) == 1
    nbytes = staging_bytes(len(base), shapes)
    stage, reason = staging_decision(d["staging"], nbytes, device, d["staging_limit_gb"], cubic)
    if not stage:
        say(f"train: data from the loader ({reason})")
        return None
    src = StagedBatches(base, sampler, device, d["scale"], d["augment"], cfg["train"]["seed"])
    say(f"train: training split staged on {device} in {src.seconds:.1f} s ({src.nbytes / 1e9:.2f} GB; {reason})")
    return src


# --------------------------------------------------------------------- non-finite guard
class FiniteGuard:
    """Non-finite inputs, targets and losses detected on the device, reported every
    ``check_every`` steps (and before every checkpoint): one host sync per check.

    ``record(step, x, y, loss)`` after the forward pass of step ``step`` (1-based) keeps the
    first step with a non-finite batch and the first with a non-finite loss (device int64
    scalars; 0: none). ``due(step)``: whether to check after this step. ``check(backend,
    last_ckpt)`` gathers the flags of every rank and raises :class:`TrainingError` naming
    the first bad step. With ``check_every: 1`` it checks every step, as before.
    """

    def __init__(self, check_every, device):
        self.every = int(check_every)
        self.device = device
        self.first = torch.zeros(2, dtype=torch.int64, device=device)   # [batch, loss]

    def record(self, step, x, y, loss):
        bad = torch.stack([~(torch.isfinite(x).all() & torch.isfinite(y).all()),
                           ~torch.isfinite(loss.detach()).all()])
        self.first = torch.where((self.first == 0) & bad, torch.full_like(self.first, step), self.first)

    def due(self, step):
        return step % self.every == 0

    def check(self, backend, last_ckpt):
        flags = torch.zeros(backend.size, 2, dtype=torch.int64, device=self.device)
        flags[backend.rank] = self.first
        flags = backend.allreduce_sum(flags).cpu()
        hits = [(int(s), kind, r) for r in range(backend.size)
                for kind, s in zip(("batch", "loss"), flags[r].tolist()) if s > 0]
        if not hits:
            return
        step, kind, rank = min(hits)
        what = (f"non-finite values in the batch of step {step} (rank {rank})" if kind == "batch"
                else f"non-finite loss at step {step}")
        raise TrainingError(f"{what}; training stopped, last good checkpoint: {last_ckpt}")
