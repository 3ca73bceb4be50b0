"""Peak memory of each CLI verb on the worst crafted file of each kind, against an empty
process (goal: under 200 MB more).

    python benchmarks/reader_memory.py

Each case runs in a fresh interpreter: ``admmcompress.cli.main`` on the file, then the
process's peak resident memory (``VmHWM``; ``ru_maxrss`` would keep the forking parent's
peak across exec). The empty process imports torch and the CLI and runs no verb; "extra"
is a case's peak minus that. The same verb on the
untouched file it was crafted from is shown beside it, for scale (``eval`` holds the
10,000 MNIST test images, which no crafted file changes). The crafted files:

- ``.admmz`` of 2 KB, every weight empty, declaring a LeNet-300 whose first layer takes
  60,000 inputs (18M weights);
- ``.admmz`` declaring an input of 1 x 4096 x 4096, and one of 65536^3 (export builds an
  example input of that shape for compaction and ONNX);
- ``model.safetensors`` of 1 MB whose metadata asks for ``in_features: 1000000`` (1.2 GB
  of weights if built);
- ``checkpoint.pt`` and an ``init:`` weights file of 200 KB whose compressed zip entry
  holds 200 MB of zeros (``torch.load`` inflates compressed entries);
- an MNIST ``train-images-idx3-ubyte.gz`` that gunzips to 2 GB (read with
  ``data.verify: false``, so no checksum stops it first).
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from admmcompress import create_model
from admmcompress.formats.admmz import pack_container, save_admmz, split_container
from admmcompress.formats.safetensors_model import MODEL_FORMAT, save_model
from common import write_results

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
PROBE = """
import sys
import torch
from admmcompress.cli import main
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0  # no verb: the empty process
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's peak across exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("RESULT", code, int(hwm.split()[1]) / 1024)
"""


def _peak(argv: list[str]) -> tuple[int, float, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:  # the verb raised: no RESULT line (a bug, not a refusal)
        return 1, float("nan"), out.stderr.strip().splitlines()[-1] if out.stderr else ""
    _, code, mb = lines[-1].split()
    message = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    return int(code), float(mb), message


def _with_header(blob: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    version, raw, payload = split_container(blob)
    header = json.loads(raw)
    edit(header)
    return pack_container(json.dumps(header).encode(), payload, version)


def _deflate(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def _files(work: Path) -> list[tuple[str, list[str], list[str]]]:
    """(case, argv on the crafted file, argv on the untouched file)."""
    torch.manual_seed(0)
    model = create_model("lenet300")
    good = work / "good.admmz"
    save_admmz(good, model, model_name="lenet300", model_args={}, input_shape=(1, 28, 28))
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.zero_()
    empty = work / "empty.admmz"
    save_admmz(empty, model, model_name="lenet300", model_args={}, input_shape=(1, 28, 28))

    def inflate(h: dict) -> None:
        h["model_args"] = {"in_features": 60_000, "num_classes": 10}
        for t in h["tensors"]:
            if t["name"] == "fc1.weight":
                t["shape"] = [300, 60_000]

    big_model = work / "declares_18M.admmz"
    big_model.write_bytes(_with_header(empty.read_bytes(), inflate))
    big_input = work / "input_4096.admmz"
    big_input.write_bytes(
        _with_header(good.read_bytes(), lambda h: h.update(input_shape=[1, 4096, 4096]))
    )
    huge_input = work / "input_65536.admmz"
    huge_input.write_bytes(
        _with_header(good.read_bytes(), lambda h: h.update(input_shape=[65536] * 3))
    )

    run = work / "run"
    run.mkdir()
    save_model(
        run / "model.safetensors",
        create_model("lenet300"),
        {},
        model_name="lenet300",
        model_args={},
        extra={"dataset": "mnist", "input_shape": [1, 28, 28]},
    )
    bad_run = work / "bad_run"
    bad_run.mkdir()
    metadata = {
        "format": MODEL_FORMAT,
        "model": "lenet300",
        "model_args": json.dumps({"in_features": 1_000_000}),
        "dataset": "mnist",
    }
    state = {k: v.contiguous() for k, v in create_model("lenet300").state_dict().items()}
    save_file(state, str(bad_run / "model.safetensors"), metadata=metadata)

    big = work / "big.pt"
    torch.save({"format": 1, "fc1.weight": torch.zeros(50_000_000)}, big)
    bomb_ckpt = work / "ckpt_run"
    bomb_ckpt.mkdir()
    _deflate(big, bomb_ckpt / "checkpoint.pt")
    _deflate(big, work / "init_bomb.pt")
    big.unlink()
    cfg = yaml.safe_load((ROOT / "configs" / "tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False}
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    (bomb_ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    init_cfg = {**cfg, "init": str(work / "init_bomb.pt"), "pretrain": {"epochs": 0}}
    (work / "init.yaml").write_text(yaml.safe_dump(init_cfg))
    good_init = {**cfg, "init": str(run / "model.safetensors"), "pretrain": {"epochs": 0}}
    good_init["admm"] = {**cfg["admm"], "epochs": 0}
    good_init["retrain"] = {**cfg["retrain"], "epochs": 0}
    (work / "good_init.yaml").write_text(yaml.safe_dump(good_init))

    gz_root = work / "gzdata"
    shutil.copytree(DATA / "MNIST", gz_root / "MNIST")
    target = gz_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    with gzip.open(target, "wb", compresslevel=1) as f:
        f.write(struct.pack(">IIII", 2051, 60000, 28, 28))
        block = bytes(64 << 20)
        for _ in range(32):  # 2 GB of zeros, about 2 MB gzipped
            f.write(block)
    gz_cfg = {**cfg, "data": {**cfg["data"], "verify": False}}
    (work / "gz.yaml").write_text(yaml.safe_dump(gz_cfg))

    d = str(DATA)
    out = str(work / "out")
    # the run verbs load MNIST (190 MB as floats) before any file is read: their reference
    # is a run that loads the data and an untouched init file, then stops (no epochs)
    good_run = ["run", str(work / "good_init.yaml"), "--out", str(work / "o2"), "--data-dir", d]
    return [
        (
            "admmz, 18M empty weights declared: inspect",
            ["inspect", str(big_model)],
            ["inspect", str(good)],
        ),
        (
            "admmz, 18M empty weights declared: eval",
            ["eval", str(big_model), "--data-dir", d],
            ["eval", str(good), "--data-dir", d],
        ),
        (
            "admmz, 18M empty weights declared: export",
            ["export", str(big_model), "--out", out],
            ["export", str(good), "--out", out],
        ),
        (
            "admmz, input 1x4096x4096: export --compact",
            ["export", str(big_input), "--compact", "--out", out],
            ["export", str(good), "--compact", "--out", out],
        ),
        (
            "admmz, input 65536^3: export --format onnx",
            ["export", str(huge_input), "--format", "onnx", "--out", out + ".onnx"],
            ["export", str(good), "--format", "onnx", "--out", out + ".onnx"],
        ),
        (
            "safetensors, in_features 1,000,000: eval",
            ["eval", str(bad_run), "--data-dir", d],
            ["eval", str(run), "--data-dir", d],
        ),
        (
            "safetensors, in_features 1,000,000: export",
            ["export", str(bad_run), "--out", out],
            ["export", str(run), "--out", out],
        ),
        (
            "checkpoint, 200 MB deflated to 200 KB: run --resume",
            ["run", str(work / "tiny.yaml"), "--out", str(bomb_ckpt), "--resume", "--data-dir", d],
            good_run,
        ),
        (
            "init: weights, 200 MB deflated to 200 KB: run",
            ["run", str(work / "init.yaml"), "--out", str(work / "o1"), "--data-dir", d],
            good_run,
        ),
        (
            "MNIST .gz of 2 MB that gunzips to 2 GB (verify: false): run",
            ["run", str(work / "gz.yaml"), "--out", str(work / "o3"), "--data-dir", str(gz_root)],
            good_run,
        ),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cases = _files(Path(tmp))
        _, empty, _ = _peak([])
        rows = []
        for name, argv, benign in cases:
            code, mb, message = _peak(argv)
            base = None
            if benign:
                if benign[0] == "run":  # a fresh folder each time: a finished one is refused
                    shutil.rmtree(benign[benign.index("--out") + 1], ignore_errors=True)
                base = _peak(benign)[1]
            rows.append(
                {
                    "case": name,
                    "exit": code,
                    "peak_mb": mb,
                    "extra_mb": mb - empty,
                    "untouched_file_peak_mb": base,
                    "message": message[:300],
                }
            )
            print(f"{name}: exit {code}, {mb:.0f} MB ({mb - empty:+.0f}); {message[:120]}")
    lines = [
        f"Empty process (torch and the CLI imported, no verb run): {empty:.0f} MB peak.",
        "",
        "| crafted file and verb | exit | peak MB | above empty | same verb, untouched file |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = "" if r["untouched_file_peak_mb"] is None else f"{r['untouched_file_peak_mb']:.0f}"
        lines.append(
            f"| {r['case']} | {r['exit']} | {r['peak_mb']:.0f} | {r['extra_mb']:+.0f} | {base} |"
        )
    write_results("reader_memory", {"empty_process_mb": empty, "cases": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
