"""Cosmology probe: does the emulator generalise to cosmologies it was not trained on?

The seed talk feeds the network ZA fields of other cosmologies (A_s x 0.2, 0.8, 1.2, 1.8)
and compares its prediction and 2LPT with the simulation: density T(k), r(k) and the
error. Here the test pairs of a campaign (``configs/d3m_cosmo_test.yaml``; fields
za/disp, lpt2/disp, fastpm/disp) are grouped by cosmology (their params table) and each
group is measured by :func:`cosmonet.analysis.d3m_eval.evaluate_d3m`: displacement error
<|psi_x - psi_fastpm|> / <|psi_fastpm|>, and T(k) = P_x / P_fastpm, r(k) = P_x,fastpm /
sqrt(P_x P_fastpm) of the displacement and of the CIC density, for x = model, lpt2, za.
A fixed linear filter W(k) as "model" gives T_model / T_za = W(k)^2 per bin (power ratio;
tested with a W constant on each bin).

Groups are labelled against the training cosmology: a group differing only in sigma8 (or
A_s) is "A_s x s" with s = (sigma8 / sigma8_train)^2 (or A_s / A_s_train), otherwise the
differing parameters are listed, e.g. "Omega_m = 0.25".
"""
import math

import numpy as np
import torch

from ..analysis.d3m_eval import evaluate_d3m
from ..errors import InputError
from ..campaign.store import PARAM_COLUMNS
from .planewave import UNITS, say

FIELDS = ("za/disp", "lpt2/disp", "fastpm/disp")


class PredictModule(torch.nn.Module):
    """A ``predict`` callable (Mpc/h -> Mpc/h, numpy) as the torch module evaluate_d3m calls
    (with ``scale`` = 1: its input is already in Mpc/h)."""

    def __init__(self, predict):
        super().__init__()
        self.predict = predict

    def forward(self, x):
        out = [np.asarray(self.predict(xi.cpu().numpy().astype(np.float64)), dtype=np.float32) for xi in x]
        return torch.from_numpy(np.stack(out))


def _key(info):
    return tuple(None if info.get(c) is None else round(float(info[c]), 10) for c in PARAM_COLUMNS)


def cosmology_label(params, reference):
    """Short label of ``params`` (PARAM_COLUMNS dict) relative to ``reference`` (same kind)."""
    if reference is None:
        return ", ".join(f"{c} = {params[c]:.4g}" for c in PARAM_COLUMNS if params.get(c) is not None)
    diff = [c for c in PARAM_COLUMNS
            if params.get(c) is not None and reference.get(c) is not None
            and not math.isclose(params[c], reference[c], rel_tol=1e-6)]
    diff += [c for c in PARAM_COLUMNS if (params.get(c) is None) != (reference.get(c) is None)]
    if not diff:
        return "training cosmology"
    if diff == ["sigma8"]:
        return f"A_s x {(params['sigma8'] / reference['sigma8']) ** 2:.3g}"
    if diff == ["A_s"]:
        return f"A_s x {params['A_s'] / reference['A_s']:.3g}"
    return ", ".join(f"{c} = {params[c]:.4g}" if params.get(c) is not None else f"{c} unset" for c in diff)


def group_by_cosmology(dataset):
    """{key: [campaign indices]} of a ShardDataset, in order of first appearance, and
    {key: params dict}."""
    groups, params = {}, {}
    for i in range(len(dataset)):
        info = dataset.sample_info(i)
        key = _key(info)
        groups.setdefault(key, []).append(info["index"])
        params.setdefault(key, {c: info.get(c) for c in PARAM_COLUMNS})
    return groups, params


def open_campaign(root, split=None, what="--data"):
    """ShardDataset of ``root`` with the probe's fields; one-line InputError otherwise."""
    from ..data import ShardDataset
    try:
        return ShardDataset(root, split=split, fields=FIELDS)
    except InputError as exc:
        raise InputError(f"{what} {root}: {exc} (the cosmology probe needs {', '.join(FIELDS)})") from None


def probe_cosmology(predict, root, setup=None, split=None, max_boxes=None, reference=None, progress=None):
    """Cosmology probe report (JSON-able) on campaign ``root`` (its ``split``, or every box).

    ``setup``: the training ProbeSetup; the campaign must have its box and particle grid.
    ``reference``: optional (root, split) of pairs of the training cosmology (measured too,
    as a baseline, labelled "training cosmology"). ``max_boxes``: per cosmology.
    """
    data = open_campaign(root, split)
    if setup is not None and (int(data.nc) != setup.nc or not math.isclose(float(data.box_size), setup.box)):
        raise InputError(f"--data {root}: boxes of {data.nc}^3 particles in {data.box_size:g} Mpc/h, but the "
                         f"model was trained on {setup.nc}^3 in {setup.box:g} Mpc/h")
    groups, params = group_by_cosmology(data)
    ref_params = None
    ref_data = None
    if reference is not None:
        ref_data = open_campaign(reference[0], reference[1], what="training campaign")
        rg, rp = group_by_cosmology(ref_data)
        ref_params = next(iter(rp.values()))
    elif setup is not None:
        c = setup.cosmology
        ref_params = {col: getattr(c, col) for col in PARAM_COLUMNS}
    model = PredictModule(predict)
    from ..data import ShardDataset
    jobs = []
    if ref_data is not None:
        jobs.append(("training cosmology", ref_params, ref_data))
    for key, idx in groups.items():
        sub = ShardDataset(root, indices=idx, fields=FIELDS)
        jobs.append((cosmology_label(params[key], ref_params), params[key], sub))
    out = []
    for n, (label, par, ds) in enumerate(jobs):
        count = len(ds) if max_boxes is None else min(len(ds), max_boxes)
        say(progress, f"cosmology {n + 1}/{len(jobs)}: {label} ({count} boxes)")
        rep, _ = evaluate_d3m(model, ds, 1.0, max_boxes=max_boxes)
        ds.close()
        out.append({"label": label, "params": par, "n_boxes": rep["n_boxes"],
                    "displacement_error": rep["displacement_error"], "k": rep["k"],
                    "density": rep["density"], "displacement": rep["displacement"],
                    "indices": rep["indices"], "shards": rep["shards"]})
    return {"probe": "cosmology", "units": {"k": UNITS["k"]}, "data": str(root), "split": split,
            "box_size": float(data.box_size), "nc": int(data.nc), "reference_params": ref_params,
            "cosmologies": out,
            "definitions": {"displacement_error": "<|psi_x - psi_fastpm|> / <|psi_fastpm|> over all particles",
                            "T": "P_x / P_fastpm (powers averaged over boxes)",
                            "scatter": "T_x_scatter, r_x_scatter: std (ddof 1) over a cosmology's boxes of each "
                                       "box's own T and r (two or more boxes)",
                            "r": "P_x,fastpm / sqrt(P_x P_fastpm)",
                            "density": "CIC density of particles at q + psi on the nc^3 mesh, window divided out"}}
