"""``cosmonet probe KIND --checkpoint CKPT --out DIR``: the probes on a trained checkpoint.

Writes ``DIR/KIND.json`` and ``DIR/KIND.png`` (the cosmology probe: ``cosmology_error.png``,
``cosmology_T.png``, ``cosmology_r.png``), prints one JSON line with the headline numbers,
and progress lines on stderr. The plane waves live on the training box and particle grid
and FastPM runs use the training campaign's settings, read from its ``campaign.yaml``
(the checkpoint's ``data.root``, or ``--train-data``). A k that is not a mode of the box
is replaced by the nearest mode, named on stderr and in the JSON; ``--exact`` refuses it.
Bad input is one line, ``cosmonet: error: ...``, exit 2.
"""
import json
import math
import os
import re
import sys
import time

from ..errors import InputError

KINDS = ("planewave", "rotation", "phase", "cosmology", "amplitude")
#: registered models that map a 3-channel displacement to a 3-channel displacement
DISPLACEMENT_MODELS = ("unet",)


def _floats(text, what):
    try:
        return [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers (got {text!r})") from None


_ANGLE = re.compile(r"^\s*([0-9.]*)\s*\*?\s*pi\s*(?:/\s*([0-9.]+))?\s*$")


def parse_angles(text):
    """'0,pi/6,pi/3,2pi/3,0.5' -> radians."""
    out = []
    for tok in str(text).split(","):
        if not tok.strip():
            continue
        m = _ANGLE.match(tok.lower())
        try:
            if m:
                val = (float(m.group(1)) if m.group(1) else 1.0) * math.pi / (float(m.group(2)) if m.group(2) else 1.0)
            else:
                val = float(tok)
        except (ValueError, ZeroDivisionError):
            val = float("nan")
        if not math.isfinite(val):
            raise InputError(f"--phases: cannot read {tok.strip()!r} as an angle (use numbers in rad or pi/6, 2pi/3)")
        out.append(val)
    return out


def add_probe_parser(sub):
    p = sub.add_parser("probe", help="probe a trained emulator: plane wave, rotation, phase, cosmology, amplitude")
    p.add_argument("kind", choices=KINDS, help="which probe (see docs/probes.md)")
    p.add_argument("--checkpoint", required=True, help="D3M checkpoint (runs/x/checkpoints/step_*.pt)")
    p.add_argument("--out", required=True, help="output directory for KIND.json and the PNG figures")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", default="0.25",
                   help="wavenumber in h/Mpc: a number (along x) or kx,ky,kz (default 0.25); the nearest "
                        "mode of the box is used and named")
    g.add_argument("--mode", default=None, help="the mode as integers nx,ny,nz (multiples of k_f = 2 pi / L)")
    p.add_argument("--exact", action="store_true", help="refuse a --k that is not a mode of the box")
    p.add_argument("--amplitude", type=float, default=1.0, help="plane-wave amplitude A in Mpc/h (default 1)")
    p.add_argument("--phase", default="0", help="plane-wave phase in rad, e.g. 0.3 or pi/4 (default 0)")
    p.add_argument("--phases", default="0,pi/6,pi/3,pi/2,2pi/3,pi", help="phase probe: phases in rad "
                   "(default the seed's 0,pi/6,pi/3,pi/2,2pi/3,pi)")
    p.add_argument("--symmetries", default="axes", choices=["axes", "all", "shell"],
                   help="rotation probe: the 3 axes (default), all 48 cube symmetries, or every mode of the same |k|")
    p.add_argument("--amplitudes", default=None,
                   help="amplitude probe: amplitudes in Mpc/h (default A k = 0.05 ... 1.5)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="amplitude probe: model error against FastPM that counts as departing (default 0.1)")
    p.add_argument("--with-nbody", action="store_true",
                   help="also run FastPM on the plane-wave initial condition (planewave, rotation, phase; "
                        "the amplitude probe always does)")
    p.add_argument("--data", default=None, help="cosmology probe: campaign of test pairs (e.g. from "
                   "configs/d3m_cosmo_test.yaml)")
    p.add_argument("--split", default=None, help="cosmology probe: split of --data (default: every box)")
    p.add_argument("--max-boxes", type=int, default=None, help="cosmology probe: at most this many boxes per cosmology")
    p.add_argument("--no-reference", action="store_true",
                   help="cosmology probe: skip the training cosmology's test pairs as a baseline")
    p.add_argument("--train-data", default=None,
                   help="training campaign (default: the checkpoint's data.root): box, grid, cosmology, "
                        "FastPM settings")
    p.add_argument("--device", default="cpu", help="torch device for the network (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_probe)
    return p


def check_emulator(state, path):
    """InputError unless the checkpoint holds a displacement emulator (ZA -> N-body displacement)."""
    sig = state.get("model_signature") or {}
    name, kw = sig.get("name"), sig.get("kwargs") or {}
    cin, cout = kw.get("in_channels", "?"), kw.get("out_channels", "?")
    if name not in DISPLACEMENT_MODELS or cin != 3 or cout != 3:
        raise InputError(f"checkpoint {path} holds model {name!r} ({cin} -> {cout} channels), not a displacement "
                         f"emulator (a 3 -> 3 channel {'/'.join(DISPLACEMENT_MODELS)}, ZA -> N-body displacement)")
    data = (state.get("config") or {}).get("data") or {}
    inp, tgt = str(data.get("input", "za/disp")), str(data.get("target", "fastpm/disp"))
    if not (inp.endswith("/disp") and tgt.endswith("/disp")):
        raise InputError(f"checkpoint {path} was trained on {inp} -> {tgt}, not displacement -> displacement")
    scale = (state.get("normalization") or {}).get("scale")
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise InputError(f"checkpoint {path} has no displacement normalisation scale")


def _training_setup(args, state):
    """(setup, note, where): the training set-up from --train-data, else the checkpoint's own
    record of it (``training_setup``: every checkpoint since 0.2 and every shipped network),
    else the checkpoint's data.root campaign."""
    from .planewave import ProbeSetup
    recorded = state.get("training_setup")
    root = args.train_data or ((state.get("config") or {}).get("data") or {}).get("root")
    if not args.train_data and isinstance(recorded, dict):
        return ProbeSetup.from_record(recorded), None, root
    if not root:
        raise InputError(f"checkpoint {args.checkpoint} names no training campaign; pass --train-data DIR")
    if not os.path.exists(os.path.join(root, "campaign.yaml")):
        named = "--train-data" if args.train_data else "the checkpoint's data.root"
        raise InputError(f"training campaign {root} ({named}) has no campaign.yaml: the probes need its box, "
                         "particle grid and cosmology; pass --train-data DIR")
    setup, note = ProbeSetup.from_campaign(root)
    return setup, note, root


def _out_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--out {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {path} cannot be created ({exc.strerror})") from None
    from ..io.atomic import check_writable_dir
    check_writable_dir(os.path.join(path, "probe.json"))


def _resolve(args, setup):
    from .planewave import check_mode, resolve_mode
    if args.mode is not None:
        vals = _floats(args.mode, "--mode")
        if len(vals) != 3 or not all(v == int(v) for v in vals):
            raise InputError(f"--mode must be three integers nx,ny,nz (got {args.mode!r})")
        return check_mode([int(v) for v in vals], setup), None
    vals = _floats(args.k, "--k")
    if len(vals) not in (1, 3):
        raise InputError(f"--k must be one number (along x) or kx,ky,kz in h/Mpc (got {args.k!r})")
    return resolve_mode(vals if len(vals) == 3 else vals[0], setup, exact=args.exact)


def _headline(kind, report):
    if kind == "planewave":
        h = {"transfer": report["kept"]["transfer"], "off_mode_fraction": report["kept"]["off_mode_fraction"],
             "harmonic_ratios": [x["ratio_to_main"] for x in report["fields"]["model"]["displacement"]["harmonics"]]}
        if "model_vs_fastpm" in report:
            h["model_vs_fastpm"] = report["model_vs_fastpm"]
        return h
    if kind in ("rotation", "phase"):
        per_bin = [v for v in report["spread"]["displacement_per_bin"] if v is not None]
        h = {"spread_main_mode": report["spread"]["main_mode"], "spread_injected_bin": report["spread"]["injected_bin"],
             "spread_max_over_bins": max(per_bin) if per_bin else None}
        if "fastpm" in report:
            h["fastpm_spread_main_mode"] = report["fastpm"]["spread"]["main_mode"]
        return h
    if kind == "cosmology":
        return {c["label"]: {m: round(v, 4) for m, v in c["displacement_error"].items()} for c in report["cosmologies"]}
    return {"departs_at": report["departs_at"], "worse_than_za_from": report["worse_than_za_from"]}


def cmd_probe(args):
    from ..extras import MPI

    if MPI.COMM_WORLD.rank != 0:
        return 0
    kind = args.kind
    if kind == "cosmology" and not args.data:
        raise InputError("probe cosmology needs --data DIR: a campaign of test pairs with za/disp, lpt2/disp and "
                         "fastpm/disp (e.g. cosmonet simulate configs/d3m_cosmo_test.yaml)")
    if args.max_boxes is not None and args.max_boxes < 1:
        raise InputError(f"--max-boxes must be >= 1 (got {args.max_boxes})")
    if not (math.isfinite(args.amplitude) and args.amplitude > 0):
        raise InputError(f"--amplitude must be > 0 Mpc/h (got {args.amplitude})")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise InputError(f"--tolerance must be > 0 (got {args.tolerance})")
    phase = parse_angles(args.phase)
    if len(phase) != 1:
        raise InputError(f"--phase must be one angle (got {args.phase!r})")
    phase = phase[0]
    phases = parse_angles(args.phases)
    if kind == "phase" and len(phases) < 2:
        raise InputError(f"--phases needs at least two angles (got {args.phases!r})")
    amps = None if args.amplitudes is None else _floats(args.amplitudes, "--amplitudes")
    if amps is not None and (not amps or not all(math.isfinite(a) and a > 0 for a in amps)):
        raise InputError(f"--amplitudes must be numbers > 0 in Mpc/h (got {args.amplitudes!r})")
    from ..train.checkpoint import checkpoint_argument
    args.checkpoint = checkpoint_argument(args.checkpoint)
    from ..io.guard import refuse_overwrite, remove_on_failure
    names = [f"{kind}.json", f"{kind}.png"] + (["cosmology_error.png", "cosmology_T.png", "cosmology_r.png"]
                                              if kind == "cosmology" else [])
    refuse_overwrite({"--checkpoint": args.checkpoint, "--data": args.data, "--train-data": args.train_data},
                     {"--out": args.out, **{f"--out/{n}": os.path.join(args.out, n) for n in names}})
    from ..resources import check_device
    check_device(args.device)
    with remove_on_failure(args.out):
        _out_dir(args.out)
        return _run_probe(args, kind, phase, phases, amps)


def _run_probe(args, kind, phase, phases, amps):

    from ..emulate import emulate_box, load_emulator
    from ..hardware import set_torch_threads
    from ..train.checkpoint import load_checkpoint
    from .planewave import stderr_progress

    threads = set_torch_threads()
    state = load_checkpoint(args.checkpoint)
    check_emulator(state, args.checkpoint)
    setup, setup_note, train_root = _training_setup(args, state)
    from .planewave import check_amplitude
    if kind in ("planewave", "rotation", "phase"):
        check_amplitude(args.amplitude, setup, "--amplitude")
    for a in (amps or []) if kind == "amplitude" else []:
        check_amplitude(a, setup, "--amplitudes")
    notes = [n for n in (setup_note,) if n]
    progress = None if args.quiet else stderr_progress(f"probe {kind}")
    mode = None
    if kind != "cosmology":
        mode, note = _resolve(args, setup)
        if note:
            notes.append(note)
            print(f"cosmonet probe: note: {note}", file=sys.stderr, flush=True)
    model, norm, _ = load_emulator(args.checkpoint, device=args.device)
    scale = float(norm["scale"])


    def predict(disp):
        return emulate_box(model, disp, scale, device=args.device)

    t0 = time.perf_counter()
    from . import figures as plots
    if kind == "planewave":
        from .planewave import probe_planewave
        report = probe_planewave(predict, setup, mode, args.amplitude, phase, args.with_nbody, progress=progress)
        figures = plots.plot_planewave(report, os.path.join(args.out, "planewave.png"))
    elif kind == "rotation":
        from .rotation import probe_rotation
        report = probe_rotation(predict, setup, mode, args.amplitude, phase, args.symmetries, args.with_nbody,
                                progress=progress)
        labels = [str(tuple(r["mode"])) for r in report["orientations"]]
        title = f"rotation ({args.symmetries}, {len(labels)} orientations), |k| = {report['k']:.4g} h/Mpc"
        figures = plots.plot_family(report, os.path.join(args.out, "rotation.png"), labels, title)
    elif kind == "phase":
        from .phase import probe_phase
        report = probe_phase(predict, setup, mode, args.amplitude, phases, args.with_nbody,
                             progress=progress)
        labels = [f"phi = {p / math.pi:.3g} pi" for p in report["phases"]]
        figures = plots.plot_family(report, os.path.join(args.out, "phase.png"), labels,
                                    f"phase ({len(labels)} phases), k = {report['k']:.4g} h/Mpc")
    elif kind == "amplitude":
        from .amplitude import probe_amplitude
        report = probe_amplitude(predict, setup, mode, amps, phase, args.tolerance, progress=progress)
        figures = plots.plot_amplitude(report, os.path.join(args.out, "amplitude.png"))
    else:
        from .cosmology_probe import open_campaign, probe_cosmology
        reference = None
        if not args.no_reference:
            split = ((state.get("config") or {}).get("data") or {}).get("test_split") or "test"
            try:
                if not train_root:
                    raise InputError("the checkpoint names no training campaign")
                open_campaign(train_root, split, what="training campaign").close()
                reference = (train_root, split)
            except InputError as exc:
                notes.append(f"no training-cosmology baseline: {exc}")
        report = probe_cosmology(predict, args.data, setup, args.split, args.max_boxes, reference, progress)
        figures = plots.plot_cosmology(report, args.out)
    report.update(checkpoint=os.path.abspath(args.checkpoint), training_campaign=os.path.abspath(train_root) if train_root else None,
                  notes=notes, seconds=round(time.perf_counter() - t0, 2), precision="fp32",
                  trained_precision=state.get("precision"), torch_threads=threads)
    if "mode" in report:
        report["k_requested"] = args.k if args.mode is None else None
    from ..io.atomic import write_json
    path = os.path.join(args.out, f"{kind}.json")
    write_json(path, report)
    print(json.dumps({"json": path, "plots": figures, "seconds": report["seconds"], "precision": "fp32",
                      **_headline(kind, report)}))
    return 0
