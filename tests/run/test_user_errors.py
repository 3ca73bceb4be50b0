"""What a new user ran into: each found before training, with its exit code and no traceback;
eval of image-folder runs; BatchNorm recalibration and the residual warnings in real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from admmcompress.cli import main
from admmcompress.models import registry as model_registry
from helpers import CONFIGS, DATA_DIR

PREFIX = "admmcompress: error:"


class TinyBN(nn.Module):
    """conv-BN-ReLU, depthwise conv-BN-ReLU, pool, linear: BatchNorm everywhere."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(autouse=True)
def _tiny_bn(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = model_registry._MODELS
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    model_registry.register_model("tiny_bn", input_shape=(3, 16, 16))(TinyBN)


def _folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 6)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                px = (torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()
                Image.fromarray(px).save(root / split / c / f"{i}.png")
    return root


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg: dict, *extra: str) -> tuple:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["run", str(path), "--out", str(tmp_path / "run"), *extra])
    _, err = capsys.readouterr()
    return code, err


def _folder_config(root: Path) -> dict:
    return {
        "model": "tiny_bn",
        "data": {
            "dataset": "image_folder",
            "root": str(root),
            "batch_size": 6,
            "workers": 0,
            "image_size": 16,
            "eval_resize": 18,
        },
        "pretrain": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01}},
        "admm": {
            "epochs": 2,
            "period": 1,
            "rho": 1e-6,
            "recalibrate_bn": 3,
            "scheduler": {"name": "cosine"},
        },
        "retrain": {"epochs": 1},
        "rules": {
            "conv": {"prune": "filter", "keep": 0.5},
            "fc": {"prune": "irregular", "keep": 0.5},
        },
        "runtime": {"progress": False, "threads": 1},
    }


def test_image_folder_run_recalibrates_warns_and_evals_from_its_own_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "images")
    code, err = _run(tmp_path, capsys, _folder_config(root))
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    harden = report["phases"]["harden"]
    assert harden["recalibration_batches"] == 3
    assert "test_accuracy_before_recalibration" in harden
    # rho 1e-6 leaves the weights far from their sets: the run says so and what to change
    assert any("admm.rho" in w and "auto" in w for w in report["warnings"])
    assert "admm.rho: auto" in (tmp_path / "run" / "report.md").read_text()
    # a cosine restarted every 1-epoch period is a constant lr: the run says so
    assert any("admm.restart_schedule: false" in w for w in report["warnings"])
    log = (tmp_path / "run" / "run.log").read_text()
    assert "ADMM update 2: ||W-Z||/||W|| (rho) conv" in log and "WARNING" in log
    # eval finds the data through the run's own config, and crops as the run did
    assert main(["eval", str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out
    assert main(["export", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "model.admmz")]) == 0
    second = capsys.readouterr().out
    acc = [line for line in first.splitlines() if "test accuracy" in line]
    assert acc and acc == [line for line in second.splitlines() if "test accuracy" in line]


def _mnist(**changes: object) -> dict:
    cfg = yaml.safe_load((CONFIGS / "tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False, "threads": 1}
    cfg["data"]["root"] = str(DATA_DIR)
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"name": "lenet5", "args": {"num_classes": 5}}}, "scores 5 classes, the data"),
        ({"model": {"name": "lenet5", "args": {"width": 5}}}, "'lenet5' does not take 'width'"),
        (
            {"model": {"name": "tiny_bn"}, "rules": {"*": {"prune": "irregular", "keep": 0.5}}},
            "fails in the model's forward pass",
        ),
        ({"rules": {"fc2": {"prune": "irregular", "count": 6000}}}, "count 6000 is more than"),
    ],
)
def test_a_model_or_rule_that_cannot_work_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, message: str
) -> None:
    code, err = _run(tmp_path, capsys, _mnist(**changes))
    assert code == 2 and PREFIX in err and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_of_a_folder_without_a_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(tmp_path, capsys, _mnist(), "--resume")
    assert code == 2 and "nothing to resume" in err


def test_admm_state_of_other_rules_is_refused() -> None:
    from admmcompress import ADMM, Irregular, create_model

    model = create_model("lenet5")
    state = ADMM(model, {"fc1": Irregular(keep=0.1)}).state_dict()
    with pytest.raises(ValueError, match=r"saved under 'irregular \(keep 0\.1\)'"):
        ADMM(model, {"fc1": Irregular(keep=0.2)}).load_state_dict(state)


def test_a_dense_run_keeps_the_batchnorm_statistics_it_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keep 1.0 changes no weight at hardening: recalibrating would only change statistics
    that fit already (a dense DS-CNN lost 2.3 points to it in benchmarks/rho_and_batchnorm)."""
    cfg = _folder_config(_folder(tmp_path / "images"))
    cfg.update(
        admm={"epochs": 0, "recalibrate_bn": 3},
        retrain={"epochs": 0},
        rules={"*": {"prune": "irregular", "keep": 1.0}},
    )
    code, err = _run(tmp_path, capsys, cfg)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "recalibration_batches" not in report["phases"]["harden"]
    assert (
        report["phases"]["harden"]["test_accuracy"] == report["phases"]["pretrain"]["test_accuracy"]
    )
