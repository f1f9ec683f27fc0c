#!/usr/bin/env python
"""Simulation benchmark of cosmonet: time per simulation, its split, and the FFT floor.

Cases (see benchmarks/README.md for what every number means):

``--case d3m`` (default)
    nc 32, L 128 Mpc/h, boost 2 (64^3 float32 force mesh), 10 FastPM steps, on the
    current communicator (one rank under plain python). One warm-up simulation, then
    ``--repeats`` timed simulations with different seeds; reports the median seconds per
    simulation, the FFT floor (the same number of bare r2c/c2r transforms of each mesh,
    with the ParticleMesh's own r2c/c2r) and the split of a simulation's time.
``--case nc128``
    nc 128, boost 2 (256^3 float32 force mesh), ``--steps`` (default 5) FastPM steps on
    the current communicator; reports seconds per step and the 256^3 FFT throughput.
``--scaling``
    From plain python: runs this script under ``mpirun -np 1`` and ``mpirun -np 2`` for
    ``--case nc128`` and reports both runs and the speed-up.

One JSON document goes to stdout (rank 0 only); progress goes to stderr.
"""
import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import REPO, cpu_model, git_state  # noqa: E402
from bench_common import sig as _sig  # noqa: E402


def sig(x, digits=6):
    return _sig(x, digits)

FLOP_CONVENTION = ("GFLOP/s = 5 N log2(N) / t_pair / 1e9 with N = Nmesh^3: a complex 3D FFT of N "
                   "points counts 5 N log2 N flops, a real transform (r2c or c2r) counts half of that, "
                   "so one r2c + c2r pair counts 5 N log2 N; t_pair is the wall time of "
                   "ParticleMesh.r2c followed by ParticleMesh.c2r (including their copies and the 1/N^3 "
                   "normalisation), the slowest rank's median over repeats; the *_reference_pfft numbers use a bare "
                   "mpi4py-fft PFFT forward + backward (FFTW) instead")


# --------------------------------------------------------------------------- helpers
def get_comm():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def is_root(comm):
    return comm is None or comm.rank == 0


def log(comm, msg):
    if is_root(comm):
        print(f"[bench_sim] {msg}", file=sys.stderr, flush=True)




def version_of(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None






def machine_info(comm=None):
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "versions": {d: version_of(d) for d in ("numpy", "scipy", "mpi4py", "mpi4py-fft", "numba", "pyccl",
                                                 "cosmonet")},
        "git": git_state(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                               "NUMBA_NUM_THREADS") if os.environ.get(k) is not None},
    }
    if comm is not None:
        from mpi4py import MPI
        info["mpi_library"] = MPI.Get_library_version().strip("\x00 \n").splitlines()[0]
        info["ranks"] = comm.size
    return info


def make_timers(faults=False):
    """A :class:`cosmonet.timing.Timers` that also books each timer under its parent.

    Time of "fft" spent inside "lpt" is added to ``totals["fft@lpt"]`` as well, so that the
    LPT time can be reported without its nested FFTs. ``marks[name]`` is the
    ``perf_counter`` at the last exit of ``name`` (used to find where FastPM starts).
    """
    from cosmonet.timing import Timers

    class NestedTimers(Timers):
        def __init__(self):
            super().__init__()
            self.stack = []
            self.marks = {}

        @contextmanager
        def __call__(self, name):
            parent = self.stack[-1] if self.stack else None
            self.stack.append(name)
            t0 = time.perf_counter()
            try:
                yield
            finally:
                t1 = time.perf_counter()
                self.stack.pop()
                self.totals[name] += t1 - t0
                self.counts[name] += 1
                if parent is not None:
                    self.totals[f"{name}@{parent}"] += t1 - t0
                    self.counts[f"{name}@{parent}"] += 1
                self.marks[name] = t1

    class FaultTimers(NestedTimers):
        """Also counts minor page faults and system CPU time under each timer (diagnostics)."""

        def __init__(self):
            super().__init__()
            self.faults = {}

        @contextmanager
        def __call__(self, name):
            import resource
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            with super().__call__(name):
                yield
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            parent = self.stack[-1] if self.stack else None
            for key in (name,) + ((f"{name}@{parent}",) if parent else ()):
                f = self.faults.setdefault(key, {"minor_page_faults": 0, "sys_s": 0.0})
                f["minor_page_faults"] += r1.ru_minflt - r0.ru_minflt
                f["sys_s"] += r1.ru_stime - r0.ru_stime

    return FaultTimers() if faults else NestedTimers()


