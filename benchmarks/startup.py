"""Start-up cost of the command line: ``--help``, ``inspect`` of a small file, ``eval``.

    python benchmarks/startup.py                       # this checkout
    python benchmarks/startup.py --before /path/to/old/src   # also an older checkout's code

Each command runs ``--rounds`` times in a fresh process, interleaved with the other
checkout's when given; the median wall time of the whole command is reported (``eval``
includes its evaluation of 10,000 images). ``import torch`` alone is timed for scale.
Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results

ROOT = Path(__file__).resolve().parent.parent


def _time(cmd: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def _fixtures(work: Path) -> dict[str, Path]:
    """A small .admmz and a run folder, written with this checkout's code."""
    code = f"""
import torch
from admmcompress import ADMM, Irregular, create_model
from admmcompress.formats.admmz import save_admmz
from admmcompress.formats.safetensors_model import save_model
torch.manual_seed(0)
m = create_model("lenet5")
masks = ADMM(m, {{"*": Irregular(keep=0.05)}}).harden()
save_admmz({str(work / "m.admmz")!r}, m, model_name="lenet5", model_args={{}},
           input_shape=(1, 28, 28))
save_model({str(work / "run" / "model.safetensors")!r}, m, masks, model_name="lenet5",
           model_args={{}}, extra={{"dataset": "mnist", "input_shape": [1, 28, 28]}})
"""
    (work / "run").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    return {"admmz": work / "m.admmz", "run": work / "run"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", type=Path, help="src/ folder of an older checkout to compare")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fx = _fixtures(Path(tmp))
        data = str(ROOT / "data")
        commands = {
            "--help": ["--help"],
            "inspect (small .admmz)": ["inspect", str(fx["admmz"])],
            "eval (LeNet-5, 10,000 MNIST images)": ["eval", str(fx["run"]), "--data-dir", data],
        }
        trees = {"now": ROOT / "src"}
        if args.before is not None:
            trees["before"] = args.before
        times: dict[str, dict[str, list[float]]] = {n: {t: [] for t in trees} for n in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                for tree, src in trees.items():
                    cmd = [sys.executable, "-m", "admmcompress", *argv]
                    times[name][tree].append(_time(cmd, src))
        imports = {
            tree: statistics.median(
                _time([sys.executable, "-c", "import torch"], src) for _ in range(args.rounds)
            )
            for tree, src in trees.items()
        }
    medians = {n: {t: statistics.median(v) for t, v in d.items()} for n, d in times.items()}
    head = "| command | " + " | ".join(f"{t} (s)" for t in trees) + " |"
    rows = [head, "| --- |" + " ---: |" * len(trees)]
    for name, m in medians.items():
        rows.append(f"| `admmcompress {name}` | " + " | ".join(f"{m[t]:.2f}" for t in trees) + " |")
    rows.append(
        "| `python -c 'import torch'` (for scale) | "
        + " | ".join(f"{imports[t]:.2f}" for t in trees)
        + " |"
    )
    write_results(
        "startup",
        {"rounds": args.rounds, "median_seconds": medians, "import_torch_seconds": imports},
        "\n".join(rows),
    )


if __name__ == "__main__":
    main()
