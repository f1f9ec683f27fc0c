#!/usr/bin/env python
"""Scaling model of the cosmonet PM engine: time per FastPM step and memory per node of
large runs, from throughputs measured on one rank and a stated network model.

Inputs (measured; see docs/benchmarks.md, "Scaling model"):

``--check FILE`` a ``bench_sim.py --scaling`` JSON (nc 128, 256^3 mesh, 1 and 2 ranks).
                 With ``--inputs nc128`` (default) its 1-rank run gives the FFT throughput
                 (GFLOP/s per rank, 5 N log2 N per r2c + c2r pair), the paint and readout
                 seconds per particle and the rest of a step; every time is scaled by the
                 run's CPU/wall ratio (the machine is shared). Its runs are then predicted
                 and compared with the measurement (the 1-rank one reproduces the inputs;
                 the 2-rank one is the test of the communication model on one node).
``--d3m FILE``   with ``--inputs d3m``: the same throughputs from a ``bench_sim.py`` d3m
                 JSON (64^3 mesh, in cache: optimistic for large meshes).
``--bytes-per-particle-1rank``, ``--bytes-per-particle-nrank``, ``--baseline-mib``:
                 peak RSS per particle and per rank from ``bench_memory.py``.

Model of one step (one force evaluation) on P ranks (``--ranks-per-node`` R per node,
P = R x nodes), force mesh M^3 (M = boost x nc), Np = nc^3 particles:

* FFT compute: 5 M^3 log2(M^3) flops per r2c + c2r pair / (P x per-rank GFLOP/s);
* FFT transposes: each of the 2 transforms moves the whole complex mesh
  (8 M^2 (M/2 + 1) bytes) through an all-to-all; a node sends R/P of it, a fraction
  (1 - 1/nodes) of which leaves the node: bytes / node bandwidth + latency x (P - 1) messages;
* paint and readout: Np / P x the measured seconds per particle;
* halos: 1 plane (paint) + 5 planes (readout) of 4 M^2 bytes per rank, 6 messages;
* particle routing: a fraction f = min(1, E|dx| / (L / P)) of the particles lies outside
  its lattice slab's mesh slab (E|dx|: mean 1-D displacement, ``--mean-displacement``),
  each sending 16 bytes (float32 displacement and int32 lattice index) and receiving 12
  bytes of float32 force;
  2 messages per neighbour;
* kick, drift, Python: ``--other-fraction`` of the compute time (measured on 1 rank).

Slab decomposition: P may not exceed nc, the planes of the particle lattice (the LPT mesh,
nc^3, is split in x-slabs like the force mesh, M = boost nc >= nc, and every rank needs a
plane of each: run-sim refuses more ranks); larger P is reported as infeasible, and the
best feasible rank count per node is used instead.

Memory per node: R x (baseline + bytes/particle x Np / P); the per-particle figure on
several ranks is the measured 2-rank one (our slab FFT: one real and one complex buffer).

Prints one JSON document. No MPI, no measurement: pure arithmetic on the inputs.
"""
import argparse
import json
import math
import sys

import numpy as np


def load(path):
    with open(path) as fh:
        return json.load(fh)


def d3m_inputs(doc):
    """Per-rank throughputs from a bench_sim d3m JSON (1 rank; 64^3 mesh, in cache)."""
    if doc.get("case") != "d3m" or doc["params"]["ranks"] != 1:
        raise SystemExit("scaling_model: --d3m needs a 1-rank bench_sim.py d3m JSON")
    n_p = doc["params"]["nc"] ** 3
    split, calls = doc["split_seconds_component_medians"], doc["calls_per_sim"]
    compute = split["fft_force_mesh"] + split["paint"] + split["readout"]
    return {
        "from": "d3m (nc 32, 64^3 mesh, 1 rank)",
        "fft_gflops_per_rank": doc["fft_pair_force_mesh"]["gflops"],
        "paint_s_per_particle": split["paint"] / calls["paint"] / n_p,
        "readout_s_per_particle": split["readout"] / calls["readout"] / n_p,
        # what a step costs besides FFT, paint, readout (kick, drift, Python), relative to them
        "other_fraction": split["rest"] / compute,
        "load_average": doc["machine"]["load_average_1_5_15min"],
    }