@contextmanager
def count_transforms(timers):
    """Count ParticleMesh.r2c / c2r calls by (Nmesh, dtype, direction, inside "lpt" or not).

    Patches the class methods in this process only, for the duration of the block (used
    for the warm-up run only, so timed runs execute the package code untouched).
    """
    from cosmonet.mesh import ParticleMesh
    counts = {}
    orig = {"r2c": ParticleMesh.r2c, "c2r": ParticleMesh.c2r}

    def wrap(direction):
        fn = orig[direction]

        def counted(self, *args, **kwargs):
            key = (self.Nmesh, self.dtype.name, direction, "lpt" in timers.stack)
            counts[key] = counts.get(key, 0) + 1
            return fn(self, *args, **kwargs)
        return counted

    ParticleMesh.r2c, ParticleMesh.c2r = wrap("r2c"), wrap("c2r")
    try:
        yield counts
    finally:
        ParticleMesh.r2c, ParticleMesh.c2r = orig["r2c"], orig["c2r"]


def mesh_label(nmesh, dtype):
    return f"{nmesh}^3_{dtype}"


def peak_rss_mib(comm):
    """Peak resident memory of the largest rank and summed over ranks, MiB."""
    import resource
    mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    from mpi4py import MPI
    return {"max_rank": comm.allreduce(mib, op=MPI.MAX), "sum_ranks": comm.allreduce(mib, op=MPI.SUM)}


def rusage_snapshot():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minor_page_faults": r.ru_minflt,
            "involuntary_context_switches": r.ru_nivcsw}


def rusage_delta(comm, before, n_runs, wall):
    """CPU time, page faults and preemptions of a timed section, per run; max over ranks."""
    after = rusage_snapshot()
    out = {k: allmax(comm, (after[k] - before[k]) / n_runs) for k in before}
    out["wall_s"] = wall / n_runs
    out["note"] = ("per timed run, from getrusage (slowest rank); sys_s and minor_page_faults show "
                   "first-touch cost of freshly allocated arrays; involuntary context switches show "
                   "competition for the cores")
    return out


def allmax(comm, x):
    from mpi4py import MPI
    return comm.allreduce(x, op=MPI.MAX)


def time_pairs(pm, comm, pairs, repeats):
    """Median and min (over ``repeats``) wall time of one ``pm.r2c`` + ``pm.c2r`` pair,
    the slowest rank's."""
    import numpy as np
    rng = np.random.default_rng(1234 + comm.rank)
    real = rng.standard_normal(pm.real_shape).astype(pm.dtype)
    pm.c2r(pm.r2c(real))
    samples = []
    ru0 = rusage_snapshot()
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(pairs):
            pm.c2r(pm.r2c(real))
        samples.append(allmax(comm, time.perf_counter() - t0) / pairs)
    faults = allmax(comm, (rusage_snapshot()["minor_page_faults"] - ru0["minor_page_faults"]) / (repeats * pairs))
    return statistics.median(samples), min(samples), faults


def time_reference_pfft_pairs(nmesh, dtype, comm, pairs, repeats):
    """Reference: mpi4py-fft PFFT (FFTW, slab decomposition, default planning) forward +
    backward on its own arrays, no copies around them; median seconds per pair, slowest rank.

    Independent of how ParticleMesh does its transforms, so it stays comparable when the
    package's FFT backend changes.
    """
    import numpy as np
    from mpi4py_fft import PFFT
    fft = PFFT(comm, (nmesh,) * 3, axes=(0, 1, 2), dtype=np.dtype(dtype), grid=(-1,))
    rng = np.random.default_rng(4321 + comm.rank)
    fft.forward.input_array[...] = rng.standard_normal(fft.forward.input_array.shape)
    fft.forward(normalize=True)
    fft.backward()
    samples = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(pairs):
            fft.forward(normalize=True)
            fft.backward()
        samples.append(allmax(comm, time.perf_counter() - t0) / pairs)
    fft.destroy()
    return statistics.median(samples)


