"""Fuzz the file readers: structure-aware mutations of checkpoints, .admmz and safetensors
files fed to ``inspect``, ``eval``, ``export`` and ``run --resume``.

    python benchmarks/fuzz_files.py                  # 2,400 cases, about an hour on 2 cores
    python benchmarks/fuzz_files.py --cases 200      # a quick look

Seeds come from one tiny LeNet-5 run (pruned, fc1 on a 4-bit grid) made here: its
``model.admmz``, its ``model.safetensors`` and a checkpoint taken mid-ADMM. Each case mutates
one seed where a reader looks (a field of the JSON header deleted or replaced by a hostile
value, a number scaled, a tensor swapped, reshaped or filled with NaN, payload bytes flipped
or cut) and repairs what would make the mutation trivially caught: the .admmz CRC-32 is
recomputed, the safetensors header length rewritten, a checkpoint re-saved by ``torch.save``.
A minority of cases are left unrepaired (raw byte damage) to keep the first checks honest.

Every case runs the real CLI in a child process forked from a server that has already
imported the package (so a case costs what the reader costs, not Python's start-up), with
stdout/stderr captured at the file-descriptor level, a wall-clock limit, and its peak
memory (VmHWM after resetting it, minus the resident size when the case starts).

A case is *refused* when the CLI exits with a documented refusal code (2 bad input,
3 training stopped, 4 constraint broken, 5 machine) with no traceback, *accepted* at exit 0,
and a *failure* otherwise: exit 1 (a bug), an uncaught exception, ``Traceback`` anywhere in
its output, a hang past the limit, or memory more than ``--memory-mb`` (200) above what the
same verb takes on the untouched seed (eval and resume hold data, training state). Failures are
listed with their mutation so they can be replayed.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from admmcompress.formats.admmz import pack_container, split_container
from common import write_results

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
REFUSAL_CODES = {2, 3, 4, 5}

# Values a hostile writer would put where a reader expects something sensible.
HOSTILE: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    3,
    255,
    2**31,
    2**32 + 1,
    2**63,
    -(2**63),
    10**18,
    10**30,
    1e308,
    -1e308,
    1e-320,
    float("nan"),
    float("inf"),
    "",
    "x",
    "float64",
    "bfloat16",
    "int4",
    "../../../etc/passwd",
    "os:system",
    "lenet300",
    "resnet20_cifar",
    "cifar10",
    "imagenet",
    [],
    [0],
    [-1],
    [65536, 65536, 65536],
    [1, 4096, 4096],
    [3, 32, 32],
    [2**40],
    {},
    {"a": 1},
    "A" * 10_000,
]


# ---------------------------------------------------------------- tree mutations


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON-like tree (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _scaled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return rng.choice(HOSTILE)
    factor = rng.choice([0, -1, 2, 0.5, 1000, 1e-6, 2**20])
    out = value * factor
    return int(out) if isinstance(value, int) and math.isfinite(out) else out


def mutate_tree(tree: Any, rng: random.Random, value_pool: list[Any]) -> tuple[Any, str]:
    """One structural change to a JSON-like tree; returns the tree and what was done."""
    tree = copy.deepcopy(tree)
    # a tuple (an optimizer's betas) cannot be changed in place: mutate around it
    paths = [p for p in _paths(tree) if not isinstance(_get(tree, p[:-1]), tuple)]
    path = rng.choice(paths)
    parent, key = _get(tree, path[:-1]), path[-1]
    old = parent[key]
    op = rng.choice(["delete", "replace", "replace", "scale", "swap", "duplicate"])
    if op == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif op == "replace":
        parent[key] = copy.deepcopy(rng.choice(value_pool))
    elif op == "scale":
        parent[key] = _scaled(old, rng)
    elif op == "swap":
        other = rng.choice(paths)
        try:
            oparent, okey = _get(tree, other[:-1]), other[-1]
            parent[key], oparent[okey] = oparent[okey], old
        except (KeyError, IndexError, TypeError):
            parent[key] = rng.choice(value_pool)
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(old))
    else:
        parent[key] = [old, old]
    return tree, f"{op} {'/'.join(map(str, path))}"


def flip_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    op = rng.choice(["flip", "flip", "truncate", "extend", "zero"])
    if op == "flip" or not data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del data[rng.randrange(len(data)) :]
    elif op == "extend":
        data += os.urandom(rng.randint(1, 4096))
    else:
        start = rng.randrange(len(data))
        data[start : start + rng.randint(1, 256)] = bytes(min(256, len(data) - start))
    return bytes(data), op


# ---------------------------------------------------------------- per-format mutators


def mutate_admmz(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A header field or payload bytes changed, CRC-32 repaired (mostly)."""
    version, raw, payload = split_container(blob)
    header = json.loads(raw)
    roll = rng.random()
    if roll < 0.65:
        header, what = mutate_tree(header, rng, HOSTILE)
        what = "header: " + what
    elif roll < 0.85:
        payload, what = flip_bytes(payload, rng)
        what = "payload: " + what
    elif roll < 0.9:
        version, what = rng.choice([0, 2, 2**32 - 1]), "version"
    else:
        damaged, what = flip_bytes(blob, rng)
        return damaged, "raw (unrepaired): " + what
    return pack_container(json.dumps(header).encode(), payload, version), what


