"""Run a simulation campaign over MPI: groups of ``ranks_per_sim`` ranks take shards from a
dynamic queue, write them atomically, and a rerun resumes where a killed run stopped.

The queue is one counter in an MPI window on world rank 0 (``Fetch_and_op``): a group
leader takes the next pending shard whenever its group is free, so simulations of uneven
cost never leave a group idle while shards remain. A second counter counts finished
simulations, from which rank 0 prints one progress line for the whole campaign.
"""
import os
import sys
import time

import numpy as np
import yaml
from mpi4py import MPI

from .errors import InputError
from .io import shards as shardio
from .mesh import clear_mesh_cache
from .sim.campaign import plan
from .sim.simulation import SimConfig, density_contrast, gather_fields, run_simulation


def config_yaml(cfg):
    """The configuration as stored in the campaign directory (without ``out``)."""
    d = cfg.to_dict()
    d.pop("out")
    return yaml.safe_dump(d, sort_keys=False)


#: keys that may change between runs of one campaign (they do not change its contents)
RESUMABLE_WITH_OTHER = ("ranks_per_sim",)


def prepare_directory(cfg):
    """Create DIR/shards and DIR/campaign.yaml, or check that DIR holds this campaign.

    Raises InputError (one line) when DIR holds a campaign with another configuration
    (``ranks_per_sim`` may differ: the plan does not depend on it).
    """
    from .config import check_output_dir
    check_output_dir(cfg.out)
    os.makedirs(os.path.join(cfg.out, shardio.SHARD_DIR), exist_ok=True)
    path = os.path.join(cfg.out, shardio.CONFIG_COPY)
    text = config_yaml(cfg)
    if os.path.exists(path):
        with open(path) as fh:
            old = yaml.safe_load(fh) or {}
        new = yaml.safe_load(text)
        if not isinstance(old, dict):
            raise InputError(f"config: out {cfg.out} holds an unreadable {shardio.CONFIG_COPY}")
        for key in new:
            if key not in RESUMABLE_WITH_OTHER and old.get(key) != new[key]:
                raise InputError(f"config: out {cfg.out} holds a campaign with another {key} "
                                 f"({old.get(key)!r} there, {new[key]!r} now); use a new out directory")
    else:
        from .io.atomic import atomic_path
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write(text)
    shardio.remove_stale_temporaries(cfg.out)


class _Counters:
    """Two int64 counters on world rank 0: next queue position, simulations finished."""

    def __init__(self, comm):
        self.win = MPI.Win.Allocate(16 if comm.rank == 0 else 0, 8, comm=comm)
        if comm.rank == 0:
            buf = np.frombuffer(self.win.tomemory(), dtype=np.int64)
            buf[:] = 0
        comm.Barrier()

    def add(self, which, value=1):
        """Atomically add ``value`` to counter ``which``; returns its previous value."""
        one = np.array([value], dtype=np.int64)
        old = np.zeros(1, dtype=np.int64)
        self.win.Lock(0, MPI.LOCK_SHARED)
        self.win.Fetch_and_op(one, old, 0, target_disp=which, op=MPI.SUM)
        self.win.Unlock(0)
        return int(old[0])

    def read(self, which):
        return self.add(which, 0)

    def free(self):
        self.win.Free()