def fft_backend(pm):
    """What ParticleMesh uses for its transforms (its ``fft`` attribute), for the record."""
    import os
    from cosmonet.mesh.fft import PLANNER_EFFORT
    f = pm.fft
    slab = getattr(f, "_slab", None)
    if slab is None:
        kind = "numpy FFT" if not hasattr(f, "_fwd") else "FFTW 3-D plans (one rank)"
    elif slab.serial:
        kind = "slab transforms on one rank (2-D chunks, 1-D along x)"
    else:
        kind = f"slab transforms over {pm.comm.size} ranks (Alltoallv)"
    if slab is not None:
        kind += f", x rows per block {slab._along_x.by or 'all'}"
    env = " (COSMONET_FFTW_PLANNER)" if os.environ.get("COSMONET_FFTW_PLANNER") else ""
    return f"{type(f).__module__}.{type(f).__name__}: {kind}, {PLANNER_EFFORT}{env}"


# --------------------------------------------------------------------------- d3m
def fft_floor(comm, box, kinds, repeats):
    """Time ``n_r2c`` forward and ``n_c2r`` backward transforms of each kind, bare: the
    planned transforms of ``ParticleMesh.fft`` on their own buffers, without the copies
    that ``r2c``/``c2r`` make around them.

    ``kinds``: {(Nmesh, dtype_name): {"r2c": n, "c2r": n}}. Returns per-kind medians.
    """
    import numpy as np
    from cosmonet.mesh import ParticleMesh
    from cosmonet.timing import Timers
    out = {}
    for (nmesh, dtname), n in sorted(kinds.items()):
        pm = ParticleMesh(nmesh, box, comm, dtype=np.dtype(dtname), timers=Timers())
        rng = np.random.default_rng(99 + comm.rank)
        real = rng.standard_normal(pm.real_shape).astype(pm.dtype)
        cplx = pm.r2c(real)
        pm.c2r(cplx)  # touch everything once
        t_r2c, t_c2r = [], []
        ru0 = rusage_snapshot()
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(n["r2c"]):
                pm.fft.fwd_in[...] = real   # FFTW may destroy its input: refill (memcpy)
                pm.fft.forward()
            t1 = time.perf_counter()
            for _ in range(n["c2r"]):
                pm.fft.bwd_in[...] = cplx
                pm.fft.backward()
            t2 = time.perf_counter()
            t_r2c.append(allmax(comm, t1 - t0))
            t_c2r.append(allmax(comm, t2 - t1))
        ru1 = rusage_snapshot()
        r2c_s, c2r_s = statistics.median(t_r2c), statistics.median(t_c2r)
        out[mesh_label(nmesh, dtname)] = {
            "r2c_calls": n["r2c"], "c2r_calls": n["c2r"],
            "seconds": r2c_s + c2r_s,
            "r2c_ms_per_call": 1e3 * r2c_s / max(n["r2c"], 1),
            "c2r_ms_per_call": 1e3 * c2r_s / max(n["c2r"], 1),
            "minor_page_faults_per_loop": allmax(comm, (ru1["minor_page_faults"] - ru0["minor_page_faults"])
                                                 / repeats),
        }
    return out


def median_dict(dicts):
    keys = dicts[0].keys()
    return {k: statistics.median(d[k] for d in dicts) for k in keys}


def split_of(total, timers):
    t = timers.totals
    fft_lpt = t.get("fft@lpt", 0.0)
    split = {
        "fft": t.get("fft", 0.0),
        "fft_force_mesh": t.get("fft", 0.0) - fft_lpt,
        "fft_lpt_mesh": fft_lpt,
        "paint": t.get("paint", 0.0),
        "readout": t.get("readout", 0.0),
        "lpt_excluding_fft": t.get("lpt", 0.0) - fft_lpt,
        "setup": t.get("setup", 0.0),
    }
    split["rest"] = total - (split["fft"] + split["paint"] + split["readout"] + split["lpt_excluding_fft"]
                             + split["setup"])
    split["total"] = total
    return split


