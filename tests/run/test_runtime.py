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


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, native: bool) -> None:
    from admmcompress.run import runtime

    monkeypatch.setattr(runtime.torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(runtime.torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    # an explicit setting is taken as it is, with or without the hardware
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.resolve_precision("fp32", cpu) == "fp32"


def _tiny(tmp_path: Path, precision: str = "auto") -> Path:
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False, "precision": precision, "threads": 1}
    (tmp_path / f"{precision}.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / f"{precision}.yaml"


def _hardware(monkeypatch, native: bool) -> None:
    """Pretend this CPU does (or does not) compute bfloat16 in hardware."""
    from admmcompress.run import pipeline, runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    monkeypatch.setattr(pipeline, "native_bf16", lambda device: native)


class _Stop(Exception):
    pass


def _stop_in_admm(config: Path, out: Path, monkeypatch) -> dict:
    """Run ``config`` until its first checkpoint inside the ADMM phase, as if killed there;
    return that checkpoint."""
    from admmcompress.run.checkpoint import load_checkpoint
    from admmcompress.run.pipeline import Pipeline

    save = Pipeline._save

    def save_then_stop(self: Pipeline, extra: dict) -> None:
        save(self, extra)
        if self.state.phase == "admm":
            raise _Stop

    with monkeypatch.context() as m:
        m.setattr(Pipeline, "_save", save_then_stop)
        with pytest.raises(_Stop):
            run(config, out)
    (out / ".lock").unlink(missing_ok=True)
    return load_checkpoint(out / "checkpoint.pt")


def _assert_same_weights(ref: Path, out: Path) -> None:
    a = load_file(str(ref / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_auto_precision_is_recorded_in_report(tmp_path: Path, monkeypatch) -> None:
    _hardware(monkeypatch, False)
    assert run(_tiny(tmp_path), tmp_path / "run") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["runtime"] == {"precision": "fp32", "threads": 1, "channels_last": False}
    assert report["config"]["runtime"]["precision"] == "auto"
    assert (
        "precision: fp32 (auto: this CPU does not compute"
        in (tmp_path / "run" / "run.log").read_text()
    )
    assert "(fp32, 1 thread)" in (tmp_path / "run" / "report.md").read_text()


def test_resume_on_other_hardware_keeps_the_precision_it_started_with(
    tmp_path: Path, monkeypatch
) -> None:
    """A run started in bf16 (auto, on a CPU with bf16) and resumed where auto would pick
    fp32 finishes in bf16, with the weights of a run that never stopped."""
    config = _tiny(tmp_path)
    _hardware(monkeypatch, True)
    assert run(config, tmp_path / "ref") == 0
    assert _stop_in_admm(config, tmp_path / "run", monkeypatch)["precision"] == "bf16"
    _hardware(monkeypatch, False)
    assert run(config, tmp_path / "run", "--resume") == 0
    log = (tmp_path / "run" / "run.log").read_text()
    assert "precision: bf16, as the run started (auto would pick fp32" in log
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["runtime"]["precision"] == "bf16"
    _assert_same_weights(tmp_path / "ref", tmp_path / "run")


def test_checkpoint_without_precision_resumes_in_its_configs(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint written before the precision was recorded (its config said bf16),
    resumed with the recipe now saying auto on a CPU without bf16: it stays in bf16."""
    from admmcompress.run.checkpoint import save_checkpoint

    _hardware(monkeypatch, False)
    bf16 = _tiny(tmp_path, "bf16")
    assert run(bf16, tmp_path / "ref") == 0
    ckpt = _stop_in_admm(bf16, tmp_path / "run", monkeypatch)
    del ckpt["precision"]
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", ckpt)
    assert run(_tiny(tmp_path, "auto"), tmp_path / "run", "--resume") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["runtime"]["precision"] == "bf16"
    _assert_same_weights(tmp_path / "ref", tmp_path / "run")


def test_resume_in_another_named_precision_is_said_plainly(tmp_path: Path, monkeypatch) -> None:
    _hardware(monkeypatch, True)
    _stop_in_admm(_tiny(tmp_path, "bf16"), tmp_path / "run", monkeypatch)
    assert run(_tiny(tmp_path, "fp32"), tmp_path / "run", "--resume") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["runtime"]["precision"] == "fp32"
    assert any("resumed in fp32 after starting in bf16" in w for w in report["warnings"])


def test_auto_precision_on_a_gpu_counts_only_native_bf16(monkeypatch) -> None:
    """A V100 or T4 emulates bf16 (torch.cuda.is_bf16_supported() says True by default)."""
    from admmcompress.run import runtime

    asked = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # an emulating GPU

    monkeypatch.setattr(runtime.torch.cuda, "is_bf16_supported", supported)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert asked == [False]
