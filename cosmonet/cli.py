"""The ``cosmonet`` command line: ``cosmonet <command> ...``.

Bad input is reported as one line on stderr (``cosmonet: error: ...``) with exit code 2,
and no partial output file is left behind. Every command runs under ``mpirun -np N``,
``srun`` or as a single process; rank 0 alone prints.
"""
import argparse
import json
import os
import sys
import time

from .errors import InputError
from .interrupts import Interrupted


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def _comm():
    """MPI.COMM_WORLD; without mpi4py (no [mpi] extra) a one-process stand-in, or under
    mpirun/srun a one-line error naming the extra (cosmonet/extras.py)."""
    from .extras import MPI
    return MPI.COMM_WORLD


def _say(comm, *args):
    if comm.rank == 0:
        print(*args, file=sys.stderr, flush=True)


def _collective_check(comm, fn):
    """Run ``fn`` on rank 0; raise its InputError on every rank so all exit together."""
    msg = None
    if comm.rank == 0:
        try:
            fn()
        except InputError as exc:
            msg = str(exc)
    msg = comm.bcast(msg, root=0)
    if msg is not None:
        raise InputError(msg)


def _need(ok, option, rule, value):
    """InputError ``--option must be RULE (got VALUE)`` unless ``ok``."""
    if not ok:
        raise InputError(f"{option} must be {rule} (got {value})")


def _check_int(option, value, minimum):
    if value is not None:
        _need(value >= minimum, option, f"an integer >= {minimum}", value)


def _check_positive(option, value):
    import math
    if value is not None:
        _need(math.isfinite(value) and value > 0, option, "a finite number > 0", value)


def _writable(option, path):
    """:func:`cosmonet.io.atomic.check_writable_dir` of an output path, its error naming
    ``option`` as the user typed it."""
    from .io.atomic import check_writable_dir
    try:
        check_writable_dir(path)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


def _refuse_overwrite(inputs, outputs):
    from .io.guard import refuse_overwrite
    refuse_overwrite(inputs, outputs)


# --------------------------------------------------------------------------- run-sim
def _add_run_sim(sub):
    p = sub.add_parser("run-sim", help="one ZA / 2LPT / FastPM simulation to an HDF5 file")
    p.add_argument("--nc", type=int, default=32, help="particles per side (default 32)")
    p.add_argument("--box", type=float, default=128.0, help="box side in Mpc/h (default 128)")
    p.add_argument("--steps", type=int, default=10, help="FastPM KDK steps (default 10)")
    p.add_argument("--boost", type=float, default=2, help="force mesh = boost * nc (default 2)")
    p.add_argument("--seed", type=int, default=42, help="white-noise seed (default 42)")
    p.add_argument("--a-start", type=float, default=0.1, help="FastPM start, 2LPT ICs (default 0.1)")
    p.add_argument("--a-final", type=float, default=1.0, help="final scale factor (default 1, z = 0)")
    p.add_argument("--save-a", default=None,
                   help="outputs at these scale factors, e.g. 0.5,0.67,1 (ascending, in (a_start, a_final]; "
                        "a_final is always one): the steps land on each (docs/physics.md)")
    p.add_argument("--cosmology", default="planck15",
                   help="'planck15' or overrides such as 'Omega_m=0.3,sigma8=0.8' (on planck15)")
    p.add_argument("--linear-field", default=None,
                   help="real-space delta_lin at a = 1 on the nc^3 grid (.npy) instead of the seed")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--engine", choices=("mpi", "torch"), default="mpi",
                   help="mpi: the MPI/FFTW engine (default); torch: the batched torch engine, one rank")
    p.add_argument("--device", default="cpu", help="torch device for --engine torch: cpu (default), cuda, cuda:N")
    p.set_defaults(func=cmd_run_sim)


def _check_run_sim_options(args):
    """The rules of SimConfig, said with the options the user typed (``--a-start``, not
    ``a_start``), and the seed's limit (2^63, :data:`cosmonet.campaign.plan.SEED_LIMIT`)."""
    import math

    from .campaign.plan import check_seed
    _check_int("--nc", args.nc, 2)
    _check_positive("--box", args.box)
    _check_int("--steps", args.steps, 1)
    _need(math.isfinite(args.boost) and args.boost >= 1 and float(args.boost * args.nc).is_integer(), "--boost",
          "a number >= 1 with --boost * --nc an integer", args.boost)
    if not (0 < args.a_start < args.a_final <= 4):
        raise InputError(f"--a-start {args.a_start:g} and --a-final {args.a_final:g} must satisfy "
                         f"0 < a_start < a_final <= 4")
    check_seed("--seed", args.seed)
    args.save_a = _parse_save_a(args)


def _parse_save_a(args):
    """``--save-a 0.5,0.67,1`` as the checked tuple of outputs (:func:`check_save_a`), () without it."""
    from .sim.simulation import check_save_a
    if args.save_a is None:
        return ()
    values = []
    for part in args.save_a.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise InputError(f"--save-a {args.save_a!r}: {part.strip()!r} is not a number "
                             "(expected scale factors such as 0.5,0.67,1)") from None
    try:
        return check_save_a(values, args.a_start, args.a_final, args.steps, name="--save-a")
    except InputError as exc:
        raise InputError(f"{exc} (--a-start {args.a_start:g}, --a-final {args.a_final:g}, "
                         f"--steps {args.steps})") from None