def nc128_inputs(doc):
    """Per-rank throughputs from the 1-rank run of a bench_sim --scaling JSON (256^3
    mesh: out of cache, the regime of large runs). Times are scaled by the run's CPU/wall
    ratio (getrusage user + sys over wall), so that a loaded machine does not count."""
    run = doc["runs"]["1"]
    inner = run["runs"][0]
    n_p = run["params"]["nc"] ** 3
    t, calls = inner["timers_max_over_ranks"], inner["timers_calls"]
    ru = run["rusage_per_run"]
    busy = min(1.0, (ru["user_s"] + ru["sys_s"]) / ru["wall_s"])
    steady = run["seconds_per_step_steady"]
    # force-mesh r2c + c2r pair as timed inside the simulation (the LPT mesh's FFTs removed)
    pair = (t["fft"] - t["fft@lpt"]) / ((calls["fft"] - calls["fft@lpt"]) / 2) * busy
    paint = t["paint"] / calls["paint"] / n_p * busy
    readout = t["readout"] / calls["readout"] / n_p * busy
    compute = pair + (paint + readout) * n_p
    m = run["params"]["force_nmesh"] ** 3
    return {
        "from": f"nc128 1-rank run (nc {run['params']['nc']}, {run['params']['force_nmesh']}^3 mesh), "
                f"times x CPU/wall {busy:.2f}",
        "fft_gflops_per_rank": 5 * m * np.log2(m) / pair / 1e9,
        "paint_s_per_particle": paint,
        "readout_s_per_particle": readout,
        "other_fraction": max(0.0, steady * busy - compute) / compute,
        "cpu_over_wall": busy,
        "load_average": run["machine"]["load_average_1_5_15min"],
    }


def max_ranks(nc, boost):
    """Most ranks of the slab decomposition: one plane each of the particle lattice (the
    LPT mesh, nc^3) and of the force mesh (boost nc)^3."""
    return min(int(round(boost * nc)), nc)


