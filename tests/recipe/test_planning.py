"""What each step of a progressive run compresses: carried rules, targets, step configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from admmcompress.constraints import (
    FixedSupport,
    PrunedQuantized,
    make_constraint,
)
from admmcompress.models import create_model
from admmcompress.recipe.planning import plan_step
from admmcompress.recipe.rules import RuleConfig
from admmcompress.recipe.schema import ConfigError, apply_override, validate_config
from helpers import TWO_STEPS, run


def test_merge_rule_keeps_what_a_step_does_not_change() -> None:
    pruned = RuleConfig(prune="irregular", keep=0.1)
    quant = RuleConfig(quantize="ternary")
    both = quant.merged_over(pruned)
    assert both.prune == "irregular" and both.keep == 0.1 and both.quantize.kind == "ternary"
    again = RuleConfig(prune="irregular", count=7).merged_over(both)
    assert again.count == 7 and again.keep is None and again.quantize.kind == "ternary"
    assert isinstance(
        FixedSupport(
            PrunedQuantized(make_constraint("irregular", count=3), make_constraint("binary")),
            torch.ones(2, 3, dtype=torch.bool),
        ).inner,
        PrunedQuantized,
    )


@pytest.mark.parametrize("allocation", ["global_magnitude", "lamp"])
def test_plan_step_meets_the_target_over_all_pruned_layers(allocation: str) -> None:
    model = create_model("lenet5")
    cfg = validate_config(
        {
            "model": "lenet5",
            "steps": [
                {
                    "rules": {"fc2": {"prune": "irregular", "count": 100}},
                    "target": {"rate": 200, "allocation": allocation},
                }
            ],
        }
    )
    plan = plan_step(model, cfg.step_list()[0], {}, {})
    total = sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    kept = sum(r.count for r in plan.rules.values())
    assert plan.rules["fc2"].count == 100
    assert total / kept >= 200 and total / (kept + 4) < 200
    bad = validate_config(
        {
            "model": "lenet5",
            "steps": [
                {
                    "rules": {"fc2": {"prune": "irregular", "count": 4000}},
                    "target": {"rate": 200},
                }
            ],
        }
    )
    with pytest.raises(ConfigError, match="already keep"):
        plan_step(model, bad.step_list()[0], {}, {})


# ------------------------------------------------------------------------------ config


def test_steps_take_top_level_defaults_key_by_key() -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    raw["steps"][1]["admm"] = {"optimizer": {"lr": 0.0005}}
    apply_override(raw, "steps.1.admm.rho=0.02")
    cfg = validate_config(raw)
    s1, s2 = cfg.step_list()
    assert s1.name == "step1" and s2.name == "squeeze"
    assert s1.admm.rho == 0.01 and s2.admm.rho == 0.02
    assert s2.admm.optimizer.name == "adam" and s2.admm.optimizer.lr == 0.0005
    assert s2.admm.epochs == 2 and s2.retrain.epochs == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"rules": {"fc1": {"prune": "irregular", "keep": 0.1}}}, "inside each step"),
        ({"steps": []}, "'steps' is empty"),
        ({"steps": [{"admm": {"epochs": 3}}]}, "a step needs 'rules'"),
        ({"steps": [{"target": {"rate": 1}}]}, "rate must be above 1"),
        ({"steps": [{"target": {"rate": 10, "allocation": "magic"}}]}, "steps.0.target"),
    ],
)
def test_bad_steps_are_named(change: dict, needle: str) -> None:
    raw = {**json.loads(json.dumps(TWO_STEPS)), **change}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert needle in str(info.value)


def test_set_names_a_bad_step_index() -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    with pytest.raises(ConfigError, match=r"index it with 0\.\.1"):
        apply_override(raw, "steps.2.admm.rho=0.1")


def test_unknown_layer_in_a_later_step_fails_before_training(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(TWO_STEPS))
    raw["steps"][1]["rules"] = {"fc9": {"quantize": "binary"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert run(tmp_path / "c.yaml", tmp_path / "out") == 2
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