def _decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = {"__json__": json.loads(v)}
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def _encode_metadata(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict) and set(v) == {"__json__"}:
            v = json.dumps(v["__json__"])
        out[k] = v
    return out


def mutate_safetensors(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A header entry (dtype, shape, offsets) or a metadata value (decoded from its JSON
    string, changed, re-encoded) or payload bytes; the header length is rewritten."""
    (hlen,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8 : 8 + hlen])
    payload = blob[8 + hlen :]
    roll = rng.random()
    if roll < 0.7:
        if "__metadata__" in header and rng.random() < 0.6:
            header["__metadata__"] = _decode_metadata(header["__metadata__"])
            meta, what = mutate_tree(header["__metadata__"], rng, HOSTILE)
            header["__metadata__"] = _encode_metadata(meta)
            what = "metadata: " + what
        else:
            header, what = mutate_tree(header, rng, HOSTILE)
            what = "header: " + what
    elif roll < 0.9:
        payload, what = flip_bytes(payload, rng)
        what = "payload: " + what
    else:
        damaged, what = flip_bytes(blob, rng)
        return damaged, "raw: " + what
    packed = json.dumps(header).encode()
    return struct.pack("<Q", len(packed)) + packed + payload, what


def _tensor_pool(rng: random.Random) -> list[Any]:
    return [
        torch.zeros(0),
        torch.zeros(3, 3),
        torch.full((4,), float("nan")),
        torch.full((2, 2), float("inf")),
        torch.ones(5, dtype=torch.bool),
        torch.zeros(5000, dtype=torch.uint8),
        torch.tensor(1e38),
        torch.arange(10, dtype=torch.int64),
        *HOSTILE,
    ]


def _tensor_edit(t: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, str]:
    op = rng.choice(["nan", "inf", "reshape", "dtype", "shrink", "huge"])
    t = t.clone()
    if op == "nan" and t.is_floating_point() and t.numel():
        t.view(-1)[rng.randrange(t.numel())] = float("nan")
    elif op == "inf" and t.is_floating_point() and t.numel():
        t.view(-1)[rng.randrange(t.numel())] = float("inf")
    elif op == "reshape" and t.numel():
        t = t.reshape(-1)
    elif op == "dtype":
        t = t.to(rng.choice([torch.float16, torch.float64, torch.int32, torch.bool, torch.uint8]))
    elif op == "shrink" and t.numel():
        t = t.reshape(-1)[: t.numel() // 2]
    elif t.is_floating_point():
        t = t * 1e30
    return t, op


def _tensor_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _tensor_paths(v, (*prefix, k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            out += _tensor_paths(v, (*prefix, i))
    elif isinstance(node, torch.Tensor):
        out.append(prefix)
    return out


def mutate_checkpoint(state: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    """A field of the loaded checkpoint deleted, replaced, scaled or a tensor in it damaged,
    then saved again with ``torch.save``; a few cases damage the saved bytes instead."""
    state = copy.deepcopy(state)
    roll = rng.random()
    if roll < 0.4:
        paths = _tensor_paths(state)
        path = rng.choice(paths)
        parent, key = _get(state, path[:-1]), path[-1]
        parent[key], op = _tensor_edit(parent[key], rng)
        what = f"tensor {op} {'/'.join(map(str, path))}"
    elif roll < 0.9:
        state, what = mutate_tree(state, rng, _tensor_pool(rng))
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        damaged, op = flip_bytes(buf.getvalue(), rng)
        return damaged, "raw: " + op
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), what


# ---------------------------------------------------------------- running one case


def _peak_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _child(argv: list[str], log: str, queue: Any) -> None:
    """Run the CLI in this forked process with its output on ``log``; report the exit
    code, how it ended and the memory it took above where it started."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    base = _peak_kb("VmRSS")
    from admmcompress.cli import main

    how = "returned"
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # an escaped exception is what we look for
        import traceback

        traceback.print_exc()
        code, how = 1, f"uncaught {type(e).__name__}"
    sys.stdout.flush()
    sys.stderr.flush()
    queue.put({"code": code, "how": how, "extra_mb": (_peak_kb("VmHWM") - base) / 1024})


def run_case(ctx: Any, argv: list[str], limit: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".log", delete=False) as f:
        log = f.name
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(argv, log, queue))
    start = time.perf_counter()
    proc.start()
    proc.join(limit)
    seconds = time.perf_counter() - start
    if proc.is_alive():
        proc.kill()
        proc.join()
        result = {"code": None, "how": "hang", "extra_mb": None}
    else:
        try:
            result = queue.get(timeout=5)
        except Exception:  # died without reporting: killed by a signal
            result = {"code": proc.exitcode, "how": f"died (exit {proc.exitcode})"}
            result["extra_mb"] = None
    output = Path(log).read_text(errors="replace")
    os.unlink(log)
    return {**result, "seconds": seconds, "output": output[-2000:]}


