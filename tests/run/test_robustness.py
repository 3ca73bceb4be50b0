"""A run folder nothing can corrupt: one owner at a time, finished results never rewritten,
resumes that apply or refuse a change, full disks, damaged checkpoints, stale temporaries."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from admmcompress.cli import main
from admmcompress.run import checkpoint as checkpoint_module
from admmcompress.run.checkpoint import load_checkpoint, save_checkpoint
from helpers import CONFIGS, DATA_DIR, cli, kill_when

PREFIX = "admmcompress: error:"


def _config(tmp_path: Path, **changes: object) -> Path:
    cfg = yaml.safe_load((CONFIGS / "tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False, "threads": 1}
    cfg["data"]["train_subset"] = 1000
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(capsys: pytest.CaptureFixture[str], config: Path, out: Path, *extra: str) -> tuple:
    code = main(["run", str(config), "--out", str(out), "--data-dir", str(DATA_DIR), *extra])
    _, err = capsys.readouterr()
    return code, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("done")
    out = tmp / "run"
    assert main(["run", str(_config(tmp)), "--out", str(out), "--data-dir", str(DATA_DIR)]) == 0
    return out


def test_a_second_run_into_the_same_folder_is_refused_and_names_the_first(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, **{"retrain.epochs": 3})
    out = tmp_path / "run"
    first = subprocess.Popen(
        cli("run", str(config), "--out", str(out)), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (out / "run.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    other = _config(tmp_path, **{"rules.conv1.keep": 0.9})
    second = subprocess.run(
        cli("run", str(other), "--out", str(out)), capture_output=True, text=True
    )
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"in use by another admmcompress run (process {first.pid})" in second.stderr
    assert first.wait(timeout=300) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rules"]["conv1"]["keep"] == 0.5  # the first run's config, not the second's
    assert json.loads((out / "report.json").read_text())["config"]["rules"]["conv1"]["keep"] == 0.5


def test_a_finished_run_is_never_overwritten_even_without_its_checkpoint(
    finished: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = (finished / "report.json").read_bytes()
    ckpt = finished / "checkpoint.pt"
    moved = tmp_path / "checkpoint.pt"
    ckpt.rename(moved)
    try:
        for extra in ((), ("--resume",), ("--resume", "--allow-changes")):
            code, err = _run(capsys, _config(tmp_path), finished, *extra)
            assert code == 2 and "finished run" in err and "never written again" in err
        assert (finished / "report.json").read_bytes() == report
    finally:
        moved.rename(ckpt)


def _interrupted(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    """A run killed in its ADMM phase, after at least one ADMM epoch's checkpoint (the
    epoch's log line comes before its checkpoint): (its config, its folder)."""
    config = _config(tmp_path, **{"admm.epochs": 4, "admm.period": 2, **changes})
    out = tmp_path / "run"
    kill_when(out, "admm 2/4", cli("run", str(config), "--out", str(out)))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["phase"] == "admm" and ckpt["epoch"] >= 1
    return config, out


def test_a_resume_refuses_changes_it_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = _interrupted(tmp_path)
    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    for change in ({"rules.conv1.keep": 0.3}, {"rules.fc1": {"quantize": "binary"}}, {"seed": 7}):
        config = _config(tmp_path, **{"admm.epochs": 4, "admm.period": 2, **change})
        code, err = _run(capsys, config, out, "--resume", "--allow-changes")
        assert code == 2 and "cannot resume" in err and "The run has already used them" in err
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == epoch  # nothing ran


def test_a_resume_applies_a_new_learning_rate_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = _interrupted(tmp_path)
    config = _config(tmp_path, **{"admm.epochs": 4, "admm.period": 2, "admm.optimizer.lr": 0.0002})
    code, err = _run(capsys, config, out, "--resume", "--allow-changes")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    lrs = [h["lr"] for h in report["history"] if h["phase"] == "admm"]
    assert lrs[0] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.0002)
    assert any("changed settings" in w for w in report["warnings"])
    log = (out / "run.log").read_text()
    assert "resuming with a changed config: admm.optimizer.lr" in log
    assert yaml.safe_load((out / "config.yaml").read_text())["admm"]["optimizer"]["lr"] == 0.0002


