"""CLI error paths through ``admmcompress.cli.main``: exit 2 and a one-line cause, no traceback.

No test here trains or reads a dataset: every run stops at a user error before the first epoch.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from admmcompress.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "tiny_test.yaml"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PREFIX = "admmcompress: error:"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in tmp_path (the default out folder is ./runs) and undo the CLI's global side effects."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADMMCOMPRESS_DATA", raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(threads)
    logger = logging.getLogger("admmcompress")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def empty_data(tmp_path: Path) -> Path:
    path = tmp_path / "empty_data"
    path.mkdir()
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    shutil.copy(TINY, path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str) -> None:
    assert code == 2
    assert PREFIX in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- help


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "--help")
    assert "usage: admmcompress" in text
    for word in ("run", "eval", "report", "--resume", "--set"):
        assert word in text


def test_top_level_help_mentions_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--data-dir" in help_text(capsys, "--help")


def test_run_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "run", "--help")
    assert "usage: admmcompress run" in text
    for word in ("--resume", "--set", "--data-dir", "--out", "KEY=VALUE"):
        assert word in text


@pytest.mark.parametrize("command", ["eval", "report"])
def test_subcommand_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert f"usage: admmcompress {command}" in help_text(capsys, command, "--help")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------- run: config errors


def test_run_missing_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, _, err = run_cli(capsys, "run", missing)
    assert_user_error(code, err)
    assert str(missing) in err
    assert "does not exist" in err
    assert not (tmp_path / "runs").exists()


def test_run_invalid_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: lenet5\nadmm: {rhoo: 1}\nrules: {conv1: {prune: irregular, keep: 0.2}}\n"
    )
    code, _, err = run_cli(capsys, "run", path)
    assert_user_error(code, err)
    assert "admm.rhoo" in err and "unknown key" in err


def test_run_bad_override(capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    code, _, err = run_cli(capsys, "run", tiny, "--set", "nokeyvalue")
    assert_user_error(code, err)
    assert "key=value" in err


def test_run_rule_matching_no_layer_fails_before_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, empty_data: Path
) -> None:
    path = tmp_path / "norule.yaml"
    path.write_text(
        "model: lenet5\nadmm: {epochs: 2, period: 1}\n"
        "rules:\n  conv9: {prune: irregular, keep: 0.2}\n"
    )
    code, _, err = run_cli(capsys, "run", path, "--out", tmp_path / "out", "--data-dir", empty_data)
    assert_user_error(code, err)
    assert "'conv9'" in err
    assert "matches no parameter" in err
    assert "conv1, conv2, fc1, fc2" in err
    # it is the rule that failed, not the (also missing) data
    assert "MNIST" not in err
    assert "idx3-ubyte" not in err


def test_run_rule_error_from_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    code, _, err = run_cli(
        capsys,
        "run",
        tiny,
        "--out",
        tmp_path / "out",
        "--data-dir",
        empty_data,
        "--set",
        "rules.conv9.prune=irregular",
        "--set",
        "rules.conv9.keep=0.5",
    )
    assert_user_error(code, err)
    assert "'conv9'" in err and "matches no parameter" in err


# --------------------------------------------------------------------------- run: data and folders


def test_run_missing_data_lists_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    code, _, err = run_cli(capsys, "run", tiny, "--data-dir", empty_data)
    assert_user_error(code, err)
    for stem in MNIST_FILES:
        assert stem in err
    assert str(empty_data.absolute()) in err
    assert "--data-dir" in err
    # the default out folder is runs/<config name>, relative to the working directory
    assert (tmp_path / "runs" / "tiny").is_dir()


def test_run_existing_checkpoint_needs_resume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")  # never read: the folder check comes first
    code, _, err = run_cli(capsys, "run", tiny, "--out", out, "--data-dir", empty_data)
    assert_user_error(code, err)
    assert str(out) in err
    assert "--resume" in err
    assert "idx3-ubyte" not in err
    assert (out / "checkpoint.pt").read_bytes() == b""


def test_run_finished_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    code, _, err = run_cli(capsys, "run", tiny, "--out", out, "--data-dir", empty_data)
    assert_user_error(code, err)
    assert "finished run" in err
    assert "--out" in err


def test_resume_corrupt_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(random.Random(0).randbytes(256))
    code, _, err = run_cli(capsys, "run", tiny, "--out", out, "--resume", "--data-dir", empty_data)
    assert_user_error(code, err)
    assert "cannot be read" in err
    assert str(out / "checkpoint.pt") in err


def test_resume_corrupt_checkpoint_message_has_no_torch_advice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(random.Random(0).randbytes(256))
    _, _, err = run_cli(capsys, "run", tiny, "--out", out, "--resume", "--data-dir", empty_data)
    assert "weights_only" not in err


def test_resume_empty_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path, empty_data: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, "run", tiny, "--out", out, "--resume", "--data-dir", empty_data)
    assert_user_error(code, err)
    assert "cannot be read" in err


# --------------------------------------------------------------------------- eval


def test_eval_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "model.safetensors"
    code, _, err = run_cli(capsys, "eval", missing)
    assert_user_error(code, err)
    assert str(missing) in err
    assert "does not exist" in err


def test_eval_run_folder_without_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    code, _, err = run_cli(capsys, "eval", folder)
    assert_user_error(code, err)
    assert str(folder / "model.safetensors") in err


def _lenet5_admmz(path: Path) -> Path:
    """A LeNet-5 .admmz saved by a user's own code: it names no data set."""
    from admmcompress import create_model
    from admmcompress.formats.admmz import save_admmz

    torch.manual_seed(0)
    save_admmz(path, create_model("lenet5"), model_name="lenet5", model_args={})
    return path


def test_eval_asks_for_the_data_set_a_file_does_not_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _lenet5_admmz(tmp_path / "mine.admmz")
    code, _, err = run_cli(capsys, "eval", path)
    assert_user_error(code, err)
    assert str(path) in err and "--dataset" in err
    assert "mnist" in err and "cifar10" in err  # the names it can take


def test_eval_takes_the_data_set_from_the_run_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _lenet5_admmz(tmp_path / "run" / "mine.admmz")
    # a data set the machine lacks: the error names it, so it was the one chosen
    (path.parent / "config.yaml").write_text("data: {dataset: fashion_mnist}\n")
    code, _, err = run_cli(capsys, "eval", path, "--data-dir", tmp_path / "empty")
    assert_user_error(code, err)
    assert "FashionMNIST" in err or "fashion" in err.lower(), err


@pytest.mark.parametrize(
    "content", [random.Random(1).randbytes(300), b""], ids=["random-bytes", "empty"]
)
def test_eval_not_safetensors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "eval", path)
    assert_user_error(code, err)
    assert str(path) in err
    assert "not a readable safetensors file" in err


# --------------------------------------------------------------------------- report


def test_report_without_report_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    code, out, err = run_cli(capsys, "report", folder)
    assert_user_error(code, err)
    assert "report.json" in err
    assert "--resume" in err
    assert out == ""
    assert list(folder.iterdir()) == []


def test_report_invalid_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "report.json").write_text("{not json")
    code, _, err = run_cli(capsys, "report", folder)
    assert_user_error(code, err)
    assert "not valid JSON" in err


def test_report_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "report", tmp_path / "no_such_run")
    assert_user_error(code, err)
    assert "has not finished" not in err
