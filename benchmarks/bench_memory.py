#!/usr/bin/env python
"""Peak memory per particle of one MPI-engine simulation, above the import baseline.

Runs ``run_simulation`` once (all six output fields kept, as ``cosmonet run-sim`` does)
on the current communicator and reports, per rank (max over ranks): the peak resident
set size (VmHWM, else ``ru_maxrss``) after the imports and a tiny warm-up simulation
(numba cache load, pyccl tables), the peak after the measured simulation, and the
difference divided by the rank's particles. Also the process CPU time
(``time.process_time``) of the measured simulation and its timer split. One JSON
document on stdout (rank 0).

``--write DIR`` measures the run-sim path instead: the fields written to ``DIR/sim.h5``
as the simulation makes them (:func:`cosmonet.io.simwriter.run_to_file`), rank 0
taking the other ranks' slabs, so the peak includes the writing.

``--torch-batch B`` measures the batched torch engine instead (CPU, one thread, D3M
boxes): peak RSS of a B-box batch above a 1-box warm-up, per box, its CPU time per box
and the MPI engine's on the same seeds (``--chunk C``: boxes per pass).

    python benchmarks/bench_memory.py --nc 128 --steps 2
    mpirun -np 2 python benchmarks/bench_memory.py --nc 256 --steps 1
    python benchmarks/bench_memory.py --nc 128 --steps 2 --write /tmp
    python benchmarks/bench_memory.py --torch-batch 8
"""
import argparse
import json
import os
import resource
import sys
import time


def maxrss_bytes():
    """Peak resident set size of this process in bytes: VmHWM of /proc/self/status where
    there is one (ru_maxrss survives exec on Linux, so a child of a large process, e.g.
    one started by pytest, would report its parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024.0          # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0   # Linux: KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nc", type=int, default=128, help="particles per side (default 128)")
    p.add_argument("--box", type=float, default=None, help="box side Mpc/h (default 4 * nc)")
    p.add_argument("--boost", type=float, default=2.0, help="force mesh = boost * nc (default 2)")
    p.add_argument("--steps", type=int, default=2, help="FastPM steps (default 2; memory does not grow with steps)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write", default=None, metavar="DIR",
                   help="run-sim's way: write the fields to DIR/sim.h5 as they are made (the peak includes "
                        "the writing; the file is removed after)")
    p.add_argument("--torch-batch", type=int, default=0, metavar="B",
                   help="instead: the torch engine on the CPU, B boxes of nc 32 (D3M, 10 steps), "
                        "peak RSS above a 1-box warm-up, per box")
    p.add_argument("--chunk", type=int, default=None, metavar="C",
                   help="with --torch-batch: boxes per pass (run_batch's chunk; default its default)")
    args = p.parse_args(argv)
    if args.torch_batch:
        return torch_bytes_per_box(args.torch_batch, args.chunk)

    from mpi4py import MPI
    import numpy as np
    from cosmonet.sim.simulation import SimConfig, run_simulation
    from cosmonet.timing import Timers
    comm = MPI.COMM_WORLD
    # warm-up: numba cache load, growth tables, FFTW library pages (tiny mesh)
    run_simulation(SimConfig(nc=8, box=32.0, steps=1, seed=0), comm)
    base = maxrss_bytes()
    box = 4.0 * args.nc if args.box is None else args.box
    cfg = SimConfig(nc=args.nc, box=box, steps=args.steps, boost=args.boost, seed=args.seed)
    timers = Timers()
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.write is None:
        res = run_simulation(cfg, comm, timers=timers)
    else:
        from cosmonet.io.simwriter import run_to_file
        path = os.path.join(args.write, f"bench_memory_{os.getpid() if comm.rank == 0 else 0}.h5")
        path = comm.bcast(path, root=0)
        res = run_to_file(path, cfg, comm, timers=timers)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    peak = maxrss_bytes()
    if args.write is not None and comm.rank == 0:
        os.unlink(path)
    n_local = int(np.prod(res.pm.real_shape))
    per_particle = (peak - base) / n_local
    out = {
        "nc": args.nc, "box": box, "boost": args.boost, "steps": args.steps, "ranks": comm.size,
        "fields": "kept in memory" if args.write is None else "written as made (run-sim)",
        "force_nmesh": cfg.force_nmesh,
        "import_baseline_mib_max_rank": comm.allreduce(base / 2 ** 20, op=MPI.MAX),
        "peak_rss_mib_max_rank": comm.allreduce(peak / 2 ** 20, op=MPI.MAX),
        "bytes_per_particle_above_imports_max_rank": comm.allreduce(per_particle, op=MPI.MAX),
        "cpu_s_max_rank": comm.allreduce(cpu, op=MPI.MAX),
        "wall_s": comm.allreduce(wall, op=MPI.MAX),
        "timers_s_rank0": {k: round(v, 4) for k, v in sorted(timers.totals.items())},
    }
    if comm.rank == 0:
        json.dump(out, sys.stdout, indent=1)
        print()


def torch_bytes_per_box(B, chunk=None):
    """Peak RSS of a torch-engine batch of B D3M boxes above a 1-box warm-up, per box (and
    above the imports, which also counts the warm-up's one-off costs: library pages, FFT
    plans, cosmology tables), its process CPU time per box, and the process CPU time per
    box of the MPI engine (one rank, in-process) on the same seeds after the measurement.
    ``chunk``: boxes per pass (None: run_batch's default)."""
    import torch
    from cosmonet.sim.simulation import SimConfig, run_simulation
    from cosmonet.torchpm import run_batch
    from cosmonet.extras import MPI
    torch.set_num_threads(1)
    cfg = SimConfig(nc=32, box=128.0, steps=10, boost=2)
    imports = maxrss_bytes()
    kw = {} if chunk is None else {"chunk": chunk}
    run_batch(cfg, seeds=[0], **kw)
    base = maxrss_bytes()
    c0 = time.process_time()
    out = run_batch(cfg, seeds=list(range(1, B + 1)), **kw)
    cpu = time.process_time() - c0
    peak = maxrss_bytes()
    outputs = sum(v.nbytes for v in out.values())
    del out
    run_simulation(SimConfig(nc=32, box=128.0, steps=10, boost=2, seed=0), MPI.COMM_SELF)   # warm-up
    c0 = time.process_time()
    for s in range(1, B + 1):
        run_simulation(SimConfig(nc=32, box=128.0, steps=10, boost=2, seed=s), MPI.COMM_SELF)
    cpu_mpi = time.process_time() - c0
    json.dump({"engine": "torch (CPU)", "boxes": B, "chunk": chunk, "nc": 32, "force_nmesh": 64, "steps": 10,
               "peak_rss_mib": peak / 2 ** 20, "warmup_baseline_mib": base / 2 ** 20,
               "imports_baseline_mib": imports / 2 ** 20,
               "bytes_per_box_above_warmup": (peak - base) / B,
               "bytes_per_box_above_imports": (peak - imports) / B,
               "output_bytes_per_box": outputs / B,
               "cpu_s_per_box": cpu / B,
               "mpi_engine_cpu_s_per_box": cpu_mpi / B}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
