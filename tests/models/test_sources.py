"""Models from anywhere: timm:, torchvision:, hf:, import paths and package entry points, in
configs and in every CLI verb; files that name an import path are never rebuilt silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from admmcompress.models import ModelSourceError, create_model, recorded_args, runs_code
from admmcompress.recipe.schema import ConfigError, validate_config
from helpers import DATA_DIR

PACKAGE = """
from torch import nn


def build(hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed-looking package that declares ``my_mlp`` under the entry point group."""
    root = tmp_path_factory.mktemp("site")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text(PACKAGE)
    info = root / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[admmcompress.models]\nmy_mlp = mypkg.models:build\n")
    return root


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "admmcompress", *args], capture_output=True, text=True, env=env
    )


def _config(tmp_path: Path, model: dict) -> Path:
    cfg = {
        "name": "mine",
        "model": model,
        "data": {"dataset": "mnist", "train_subset": 256, "test_subset": 256},
        "pretrain": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.001}},
        "admm": {"epochs": 1, "period": 1, "rho": 0.01},
        "retrain": {"epochs": 1},
        "rules": {"*": {"prune": "irregular", "keep": 0.2}},
        "runtime": {"progress": False, "threads": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_entry_point_names_work_in_every_process(user_package: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, {"name": "my_mlp", "args": {"hidden": 16}})
    out = tmp_path / "run"
    done = _cli(user_package, "run", str(config), "--out", str(out), "--data-dir", str(DATA_DIR))
    assert done.returncode == 0, done.stderr
    assert "compresses 2 of 2 parameters" in (out / "run.log").read_text()
    ev = _cli(user_package, "eval", str(out), "--data-dir", str(DATA_DIR))
    assert ev.returncode == 0, ev.stderr
    assert "my_mlp" in ev.stdout and "test accuracy" in ev.stdout
    ex = _cli(user_package, "export", str(out))
    assert ex.returncode == 0, ex.stderr
    ins = _cli(user_package, "inspect", str(out / "model.admmz"))
    assert ins.returncode == 0 and "my_mlp" in ins.stdout


def test_an_import_path_in_a_config_runs_and_its_files_need_consent(
    user_package: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, {"name": "mypkg.models:build", "args": {"hidden": 8}})
    out = tmp_path / "run"
    done = _cli(user_package, "run", str(config), "--out", str(out), "--data-dir", str(DATA_DIR))
    assert done.returncode == 0, done.stderr
    refused = _cli(user_package, "eval", str(out), "--data-dir", str(DATA_DIR))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "import path 'mypkg.models:build'" in refused.stderr
    assert "--allow-import" in refused.stderr
    allowed = _cli(user_package, "eval", str(out), "--data-dir", str(DATA_DIR), "--allow-import")
    assert allowed.returncode == 0, allowed.stderr


def test_timm_and_torchvision_names_build_without_downloads() -> None:
    pytest.importorskip("timm")
    m = create_model("timm:resnet18", num_classes=7)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    t = create_model("torchvision:resnet18", num_classes=5)
    assert t(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ModelSourceError, match="timm has no model 'resnet9000'"):
        create_model("timm:resnet9000")
    with pytest.raises(FileNotFoundError, match="weights file IMAGENET1K_V1 does not exist"):
        create_model("torchvision:resnet18", weights="IMAGENET1K_V1")  # a file, never a download


def test_hf_models_build_from_a_local_config_and_files_record_it(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=8,
    )  # fmt: skip
    config.save_pretrained(tmp_path / "tiny")
    model = create_model(f"hf:{tmp_path / 'tiny'}")
    assert type(model).__name__ == "BertModel"
    args = recorded_args(f"hf:{tmp_path / 'tiny'}", {})
    assert args["config"]["hidden_size"] == 8  # rebuilt anywhere, without the folder
    json.dumps(args)  # a file's metadata must hold it
    again = create_model("hf:/nowhere", **args)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ModelSourceError, match=r"'hf:/nowhere': no /nowhere \(give a local folder"):
        create_model("hf:/nowhere")


def test_wrong_model_arguments_are_named_with_what_the_model_takes() -> None:
    with pytest.raises(ModelSourceError, match="'lenet300' does not take 'width'; it takes"):
        create_model("lenet300", width=3)
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'lenet9'"):
        validate_config({"model": "lenet9", "rules": {"*": {"prune": "irregular", "keep": 0.5}}})
    assert runs_code("a.b:c") and not runs_code("timm:resnet18") and not runs_code("lenet5")
