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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def _comm():
    from mpi4py import MPI
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
    p.add_argument("--cosmology", default="planck15",
                   help="'planck15' or overrides such as 'Omega_m=0.3,sigma8=0.8' (on planck15)")
    p.add_argument("--linear-field", default=None,
                   help="real-space delta_lin at a = 1 on the nc^3 grid (.npy) instead of the seed")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_run_sim)


def cmd_run_sim(args):
    from .cosmology import Cosmology
    from .io.atomic import check_writable_dir
    from .io.simfile import write_simulation
    from .sim.simulation import SimConfig, run_simulation

    comm = _comm()
    cosmo = Cosmology.from_string(args.cosmology)
    cfg = SimConfig(nc=args.nc, box=args.box, steps=args.steps, boost=args.boost, seed=args.seed,
                    a_start=args.a_start, a_final=args.a_final, cosmology=cosmo)
    _collective_check(comm, lambda: check_writable_dir(args.out))
    if args.linear_field is not None:
        from .sim.linear import open_linear_field
        _collective_check(comm, lambda: open_linear_field(args.linear_field, cfg.nc))
    t0 = time.perf_counter()

    def progress(step, a):
        if not args.quiet:
            _say(comm, f"run-sim: step {step}/{cfg.steps}  a = {a:.4f}  "
                       f"({time.perf_counter() - t0:.1f} s)")

    result = run_simulation(cfg, comm, linear_field=args.linear_field, progress=progress)
    extra = {"linear_field": os.path.abspath(args.linear_field) if args.linear_field else "",
             "n_ranks": comm.size}
    write_simulation(args.out, result, extra_attrs=extra)
    wall = time.perf_counter() - t0
    if comm.rank == 0:
        print(json.dumps({"out": args.out, "nc": cfg.nc, "box": cfg.box, "steps": cfg.steps,
                          "ranks": comm.size, "wall_seconds": round(wall, 4),
                          "timers": {k: round(v["seconds"], 4)
                                     for k, v in result.timers.as_dict().items()}}))
    return 0


# --------------------------------------------------------------------------- power
def _add_power(sub):
    p = sub.add_parser("power", help="P(k), and cross P(k), T(k), r(k), of a simulation file")
    p.add_argument("sim", help="HDF5 file from run-sim")
    p.add_argument("--field", default="fastpm", help="za, lpt2 or fastpm (default fastpm)")
    p.add_argument("--second", default=None, help="second field for cross power, T and r")
    p.add_argument("--nmesh", type=int, default=None, help="painting mesh per side (default nc)")
    p.add_argument("--compensation", default="cic_shotnoise", choices=["none", "cic", "cic_shotnoise"],
                   help="CIC window correction (default cic_shotnoise, as nbodykit)")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--plot", default=None, help="also draw P(k) (and T, r) to this PNG")
    p.set_defaults(func=cmd_power)


def _read_positions(path, name, comm):
    """Local rows of q + displacement for field ``name`` (Mpc/h, (n, 3)) and the file's attrs."""
    import h5py
    import numpy as np

    from .io.simfile import lagrangian_grid, plain_attrs

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open simulation file {path} ({exc})") from None
    with f:
        key = f"{name}/disp"
        if key not in f:
            raise InputError(f"{path} has no field '{name}' (has: "
                             f"{', '.join(sorted(k for k in f.keys() if f'{k}/disp' in f))})")
        attrs = plain_attrs(f.attrs)
        missing = [k for k in ("nc", "box_size") if k not in attrs]
        if missing:
            raise InputError(f"{path} is not a cosmonet simulation file (no '{missing[0]}' attribute)")
        nc, box = int(attrs["nc"]), float(attrs["box_size"])
        rows = np.array_split(np.arange(nc), comm.size)[comm.rank]
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        disp = f[key][:, lo:hi].astype(np.float64)
    q = lagrangian_grid(nc, box, slice(lo, hi))
    pos = np.mod(q + disp, box).reshape(3, -1).T
    return pos, attrs