def _grid_sigma_warning(cfg):
    """run-sim's warning line (or None) about the rms of its linear field on the grid;
    InputError above the refusal threshold (:mod:`cosmonet.sim.sanity`)."""
    from .sim.sanity import grid_sigma, judge
    return judge(grid_sigma(cfg.cosmology, cfg.nc, cfg.box, cfg.a_final), cfg.nc, cfg.box, cfg.a_final,
                 f"run-sim --nc {cfg.nc} --box {cfg.box:g} --a-final {cfg.a_final:g}")


def _open_linear_field(path, nc, check_values=True):
    """Memory-map a user's real-space delta_lin at a = 1 and check it: a ``.npy`` float
    array of shape (nc, nc, nc), with ``check_values`` every value finite (counted block by
    block off the memory map). Raises :class:`InputError` with one line otherwise."""
    import numpy as np
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"--linear-field {path}: cannot read as a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"--linear-field {path}: not a single .npy array (an .npz archive?)")
    if arr.shape != (nc, nc, nc):
        raise InputError(f"--linear-field {path}: shape {arr.shape}, expected ({nc}, {nc}, {nc}) "
                         "(real-space delta_lin at a = 1 on the nc^3 particle grid)")
    if not np.issubdtype(arr.dtype, np.floating) or arr.dtype.itemsize > 8:
        raise InputError(f"--linear-field {path}: dtype {arr.dtype}, expected a float array")
    if check_values:
        from .io.schema import count_nonfinite
        bad = count_nonfinite(arr)
        if bad:
            raise InputError(f"--linear-field {path}: {bad} non-finite values (NaN or infinity) of {nc ** 3}")
    return arr


def cmd_run_sim(args):
    from .cosmology import Cosmology
    from .io.simfile import write_simulation
    from .interrupts import group_stop, handling, signal_name
    from .io.simwriter import MESSAGE_BYTES, run_to_file
    from .sim.simulation import SimConfig

    from .resources import BASE, check_node_memory, simulation_bytes

    comm = _comm()
    _check_run_sim_options(args)
    try:
        cosmo = Cosmology.from_string(args.cosmology)
    except InputError as exc:
        raise InputError(f"--cosmology: {exc}") from None
    cfg = SimConfig(nc=args.nc, box=args.box, steps=args.steps, boost=args.boost, seed=args.seed,
                    a_start=args.a_start, a_final=args.a_final, save_a=args.save_a, cosmology=cosmo)
    if args.engine == "torch" and cfg.save_a:
        raise InputError("--save-a needs --engine mpi (the torch engine writes the a_final output only)")
    if args.engine == "mpi" and args.device != "cpu":
        raise InputError(f"--device {args.device} needs --engine torch (the MPI engine runs on CPUs)")

    def check_paths():
        _refuse_overwrite({"--linear-field": args.linear_field}, {"--out": args.out})
        _writable("--out", args.out)
    _collective_check(comm, check_paths)
    linear_field = None
    if args.linear_field is not None:
        _collective_check(comm, lambda: _open_linear_field(args.linear_field, cfg.nc))
        linear_field = _open_linear_field(args.linear_field, cfg.nc, check_values=False)
    # the MPI engine writes each field as it is made (rank 0 takes one message at a time);
    # the torch engine keeps its one box's fields until the end
    streamed = args.engine == "mpi"
    check_node_memory(comm, BASE + simulation_bytes(cfg.nc, cfg.force_nmesh, streamed=streamed) // comm.size,
                      MESSAGE_BYTES, f"run-sim --nc {cfg.nc} (force mesh {cfg.force_nmesh}^3)")
    if linear_field is None:            # the seeded field's rms on the grid (cosmonet/sim/sanity.py)
        holder = {}
        _collective_check(comm, lambda: holder.update(warning=_grid_sigma_warning(cfg)))
        if holder.get("warning"):
            _say(comm, holder["warning"])
    t0 = time.perf_counter()

    def progress(step, a):
        signum = group_stop(comm)       # collective: every rank stops after the same step
        if signum:
            raise Interrupted(signum, f"run-sim stopped by {signal_name(signum)} after step {step}/{cfg.steps}: "
                                      f"nothing written ({args.out} not created); rerun the same command")
        if not args.quiet:
            _say(comm, f"run-sim: step {step}/{cfg.steps}  a = {a:.4f}  "
                       f"({time.perf_counter() - t0:.1f} s)")

    extra = {"linear_field": os.path.abspath(args.linear_field) if args.linear_field else "",
             "n_ranks": comm.size, "engine": args.engine}
    if args.engine == "torch":
        result = _run_sim_torch(cfg, comm, args, linear_field)
        write_simulation(args.out, result, extra_attrs=extra)
    else:
        # each field is written as soon as it is made (cosmonet/io/simwriter.py), into a
        # temporary file that a SIGINT/SIGTERM must not leave behind: the signal is noted
        # and the run stops after the current step, removing it (interrupts.py)
        with handling("flag"):
            result = run_to_file(args.out, cfg, comm, extra_attrs=extra, linear_field=linear_field,
                                 progress=progress)
    wall = time.perf_counter() - t0
    if comm.rank == 0:
        print(json.dumps({"out": args.out, "nc": cfg.nc, "box": cfg.box, "steps": cfg.steps,
                          "ranks": comm.size, "wall_seconds": round(wall, 4),
                          "timers": {k: round(v["seconds"], 4)
                                     for k, v in result.timers.as_dict().items()}}))
    return 0