def rest_diagnostics(comm, cfg, repeats=5):
    """Time pieces of a simulation that fall in "rest": mesh construction, solver kernels."""
    import numpy as np
    from cosmonet.mesh import ParticleMesh
    from cosmonet.sim.fastpm import GravitySolver
    from cosmonet.timing import Timers

    def med(fn):
        ts = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            ts.append(allmax(comm, time.perf_counter() - t0))
        return statistics.median(ts)

    pm_force = ParticleMesh(cfg.force_nmesh, cfg.box, comm, dtype=np.float32, timers=Timers())
    return {
        "particle_mesh_init_lpt_mesh_s": med(lambda: ParticleMesh(cfg.nc, cfg.box, comm, dtype=np.float64)),
        "particle_mesh_init_force_mesh_s": med(
            lambda: ParticleMesh(cfg.force_nmesh, cfg.box, comm, dtype=np.float32)),
        "gravity_solver_init_s": med(lambda: GravitySolver(pm_force, cfg.nc ** 3)),
        "note": "measured separately (median of %d); these run inside every run_simulation call and "
                "are part of 'rest'" % repeats,
    }


def first_touch_run(comm, cfg):
    """One simulation with timers that also count minor page faults and system CPU time."""
    from cosmonet.sim.simulation import run_simulation
    timers = make_timers(faults=True)
    ru0 = rusage_snapshot()
    comm.Barrier()
    t0 = time.perf_counter()
    run_simulation(cfg, comm, timers=timers)
    wall = time.perf_counter() - t0
    ru1 = rusage_snapshot()
    return {
        "wall_s": allmax(comm, wall),
        "minor_page_faults": allmax(comm, ru1["minor_page_faults"] - ru0["minor_page_faults"]),
        "sys_s": allmax(comm, ru1["sys_s"] - ru0["sys_s"]),
        "by_timer": {k: {"minor_page_faults": allmax(comm, v["minor_page_faults"]),
                         "sys_s": allmax(comm, v["sys_s"])} for k, v in sorted(timers.faults.items())},
        "note": "one extra simulation (seed %d) with getrusage around every timer (slowest rank); "
                "'fft@lpt' is the part of 'fft' inside 'lpt'; a minor page fault is the first touch of "
                "a 4 KiB page of freshly allocated memory" % cfg.seed,
    }


def profile_one(comm, cfg, top):
    """cProfile one simulation (rank 0's view); top functions by own time."""
    from cosmonet.sim.simulation import run_simulation
    prof = cProfile.Profile()
    comm.Barrier()
    t0 = time.perf_counter()
    prof.enable()
    run_simulation(cfg, comm)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        short = fname
        for prefix in (REPO + os.sep, sys.prefix + os.sep):
            if short.startswith(prefix):
                short = short[len(prefix):]
        short = short.replace("lib/python%d.%d/site-packages/" % sys.version_info[:2], "")
        rows.append({"function": f"{short}:{line}({func})", "ncalls": nc, "tottime_s": tt, "cumtime_s": ct})
    by_cum = sorted((r for r in rows if r["function"].startswith("cosmonet/")),
                    key=lambda r: r["cumtime_s"], reverse=True)
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return {"wall_seconds_under_profiler": wall,
            "note": "one simulation under cProfile (rank 0); the profiler inflates many-small-call costs",
            "top_by_own_time": rows[:top],
            "cosmonet_by_cumulative_time": by_cum[:top]}


