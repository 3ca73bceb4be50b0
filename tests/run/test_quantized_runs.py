"""End-to-end quantized runs on 2,000 real MNIST images: weights end exactly on their grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from admmcompress.cli import main
from admmcompress.constraints import check_on_grid
from admmcompress.formats.encoding import QuantSpec, plan_tensor
from admmcompress.recipe.schema import ConfigError, validate_config
from helpers import REPO

DATA_DIR = REPO / "data"
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _tiny(tmp_path: Path, rules: dict, **retrain: object) -> Path:
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["rules"] = rules
    cfg["retrain"].update(epochs=2, **retrain)
    cfg["runtime"] = {"progress": False}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, out: Path) -> dict:
    assert main(["run", str(config), "--out", str(out), "--data-dir", str(DATA_DIR)]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("method", ["ste", "freeze"])
def test_binary_run_has_two_values_per_layer(tmp_path: Path, method: str) -> None:
    config = _tiny(
        tmp_path,
        {"type:Conv2d": {"quantize": "binary"}, "fc*": {"quantize": "binary"}},
        quant_method=method,
    )
    report = _run(config, tmp_path / "run")
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    for name in LAYERS:
        w = weights[f"{name}.weight"]
        values = torch.unique(w)
        assert values.numel() == 2, (name, values)
        assert torch.equal(values, torch.stack([-values[1], values[1]]))  # {-a, +a}
        row = next(r for r in report["layers"] if r["name"] == name)
        assert row["bits"] == 1 and row["distinct_values"] == 2 and row["quantized"]
        plan = plan_tensor(w, QuantSpec(1), row["scales"])
        assert row["storage"]["bytes"] == plan.bytes
        # one bit a weight, no index, one scale (fp32, or fp64 if needed for an exact rebuild)
        assert row["storage"]["encoding"] == "dense" and row["storage"]["index_bytes"] == 0
        assert row["storage"]["value_bytes"] == (w.numel() + 7) // 8
        assert row["storage"]["scale_bytes"] in (4, 8)
    assert report["pruning_rate"] == 1.0
    stored = sum(r["storage"]["bytes"] for r in report["layers"])
    assert report["storage_rate"] == pytest.approx(430500 * 4 / stored)
    # dense layers need no index, so leaving the index out changes nothing here
    assert report["storage_rate_without_index"] == pytest.approx(430500 * 4 / stored)


def test_pruned_ternary_zeros_match_mask(tmp_path: Path) -> None:
    rules = {
        "conv*": {"prune": "irregular", "keep": 0.3, "quantize": {"kind": "ternary"}},
        "fc*": {
            "prune": "irregular",
            "keep": 0.05,
            "quantize": {"kind": "ternary", "per_channel": True},
        },
    }
    report = _run(_tiny(tmp_path, rules), tmp_path / "run")
    tensors = load_file(str(tmp_path / "run" / "model.safetensors"))
    budgets = {"conv1": 150, "conv2": 7500, "fc1": 20000, "fc2": 250}
    for name in LAYERS:
        w = tensors[f"{name}.weight"]
        mask = tensors[f"__mask__.{name}"]
        assert int(mask.sum()) == budgets[name]
        assert torch.count_nonzero(w[~mask]) == 0  # every pruned weight is zero
        assert int(torch.count_nonzero(w)) <= budgets[name]
        per_channel = name.startswith("fc")
        assert check_on_grid(w, "ternary", per_channel=per_channel, mask=mask) is None
        rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
        assert max(torch.unique(r).numel() for r in rows) <= 3
    assert report["pruning_rate"] >= 430500 / sum(budgets.values())


@pytest.mark.parametrize(
    ("quantize", "expected"),
    [
        ({"kind": "uniform", "bits": 1}, "integer in 2..8, got 1 (1 bit is the binary kind)"),
        ({"kind": "uniform", "bits": 9}, "integer in 2..8, got 9"),
        ({"kind": "uniform"}, "uniform needs bits"),
        ({"kind": "uniform", "bits": "x"}, "bits"),
        ({"kind": "binary", "bits": 3}, "unknown parameter 'bits'; binary takes per_channel"),
        ({"kind": "ternary", "bits": 4}, "unknown parameter 'bits'; ternary takes per_channel"),
        ({"kind": "octal"}, "allowed: binary, ternary, uniform"),
        ({"kind": "binary", "per_chanel": True}, "unknown parameter 'per_chanel'"),
    ],
)
def test_bad_quantize_rules_are_explained(quantize: dict, expected: str) -> None:
    raw = {"model": "lenet5", "rules": {"fc1": {"quantize": quantize}}}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    msg = str(info.value)
    assert "rules.fc1.quantize" in msg and expected in msg, msg


def test_quantize_shorthands() -> None:
    cfg = validate_config(
        {"model": "lenet5", "rules": {"fc1": {"quantize": "binary"}, "fc2": {"quantize": 4}}}
    )
    assert cfg.rules["fc1"].quantize.kind == "binary"
    assert cfg.rules["fc2"].quantize.kind == "uniform" and cfg.rules["fc2"].quantize.bits == 4