def _run_sim_torch(cfg, comm, args, linear_field=None):
    """run-sim with the batched torch engine (a batch of one box): a SimResult on a
    one-rank mesh that the HDF5 writer takes as from the MPI engine."""
    if comm.size > 1:
        raise InputError(f"run-sim --engine torch runs whole boxes on one rank (got {comm.size} ranks); "
                         "run it without mpirun/srun")
    import numpy as np

    from .sim.simulation import SimResult
    from .timing import Timers
    from .torchpm.batch_linear import host_mesh
    from .torchpm.simulate import resolve_device, run_batch
    device = resolve_device(args.device)
    timers = Timers()
    if linear_field is not None:
        field = np.asarray(linear_field, dtype=np.float64)
        fields = run_batch(cfg, linear_fields=field[None], device=device, timers=timers)
    else:
        fields = run_batch(cfg, [cfg.seed], device=device, timers=timers)
    pm = host_mesh(cfg.nc, cfg.box)
    return SimResult(fields={k: v[0] for k, v in fields.items()}, pm=pm, config=cfg, timers=timers)


# --------------------------------------------------------------------------- power
def _add_power(sub):
    p = sub.add_parser("power", help="P(k), and cross P(k), T(k), r(k), of a simulation file")
    p.add_argument("sim", help="HDF5 file from run-sim")
    p.add_argument("--field", default="fastpm",
                   help="za, lpt2 or fastpm (default fastpm), at a_final; NAME@a=A: the output at a = A "
                        "(run-sim --save-a), e.g. fastpm@a=0.5")
    p.add_argument("--second", default=None, help="second field for cross power, T and r (also NAME@a=A)")
    p.add_argument("--nmesh", type=int, default=None, help="painting mesh per side (default nc)")
    p.add_argument("--index", type=int, default=None,
                   help="campaign shard: the simulation (its campaign index, params/index) to analyse")
    p.add_argument("--compensation", default="cic_shotnoise", choices=["none", "cic", "cic_shotnoise"],
                   help="CIC window correction (default cic_shotnoise, as nbodykit)")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--plot", default=None, help="also draw P(k) (and T, r) to this PNG")
    p.set_defaults(func=cmd_power)


def cmd_power(args):
    from .io.guard import remove_on_failure
    from .resources import BASE, check_node_memory, power_bytes

    comm = _comm()
    _check_int("--nmesh", args.nmesh, 2)
    _check_int("--index", args.index, 0)
    if not os.path.isfile(args.sim):
        raise InputError(f"simulation file {args.sim} does not exist" if not os.path.exists(args.sim)
                         else f"simulation file {args.sim} is not a file")
    from .io.simfile import describe_sim_file

    def check_paths():
        _refuse_overwrite({"sim": args.sim}, {"--json": args.json, "--plot": args.plot})
        _writable("--json", args.json)
        if args.plot:
            _writable("--plot", args.plot)
    _collective_check(comm, check_paths)
    holder = {}
    _collective_check(comm, lambda: holder.update(desc=describe_sim_file(args.sim, args.index)))
    attrs, row = comm.bcast(holder.get("desc"), root=0)
    nc = int(attrs["nc"])
    nmesh = nc if args.nmesh is None else args.nmesh
    check_node_memory(comm, BASE + power_bytes(nc, nmesh, 2 if args.second else 1) // comm.size, 0,
                      f"power (--nmesh {nmesh}, {nc}^3 particles)")
    with remove_on_failure(*((args.json, args.plot) if comm.rank == 0 else ())):
        return _power(args, comm, attrs, row, nmesh)


def _field_a(ref, attrs):
    """The scale factor of power's field: its ``@a=A`` output's a, else a_final (None if unknown)."""
    from .io.schema import file_outputs, output_group, split_field_ref
    _, at = split_field_ref(ref)
    if at is None:
        return attrs.get("a_final")
    return next((a for a in file_outputs(attrs) if output_group(a) == output_group(at)), at)


