"""scripts/ship_pretrained.py: a network trained in stages (train.init_from) is shipped with
every stage and the totals over them, not only its last run."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from ship_pretrained import STAGE_KEYS, training_stages  # noqa: E402


def _stage(steps, samples, wall, core_h, out):
    return {"steps": steps, "samples_seen": samples, "wall_seconds": wall, "core_hours": core_h,
            "passes_over_pairs": samples / 9872, "hardware": "cpu", "lr": 1e-3, "seed": 1, "time_budget": wall,
            "init_from": "d3m_cpu", "out": out}


def test_one_run_card_becomes_the_first_stage_and_totals_add_up():
    with open(os.path.join(ROOT, "pretrained", "d3m_cpu", "card.json")) as fh:
        prior = json.load(fh)
    first = dict(prior["training"])
    stages, totals = training_stages(prior, _stage(4000, 16000, 6000.0, 1.5, "runs/more"))
    assert len(stages) == len(prior.get("stages") or [None]) + 1
    if not prior.get("stages"):
        assert stages[0]["steps"] == first["steps"] and stages[0]["lr"] == prior["config"]["train"]["lr"]
    for key in STAGE_KEYS:
        assert abs(totals[key] - sum(s[key] for s in stages)) < 1e-3
    assert totals["steps"] == sum(s["steps"] for s in stages) and isinstance(totals["steps"], int)


def test_a_card_with_stages_keeps_them_in_order():
    prior = {"stages": [_stage(10, 40, 5.0, 0.1, "a"), _stage(20, 80, 7.0, 0.2, "b")]}
    stages, totals = training_stages(prior, _stage(30, 120, 9.0, 0.3, "c"))
    assert [s["out"] for s in stages] == ["a", "b", "c"]
    assert (totals["steps"], totals["samples_seen"], totals["wall_seconds"]) == (60, 240, 21.0)


def test_without_a_prior_card_there_is_one_stage():
    stages, totals = training_stages(None, _stage(30, 120, 9.0, 0.3, "c"))
    assert len(stages) == 1 and totals["core_hours"] == 0.3