def test_a_diverged_run_resumes_with_a_sane_rho(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wild = {
        "admm.epochs": 4,
        "admm.period": 1,
        "admm.rho": 1e6,
        "admm.rho_growth": 100,
        "admm.optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    }
    config = _config(tmp_path, **wild)
    out = tmp_path / "run"
    code, err = _run(capsys, config, out)
    assert code == 3 and "Traceback" not in err and "--resume --allow-changes" in err
    sane = _config(tmp_path, **{**wild, "admm.rho": 0.01, "admm.rho_growth": 1.3})
    code, err = _run(capsys, sane, out, "--resume", "--allow-changes")
    assert code == 0, err


def test_overflowing_numbers_in_a_config_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for change, key in (
        ({"admm.rho_growth": 1e200}, "admm.rho_growth"),
        ({"admm.rho": 1e300}, "admm.rho"),
    ):
        code, err = _run(capsys, _config(tmp_path, **change), tmp_path / "run")
        assert code == 2 and key in err and "Traceback" not in err


def test_a_full_disk_says_so_and_the_last_checkpoint_survives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, out = _interrupted(tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)  # written, then the disk is found full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    code, err = _run(capsys, config, out, "--resume")
    assert code == 5 and "no space left on the disk" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert _run(capsys, config, out, "--resume")[0] == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.pop("model"),
        lambda c: c.update(phase="retraining"),
        lambda c: c.update(step=9),
        lambda c: c.update(epoch=-1),
        lambda c: c["model"].update({"fc1.weight": torch.zeros(3, 3)}),
        lambda c: c.update(masks={"fc1": torch.ones(2)}),
        lambda c: c.update(history="none"),
        lambda c: c["rng"].update(torch=torch.zeros(3)),
        lambda c: c["rng"].update(torch_per_rank=[torch.zeros(5, dtype=torch.uint8)]),
        lambda c: c.update(optimizer={"state": 1, "param_groups": 2}),
        # found by benchmarks/fuzz_files.py: these reached load_state_dict and crashed in it
        lambda c: c["optimizer"].update(state=[1, 2]),
        lambda c: c["optimizer"]["param_groups"][0].update(params="all"),
        lambda c: c.update(scheduler={"last_epoch": "x"}),
        lambda c: next(iter(c["admm"]["layers"].values())).update(u="x"),
        lambda c: c["admm"].update(history=[{"conv1": "x"}]),
        lambda c: c["phases"].update(pretrain={"test_accuracy": {"x": 1}}),
        lambda c: c["history"].append({"residuals": [1]}),
        lambda c: c.update(planned_step=torch.zeros(3)),
        lambda c: c["optimizer"]["state"][0].update(exp_avg_sq=torch.zeros(())),
    ],
)
def test_a_damaged_checkpoint_is_refused_with_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage,  # type: ignore[no-untyped-def]
) -> None:
    config, out = _interrupted(tmp_path)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    damage(ckpt)
    ckpt.pop("format")
    save_checkpoint(out / "checkpoint.pt", ckpt)
    code, err = _run(capsys, config, out, "--resume")
    assert code == 2 and "Traceback" not in err and "checkpoint" in err


def test_stale_temporaries_of_a_killed_write_are_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = _interrupted(tmp_path)
    for name in (".checkpoint.pt.abc123.tmp", ".report.json.x9.tmp"):
        (out / name).write_bytes(b"half" * 1000)
    assert _run(capsys, config, out, "--resume")[0] == 0
    assert not list(out.glob(".*.tmp"))


def test_a_nan_in_the_first_epoch_does_not_promise_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, **{"pretrain.optimizer.lr": 1e30})
    code, err = _run(capsys, config, tmp_path / "run")
    assert code == 3 and "nothing was kept" in err and "last good checkpoint" not in err


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.args.num_classes=1000000000", "more than the"),
        ("runtime.threads=100000", "runtime.threads"),
        ("seed=99999999999999999999999", "seed"),
        ("steps.0.admm.epochs=-1", "it is a one-step run"),
        ("name=../../x", "name: must be letters"),
        ("data.train_subset=100000", "larger than the 60,000 images"),
    ],
)
def test_absurd_overrides_get_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, words: str
) -> None:
    code, err = _run(capsys, _config(tmp_path), tmp_path / "run", "--set", override)
    assert code == 2 and PREFIX in err and "Traceback" not in err
    assert words in err


def test_a_name_with_a_path_cannot_escape_runs(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "admmcompress", "run", str(_config(tmp_path))]
    done = subprocess.run(
        [*cmd, "--set", "name=../../escaped"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2 and not (tmp_path.parent / "escaped").exists()