def _power(args, comm, attrs, row, nmesh):
    import numpy as np

    from .analysis.power import cross_power, binned_power, density_k, gaussian_errors
    from .mesh import ParticleMesh

    from .io.simfile import read_positions
    pos, _ = read_positions(args.sim, args.field, row=row, comm=comm, option="--field")
    nc, box = int(attrs["nc"]), float(attrs["box_size"])
    pm = ParticleMesh(nmesh, box, comm, dtype=np.float64)
    a_k = density_k(pm, pos, nc ** 3, args.compensation)
    if args.second is not None:
        pos2, _ = read_positions(args.sim, args.second, row=row, comm=comm, option="--second")
        b_k = density_k(pm, pos2, nc ** 3, args.compensation)
        res = cross_power(pm, a_k, b_k)
    else:
        res = binned_power(pm, a_k)
        res.pop("edges")
    if len(res["k"]) == 0:
        raise InputError(f"no k bin below the Nyquist frequency holds a mode: --nmesh {nmesh} is too small")
    res.update(gaussian_errors(res))
    out = {key: np.asarray(v).tolist() for key, v in res.items()}
    out.update(field=args.field, second=args.second, index=args.index, nmesh=nmesh, box_size=box,
               shotnoise=box ** 3 / nc ** 3, compensation=args.compensation,
               a_final=attrs.get("a_final"), a=_field_a(args.field, attrs),
               units={"k": "h/Mpc", "power": "(Mpc/h)^3"})
    if comm.rank == 0:
        from .io.atomic import write_json
        write_json(args.json, out)
        if args.plot:
            from .analysis.plots import path_label, plot_power
            from .cosmology import KEYS, Cosmology, growth_for
            cosmo = Cosmology.from_dict({k: attrs[k] for k in KEYS if k in attrs})
            kl = np.geomspace(pm.k_fundamental, pm.k_nyquist, 100)
            a = float(out["a"] if out["a"] is not None else 1.0)
            plin = cosmo.linear_power(kl) * growth_for(cosmo).D1(a) ** 2
            plot_power(out, args.plot, title=f"{path_label(os.path.basename(args.sim))}: nc={nc}, L={box:g} Mpc/h, "
                       f"a={a:g}", linear=(kl, plin))
        print(json.dumps({"json": args.json, "plot": args.plot, "bins": len(out["k"])}))
    return 0


# --------------------------------------------------------------------------- simulate / verify
def _add_simulate(sub):
    p = sub.add_parser("simulate", help="a campaign of simulations from a YAML config (resumable)")
    p.add_argument("config", help="campaign YAML (see configs/)")
    p.add_argument("--out", default=None, help="output directory (overrides the config's out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set n_sims=40 --set cosmology.lhs_seed=3")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_simulate)


def _campaign_resources(cfg, comm):
    """Refuse (collectively) a campaign whose simulations cannot fit in memory or whose
    remaining shards cannot fit on the disk of ``cfg.out``."""
    from .campaign import store as shardio
    from .resources import BASE, campaign_disk_bytes, check_disk, check_node_memory, gather_bytes, simulation_bytes

    rps = cfg.ranks_per_sim
    leader = comm.rank % rps == 0
    force = int(round(cfg.boost * cfg.nc))
    if cfg.engine == "torch":
        # a batch of whole boxes per rank: its outputs (and noise) on the host, and the whole
        # simulation state too when the device is the CPU (a GPU's memory is checked there)
        on_host = cfg.device == "cpu" or (cfg.device == "auto" and not _cuda_available())
        per_box = gather_bytes(cfg.nc, cfg.density_nmesh) + (simulation_bytes(cfg.nc, force) if on_host else 0)
        check_node_memory(comm, BASE + cfg.batch_size * per_box, 0,
                          f"simulate: batch_size {cfg.batch_size} boxes of nc {cfg.nc} (force mesh {force}^3) "
                          f"per rank on {'the host' if on_host else 'the host side of the GPU engine'}")
    else:
        earlier = max(len(cfg.save_a) - 1, 0)     # outputs before a_final, kept until the shard is written
        per_rank = BASE + simulation_bytes(cfg.nc, force, earlier_outputs=earlier) // rps + \
            ((1 + earlier) * gather_bytes(cfg.nc, cfg.density_nmesh) if leader else 0)
        check_node_memory(comm, per_rank, 0, f"simulate: nc {cfg.nc} (force mesh {force}^3, {rps} rank(s) "
                                             f"per simulation)")

    def disk():
        done = 0
        if os.path.isdir(os.path.join(cfg.out, shardio.SHARD_DIR)):
            done = sum(r["n"] for r in (shardio.read_record(cfg.out, s) for s in range(cfg.n_shards))
                       if isinstance(r, dict) and isinstance(r.get("n"), int))
        left = max(cfg.n_sims - done, 0)
        check_disk(campaign_disk_bytes(cfg, left), cfg.out,
                   f"simulate: {left} simulations of {cfg.nc}^3 ({', '.join(cfg.fields)})")
    _collective_check(comm, disk)


def _cuda_available():
    import torch
    return torch.cuda.is_available()


def _campaign_has_shards(path):
    from .campaign import store as shardio
    d = os.path.join(path, shardio.SHARD_DIR)
    return os.path.isdir(d) and any(name.endswith(".json") for name in os.listdir(d))


def cmd_simulate(args):
    """``cosmonet simulate``; an error about the output directory names ``--out`` when the
    user gave it (the configuration's ``out`` otherwise)."""
    try:
        return _simulate(args)
    except InputError as exc:
        text = str(exc)
        if args.out is not None and text.startswith("config: out "):
            raise InputError("--out " + text[len("config: out "):]) from None
        raise