def step_model(nc, boost, box, nodes, ranks_per_node, inp, net):
    """Seconds per step (one force) and its parts; bytes per node."""
    m = int(round(boost * nc))
    p = nodes * ranks_per_node
    n_p = nc ** 3
    mesh = m ** 3
    fft = 5 * mesh * math.log2(mesh) / (inp["fft_gflops_per_rank"] * 1e9) / p
    paint = n_p / p * inp["paint_s_per_particle"]
    readout = n_p / p * inp["readout_s_per_particle"]
    other = inp["other_fraction"] * (fft + paint + readout)
    complex_bytes = 8.0 * m * m * (m // 2 + 1)
    off_node = 1.0 - 1.0 / nodes if nodes > 1 else 1.0       # on one node: shared memory "network"
    bw = net["bandwidth_Bps"] if nodes > 1 else net["intranode_bandwidth_Bps"]
    lat = net["latency_s"] if nodes > 1 else net["intranode_latency_s"]
    if p == 1:
        transpose = 0.0
    else:
        transpose = 2 * (complex_bytes * ranks_per_node / p * off_node / bw + lat * (p - 1))
    # halos and particle routing go to the neighbouring slabs: on one node through shared
    # memory (all R ranks), between nodes only from the 2 edge ranks of each node
    edge = min(ranks_per_node, 2)
    bw_in, lat_in = net["intranode_bandwidth_Bps"], net["intranode_latency_s"]

    def neighbour_cost(nbytes, messages):
        t = nbytes * ranks_per_node / bw_in + messages * lat_in
        return t if nodes == 1 else t + nbytes * edge / net["bandwidth_Bps"] + messages * net["latency_s"]
    halo = 0.0 if p == 1 else neighbour_cost(6 * 4.0 * m * m, 6)
    frac = 0.0 if p == 1 else min(1.0, net["mean_displacement_mpc_h"] / (box / p))
    routing = 0.0 if p == 1 else neighbour_cost(frac * n_p / p * 28.0, 4)
    total = fft + paint + readout + other + transpose + halo + routing
    bpp = inp["bytes_per_particle_1rank"] if p == 1 else inp["bytes_per_particle_nrank"]
    mem_node = ranks_per_node * (inp["baseline_mib"] * 2 ** 20 + bpp * n_p / p)
    return {
        "nodes": nodes, "ranks": p, "force_nmesh": m, "feasible_slab": p <= max_ranks(nc, boost),
        "seconds_per_step": total,
        "parts_s": {"fft": fft, "paint": paint, "readout": readout, "other_compute": other,
                    "fft_transposes": transpose, "halos": halo, "particle_routing": routing},
        "communication_fraction": (transpose + halo + routing) / total,
        "routed_fraction": frac,
        "memory_per_node_gib": mem_node / 2 ** 30,
    }


def predict(nc, boost, nodes_list, ranks_per_node, inp, net, box_per_nc):
    rows = []
    planes = max_ranks(nc, boost)
    for nodes in nodes_list:
        rpn = ranks_per_node
        row = step_model(nc, boost, box_per_nc * nc, nodes, rpn, inp, net)
        if not row["feasible_slab"]:      # slabs: at most one lattice plane per rank; fewer per node
            rpn = max(1, planes // nodes)
            row = dict(step_model(nc, boost, box_per_nc * nc, nodes, rpn, inp, net),
                       note=f"{nodes * ranks_per_node} ranks exceed the {planes} slab planes of the "
                            f"particle lattice: {rpn} rank(s) per node used")
        row["ranks_per_node"] = rpn
        rows.append(row)
    return rows


def check(doc, inp, net):
    """Predicted vs measured steady step of a bench_sim --scaling JSON (one node)."""
    out = []
    for run in doc["runs"].values():
        params = run["params"]
        pred = step_model(params["nc"], params["boost"], params["box_mpc_h"], 1, run["ranks"], inp, net)
        ru = run["rusage_per_run"]
        busy = min(1.0, (ru["user_s"] + ru["sys_s"]) / ru["wall_s"])
        meas = run["seconds_per_step_steady"] * busy
        out.append({"ranks": run["ranks"], "nc": params["nc"], "force_nmesh": params["force_nmesh"],
                    "predicted_s_per_step": pred["seconds_per_step"],
                    "measured_s_per_step_steady_wall": run["seconds_per_step_steady"],
                    "cpu_over_wall": busy, "measured_s_per_step_steady_cpu_scaled": meas,
                    "ratio_measured_over_predicted": meas / pred["seconds_per_step"],
                    "predicted_parts_s": pred["parts_s"],
                    "measured_fft_pair_s": run["fft_pair_seconds"],
                    "predicted_fft_pair_s": pred["parts_s"]["fft"] + pred["parts_s"]["fft_transposes"],
                    "load_average": run["machine"]["load_average_1_5_15min"]})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d3m", help="bench_sim.py d3m JSON (1 rank): the throughput inputs")
    p.add_argument("--check", help="bench_sim.py --scaling JSON to compare the model with")
    p.add_argument("--inputs", choices=("d3m", "nc128"), default="nc128",
                   help="throughputs from the d3m run (64^3, in cache) or from the 1-rank run of "
                        "--check (256^3, out of cache; default: large runs are out of cache)")
    p.add_argument("--bytes-per-particle-1rank", type=float, default=110.0,
                   help="peak RSS per particle, 1 rank, run-sim writing its fields as made "
                        "(bench_memory.py --write; default 110, measured 2026-12-04; 173 with the fields kept)")
    p.add_argument("--bytes-per-particle-nrank", type=float, default=115.0,
                   help="peak RSS per particle per rank on >1 rank (default 115, run-sim on 2 ranks "
                        "at nc 256; 180 with the fields kept)")
    p.add_argument("--baseline-mib", type=float, default=210.0, help="RSS per rank after imports (default 210)")
    p.add_argument("--bandwidth-gbs", type=float, default=12.5,
                   help="injection bandwidth per node, GB/s (default 12.5: 100 Gb/s InfiniBand)")
    p.add_argument("--latency-us", type=float, default=2.0, help="inter-node message latency, us (default 2)")
    p.add_argument("--intranode-bandwidth-gbs", type=float, default=20.0,
                   help="aggregate shared-memory bandwidth of a node for MPI copies, GB/s (default 20)")
    p.add_argument("--intranode-latency-us", type=float, default=1.0, help="(default 1)")
    p.add_argument("--mean-displacement", type=float, default=5.0,
                   help="mean |1-D displacement| of the particles, Mpc/h (default 5: LCDM at z = 0)")
    p.add_argument("--ranks-per-node", type=int, default=64, help="MPI ranks (cores) per node (default 64)")
    p.add_argument("--nodes", default="8,16,32,64,128,256,512")
    p.add_argument("--nc", default="1024,2048", help="particles per side of the predicted runs")
    p.add_argument("--boost", type=float, default=2.0)
    p.add_argument("--box-per-nc", type=float, default=4.0, help="box side / nc, Mpc/h (default 4, as D3M)")
    args = p.parse_args(argv)
    if (args.inputs == "d3m" and not args.d3m) or (args.inputs == "nc128" and not args.check):
        p.error("--inputs d3m needs --d3m FILE, --inputs nc128 needs --check FILE")
    inp = d3m_inputs(load(args.d3m)) if args.inputs == "d3m" else nc128_inputs(load(args.check))
    inp.update(bytes_per_particle_1rank=args.bytes_per_particle_1rank,
               bytes_per_particle_nrank=args.bytes_per_particle_nrank, baseline_mib=args.baseline_mib)
    net = {"bandwidth_Bps": args.bandwidth_gbs * 1e9, "latency_s": args.latency_us * 1e-6,
           "intranode_bandwidth_Bps": args.intranode_bandwidth_gbs * 1e9,
           "intranode_latency_s": args.intranode_latency_us * 1e-6,
           "mean_displacement_mpc_h": args.mean_displacement}
    nodes = [int(x) for x in args.nodes.split(",")]
    result = {"benchmark": "cosmonet benchmarks/scaling_model.py", "inputs": inp, "network": net,
              "ranks_per_node": args.ranks_per_node, "boost": args.boost, "box_per_nc_mpc_h": args.box_per_nc,
              "predictions": {f"nc{nc}": predict(nc, args.boost, nodes, args.ranks_per_node, inp, net,
                                                 args.box_per_nc)
                              for nc in (int(x) for x in args.nc.split(","))}}
    if args.check:
        result["check_against_measurement"] = check(load(args.check), inp, net)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
