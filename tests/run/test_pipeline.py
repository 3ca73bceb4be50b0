"""End-to-end runs on 2,000 real MNIST images: exact sparsity, report agreement, resume, NaN."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from admmcompress.cli import main
from admmcompress.formats import read_model_file
from admmcompress.run.checkpoint import load_checkpoint
from helpers import DATA_DIR, REPO, assert_same_run, cli, kill_when, run

EXPECTED_NONZERO = {"conv1": 250, "conv2": 2500, "fc1": 20000, "fc2": 250}  # tiny_test.yaml rules


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    assert run(tmp / "tiny.yaml", out) == 0
    return out


def test_run_folder_contents(tiny_run: Path) -> None:
    for name in (
        "report.json",
        "report.md",
        "model.safetensors",
        "checkpoint.pt",
        "config.yaml",
        "run.log",
        "training_curves.png",
        "layer_density.png",
        "admm_residuals.png",
    ):
        assert (tiny_run / name).is_file(), name
    assert "done: pruning rate" in (tiny_run / "run.log").read_text()


def test_exact_nonzero_counts_after_retraining(tiny_run: Path) -> None:
    saved = read_model_file(tiny_run / "model.safetensors")
    modules = dict(saved.model.named_modules())
    for name, expected in EXPECTED_NONZERO.items():
        w = modules[name].weight
        assert int(torch.count_nonzero(w)) == expected, name
        mask = saved.masks[name]
        assert int(mask.sum()) == expected
        assert torch.count_nonzero(w[~mask]) == 0


def test_report_agrees_with_saved_weights(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    tensors = load_file(str(tiny_run / "model.safetensors"))
    total = nonzero = 0
    for row in report["layers"]:
        w = tensors[f"{row['name']}.weight"]
        assert row["shape"] == list(w.shape)
        assert row["params"] == w.numel()
        assert row["nonzero"] == int(torch.count_nonzero(w))
        assert row["bits"] == 32
        total += row["params"]
        nonzero += row["nonzero"]
    assert report["pruning_rate"] == pytest.approx(total / nonzero)
    assert report["pruning_rate"] == pytest.approx(430500 / sum(EXPECTED_NONZERO.values()))
    assert 0.0 <= report["final"]["test_accuracy"] <= 1.0
    assert set(report["phases"]) == {"pretrain", "admm", "harden", "retrain"}
    for phase in report["phases"].values():
        assert {"test_accuracy", "test_loss", "seconds"} <= set(phase)
    assert report["seed"] == 0
    assert report["versions"]["torch"] == torch.__version__
    assert report["config"]["model"]["name"] == "lenet5"
    assert len(report["admm_residuals"]) == 2  # 2 ADMM epochs, period 1
    # the final accuracy is the saved model's accuracy
    assert main(["eval", str(tiny_run), "--data-dir", str(DATA_DIR)]) == 0


def test_eval_matches_report(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # tiny_test evaluates on a 1,000-image subset; eval uses the full test set, so only check
    # that eval runs, verifies the masks and prints the rate.
    assert main(["eval", str(tiny_run / "model.safetensors"), "--data-dir", str(DATA_DIR)]) == 0
    out = capsys.readouterr().out
    assert "masks       verified for 4 pruned layers" in out
    assert "18.7x" in out


def test_report_command_rebuilds(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_run / "report.md").unlink()
    assert main(["report", str(tiny_run)]) == 0
    assert (tiny_run / "report.md").is_file()
    assert "pruning rate (pruned layers) | 18.7x" in capsys.readouterr().out


def test_finished_run_folder_is_not_overwritten(tiny_run: Path, tiny_config: Path) -> None:
    before = (tiny_run / "model.safetensors").read_bytes()
    assert run(tiny_config, tiny_run) == 2
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan"
    code = run(
        tiny_config,
        out,
        "--set",
        "admm.optimizer={name: sgd, lr: 1.0e+12}",
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "training stopped" in err and "loss became" in err and "admm 1/2" in err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["phase"] == "admm" and ckpt["epoch"] == 0  # the boundary after pretraining
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (out / "model.safetensors").exists()


# -- resume after a hard kill --------------------------------------------------------------------


QUANT_RULES = {
    "conv*": {"prune": "irregular", "keep": 0.3, "quantize": "ternary"},
    "fc1": {
        "prune": "irregular",
        "keep": 0.05,
        "quantize": {"kind": "binary", "per_channel": True},
    },
    "fc2": {"quantize": {"kind": "uniform", "bits": 3}},
}


def _resume_config(tmp_path: Path, variant: str = "prune") -> Path:
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["admm"].update(epochs=4, period=2, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    cfg["retrain"].update(epochs=3, scheduler={"name": "cosine"})
    if variant != "prune":
        cfg["rules"] = QUANT_RULES
        cfg["retrain"]["quant_method"] = variant
    cfg["data"]["train_subset"] = 1500
    cfg["runtime"] = {"progress": False, "threads": 1}
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["prune", "ste", "freeze"])
def test_resume_after_kill_gives_identical_weights(tmp_path: Path, variant: str) -> None:
    """Kill a run twice (in ADMM, in retraining), resume each time: same final weights."""
    config = _resume_config(tmp_path, variant)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "reference"
    subprocess.run(cli("run", str(config), "--out", str(ref)), check=True, env=env)

    out = tmp_path / "killed"
    run_cmd = cli("run", str(config), "--out", str(out))
    # kill inside the ADMM phase (after its first epoch), resume, kill inside retraining, resume
    kill_when(out, "admm 1/4", run_cmd)
    assert load_checkpoint(out / "checkpoint.pt")["phase"] == "admm"
    kill_when(out, "retrain 1/3", [*run_cmd, "--resume"])
    subprocess.run([*run_cmd, "--resume"], check=True, env=env)

    log = (out / "run.log").read_text()
    assert log.count("resuming") == 2
    assert_same_run(ref, out)