def _simulate(args):
    from .campaign.config import load_config
    from .campaign.lock import CampaignLock
    from .campaign.runner import prepare_directory, run_campaign
    from .interrupts import handling
    from .io.guard import remove_on_failure

    comm = _comm()
    holder = {}

    def load():
        cfg = holder["cfg"] = load_config(args.config, args.overrides, out=args.out)
        _refuse_overwrite({"config": args.config}, {"out" if args.out is None else "--out": cfg.out})
        if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
            raise InputError(f"config: out {cfg.out} exists and is not a directory")
        if comm.size % cfg.ranks_per_sim:
            raise InputError(f"config: ranks_per_sim {cfg.ranks_per_sim} does not divide the "
                             f"{comm.size} ranks")

    _collective_check(comm, load)
    cfg = comm.bcast(holder.get("cfg"), root=0)
    _campaign_resources(cfg, comm)
    from .campaign.sanity import check_campaign
    _collective_check(comm, lambda: holder.update(warning=check_campaign(cfg)))
    fresh = comm.bcast(not os.path.exists(cfg.out) if comm.rank == 0 else None, root=0)
    # world rank 0 holds DIR/.lock for the run (one writer per directory); SIGINT/SIGTERM stop
    # the run at the next simulation boundary (interrupts.py). A directory this run created is
    # removed again if the run fails before a shard is complete.
    lock = CampaignLock(cfg.out) if comm.rank == 0 else None
    with handling("flag"), remove_on_failure(*((cfg.out,) if comm.rank == 0 and fresh else ()),
                                             keep=_campaign_has_shards):
        try:
            _collective_check(comm, lambda: prepare_directory(cfg, lock=lock))
            if holder.get("warning"):
                _say(comm, holder["warning"])
            summary = run_campaign(cfg, comm, show_progress=not args.quiet)
        finally:
            if lock is not None:
                lock.release()
    if comm.rank == 0:
        print(json.dumps(summary))
    return 0


def _add_verify(sub):
    p = sub.add_parser("verify", help="check a campaign directory: missing, corrupt, duplicate shards")
    p.add_argument("dir", help="campaign output directory")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args):
    from .campaign.store import verify_campaign
    if _comm().rank != 0:
        return 0
    report = verify_campaign(args.dir)
    print(json.dumps(report))
    if not report["ok"]:
        problems = [f"{k}: {report[k]}" for k in ("missing", "corrupt", "duplicates", "unrecorded") if report[k]]
        if report["present"] != report["n_sims"]:
            problems.append(f"{report['present']} of {report['n_sims']} simulations present")
        problems += report["problems"]      # foreign shards, manifest hashes, an unreadable manifest
        print(f"cosmonet verify: {args.dir} has problems: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train a model data-parallel (DDP or Horovod) from a YAML config")
    p.add_argument("config", help="training YAML (see configs/d3m_small.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 --set data.root=/scratch/d3m")
    p.set_defaults(func=cmd_train)


def _has_checkpoints(path):
    """True when the run directory holds a checkpoint file (an empty checkpoints/ does not count)."""
    from .train.checkpoint import step_files
    return bool(step_files(path))


def _check_resume(args, cfg, out, root):
    """Before any work: refuse a fresh ``train`` into a directory that holds a run; for
    ``--resume`` find the checkpoint to continue from (the newest readable one when
    ``latest`` names a missing or unreadable file, said in one line) and apply or refuse
    what the config changes against the one stored in it (docs/training.md)."""
    from .train.checkpoint import CKPT_DIR, LATEST, find_latest, load_checkpoint, resume_changes, step_files
    steps = step_files(out)
    if not args.resume:
        if steps or os.path.lexists(os.path.join(out, CKPT_DIR, LATEST)):
            newest = os.path.basename(steps[0]) if steps else LATEST
            raise InputError(f"train: out {out} already holds a training run ({CKPT_DIR}/{newest}); continue it "
                             f"with --resume, or set a new out")
        return
    path, note = find_latest(out)
    if path is None:
        if note:
            raise InputError(f"train --resume: {note}; move {os.path.join(out, CKPT_DIR)} away or set a new out")
        return
    if note and root:
        print(f"train: {note}", file=sys.stderr, flush=True)
    state = load_checkpoint(path)
    applied, refused = resume_changes(state.get("config"), cfg.to_dict())
    if refused:
        key, (was, now) = next(iter(refused.items()))
        more = f" (and {', '.join(list(refused)[1:])})" if len(refused) > 1 else ""
        raise InputError(f"train --resume: {key} is {now!r} but checkpoint {path} was trained with {was!r}{more}; "
                         f"a resume cannot change it: keep it, or train into a new out")
    if applied and root:
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in applied.items())
        print(f"train: --resume from step {state.get('step')} applied {text} (recorded in train_log.jsonl)",
              file=sys.stderr, flush=True)
        with open(os.path.join(out, "train_log.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": state.get("step"), "resume": os.path.abspath(path),
                                 "applied": {k: list(v) for k, v in applied.items()}}) + "\n")