def _fmt_eta(seconds):
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run_campaign(cfg, comm, show_progress=True, stream=sys.stderr):
    """Run (or resume) the campaign ``cfg`` on ``comm``; returns the summary (rank 0) or None."""
    t_start = time.perf_counter()
    rps = cfg.ranks_per_sim
    if comm.size % rps:
        raise InputError(f"config: ranks_per_sim {rps} does not divide the {comm.size} ranks")
    group = comm.Split(comm.rank // rps, comm.rank)
    leader = group.rank == 0
    specs = plan(cfg)

    # which shards are already complete: each rank hashes a share of them
    mine = [s for s in range(cfg.n_shards) if s % comm.size == comm.rank]
    status = {s: shardio.check_shard(cfg.out, s, cfg) for s in mine}
    status = {k: v for part in comm.allgather(status) for k, v in part.items()}
    pending = [s for s in range(cfg.n_shards) if status[s] != "ok"]
    corrupt = [s for s in pending if status[s] == "corrupt"]
    done_before = sum(len(cfg.shard_indices(s)) for s in range(cfg.n_shards) if status[s] == "ok")
    to_do = cfg.n_sims - done_before
    if comm.rank == 0 and show_progress:
        print(f"simulate: {cfg.n_sims} simulations in {cfg.n_shards} shards; {done_before} already done"
              + (f"; regenerating corrupt shards {corrupt}" if corrupt else "")
              + f"; {comm.size} ranks in {comm.size // rps} groups of {rps}", file=stream, flush=True)

    counters = _Counters(comm)
    needed = set(cfg.fields) - {"density"}
    if "density" in cfg.fields:
        needed.add("fastpm/disp")
    t_sim = t_io = 0.0
    n_mine = 0
    last_print = 0.0
    t_loop = time.perf_counter()
    while True:
        j = counters.add(0) if leader else None
        j = group.bcast(j, root=0)
        if j >= len(pending):
            break
        shard = pending[j]
        writer = shardio.ShardWriter(cfg.out, shard, cfg, config_yaml(cfg)) if leader else None
        try:
            for k, index in enumerate(cfg.shard_indices(shard)):
                spec = specs[index]
                t0 = time.perf_counter()
                sim_cfg = SimConfig(nc=cfg.nc, box=cfg.box, steps=cfg.steps, boost=cfg.boost, seed=spec.seed,
                                    a_start=cfg.a_start, a_final=cfg.a_final, cosmology=spec.cosmology)
                result = run_simulation(sim_cfg, group, fields=needed)
                t1 = time.perf_counter()
                full = gather_fields(result)
                if "density" in cfg.fields:
                    delta = density_contrast(result, cfg.density_nmesh)
                    if leader:
                        full["density"] = delta
                if leader:
                    writer.add(k, spec, full)
                    done = counters.add(1) + 1
                    n_mine += 1
                t_sim += t1 - t0
                t_io += time.perf_counter() - t1
                if comm.rank == 0 and show_progress and time.perf_counter() - last_print > 0.5:
                    last_print = time.perf_counter()
                    rate = done / (last_print - t_loop)
                    print(f"simulate: {done_before + done}/{cfg.n_sims} done, {rate:.2f} sims/s, "
                          f"ETA {_fmt_eta((to_do - done) / rate if rate > 0 else np.inf)}",
                          file=stream, flush=True)
            t0 = time.perf_counter()
            if leader:
                writer.close()
            t_io += time.perf_counter() - t0
        except BaseException:
            if leader:
                writer.abort()
            raise
    comm.Barrier()
    wall = time.perf_counter() - t_start
    totals = comm.reduce(np.array([t_sim, t_io, n_mine]), op=MPI.SUM, root=0)
    done_now = counters.read(1)
    counters.free()
    clear_mesh_cache(group)
    group.Free()
    if comm.rank != 0:
        return None
    records = [shardio.read_record(cfg.out, s) for s in range(cfg.n_shards)]
    missing = [s for s, r in enumerate(records) if r is None]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} have no record after the run")
    shardio.write_manifest(cfg.out, cfg, records)
    t_sim, t_io, _ = totals
    summary = {"out": cfg.out, "n_sims": cfg.n_sims, "simulated_this_run": done_now,
               "already_done": done_before, "ranks": comm.size, "ranks_per_sim": rps,
               "wall_seconds": round(wall, 3),
               "sims_per_second_per_rank": round(done_now / wall / comm.size, 4) if wall > 0 else None,
               "simulation_seconds": round(float(t_sim) / rps, 3),
               "io_seconds": round(float(t_io) / rps, 3),
               "overhead_fraction": round(float(t_io) / float(t_sim), 4) if t_sim > 0 else None}
    if show_progress:
        print(f"simulate: {cfg.n_sims}/{cfg.n_sims} done in {wall:.1f} s", file=stream, flush=True)
    return summary


def verify_campaign(root):
    """Check a campaign directory against its records and manifest.

    Returns a report: {"ok", "n_sims", "missing", "corrupt", "unrecorded", "duplicates"}.
    """
    from .config import validate
    path = os.path.join(root, shardio.CONFIG_COPY)
    if not os.path.exists(path):
        raise InputError(f"{root} is not a campaign directory (no {shardio.CONFIG_COPY})")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        raise InputError(f"{root}: {shardio.CONFIG_COPY} is not a campaign configuration")
    raw["out"] = root
    cfg = validate(raw)
    missing, corrupt, seen = [], [], {}
    for s in range(cfg.n_shards):
        st = shardio.check_shard(root, s, cfg)
        if st == "missing":
            missing.append(s)
        elif st == "corrupt":
            corrupt.append(s)
        else:
            import h5py
            try:
                with h5py.File(shardio.shard_path(root, s), "r") as f:
                    for i in f["params/index"][...]:
                        seen[int(i)] = seen.get(int(i), 0) + 1
            except OSError:
                corrupt.append(s)
    duplicates = sorted(i for i, c in seen.items() if c > 1)
    manifest_ok = os.path.exists(os.path.join(root, shardio.MANIFEST))
    known = {os.path.basename(shardio.shard_path(root, s)) for s in range(cfg.n_shards)}
    shard_dir = os.path.join(root, shardio.SHARD_DIR)
    on_disk = {f for f in os.listdir(shard_dir) if f.endswith(".h5")} if os.path.isdir(shard_dir) else set()
    unrecorded = sorted(on_disk - known)
    complete = len(seen) == cfg.n_sims
    ok = not (missing or corrupt or duplicates or unrecorded) and complete and manifest_ok
    return {"ok": ok, "n_sims": cfg.n_sims, "present": len(seen), "n_shards": cfg.n_shards,
            "missing": missing, "corrupt": corrupt, "duplicates": duplicates, "unrecorded": unrecorded,
            "manifest": manifest_ok}
