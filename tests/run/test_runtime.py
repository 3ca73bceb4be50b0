"""bf16 autocast and channels_last: a run still meets its constraints exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from admmcompress.data.augment import random_shift
from helpers import REPO, run


@pytest.mark.parametrize(
    "runtime",
    [{"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16", "channels_last": True}],
)
def test_run_with_fast_gpu_options_keeps_exact_sparsity(tmp_path: Path, runtime: dict) -> None:
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False, **runtime}
    cfg["data"]["augment"] = {"shift": 1}
    cfg["admm"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "c.yaml", tmp_path / "run") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    expected = {"conv1": 250, "conv2": 2500, "fc1": 20000, "fc2": 250}  # tiny_test's keep
    for name, count in expected.items():
        assert int(torch.count_nonzero(weights[f"{name}.weight"])) == count, name
        assert weights[f"{name}.weight"].dtype == torch.float32  # bf16 is compute only
    assert report["final"]["test_accuracy"] > 0.5
    assert report["config"]["runtime"]["precision"] == runtime.get("precision", "fp32")


def test_shift_keeps_the_channels_last_layout() -> None:
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = random_shift(x.contiguous(), 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, ref)
