"""Knowledge distillation from the model before step 1: the loss, the teacher file, config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from admmcompress.data import Split
from admmcompress.formats import read_model_file
from admmcompress.models import create_model
from admmcompress.recipe.schema import ConfigError, load_config
from admmcompress.train.distill import Distillation
from admmcompress.train.loop import train_epoch
from helpers import DATA_DIR, TWO_STEPS, run


def _split(n: int = 96) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_a_student_equal_to_its_teacher_gets_no_distillation_gradient() -> None:
    torch.manual_seed(0)
    student = create_model("lenet5")
    teacher = copy.deepcopy(student).eval()
    before = copy.deepcopy(student.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    train_epoch(
        student,
        _split(),
        opt,
        batch_size=32,
        generator=torch.Generator().manual_seed(1),
        progress=False,
        teacher=teacher,
        distill=Distillation(weight=1.0, temperature=3.0),
    )
    # KL(p || p) = 0 with zero gradient: pure distillation from itself moves nothing
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_distillation_objective_is_the_weighted_mix() -> None:
    """One SGD step on the mixed objective equals one computed by hand."""
    torch.manual_seed(1)
    student, teacher = create_model("lenet300"), create_model("lenet300").eval()
    ref = copy.deepcopy(student)
    data = _split(32)
    cfg = Distillation(weight=0.3, temperature=2.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    train_epoch(
        student,
        data,
        opt,
        batch_size=32,
        generator=torch.Generator(),
        progress=False,
        teacher=teacher,
        distill=cfg,
    )
    logits = ref(data.x)
    kd = F.kl_div(
        F.log_softmax(logits / 2.0, dim=1),
        F.log_softmax(teacher(data.x).detach() / 2.0, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    loss = 0.7 * F.cross_entropy(logits, data.y) + 0.3 * 4.0 * kd
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.05 * p.grad
    for (k, v), w in zip(student.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, atol=1e-6, rtol=1e-5, msg=k)


def test_teacher_is_the_model_before_step_one(two_step_run_distilled: Path) -> None:
    teacher = read_model_file(two_step_run_distilled / "teacher.safetensors")
    assert teacher.masks == {}
    for name in ("conv1", "conv2", "fc1", "fc2"):  # dense: the pretrained model
        w = getattr(teacher.model, name).weight
        assert int(torch.count_nonzero(w)) == w.numel()


@pytest.fixture(scope="module")
def two_step_run_distilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    tmp = tmp_path_factory.mktemp("distill")
    cfg = copy.deepcopy(TWO_STEPS)
    cfg["steps"] = cfg["steps"][:1]
    cfg["retrain"]["distill"] = {"weight": 0.5, "temperature": 4}
    cfg["admm"]["epochs"] = 1
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp / "cfg.yaml", tmp / "run") == 0
    return tmp / "run"


def test_pretraining_cannot_distill(tmp_path: Path) -> None:
    import yaml

    cfg = copy.deepcopy(TWO_STEPS)
    cfg["pretrain"]["distill"] = {"weight": 0.5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="pretraining has no teacher"):
        load_config(tmp_path / "c.yaml")
    cfg = copy.deepcopy(TWO_STEPS)
    cfg["retrain"]["distill"] = {"weight": 1.5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="weight"):
        load_config(tmp_path / "c.yaml")


def test_a_named_teacher_file_is_used_instead_of_the_step_one_model(
    two_step_run_distilled: Path, tmp_path: Path
) -> None:
    """distill.teacher: learn from another saved model (here the earlier run's teacher)."""
    import yaml

    from admmcompress.cli import main

    teacher = two_step_run_distilled / "teacher.safetensors"
    cfg = copy.deepcopy(TWO_STEPS)
    cfg["pretrain"]["epochs"] = 0  # a fresh model: only the named teacher knows anything
    cfg["steps"] = cfg["steps"][:1]
    cfg["admm"]["epochs"] = 1
    cfg["retrain"]["distill"] = {"weight": 1.0, "temperature": 4, "teacher": str(teacher)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path / "c.yaml", tmp_path / "run") == 0
    assert not (tmp_path / "run" / "teacher.safetensors").exists()  # nothing to keep
    report = yaml.safe_load((tmp_path / "run" / "report.json").read_text())
    assert report["phases"]["retrain"]["test_accuracy"] > 0.5  # labels unused (weight 1)

    from admmcompress.formats.safetensors_model import save_model

    other = tmp_path / "five_classes.safetensors"
    five = create_model("lenet5", num_classes=5)
    save_model(other, five, {}, model_name="lenet5", model_args={"num_classes": 5})
    cfg["retrain"]["distill"]["teacher"] = str(other)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run3")]
    assert main([*out, "--data-dir", str(DATA_DIR)]) != 0
    assert not (tmp_path / "run3" / "checkpoint.pt").exists()  # refused before training

    cfg["retrain"]["distill"]["teacher"] = str(tmp_path / "missing.safetensors")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run2")]
    assert main([*out, "--data-dir", str(DATA_DIR)]) != 0
