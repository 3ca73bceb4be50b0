"""The sensitivity command: per-layer scans and allocations written to a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import DATA_DIR, REPO


def test_sensitivity_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from admmcompress.cli import main

    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sens"
    args = ["sensitivity", str(tmp_path / "c.yaml"), "--out", str(out), "--data-dir", str(DATA_DIR)]
    assert main([*args, "--layers", "fc*", "--samples", "300", "--rate", "20"]) == 0
    result = json.loads((out / "sensitivity.json").read_text())
    assert set(result["scan"]) == {"fc1", "fc2"}
    for points in result["scan"].values():
        counts = [p["count"] for p in points]
        assert counts == sorted(counts, reverse=True) and counts[-1] == 8
    sizes = {"fc1": 400_000, "fc2": 5_000}
    for method in ("sensitivity", "global_magnitude", "lamp", "uniform"):
        split = result["allocations"][method]
        assert sum(split.values()) <= sum(sizes.values()) / 20
    assert (out / "sensitivity.png").is_file()
    assert "fewest kept" in (out / "sensitivity.md").read_text()
    assert "fewest kept" in capsys.readouterr().out

    cfg["pretrain"]["epochs"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main([*args, "--layers", "fc2"]) == 2
    assert "needs a trained model" in capsys.readouterr().err