def run_d3m(args, comm):
    import numpy as np
    from cosmonet.sim.simulation import SimConfig, run_simulation

    box = args.box if args.box is not None else 128.0
    steps = args.steps if args.steps is not None else 10
    repeats = args.repeats if args.repeats is not None else 5
    nc = args.nc if args.nc is not None else 32
    cfg0 = SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=0)
    log(comm, f"d3m: nc={nc} box={box} boost={args.boost} steps={steps} ranks={comm.size} repeats={repeats}")

    # Warm-up (numba compile / cache load, FFTW planning, pyccl), counting the transforms.
    timers = make_timers()
    comm.Barrier()
    t0 = time.perf_counter()
    with count_transforms(timers) as counts:
        run_simulation(cfg0, comm, timers=timers)
    warm = allmax(comm, time.perf_counter() - t0)
    log(comm, f"warm-up simulation: {warm:.3f} s")
    n_fft_counted = sum(counts.values())
    kinds = {}
    lpt_only_inside = True
    for (nmesh, dtname, direction, in_lpt), n in counts.items():
        kinds.setdefault((nmesh, dtname), {"r2c": 0, "c2r": 0})[direction] += n
    lpt_kind = (cfg0.nc, "float64")
    force_kind = (cfg0.force_nmesh, "float32")
    for (nmesh, dtname, direction, in_lpt), n in counts.items():
        if ((nmesh, dtname) == lpt_kind) != in_lpt:
            lpt_only_inside = False  # then "fft@lpt" is not exactly the LPT-mesh FFT time

    # Timed simulations.
    totals, splits, fft_calls = [], [], []
    calls = None
    ru0, tw0 = rusage_snapshot(), time.perf_counter()
    for i in range(repeats):
        cfg = SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=1 + i)
        timers = make_timers()
        comm.Barrier()
        t0 = time.perf_counter()
        run_simulation(cfg, comm, timers=timers)
        dt = time.perf_counter() - t0
        total = allmax(comm, dt)
        totals.append(total)
        # slowest rank's totals per timer (one rank: just the timers)
        tmax = {k: allmax(comm, v) for k, v in sorted(timers.totals.items())}
        timers.totals.clear()
        timers.totals.update(tmax)
        splits.append(split_of(total, timers))
        fft_calls.append(timers.counts.get("fft", 0))
        calls = {k: timers.counts[k] for k in sorted(timers.counts) if "@" not in k}
        log(comm, f"run {i + 1}/{repeats} (seed {cfg.seed}): {total:.4f} s")
    ru = rusage_delta(comm, ru0, repeats, time.perf_counter() - tw0)
    per_sim = statistics.median(totals)
    order = sorted(range(repeats), key=lambda i: totals[i])
    median_run = order[(repeats - 1) // 2]  # lower median for an even number of runs
    split = splits[median_run]
    split_component_medians = median_dict(splits)

    # FFT floor: the same transforms, bare, with ParticleMesh's own r2c/c2r.
    log(comm, "timing the FFT floor")
    floor = fft_floor(comm, box, kinds, args.floor_repeats)
    floor_s = sum(v["seconds"] for v in floor.values())
    from cosmonet.mesh import ParticleMesh
    pmf = ParticleMesh(cfg0.force_nmesh, box, comm, dtype=np.float32)
    pair_med, pair_min, pair_faults = time_pairs(pmf, comm, pairs=20, repeats=args.floor_repeats)
    ref_med = time_reference_pfft_pairs(cfg0.force_nmesh, "float32", comm, 20, args.floor_repeats)
    pm_force_pair = {"ms": 1e3 * pair_med, "ms_min": 1e3 * pair_min, "minor_page_faults_per_pair": pair_faults,
                     "reference_mpi4py_fft_pfft_ms": 1e3 * ref_med,
                     "note": "ms = ParticleMesh.r2c + c2r (median); reference = bare mpi4py-fft PFFT "
                             "forward + backward on its own arrays (FFTW)"}
    nf = float(cfg0.force_nmesh) ** 3
    pm_force_pair["gflops"] = 5.0 * nf * math.log2(nf) / pair_med / 1e9
    pm_force_pair["backend"] = fft_backend(pmf)
    del pmf

    diag = rest_diagnostics(comm, cfg0)
    log(comm, "first-touch diagnostics run")
    touch = first_touch_run(comm, SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=repeats + 1))

    counts_out = {mesh_label(k[0], k[1]): dict(v) for k, v in sorted(kinds.items())}
    counts_out["total"] = n_fft_counted
    counts_out["timers_fft_calls_per_sim"] = sorted(set(fft_calls))
    counts_out["matches_timers"] = all(c == n_fft_counted for c in fft_calls)
    if not counts_out["matches_timers"]:
        log(comm, "WARNING: ParticleMesh.r2c/c2r calls (%d) differ from the 'fft' timer's calls %s; the "
                  "FFT floor covers only r2c/c2r calls" % (n_fft_counted, sorted(set(fft_calls))))
    expected = {mesh_label(*force_kind): {"r2c": steps + 1, "c2r": steps + 1},
                mesh_label(*lpt_kind): {"r2c": 2, "c2r": 12}}
    counts_out["expected_from_code"] = expected

    frac = {k: v / split["total"] for k, v in split.items() if k != "total"}
    result = {
        "benchmark": "cosmonet benchmarks/bench_sim.py",
        "case": "d3m",
        "params": {"nc": nc, "box_mpc_h": box, "boost": args.boost, "force_nmesh": cfg0.force_nmesh,
                   "lpt_nmesh": nc, "steps": steps, "a_start": cfg0.a_start, "a_final": cfg0.a_final,
                   "repeats": repeats, "seeds": list(range(1, repeats + 1)), "warmup_runs": 1,
                   "floor_repeats": args.floor_repeats, "ranks": comm.size},
        "machine": machine_info(comm),
        "seconds_per_sim": per_sim,
        "seconds_per_sim_runs": totals,
        "seconds_per_sim_min": min(totals),
        "warmup_seconds": warm,
        "fft_floor_seconds": floor_s,
        "ratio_to_fft_floor": per_sim / floor_s,
        "target_ratio_to_fft_floor": 1.5,
        "meets_target": per_sim <= 1.5 * floor_s,
        f"fft_pair_{cfg0.force_nmesh}cubed_float32_ms": pm_force_pair["ms"],
        "fft_pair_force_mesh": pm_force_pair,
        "fft_counts_per_sim": counts_out,
        "fft_floor_breakdown": floor,
        "fft_in_sim_over_floor": split["fft"] / floor_s,
        "split_seconds": split,
        "split_fraction_of_total": frac,
        "split_seconds_component_medians": split_component_medians,
        "split_notes": (
            "split_seconds: the split of the median run (run %d, seed %d; components add up to its "
            "total); split_seconds_component_medians: the median over runs of each component "
            "separately (does not add up exactly); slowest rank's timers; 'fft' = all "
            "ParticleMesh.r2c/c2r time = fft_force_mesh + fft_lpt_mesh; 'lpt_excluding_fft' = the "
            "'lpt' timer minus the FFTs nested in it (separated exactly: " +
            ("all LPT-mesh transforms run inside 'lpt' and no force-mesh one does" if lpt_only_inside else
             "WARNING: some transforms cross the lpt/force boundary, fft_lpt_mesh is only the FFT time "
             "inside 'lpt'") +
            "); 'setup' = growth tables; 'rest' = total - (fft + paint + readout + lpt_excluding_fft + "
            "setup): ParticleMesh/FFTW plan construction, GravitySolver kernels, kick/drift, "
            "decompose, output fields, Python overhead") % (median_run + 1, median_run + 1),
        "calls_per_sim": calls,
        "rest_diagnostics": diag,
        "rusage_per_sim": ru,
        "first_touch_diagnostics": touch,
        "peak_rss_mib": peak_rss_mib(comm),
    }
    if args.profile:
        log(comm, "profiling one simulation")
        cfgp = SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=repeats + 2)
        result["profile"] = profile_one(comm, cfgp, args.profile)
    return result


