"""Turn a finished dense run into a shipped reference model: ``weights/<name>.safetensors``
(the weights alone, no all-ones masks) and ``weights/<name>.json`` (its recipe, seed, test
accuracy, wall time, versions and the file's SHA-256, which a test checks).

    python benchmarks/ship_reference.py runs/resnet20_dense --name resnet20_cifar10_dense

The weights are bit for bit the run's: ``admmcompress.load`` of either file gives the same
tensors, and ``init: weights/<name>.safetensors`` starts a run from them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from admmcompress import load, save
from admmcompress.models import registry as model_registry
from common import file_sha256

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run folder (report.json, model.safetensors)")
    ap.add_argument("--name", required=True, help="weights/<name>.safetensors and .json")
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args()

    report = json.loads((args.run / "report.json").read_text())
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    model = load(args.run / "model.safetensors")
    name, model_args = report["model"]["name"], report["model"]["args"]
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{args.name}.safetensors"
    provenance = {
        "recipe": config.get("name"),
        "seed": report["seed"],
        "test_accuracy": report["final"]["test_accuracy"],
        # of that evaluation: what the run computed in (runtime.precision: auto resolved)
        "precision": report.get("runtime", {}).get("precision")
        or config.get("runtime", {}).get("precision", "fp32"),
    }
    # what `admmcompress eval` evaluates on unless told otherwise, as in the run's own file
    metadata = {**provenance, "dataset": report["dataset"]}
    save(
        model,
        target,
        model_name=name,
        model_args=model_args,
        input_shape=model_registry.model_input_shape(name),
        metadata=metadata,
    )
    again = load(target)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # the shipped weights are the run's, bit for bit
    pretrain = report["phases"].get("pretrain", {})
    sidecar = {
        **provenance,
        "model": name,
        "model_args": model_args,
        "dataset": report["dataset"],
        "epochs": pretrain.get("epochs"),
        "wall_seconds": report["wall_seconds"],
        "device": report["device"],
        "versions": report["versions"],
        "config": config,
        "file": target.name,
        "bytes": target.stat().st_size,
        "sha256": file_sha256(target),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(json.dumps({k: sidecar[k] for k in ("file", "bytes", "test_accuracy", "sha256")}))


if __name__ == "__main__":
    main()
