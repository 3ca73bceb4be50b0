"""Progressive runs end to end: masks only shrink, step reports, resume, init from pruned."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from admmcompress.formats import read_model_file
from admmcompress.models import create_model
from admmcompress.run.checkpoint import load_checkpoint
from helpers import DATA_DIR, TWO_STEPS, assert_same_run, cli, kill_when, run

# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    (tmp / "two.yaml").write_text(yaml.safe_dump(TWO_STEPS))
    assert run(tmp / "two.yaml", tmp / "run") == 0
    return tmp / "run"


def test_masks_only_shrink_between_steps(two_step_run: Path) -> None:
    first = read_model_file(two_step_run / "steps/step1.safetensors")
    second = read_model_file(two_step_run / "steps/squeeze.safetensors")
    final = read_model_file(two_step_run / "model.safetensors")
    w1 = dict(first.model.named_modules())
    w2 = dict(second.model.named_modules())
    for name, m2 in second.masks.items():
        m1 = first.masks[name]
        assert not (m2 & ~m1).any(), name  # nothing pruned in step 1 comes back
        n1 = int(torch.count_nonzero(w1[name].weight))
        n2 = int(torch.count_nonzero(w2[name].weight))
        assert n2 <= n1, name
        assert torch.equal(final.masks[name], m2)


def test_step_reports(two_step_run: Path) -> None:
    report = json.loads((two_step_run / "report.json").read_text())
    s1, s2 = report["steps"]
    assert (s1["name"], s2["name"]) == ("step1", "squeeze")
    assert s1["pruning_rate"] < s2["pruning_rate"]
    assert s2["pruning_rate"] >= 40.0
    assert report["pruning_rate"] == s2["pruning_rate"]
    assert s2["allocation"]["method"] == "sensitivity"
    counts = s2["allocation"]["counts"]
    assert s2["layers"]["conv2"]["nonzero"] <= counts["conv2"]
    assert s2["layers"]["fc1"]["nonzero"] <= counts["fc1"]
    # fc2: step 1's pruning kept, ternary added
    assert s2["layers"]["fc2"]["bits"] == 2
    assert s2["layers"]["fc2"]["nonzero"] <= s1["layers"]["fc2"]["nonzero"] == 500
    fc2 = load_file(str(two_step_run / "model.safetensors"))["fc2.weight"]
    assert torch.unique(fc2.abs()).numel() <= 2  # {0, a}
    assert {r["step"] for r in report["history"] if r["phase"] != "pretrain"} == {1, 2}
    md = (two_step_run / "report.md").read_text()
    assert "## Steps" in md and "squeeze" in md
    for name in ("steps.png", "sensitivity_squeeze.png"):
        assert (two_step_run / name).is_file(), name


@pytest.mark.slow
def test_resume_between_and_inside_steps(tmp_path: Path) -> None:
    """Kill at the end of step 1 and inside step 2: the result equals an uninterrupted run."""
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(TWO_STEPS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "reference"
    subprocess.run(cli("run", str(config), "--out", str(ref)), check=True, env=env)

    out = tmp_path / "killed"
    run_cmd = cli("run", str(config), "--out", str(out))
    kill_when(out, "step1 done", run_cmd)
    assert load_checkpoint(out / "checkpoint.pt")["step"] in (0, 1)
    kill_when(out, "squeeze admm 1/2", [*run_cmd, "--resume"])
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1
    subprocess.run([*run_cmd, "--resume"], check=True, env=env)

    ra, rb = assert_same_run(ref, out)
    assert [s["pruning_rate"] for s in ra["steps"]] == [s["pruning_rate"] for s in rb["steps"]]
    assert DATA_DIR.is_dir()


def test_a_step_without_admm_is_magnitude_pruning(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = create_model("lenet5")
    torch.save(model.state_dict(), tmp_path / "init.pt")
    cfg = {
        "model": "lenet5",
        "init": str(tmp_path / "init.pt"),
        "data": {"train_subset": 200, "test_subset": 200},
        "runtime": {"progress": False},
        "steps": [
            {
                "rules": {"fc1": {"prune": "irregular", "count": 1000}},
                "admm": {"epochs": 0},
                "retrain": {"epochs": 0},
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "c.yaml", tmp_path / "out") == 0
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    w = model.fc1.weight.detach()
    top = w.abs().flatten().topk(1000).indices
    expected = torch.zeros(w.numel())
    expected[top] = w.flatten()[top]
    assert torch.equal(saved["fc1.weight"], expected.view_as(w))
    assert torch.equal(saved["conv1.weight"], model.conv1.weight.detach())


def test_init_from_a_pruned_model_keeps_its_masks(two_step_run: Path, tmp_path: Path) -> None:
    """Quantize a pruned model in a new run: its pruning carries over from the file's masks."""
    cfg = {
        "model": "lenet5",
        "init": str(two_step_run / "model.safetensors"),
        "data": {"train_subset": 500, "test_subset": 500},
        "runtime": {"progress": False, "threads": 1},
        "steps": [
            {
                "rules": {"conv*": {"quantize": 3}},  # fc layers: masks only, no rule
                "admm": {"epochs": 1, "period": 1},
                "retrain": {"epochs": 1},
            }
        ],
    }
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "q.yaml", tmp_path / "q") == 0
    before = read_model_file(two_step_run / "model.safetensors")
    after = read_model_file(tmp_path / "q" / "model.safetensors")
    weights = dict(after.model.named_modules())
    for name, mask in before.masks.items():
        assert not (after.masks[name] & ~mask).any(), name
        assert torch.count_nonzero(weights[name].weight[~mask]) == 0, name
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv2"]["bits"] == 3 and rows["conv2"]["distinct_values"] <= 7
    assert "kept the pruning masks of 4 layers" in (tmp_path / "q" / "run.log").read_text()