# --------------------------------------------------------------------------- nc128
def run_nc128(args, comm):
    import numpy as np
    from cosmonet.mesh import ParticleMesh
    from cosmonet.sim.simulation import SimConfig, run_simulation

    nc = args.nc if args.nc is not None else 128
    box = args.box if args.box is not None else 4.0 * nc
    steps = args.steps if args.steps is not None else 5
    repeats = args.repeats if args.repeats is not None else 1
    cfg = SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=7)
    log(comm, f"nc128: nc={nc} box={box} boost={args.boost} (force mesh {cfg.force_nmesh}^3) "
              f"steps={steps} ranks={comm.size} repeats={repeats}")

    # Warm-up on a tiny box: numba compile / cache load and pyccl, not the big FFT plans.
    t0 = time.perf_counter()
    run_simulation(SimConfig(nc=max(16, 2 * comm.size), box=64.0, steps=1, boost=args.boost, seed=0), comm)
    log(comm, f"warm-up (small simulation): {time.perf_counter() - t0:.2f} s")

    runs = []
    ru0, tw0 = rusage_snapshot(), time.perf_counter()
    for i in range(repeats):
        c = SimConfig(nc=nc, box=box, steps=steps, boost=args.boost, seed=7 + i)
        timers = make_timers()
        marks = []
        comm.Barrier()
        t_start = time.perf_counter()
        run_simulation(c, comm, timers=timers,
                       progress=lambda n, a: marks.append(time.perf_counter()))
        t_end = time.perf_counter()
        t_lpt_end = timers.marks["lpt"]
        loop = marks[-1] - t_lpt_end  # solver init + initial force + steps x (K D force K)
        steady = (marks[-1] - marks[0]) / (steps - 1) if steps > 1 else loop / steps
        step_times = [marks[0] - t_lpt_end] + [b - a for a, b in zip(marks[:-1], marks[1:])]
        run = {
            "seconds_per_step": allmax(comm, loop) / steps,
            "seconds_per_step_steady": allmax(comm, steady),
            "fastpm_loop_seconds": allmax(comm, loop),
            "step_seconds": [allmax(comm, s) for s in step_times],
            "total_seconds": allmax(comm, t_end - t_start),
            "before_fastpm_seconds": allmax(comm, t_lpt_end - t_start),
            "timers_max_over_ranks": {k: allmax(comm, v) for k, v in sorted(timers.totals.items())},
            "timers_calls": {k: timers.counts[k] for k in sorted(timers.counts)},
        }
        runs.append(run)
        log(comm, f"run {i + 1}/{repeats}: {run['seconds_per_step']:.3f} s/step "
                  f"(steady {run['seconds_per_step_steady']:.3f}), total {run['total_seconds']:.2f} s")
        del timers

    ru = rusage_delta(comm, ru0, repeats, time.perf_counter() - tw0)
    log(comm, f"timing {cfg.force_nmesh}^3 float32 r2c+c2r pairs")
    t0 = time.perf_counter()
    pm = ParticleMesh(cfg.force_nmesh, box, comm, dtype=np.float32)
    plan_s = allmax(comm, time.perf_counter() - t0)
    pair_med, pair_min, pair_faults = time_pairs(pm, comm, pairs=args.fft_pairs, repeats=args.floor_repeats)
    backend = fft_backend(pm)
    del pm
    ref_med = time_reference_pfft_pairs(cfg.force_nmesh, "float32", comm, args.fft_pairs, args.floor_repeats)
    N = float(cfg.force_nmesh) ** 3
    flops_pair = 5.0 * N * math.log2(N)  # two real transforms, each half of a complex one
    best = min(runs, key=lambda r: r["seconds_per_step"])
    med_step = statistics.median(r["seconds_per_step"] for r in runs)
    return {
        "benchmark": "cosmonet benchmarks/bench_sim.py",
        "case": "nc128",
        "params": {"nc": nc, "box_mpc_h": box, "boost": args.boost, "force_nmesh": cfg.force_nmesh,
                   "steps": steps, "force_evaluations": steps + 1, "a_start": cfg.a_start,
                   "a_final": cfg.a_final, "repeats": repeats, "fft_pairs": args.fft_pairs,
                   "fft_repeats": args.floor_repeats, "ranks": comm.size},
        "machine": machine_info(comm),
        "ranks": comm.size,
        "seconds_per_step": med_step,
        "seconds_per_step_steady": statistics.median(r["seconds_per_step_steady"] for r in runs),
        "seconds_per_step_definition": (
            "seconds_per_step = FastPM loop time / steps, the loop running from the end of the 'lpt' "
            "timer to the last progress() callback (GravitySolver init + initial force + steps x "
            "(kick, drift, force, kick)); seconds_per_step_steady = time between the first and last "
            "progress() callbacks / (steps - 1) (one force evaluation per step); slowest rank; median "
            "over repeats"),
        "runs": runs,
        "best_run_seconds_per_step": best["seconds_per_step"],
        "fft_pair_seconds": pair_med,
        "fft_pair_seconds_min": pair_min,
        "fft_pair_minor_page_faults": pair_faults,
        "fft_pair_reference_pfft_seconds": ref_med,
        "fft_gflops": flops_pair / pair_med / 1e9,
        "fft_gflops_reference_pfft": flops_pair / ref_med / 1e9,
        "fft_gflops_per_rank": flops_pair / pair_med / 1e9 / comm.size,
        "fft_flop_convention": FLOP_CONVENTION,
        "fft_plan_seconds": plan_s,
        "particle_mesh_fft_backend": backend,
        "rusage_per_run": ru,
        "peak_rss_mib": peak_rss_mib(comm),
    }


