"""What several test modules share: the repository's paths, CLI runs, kills, run comparison,
crafted model files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from admmcompress.cli import main
from admmcompress.formats.admmz import pack_container, split_container

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
CONFIGS = REPO / "configs"


def run(config: Path, out: Path, *extra: str) -> int:
    """``admmcompress run`` in this process, on the shipped MNIST."""
    return main(["run", str(config), "--out", str(out), "--data-dir", str(DATA_DIR), *extra])


def cli(*args: str) -> list[str]:
    """The command line of an ``admmcompress`` subprocess on the shipped MNIST."""
    return [
        sys.executable,
        "-m",
        "admmcompress",
        *args,
        "--data-dir",
        str(DATA_DIR),
        "--no-progress",
    ]


def kill_when(out: Path, marker: str, cmd: list[str], timeout: float = 120) -> None:
    """Start ``cmd``, SIGKILL it as soon as run.log contains ``marker``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "run.log"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if log.exists() and marker in log.read_text():
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"run finished before {marker!r} was logged")
            time.sleep(0.02)
        else:
            pytest.fail(f"{marker!r} never appeared in {log}")
    finally:
        proc.kill()
        proc.wait()


def assert_same_run(ref: Path, out: Path) -> tuple[dict, dict]:
    """Bit-identical saved weights and per-epoch accuracies; returns both reports."""
    a = load_file(str(ref / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((ref / "report.json").read_text())
    rb = json.loads((out / "report.json").read_text())
    assert [h["test_accuracy"] for h in ra["history"]] == [
        h["test_accuracy"] for h in rb["history"]
    ]
    return ra, rb


#: a tiny two-step progressive run (1,500 MNIST images): a target, quantization, distillation
TWO_STEPS = {
    "name": "two",
    "seed": 0,
    "model": "lenet5",
    "data": {
        "dataset": "mnist",
        "batch_size": 64,
        "train_subset": 1500,
        "test_subset": 1000,
        "augment": {"shift": 1},  # covered by the resume test too
    },
    "pretrain": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.001}},
    "admm": {"epochs": 2, "period": 1, "rho": 0.01, "optimizer": {"name": "adam", "lr": 0.001}},
    "retrain": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.001}},
    "runtime": {"progress": False, "threads": 1},
    "steps": [
        {
            "rules": {
                "conv1": {"prune": "irregular", "keep": 0.5},
                "conv2": {"prune": "irregular", "keep": 0.2},
                "fc*": {"prune": "irregular", "keep": 0.1},
            }
        },
        {
            "name": "squeeze",
            "target": {"rate": 40, "layers": ["conv2", "fc1"], "samples": 500},
            "rules": {"fc2": {"quantize": "ternary"}},
            "retrain": {"distill": {"weight": 0.5}},  # its teacher must survive the kills
        },
    ],
}


def with_admmz_header(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The ``.admmz`` file ``blob`` after ``edit`` changed its decoded header (a dict), its
    checksum repaired: lets a test reach the checks behind the checksum."""
    version, raw, payload = split_container(blob)
    header = json.loads(raw)
    edit(header)
    return pack_container(json.dumps(header).encode(), payload, version)
