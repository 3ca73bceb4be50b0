"""Behaviour check: do three real runs give, bit for bit, what the reference commit gave?

    python benchmarks/behaviour_check.py            # compare with behaviour/reference.json
    python benchmarks/behaviour_check.py --record   # write it (at the commit to keep)

Each case runs ``admmcompress run`` on a config (the demo, a short progressive run with
quantization and distillation, coupled filter pruning on ResNet-20), then ``export`` to
``.admmz`` (plain and compact). It fingerprints what a user gets: the SHA-256 of every
tensor and the metadata of every saved model (final and per step), every figure of
``report.json`` (timings, dates and library versions left out: they differ between two runs
of the same code) and the bytes of each ``.admmz`` file. A refactoring that changes
nothing a user can see passes; anything else is listed key by key.

Runs use two threads and deterministic kernels, so the fingerprints hold for one machine,
torch build and thread count; the reference records which. About 7 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "behaviour"
REFERENCE = HERE / "reference.json"
SHARED_DATA = ROOT.parent / "shared" / "datasets"

CASES: dict[str, dict[str, Any]] = {
    "demo": {"config": ROOT / "configs" / "lenet5_mnist_demo.yaml", "set": []},
    "progressive_quant_distill": {"config": HERE / "progressive_quant_distill.yaml", "set": []},
    "resnet20_filter_coupled": {
        "config": HERE / "resnet20_filter_coupled.yaml",
        "set": [f"data.root={SHARED_DATA}"],
    },
}
#: report.json keys whose values differ between two runs of the same code.
VOLATILE = {"created", "wall_seconds", "versions", "seconds", "train_seconds", "eval_seconds"}
VOLATILE_SUFFIX = "_seconds"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model_fingerprint(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as f:
        out["metadata"] = dict(f.metadata() or {})
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            flat = t.reshape(-1).contiguous()
            raw = flat.view(torch.uint8).numpy().tobytes() if t.numel() else b""
            out[f"tensor {key}"] = f"{t.dtype} {list(t.shape)} {_sha(raw)}"
    return out


def _figures(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten report.json to path -> leaf value, without the volatile keys."""
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k in VOLATILE or k.endswith(VOLATILE_SUFFIX):
                continue
            flat.update(_figures(v, f"{prefix}{k}."))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            flat.update(_figures(v, f"{prefix}{i}."))
    else:
        flat[prefix.rstrip(".")] = tree
    return flat


def _cli(*args: str, quiet: bool = False) -> None:
    cmd = [sys.executable, "-m", "admmcompress", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None)


def run_case(name: str, case: dict[str, Any], work: Path, reuse: bool) -> dict[str, Any]:
    out = work / name
    start = time.perf_counter()
    if not (reuse and (out / "report.json").is_file()):
        if out.exists():
            shutil.rmtree(out)
        sets = [x for s in ["runtime.threads=2", *case["set"]] for x in ("--set", s)]
        _cli("run", str(case["config"]), "--out", str(out), "--no-progress", *sets)
    _cli("export", str(out), "--out", str(out / "model.admmz"), quiet=True)
    _cli("export", str(out), "--compact", "--out", str(out / "model_compact.admmz"), quiet=True)
    seconds = time.perf_counter() - start
    fp: dict[str, Any] = {}
    models = [out / "model.safetensors", *sorted((out / "steps").glob("*.safetensors"))]
    for path in models:
        for k, v in _model_fingerprint(path).items():
            fp[f"{path.relative_to(out)} {k}"] = v
    for k, v in _figures(json.loads((out / "report.json").read_text())).items():
        fp[f"report.json {k}"] = v
    for admmz in ("model.admmz", "model_compact.admmz"):
        fp[f"{admmz} sha256"] = _sha((out / admmz).read_bytes())
    print(f"{name}: {len(fp)} fingerprints in {seconds:.0f} s", flush=True)
    return fp


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN for this purpose
    return a == b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--record", action="store_true", help="write the reference instead")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "behaviour_check")
    ap.add_argument("--only", nargs="+", choices=sorted(CASES), help="run these cases only")
    ap.add_argument(
        "--reuse-runs",
        action="store_true",
        help="keep finished run folders in --work and only export again (checks the writers)",
    )
    args = ap.parse_args()
    names = args.only or list(CASES)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    results = {n: run_case(n, CASES[n], args.work, args.reuse_runs) for n in names}
    env = {"torch": torch.__version__, "threads": 2, "commit": commit}
    if args.record:
        old = json.loads(REFERENCE.read_text())["cases"] if REFERENCE.is_file() else {}
        data = {"environment": env, "cases": {**old, **results}}
        REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"reference written: {REFERENCE} (commit {commit[:10]})")
        return 0
    ref = json.loads(REFERENCE.read_text())
    if ref["environment"]["torch"] != env["torch"]:
        print(f"warning: reference made with torch {ref['environment']['torch']}, this is {env}")
    failures = 0
    for name, fp in results.items():
        want = ref["cases"][name]
        diff = [
            f"  {k}: reference {want.get(k, '(absent)')!r}, now {fp.get(k, '(absent)')!r}"
            for k in sorted(set(want) | set(fp))
            if not _same(want.get(k), fp.get(k))
        ]
        status = "EQUAL" if not diff else f"{len(diff)} DIFFERENCES"
        print(
            f"{name}: {status} ({len(want)} fingerprints of commit "
            f"{ref['environment']['commit'][:10]})"
        )
        for line in diff[:40]:
            print(line)
        failures += bool(diff)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