# --------------------------------------------------------------------------- scaling
def run_scaling(args):
    if any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        sys.exit("bench_sim: --scaling must be started from plain python, not under mpirun")
    nps = [int(x) for x in args.np_list.split(",")]
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    passthrough = ["--case", "nc128", "--boost", str(args.boost), "--floor-repeats", str(args.floor_repeats),
                   "--fft-pairs", str(args.fft_pairs)]
    for opt in ("nc", "box", "steps", "repeats"):
        v = getattr(args, opt)
        if v is not None:
            passthrough += [f"--{opt}", str(v)]
    runs = {}
    for n in nps:
        cmd = [args.mpirun, "-np", str(n), sys.executable, os.path.abspath(__file__)] + passthrough
        print(f"[bench_sim] scaling: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench_sim: '{' '.join(cmd)}' failed with exit code {proc.returncode}")
        runs[str(n)] = json.loads(proc.stdout)
        runs[str(n)]["mpirun_wall_seconds"] = time.perf_counter() - t0
    base = runs[str(nps[0])]
    speedup = {}
    for n in nps[1:]:
        r = runs[str(n)]
        speedup[f"{nps[0]}->{n}"] = {
            "seconds_per_step": base["seconds_per_step"] / r["seconds_per_step"],
            "seconds_per_step_steady": base["seconds_per_step_steady"] / r["seconds_per_step_steady"],
            "parallel_efficiency": base["seconds_per_step"] / r["seconds_per_step"] * nps[0] / n,
            "fft_pair": base["fft_pair_seconds"] / r["fft_pair_seconds"],
        }
    summary = {str(n): {"ranks": runs[str(n)]["ranks"],
                        "seconds_per_step": runs[str(n)]["seconds_per_step"],
                        "seconds_per_step_steady": runs[str(n)]["seconds_per_step_steady"],
                        "fft_gflops": runs[str(n)]["fft_gflops"]} for n in nps}
    return {
        "benchmark": "cosmonet benchmarks/bench_sim.py",
        "case": "nc128-scaling",
        "params": {"np_list": nps, "mpirun": args.mpirun, "child_args": passthrough},
        "machine": machine_info(None),
        "summary": summary,
        "speedup": speedup,
        "runs": runs,
    }


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("d3m", "nc128"), default="d3m")
    p.add_argument("--scaling", action="store_true",
                   help="run --case nc128 under 'mpirun -np K' for K in --np-list and report the speed-up")
    p.add_argument("--np-list", default="1,2", help="rank counts for --scaling (default 1,2)")
    p.add_argument("--mpirun", default="mpirun", help="MPI launcher for --scaling")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed simulations (default: d3m 5, nc128 1)")
    p.add_argument("--steps", type=int, default=None, help="FastPM steps (default: d3m 10, nc128 5)")
    p.add_argument("--nc", type=int, default=None, help="particles per side (default: d3m 32, nc128 128)")
    p.add_argument("--box", type=float, default=None, help="box side Mpc/h (default: d3m 128, nc128 4*nc)")
    p.add_argument("--boost", type=float, default=2.0, help="force mesh = boost * nc (default 2)")
    p.add_argument("--floor-repeats", type=int, default=7,
                   help="repeats of each FFT timing loop; the median is reported (default 7)")
    p.add_argument("--fft-pairs", type=int, default=3,
                   help="nc128: r2c+c2r pairs per FFT timing loop (default 3)")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="d3m: cProfile one more simulation and report the TOP functions by own time")
    p.add_argument("--indent", type=int, default=1, help="JSON indent (default 1)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    if args.floor_repeats < 1 or args.fft_pairs < 1:
        p.error("--floor-repeats and --fft-pairs must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.scaling:
        result = run_scaling(args)
        print(json.dumps(sig(result), indent=args.indent))
        return 0
    comm = get_comm()
    result = run_d3m(args, comm) if args.case == "d3m" else run_nc128(args, comm)
    if comm.rank == 0:
        print(json.dumps(sig(result), indent=args.indent), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
