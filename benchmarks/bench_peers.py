#!/usr/bin/env python
"""cosmonet against JaxPM on the same initial conditions: time per simulation and agreement.

One D3M simulation (nc 32, L 128 Mpc/h, boost 2: 64^3 float32 force mesh, 10 FastPM
steps from a = 0.1 to 1) with cosmonet's MPI engine on one rank. JaxPM's force engine
(``jaxpm.pm.pm_forces`` rebuilt from JaxPM's own paint, FFT, kernel and
readout functions, see :func:`make_jax_run`: CIC paint, complex FFT, -1/k^2, FD4
gradient kernel, three inverse FFTs, CIC readout, in float32) then evolves the SAME 2LPT particles (cosmonet's state at
a_start, captured from the run) with the same KDK steps and kick/drift factors, jitted
as one XLA program. So the time ratio compares the two force engines and integrator
loops, and the agreement measures the two PM implementations, not different ICs or
integrators.

Both run in this process, pinned to the same core, one thread each (XLA's CPU client is
told to use one intra-op thread; OMP_NUM_THREADS=1 for FFTW and numba). Reported: the
N-body part of both codes (median wall and process CPU seconds over ``--repeats``), the
full cosmonet simulation (LPT included), jax's compile time, and the rms and max
difference of the final displacements (minimum image, Mpc/h) and of the forces at a_start.

Without JaxPM (``pip install -e .[peers]``) it prints ``{"jaxpm_available": false, ...}``
and exits 0. One JSON document goes to stdout.
"""
import argparse
import json
import os
import statistics
import sys
import time

# one thread for every library, set before any of them is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import git_state  # noqa: E402


def jaxpm_status():
    try:
        import jax  # noqa: F401
        import jaxpm.pm  # noqa: F401  (imports jax_cosmo too)
    except Exception as exc:       # missing or broken: say so, do not fail
        return False, f"{type(exc).__name__}: {exc}"
    from importlib import metadata
    return True, {d: metadata.version(d) for d in ("jax", "jaxlib", "jaxpm")}


def timed(fn, repeats):
    """(median wall s, median process CPU s, last result) of ``repeats`` calls."""
    walls, cpus, res = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        res = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), res


def cosmonet_run(cfg, comm):
    """One cosmonet simulation; returns (result, initial state copy, KDK factors)."""
    import cosmonet.sim.simulation as simulation
    captured = {}
    original = simulation.run_fastpm

    def capture(state, solver, growth, omega_m, a_end, steps, progress=None, **kw):
        captured.update(disp=state.disp.copy(), mom=state.mom.copy(), a=state.a, lattice=state.lattice,
                        growth=growth, omega_m=omega_m, a_end=a_end, steps=steps, solver=solver)
        return original(state, solver, growth, omega_m, a_end, steps, progress=progress, **kw)

    simulation.run_fastpm = capture
    try:
        res = simulation.run_simulation(cfg, comm, fields=("fastpm/disp",))
    finally:
        simulation.run_fastpm = original
    return res, captured


def kdk_factors(c):
    from cosmonet.sim.fastpm import time_steps
    growth, steps = c["growth"], c["steps"]
    a = time_steps(c["a"], c["a_end"], steps)
    a0, a1 = a[:-1], a[1:]
    ah = 0.5 * (a0 + a1)
    first = growth.kick_factor(a0, a0, ah)
    drifts = growth.drift_factor(a0, ah, a1)
    second = growth.kick_factor(ah, a1, a1)
    closing = [second[n] + (first[n + 1] if n + 1 < steps else 0.0) for n in range(steps)]
    k = 1.5 * c["omega_m"]
    return k * float(first[0]), [float(d) for d in drifts], [k * float(x) for x in closing]


def make_jax_run(c, nmesh, box):
    """A jitted JaxPM evolution of the captured state with cosmonet's KDK factors."""
    import jax
    import jax.numpy as jnp
    from jaxpm.distributed import fft3d, ifft3d
    from jaxpm.kernels import fftk, gradient_kernel, invlaplace_kernel, longrange_kernel
    from jaxpm.painting import _cic_paint_impl, _cic_read_impl

    def pm_forces(pos, mesh_shape):
        """jaxpm.pm.pm_forces, step by step with JaxPM's own functions: its public
        ``cic_read`` (0.1.6) reshapes the particles to the mesh, so it needs as many
        particles as cells (no boost); the unsharded paint/read implementations do not."""
        delta_k = fft3d(_cic_paint_impl(jnp.zeros(mesh_shape, jnp.float32), pos))
        kvec = fftk(delta_k)
        pot_k = delta_k * invlaplace_kernel(kvec) * longrange_kernel(kvec, r_split=0)
        return jnp.stack([_cic_read_impl(ifft3d(-gradient_kernel(kvec, i) * pot_k), pos)
                          for i in range(3)], axis=-1)
    nc = c["lattice"][0]
    n_p = nc ** 3
    cell = box / nmesh
    # JaxPM: positions and forces in cells, density = painted counts; cosmonet:
    # F = i k / k^2 (rho / nbar - 1) in Mpc/h. F_cosmonet = F_jaxpm * cell * nmesh^3 / n_p.
    to_mpc = cell * nmesh ** 3 / n_p
    i, j, k = np.meshgrid(*(np.arange(nc),) * 3, indexing="ij")
    q = jnp.asarray(np.stack([i, j, k], -1).reshape(-1, 3) * (box / nc), dtype=jnp.float32)
    kick0, drifts, closing = kdk_factors(c)

    def force(disp):
        pos = jnp.mod((q + disp) / cell, nmesh)
        return pm_forces(pos, mesh_shape=(nmesh,) * 3) * to_mpc

    @jax.jit
    def run(disp, mom):
        mom = mom + kick0 * force(disp)
        for n in range(len(drifts)):
            disp = disp + drifts[n] * mom
            mom = mom + closing[n] * force(disp)
        return disp, mom

    return run, jax.jit(force)