def cmd_train(args):
    from .interrupts import Interrupted, handling
    from .io.guard import remove_on_failure
    from .train.trainconfig import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    out = cfg["out"]
    _refuse_overwrite({"config": args.config, "data.root": cfg["data"]["root"]}, {"out": out})
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"train config: out {out} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(os.path.abspath(out)) and not os.access(_existing_dir(parent), os.W_OK | os.X_OK):
        raise InputError(f"train config: out {out} cannot be created ({_existing_dir(parent)} is not writable)")
    if not os.path.isdir(cfg["data"]["root"]):
        raise InputError(f"train config: data.root {cfg['data']['root']} is not a directory")
    _check_resume(args, cfg, out, _launcher_rank() == 0)
    from .hardware import set_torch_threads
    set_torch_threads()                    # the trainer's first line says how many
    from .train.loop import TrainingError, train
    with handling("flag"), remove_on_failure(*((out,) if _launcher_rank() == 0 else ()), keep=_has_checkpoints):
        try:
            summary, _, backend = train(cfg, resume=args.resume)
        except TrainingError as exc:
            print(f"cosmonet: training stopped: {exc}", file=sys.stderr, flush=True)
            return 3
        except Interrupted as exc:
            if exc.backend is not None:
                exc.backend.shutdown()
            exc.backend = None
            raise
    if backend.is_root:
        print(json.dumps(summary))
    backend.shutdown()
    return 0