def classify(r: dict[str, Any], memory_mb: float) -> str:
    """``memory_mb``: the bound for this verb (its cost on the untouched seed plus slack)."""
    if r["how"] == "hang":
        return "hang"
    if r["extra_mb"] is not None and r["extra_mb"] > memory_mb:
        return "memory"
    if "Traceback" in r["output"] or r["how"] != "returned" or r["code"] == 1:
        return "exception"
    if r["code"] == 0:
        return "accepted"
    if r["code"] in REFUSAL_CODES:
        return "refused"
    return "exception"


# ---------------------------------------------------------------- seeds and the campaign


def make_seeds(work: Path) -> dict[str, Any]:
    """One tiny finished run (its .admmz and safetensors) and a checkpoint from mid-ADMM."""
    cfg = yaml.safe_load((ROOT / "configs" / "tiny_test.yaml").read_text())
    cfg["runtime"] = {"progress": False, "threads": 1}
    cfg["data"].update(train_subset=1000, test_subset=500)
    cfg["admm"]["epochs"] = 4
    del cfg["rules"]["fc*"]
    cfg["rules"]["fc1"] = {
        "prune": "irregular",
        "keep": 0.05,
        "quantize": {"kind": "uniform", "bits": 4},
    }
    cfg["rules"]["fc2"] = {"prune": "irregular", "keep": 0.1}
    config = work / "seed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    base = [sys.executable, "-m", "admmcompress", "run", str(config), "--data-dir", str(DATA)]
    done = work / "done"
    subprocess.run([*base, "--out", str(done), "--no-progress"], check=True, env=env)
    subprocess.run([sys.executable, "-m", "admmcompress", "export", str(done)], check=True, env=env)
    # A mid-run folder: the finished run's folder without its results, the checkpoint
    # rewound to ADMM epoch 2 by a second run killed there.
    mid = work / "mid"
    proc = subprocess.Popen(
        [*base, "--out", str(mid), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        log = mid / "run.log"
        if log.exists() and "admm 2/4" in log.read_text():
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    (mid / ".lock").unlink(missing_ok=True)
    return {
        "config": config,
        "admmz": (done / "model.admmz").read_bytes(),
        "safetensors": (done / "model.safetensors").read_bytes(),
        "checkpoint": torch.load(mid / "checkpoint.pt", weights_only=True),
        "mid": mid,
    }


_SEED_BLOB = b""  # stands for "the seed itself, unmutated"


def _prepare(kind: str, verb: str, blob: bytes, case_dir: Path, seeds: dict[str, Any]) -> list[str]:
    """Write the case's file into ``case_dir``; the command line that feeds it to ``verb``."""
    case_dir.mkdir()
    if kind == "checkpoint":
        shutil.copytree(seeds["mid"], case_dir / "run")
        target = case_dir / "run" / "checkpoint.pt"
        if blob:
            target.write_bytes(blob)
        return [
            "run",
            str(seeds["config"]),
            "--out",
            str(case_dir / "run"),
            "--resume",
            "--data-dir",
            str(DATA),
            "--no-progress",
        ]
    target = case_dir / ("m.admmz" if kind == "admmz" else "model.safetensors")
    target.write_bytes(blob or seeds[kind])
    if verb == "inspect":
        return ["inspect", str(target)]
    if verb == "eval":
        return ["eval", str(target), "--data-dir", str(DATA)]
    fmt = "onnx" if verb == "export-onnx" else "admmz"
    argv = ["export", str(target), "--format", fmt, "--out", str(case_dir / "o")]
    return [*argv, "--compact"] if verb == "export-compact" else argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=2400, help="total CLI calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=120.0, help="seconds before a case hangs")
    ap.add_argument("--memory-mb", type=float, default=200.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        [
            "torch",
            "admmcompress.cli",
            "admmcompress.cli.commands",
            "admmcompress.formats",
            "admmcompress.formats.admmz",
            "admmcompress.run.pipeline",
            "admmcompress.models.mnist",
            "admmcompress.data.mnist",
            "onnx",
        ]
    )
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fuzz_"))
    try:
        seeds = make_seeds(work)
        # Shares of the calls: .admmz (inspect, eval, export), safetensors (eval, export),
        # checkpoints (run --resume; each resume trains the remaining tiny epochs).
        plan = (
            [("admmz", v) for v in ("inspect", "eval", "export", "export-compact")] * 3
            + [("admmz", "export-onnx"), ("admmz", "inspect")] * 2
            + [("safetensors", v) for v in ("eval", "export", "export-compact", "export-onnx")] * 2
            + [("checkpoint", "resume")] * 3
        )
        rows, outcomes = [], Counter()
        per_kind: dict[str, Counter] = {}
        seed_seconds = time.perf_counter() - start
        baseline = {}
        for kind, verb in sorted(set(plan)):  # the untouched seeds: accepted, and their memory
            case_dir = work / f"seed_{kind}_{verb}"
            argv = _prepare(kind, verb, _SEED_BLOB, case_dir, seeds)
            r = run_case(ctx, argv, args.limit)
            if r["code"] != 0 or "Traceback" in r["output"]:
                raise SystemExit(f"the unmutated {kind} fails {verb}:\n{r['output']}")
            baseline[f"{kind} {verb}"] = r["extra_mb"]
            shutil.rmtree(case_dir)
        print(f"seeds accepted; memory of each verb on them (MB): {baseline}", flush=True)
        for i in range(args.cases):
            kind, verb = rng.choice(plan)
            case_dir = work / f"case{i}"
            if kind == "admmz":
                blob, what = mutate_admmz(seeds["admmz"], rng)
            elif kind == "safetensors":
                blob, what = mutate_safetensors(seeds["safetensors"], rng)
            else:
                blob, what = mutate_checkpoint(seeds["checkpoint"], rng)
            argv = _prepare(kind, verb, blob, case_dir, seeds)
            r = run_case(ctx, argv, args.limit)
            outcome = classify(r, baseline[f"{kind} {verb}"] + args.memory_mb)
            outcomes[outcome] += 1
            per_kind.setdefault(f"{kind} {verb}", Counter())[outcome] += 1
            row = {
                "case": i,
                "file": kind,
                "verb": verb,
                "mutation": what,
                "outcome": outcome,
                "exit": r["code"],
                "seconds": round(r["seconds"], 3),
                "extra_mb": None if r["extra_mb"] is None else round(r["extra_mb"], 1),
            }
            if outcome not in ("accepted", "refused"):
                row["output"] = r["output"]
                print(f"case {i} {kind} {verb} {what}: {outcome}\n{r['output']}", flush=True)
            rows.append(row)
            shutil.rmtree(case_dir)
            if (i + 1) % 100 == 0:
                print(f"{i + 1}/{args.cases} cases: {dict(outcomes)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    mem = [r["extra_mb"] for r in rows if r["extra_mb"] is not None]
    worst = max(rows, key=lambda r: r["extra_mb"] or 0)
    lines = [
        f"{args.cases} cases (seed {args.seed}) in {seconds / 60:.1f} min "
        f"(seeds {seed_seconds:.0f} s); limit {args.limit:.0f} s a case, "
        f"memory bound: {args.memory_mb:.0f} MB above what the same verb takes on the "
        "untouched file",
        "",
        "| file | verb | cases | refused | accepted | exception | hang | memory |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in sorted(per_kind):
        c = per_kind[name]
        kind, verb = name.split(" ")
        lines.append(
            f"| {kind} | {verb} | {sum(c.values())} | {c['refused']} | {c['accepted']} | "
            f"{c['exception']} | {c['hang']} | {c['memory']} |"
        )
    c = outcomes
    lines.append(
        f"| **all** | | **{sum(c.values())}** | {c['refused']} | {c['accepted']} | "
        f"{c['exception']} | {c['hang']} | {c['memory']} |"
    )
    lines += [
        "",
        f"Peak memory above the case's start: median {sorted(mem)[len(mem) // 2]:.1f} MB, "
        f"max {max(mem):.1f} MB ({worst['file']} {worst['verb']}, {worst['mutation']}).",
    ]
    codes = Counter(r["exit"] for r in rows)
    lines.append(f"Exit codes: {dict(sorted(codes.items(), key=lambda kv: str(kv[0])))}.")
    write_results(
        "fuzz_files",
        {
            "cases": args.cases,
            "seed": args.seed,
            "seconds": seconds,
            "outcomes": dict(outcomes),
            "seed_memory_mb": baseline,
            "per_kind": {k: dict(v) for k, v in per_kind.items()},
            "failures": [r for r in rows if r["outcome"] not in ("accepted", "refused")],
            "rows": rows,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