def minimum_image(d, box):
    return np.mod(d + 0.5 * box, box) - 0.5 * box


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nc", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--indent", type=int, default=1)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    ok, info = jaxpm_status()
    out = {"benchmark": "cosmonet benchmarks/bench_peers.py", "jaxpm_available": ok, "git": git_state()}
    if not ok:
        out["reason"] = f"JaxPM not importable ({info}); install it with: pip install -e .[peers]"
        print(json.dumps(out, indent=args.indent))
        return 0
    out["versions"] = info
    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})
    import jax
    import jax.numpy as jnp
    from mpi4py import MPI
    from cosmonet.sim.simulation import SimConfig
    from cosmonet.mesh.pm import clear_mesh_cache
    comm = MPI.COMM_SELF
    cfg = SimConfig(nc=args.nc, box=4.0 * args.nc, steps=args.steps, seed=args.seed)
    nmesh, box = cfg.force_nmesh, cfg.box
    cosmonet_run(cfg, comm)                                   # warm-up: numba, FFTW plans
    wall_c, cpu_c, (res, cap) = timed(lambda: cosmonet_run(cfg, comm), args.repeats)
    from cosmonet.sim.fastpm import ParticleState, run_fastpm

    def cosmonet_nbody():
        st = ParticleState(cap["disp"].copy(), cap["mom"].copy(), cap["a"], cap["lattice"])
        run_fastpm(st, cap["solver"], cap["growth"], cap["omega_m"], cap["a_end"], cap["steps"])
        return st
    wall_cn, cpu_cn, st = timed(cosmonet_nbody, args.repeats)
    run, force = make_jax_run(cap, nmesh, box)
    d0, m0 = jnp.asarray(cap["disp"]), jnp.asarray(cap["mom"])
    t0 = time.perf_counter()
    run(d0, m0)[0].block_until_ready()
    compile_s = time.perf_counter() - t0
    wall_j, cpu_j, (dj, _) = timed(lambda: [x.block_until_ready() for x in run(d0, m0)], args.repeats)
    dj = np.asarray(dj, np.float64)
    dc = st.disp.astype(np.float64)
    diff = minimum_image(dc - dj, box)
    rms_disp = float(np.sqrt(np.mean(dc ** 2)))
    f_c = cap["solver"].force_state(ParticleState(cap["disp"].copy(), cap["mom"].copy(), cap["a"],
                                                  cap["lattice"])).astype(np.float64)
    f_j = np.asarray(force(d0), np.float64)
    fdiff = f_c - f_j
    clear_mesh_cache(comm)
    out.update({
        "params": {"nc": args.nc, "box_mpc_h": box, "force_nmesh": nmesh, "steps": args.steps,
                   "seed": args.seed, "repeats": args.repeats, "core": core,
                   "threads": "1 (OMP_NUM_THREADS, XLA intra-op)", "jax_backend": jax.default_backend(),
                   "load_average_1_5_15min": list(os.getloadavg())},
        "cosmonet_simulation_s": {"wall": wall_c, "cpu": cpu_c, "note": "LPT + FastPM, outputs built"},
        "cosmonet_nbody_s": {"wall": wall_cn, "cpu": cpu_cn},
        "jaxpm_nbody_s": {"wall": wall_j, "cpu": cpu_j, "compile_s": compile_s,
                          "note": "jaxpm.pm.pm_forces (3 inverse FFTs per force) in cosmonet's KDK loop, jitted"},
        "ratio_nbody_cosmonet_over_jaxpm": {"wall": wall_cn / wall_j, "cpu": cpu_cn / cpu_j},
        "agreement": {
            "final_disp_rms_diff_mpc_h": float(np.sqrt(np.mean(diff ** 2))),
            "final_disp_max_diff_mpc_h": float(np.max(np.abs(diff))),
            "final_disp_rms_mpc_h": rms_disp,
            "initial_force_rel_rms_diff": float(np.sqrt(np.mean(fdiff ** 2) / np.mean(f_c ** 2))),
            "initial_force_max_abs_diff": float(np.max(np.abs(fdiff))),
            "note": "same particles and steps; differences: cosmonet's real-space FD4 gradient vs JaxPM's "
                    "k-space FD4 kernel (equal up to round-off), float32 paint order, the mean (k = 0) handling",
        },
    })
    print(json.dumps(out, indent=args.indent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