def _launcher_rank():
    """This process's rank as the launcher (mpirun, srun, torchrun) numbers it; 0 alone."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _existing_dir(path):
    from .resources import existing_ancestor
    return existing_ancestor(path)


# --------------------------------------------------------------------------- evaluate / emulate
def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained model on the test split (JSON + PNG): the D3M "
                                        "emulator against 2LPT, or paramnet against a P(k) analysis")
    p.add_argument("config", help="the training YAML (its data section names the campaign and split)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. runs/x/checkpoints/step_*.pt)")
    p.add_argument("--json", required=True, help="output JSON report")
    p.add_argument("--plots", default=None, help="directory for the PNG figures")
    p.add_argument("--max-boxes", type=int, default=None, help="evaluate at most this many test boxes")
    p.add_argument("--k-max", type=float, default=None,
                   help="paramnet: largest k (h/Mpc) of the P(k) baseline (default: see docs/params.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    from .interrupts import handling, signal_name

    if _comm().rank != 0:
        return 0
    with handling("raise"):        # a signal raises Interrupted at once; remove_on_failure cleans up
        try:
            return _evaluate(args)
        except Interrupted as exc:
            raise Interrupted(exc.signum, f"evaluate stopped by {signal_name(exc.signum)}: nothing written "
                                          f"({args.json} is written whole at the end); rerun the same command")


def _evaluate(args):
    from .io.guard import remove_on_failure
    from .train.trainconfig import load_train_config

    _check_int("--max-boxes", args.max_boxes, 1)
    _check_positive("--k-max", args.k_max)
    cfg = load_train_config(args.config, args.overrides)
    from .train.checkpoint import checkpoint_argument
    args.checkpoint = checkpoint_argument(args.checkpoint)
    _refuse_overwrite({"config": args.config, "--checkpoint": args.checkpoint, "data.root": cfg["data"]["root"]},
                      {"--json": args.json, "--plots": args.plots})
    _writable("--json", args.json)
    if args.plots and os.path.exists(args.plots) and not os.path.isdir(args.plots):
        raise InputError(f"--plots {args.plots} exists and is not a directory")
    from .emulate import load_emulator
    from .hardware import set_torch_threads
    from .train.loop import is_param_task
    set_torch_threads()
    model, norm, state = load_emulator(args.checkpoint)
    is_paramnet = state["model_signature"]["name"] == "paramnet"
    if is_paramnet != is_param_task(cfg):
        raise InputError(f"--checkpoint {args.checkpoint} holds model {state['model_signature']['name']!r}, "
                         f"which does not fit the config's data.target {cfg['data']['target']!r}")
    with remove_on_failure(args.json, args.plots):
        if is_paramnet:
            return _evaluate_params(args, cfg, model, norm)
        return _evaluate_d3m(args, cfg, model, norm)


def _evaluate_d3m(args, cfg, model, norm):
    from .analysis.d3m_eval import evaluate_d3m, plot_report, report_table
    from .io.atomic import write_json
    from .data import ShardDataset
    d = cfg["data"]
    at = d["target"][d["target"].index("@"):] if "@" in d["target"] else ""     # NAME@a=A: ZA and 2LPT at that a
    test = ShardDataset(d["root"], split=d["test_split"], fields=("za/disp" + at, "lpt2/disp" + at, d["target"]))
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"     # the network on the GPU when there is one
    report, slices = evaluate_d3m(model.to(device), test, norm["scale"], device=device, max_boxes=args.max_boxes)
    from .train.checkpoint import resolve_checkpoint
    report["checkpoint"] = os.path.abspath(resolve_checkpoint(args.checkpoint))
    report["precision"] = "fp32"              # inference; training precision: the checkpoint's
    report["torch_threads"] = torch.get_num_threads()
    write_json(args.json, report)
    plots = plot_report(report, slices, args.plots) if args.plots else []
    print(report_table(report), file=sys.stderr, flush=True)
    print(json.dumps({"json": args.json, "plots": plots, "displacement_error": report["displacement_error"]}))
    return 0


def _evaluate_params(args, cfg, model, norm):
    """``cosmonet evaluate`` for paramnet: conv-net vs P(k) baseline vs constant (JSON + PNG)."""
    from .analysis.param_eval import METHODS, evaluate_params, plot_params
    from .io.atomic import write_json
    from .data.subcubes import SubcubeDataset
    from .train.checkpoint import resolve_checkpoint

    d = cfg["data"]
    ranges = {p: tuple(r) for p, r in norm["ranges"].items()}
    kw = dict(size=norm["subcube"], params=norm["params"], scale=norm["scale"], ranges=ranges)
    train = SubcubeDataset(d["root"], d["train_split"], **kw)
    test = SubcubeDataset(d["root"], d["test_split"], max_boxes=args.max_boxes, **kw)
    report, raw = evaluate_params(model, train, test, k_max=args.k_max)
    report["checkpoint"] = os.path.abspath(resolve_checkpoint(args.checkpoint))
    write_json(args.json, report)
    plots = plot_params(report, raw, args.plots) if args.plots else []
    table = {m: {p: {k: round(v, 5) for k, v in report[m][p].items() if not k.startswith("per_box")}
                 for p in report["params"]} for m in METHODS}
    print(json.dumps({"json": args.json, "plots": plots, **table}))
    return 0


def _add_emulate(sub):
    p = sub.add_parser("emulate", help="apply a trained emulator to a simulation file's ZA displacement")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="HDF5 file from run-sim (uses za/disp)")
    p.add_argument("--out", required=True, help="output HDF5 with emulated/disp")
    p.add_argument("--tile", type=int, default=None, help="tile size in cells for large boxes (default: whole box)")
    p.add_argument("--margin", type=int, default=None, help="periodic context around each tile (default: measured)")
    p.set_defaults(func=cmd_emulate)


def _emulate_input_shape(path):
    """Shape of ``za/disp`` in ``path`` after checking the file against the schema
    (:mod:`cosmonet.io.schema`); InputError naming what the file is otherwise."""
    from .io import schema
    from .io.simfile import open_sim_file
    with open_sim_file(path) as f:
        if schema.is_shard(f):
            index = f["params/index"]
            n = f"{len(index)} simulations" if getattr(index, "ndim", 0) == 1 else "several simulations"
            raise InputError(f"--input {path} is a campaign shard ({n}); emulate takes one run-sim file")
        schema.check_sim_file(path, f, required=())
        if "za/disp" not in f:
            raise InputError(f"--input {path} has no za/disp: not a run-sim simulation file")
        return schema.check_dataset(path, f, "za/disp", (3, None, None, None)).shape


def cmd_emulate(args):
    from .io.simfile import read_displacements, write_emulated
    from .resources import check_memory

    if _comm().rank != 0:
        return 0
    _check_int("--tile", args.tile, 1)
    _check_int("--margin", args.margin, 0)
    from .train.checkpoint import checkpoint_argument
    args.checkpoint = checkpoint_argument(args.checkpoint)
    _refuse_overwrite({"--input": args.input, "--checkpoint": args.checkpoint}, {"--out": args.out})
    _writable("--out", args.out)
    if not os.path.isfile(args.input):
        raise InputError(f"--input {args.input} is not a file")
    shape = _emulate_input_shape(args.input)
    n = shape[-1]
    if args.tile is not None and args.tile < n and n % args.tile:
        raise InputError(f"emulate: --tile {args.tile} does not divide the box of {n} cells")
    from .emulate import check_margin, check_tiling, emulate_box, load_emulator, memory_need
    from .hardware import set_torch_threads
    from .probes.command import check_emulator
    from .train.checkpoint import resolve_checkpoint
    threads = set_torch_threads()
    model, norm, state = load_emulator(args.checkpoint)
    check_emulator(state, args.checkpoint)
    margin = args.margin
    check_margin(n, args.tile, args.margin)
    if args.tile is not None:
        margin = check_tiling(model, n, args.tile, args.margin)
    tiled = args.tile is not None and args.tile < n
    need = memory_need(model, n, args.tile, margin or 0)[0]
    check_memory(need, f"emulate on {n}^3 cells" + (f" in tiles of {args.tile} + {margin} cells of context"
                                                    if tiled else ""))
    disp, attrs, others = read_displacements(args.input)
    from .emulate import outside_training
    for line in outside_training(state.get("training_setup"), attrs):
        print(f"emulate: warning: {args.input} lies outside the network's training: {line}", file=sys.stderr,
              flush=True)
    n_tiles = (n // args.tile) ** 3 if tiled else 1
    print(f"emulate: {n}^3 cells of {args.input}, " + (f"{n_tiles} tiles of {args.tile}^3 + {margin} cells of "
          f"context" if tiled else "the whole box in one pass") + f", about {need / 2 ** 30:.1f} GiB, "
          f"fp32 on {threads}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    pred = emulate_box(model, disp, norm["scale"], tile=args.tile, margin=margin, progress=_tile_progress(t0))
    summary = {"out": args.out, "n": int(disp.shape[-1]), "seconds": round(time.perf_counter() - t0, 3),
               "tile": args.tile, "precision": "fp32"}
    if "fastpm" in others:
        summary["displacement_error_vs_fastpm"] = _errors_vs_fastpm(pred, disp, others)
    write_emulated(args.out, pred, attrs, dict(others, za=disp), resolve_checkpoint(args.checkpoint), args.input)
    print(json.dumps(summary))
    return 0


def _tile_progress(t0, every=5.0):
    """``progress(done, total)`` for emulate_box: a line with the ETA every ``every`` seconds."""
    last = [t0]

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] > every or done == total:
            last[0] = now
            eta = (now - t0) / done * (total - done)
            print(f"emulate: {done}/{total} tiles, {now - t0:.0f} s, ETA {eta:.0f} s", file=sys.stderr, flush=True)
    return progress


def _errors_vs_fastpm(emulated, za, others):
    """Displacement error of the emulated box, 2LPT (when present) and ZA against FastPM."""
    import numpy as np

    from .analysis.power import displacement_error
    true = others["fastpm"].astype(np.float64)
    fields = (("emulated", emulated), ("lpt2", others.get("lpt2")), ("za", za))
    return {name: displacement_error(f.astype(np.float64), true) for name, f in fields if f is not None}


# --------------------------------------------------------------------------- export
def _add_export(sub):
    p = sub.add_parser("export", help="one simulation's particles as a Gadget HDF5 snapshot (pynbody, yt, ...)")
    p.add_argument("input", help="HDF5 file from run-sim or emulate, or a campaign shard (with --index)")
    p.add_argument("--out", required=True, help="output Gadget HDF5 snapshot (e.g. snap.hdf5)")
    p.add_argument("--field", default="fastpm", choices=("za", "lpt2", "fastpm", "emulated"),
                   help="particles to write (default fastpm; emulated: positions only, the network has no velocities)")
    p.add_argument("--index", type=int, default=None,
                   help="campaign shard: the simulation (its campaign index, params/index) to export")
    p.add_argument("--length-unit", default="kpc", choices=("kpc", "Mpc"),
                   help="Coordinates and BoxSize in kpc/h (default, as Gadget) or Mpc/h")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from .io.atomic import check_writable_dir
    from .io.gadget import export_gadget

    if _comm().rank != 0:
        return 0
    _check_int("--index", args.index, 0)
    if not os.path.isfile(args.input):
        raise InputError(f"input {args.input} does not exist" if not os.path.exists(args.input)
                         else f"input {args.input} is not a file")
    _refuse_overwrite({"input": args.input}, {"--out": args.out})
    check_writable_dir(args.out)
    summary = export_gadget(args.input, args.out, field=args.field, index=args.index, length_unit=args.length_unit)
    if not summary["velocities"]:
        print(f"export: warning: {args.input} has no {args.field}/vel, so {args.out} holds Coordinates and "
              "ParticleIDs only (no Velocities)", file=sys.stderr, flush=True)
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------- main
def build_parser():
    parser = _Parser(prog="cosmonet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_sim(sub)
    _add_power(sub)
    _add_simulate(sub)
    _add_verify(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_emulate(sub)
    _add_export(sub)
    from .probes.command import add_probe_parser
    add_probe_parser(sub)
    return parser


def main(argv=None):
    """The ``cosmonet`` command: the exit code of the subcommand (2 for bad input)."""
    code = _run_command(argv)
    if "cosmonet.train.dist" in sys.modules:
        from .train.dist import end_process
        code = end_process(code)      # after a distributed run: exits here (see its docstring)
    return code


def _run_command(argv):
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ModuleNotFoundError as exc:
        # a package of an extra that this install lacks (mpi4py for simulate, ...): one line
        from .extras import explain
        known = explain(exc, f"cosmonet {getattr(args, 'command', '')}".strip())
        if known is None:
            raise
        _report(str(known))
        return 2
    except InputError as exc:
        _report(str(exc).splitlines()[0] if str(exc) else "invalid input")
        return 2
    except Interrupted as exc:
        _report(exc.message, prefix="cosmonet: stopped: ")
        return exc.exit_code
    except MemoryError:
        _report("out of memory (the machine could not hold the arrays of this run; use smaller sizes or more "
                "ranks)")
        return 2
    except OSError as exc:
        # the machine refused (full disk, quota, permissions, vanished file): one line, not a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        text = exc.strerror or str(exc)
        if getattr(exc, "errno", None) is None and "write failed" in text:
            text = "writing failed (is the disk full?): " + text
        _report(f"{text}{where}")
        return 2


def _report(msg, prefix="cosmonet: error: "):
    from .errors import short_line
    msg = short_line(msg.strip().splitlines()[0]) if msg.strip() else "failed"
    try:
        rank = _comm().rank
    except Exception:  # MPI unavailable: report anyway, once (the launcher's rank 0)
        rank = _launcher_rank()
    if rank == 0:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