def cmd_power(args):
    import numpy as np

    from .analysis.power import cross_power, binned_power, density_k
    from .mesh import ParticleMesh

    comm = _comm()
    if not os.path.exists(args.sim):
        raise InputError(f"simulation file {args.sim} does not exist")
    from .io.atomic import check_writable_dir
    _collective_check(comm, lambda: check_writable_dir(args.json))
    pos, attrs = _read_positions(args.sim, args.field, comm)
    nc, box = int(attrs["nc"]), float(attrs["box_size"])
    nmesh = nc if args.nmesh is None else args.nmesh
    if nmesh < 2:
        raise InputError(f"--nmesh must be >= 2 (got {nmesh})")
    pm = ParticleMesh(nmesh, box, comm, dtype=np.float64)
    a_k = density_k(pm, pos, nc ** 3, args.compensation)
    if args.second is not None:
        pos2, _ = _read_positions(args.sim, args.second, comm)
        b_k = density_k(pm, pos2, nc ** 3, args.compensation)
        res = cross_power(pm, a_k, b_k)
    else:
        res = binned_power(pm, a_k)
        res.pop("edges")
    if len(res["k"]) == 0:
        raise InputError(f"no k bin below the Nyquist frequency holds a mode: --nmesh {nmesh} is too small")
    out = {key: np.asarray(v).tolist() for key, v in res.items()}
    out.update(field=args.field, second=args.second, nmesh=nmesh, box_size=box,
               shotnoise=box ** 3 / nc ** 3, compensation=args.compensation,
               a_final=attrs.get("a_final"), units={"k": "h/Mpc", "power": "(Mpc/h)^3"})
    if comm.rank == 0:
        from .io.atomic import write_json
        write_json(args.json, out)
        if args.plot:
            from .analysis.plots import plot_power
            from .cosmology import KEYS, Cosmology
            from .growth import growth_for
            cosmo = Cosmology.from_dict({k: attrs[k] for k in KEYS if k in attrs})
            kl = np.geomspace(pm.k_fundamental, pm.k_nyquist, 100)
            a = float(attrs.get("a_final", 1.0))
            plin = cosmo.linear_power(kl) * growth_for(cosmo).D1(a) ** 2
            plot_power(out, args.plot, title=f"{os.path.basename(args.sim)}: nc={nc}, L={box:g} Mpc/h, "
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


def cmd_simulate(args):
    from .campaign_runner import prepare_directory, run_campaign
    from .config import load_config

    comm = _comm()
    holder = {}

    def load_and_prepare():
        cfg = holder["cfg"] = load_config(args.config, args.overrides, out=args.out)
        if comm.size % cfg.ranks_per_sim:
            raise InputError(f"config: ranks_per_sim {cfg.ranks_per_sim} does not divide the "
                             f"{comm.size} ranks")
        prepare_directory(cfg)

    _collective_check(comm, load_and_prepare)
    cfg = comm.bcast(holder.get("cfg"), root=0)
    summary = run_campaign(cfg, comm, show_progress=not args.quiet)
    if comm.rank == 0:
        print(json.dumps(summary))
    return 0


def _add_verify(sub):
    p = sub.add_parser("verify", help="check a campaign directory: missing, corrupt, duplicate shards")
    p.add_argument("dir", help="campaign output directory")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args):
    from .campaign_runner import verify_campaign
    if _comm().rank != 0:
        return 0
    report = verify_campaign(args.dir)
    print(json.dumps(report))
    if not report["ok"]:
        problems = [f"{k}: {report[k]}" for k in ("missing", "corrupt", "duplicates", "unrecorded") if report[k]]
        if report["present"] != report["n_sims"]:
            problems.append(f"{report['present']} of {report['n_sims']} simulations present")
        if not report["manifest"]:
            problems.append("no manifest.json (the run did not finish)")
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


def cmd_train(args):
    from .train.config import load_train_config
    from .train.loop import TrainingError, train

    cfg = load_train_config(args.config, args.overrides)
    try:
        summary, _, backend = train(cfg, resume=args.resume)
    except TrainingError as exc:
        print(f"cosmonet: training stopped: {exc}", file=sys.stderr, flush=True)
        return 3
    if backend.is_root:
        print(json.dumps(summary))
    backend.shutdown()
    return 0


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
    from .emulate import load_emulator
    from .io.atomic import check_writable_dir
    from .train.config import load_train_config
    from .train.loop import is_param_task

    if _comm().rank != 0:
        return 0
    cfg = load_train_config(args.config, args.overrides)
    check_writable_dir(args.json)
    model, norm, state = load_emulator(args.checkpoint)
    is_paramnet = state["model_signature"]["name"] == "paramnet"
    if is_paramnet != is_param_task(cfg):
        raise InputError(f"checkpoint {args.checkpoint} holds model {state['model_signature']['name']!r}, "
                         f"which does not fit the config's data.target {cfg['data']['target']!r}")
    if is_paramnet:
        return _evaluate_params(args, cfg, model, norm)
    from .analysis.d3m_eval import evaluate_d3m, plot_report
    from .io.atomic import write_json
    from .data import ShardDataset
    d = cfg["data"]
    test = ShardDataset(d["root"], split=d["test_split"], fields=("za/disp", "lpt2/disp", d["target"]))
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"     # issue 10: the network on the GPU when there is one
    report, slices = evaluate_d3m(model.to(device), test, norm["scale"], device=device, max_boxes=args.max_boxes)
    report["checkpoint"] = os.path.abspath(args.checkpoint)
    write_json(args.json, report)
    plots = plot_report(report, slices, args.plots) if args.plots else []
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


def cmd_emulate(args):
    import h5py

    from .emulate import emulate_box, load_emulator
    from .io.atomic import atomic_path, check_writable_dir

    if _comm().rank != 0:
        return 0
    check_writable_dir(args.out)
    model, norm, _ = load_emulator(args.checkpoint)
    try:
        with h5py.File(args.input, "r") as f:
            disp = f["za/disp"][...]
            attrs = dict(f.attrs)
    except (OSError, KeyError) as exc:
        raise InputError(f"{args.input}: cannot read za/disp ({exc})") from None
    t0 = time.perf_counter()
    pred = emulate_box(model, disp, norm["scale"], tile=args.tile, margin=args.margin)
    seconds = time.perf_counter() - t0
    with atomic_path(args.out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            f.attrs["checkpoint"] = os.path.abspath(args.checkpoint)
            ds = f.create_dataset("emulated/disp", data=pred)
            ds.attrs["units"] = "Mpc/h"
    print(json.dumps({"out": args.out, "n": int(disp.shape[-1]), "seconds": round(seconds, 3),
                      "tile": args.tile}))
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
    from .probes.command import add_probe_parser
    add_probe_parser(sub)
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except InputError as exc:
        try:
            rank = _comm().rank
        except Exception:  # MPI unavailable: report anyway
            rank = 0
        if rank == 0:
            msg = str(exc).splitlines()[0] if str(exc) else "invalid input"
            print(f"cosmonet: error: {msg}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
