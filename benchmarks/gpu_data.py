"""Get CIFAR-10 (168.6 MB) onto the lent GPU machine, which takes at most 64 MiB a call.

The ``device`` tool copies the working tree plus up to 8 ``carry`` paths (64 MiB in all)
on each call, and keeps ignored folders that were already there while the machine stays
warm (about 30 s after a call). So the file travels in parts, one part a call, each stashed
in an ignored folder that no call carries (a carried path replaces what is there):

    python benchmarks/gpu_data.py split            # here: gpu_transfer/part_*.bin + manifest
    python benchmarks/gpu_data.py plan             # here: the calls to make, in order

    # on the device, call k of n (carry: ["gpu_transfer/part_k.bin",
    #                                     "gpu_transfer/manifest.json"]):
    python benchmarks/gpu_data.py stash --part k   # moves the part into .gpu_data/
    # the last call: stash it, then check every part and the whole, then run at once:
    python benchmarks/gpu_data.py stash --part n --assemble && <the runs>

``assemble`` checks each part's SHA-256 and the whole file's against the manifest (and the
one in ``../shared/datasets/SOURCES.md`` when given with ``--sources``), writes
``.gpu_data/CIFAR10/cifar10_uint8.npz`` (a ``--data-dir`` for every command) and prints the
seconds each step took. A stash that finds a part missing or damaged exits 1 and names it,
so the sequence can resend that one part. Both folders are in ``.gitignore``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "datasets" / "CIFAR10" / "cifar10_uint8.npz"
OUTBOX = ROOT / "gpu_transfer"  # here: the parts waiting to be carried
STASH = ROOT / ".gpu_data"  # there: never carried, so it survives between warm calls
MIB = 1 << 20
#: the working tree travels too: leave it room under the 64 MiB of a call
DEFAULT_PART_MIB = 48


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 * MIB), b""):
            h.update(block)
    return h.hexdigest()


def split(source: Path, outbox: Path, part_mib: int) -> dict:
    """Cut ``source`` into parts of at most ``part_mib`` MiB; the manifest holds their hashes."""
    if not 1 <= part_mib <= 60:
        raise SystemExit(f"--part-mib must be 1 to 60 (a call carries 64 MiB), not {part_mib}")
    if outbox.exists():
        shutil.rmtree(outbox)
    outbox.mkdir(parents=True)
    parts = []
    with source.open("rb") as f:
        for k in range(1, 10_000):
            chunk = f.read(part_mib * MIB)
            if not chunk:
                break
            path = outbox / f"part_{k}.bin"
            path.write_bytes(chunk)
            digest = hashlib.sha256(chunk).hexdigest()
            parts.append({"name": path.name, "bytes": len(chunk), "sha256": digest})
    manifest = {
        "file": source.name,
        "bytes": source.stat().st_size,
        "sha256": _sha256(source),
        "parts": parts,
    }
    (outbox / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def plan(outbox: Path, then: str) -> list[dict]:
    """The ``device`` calls, in order: one part each, the last one assembling and running."""
    manifest = json.loads((outbox / "manifest.json").read_text())
    n = len(manifest["parts"])
    calls = []
    for k, part in enumerate(manifest["parts"], start=1):
        cmd = f"python benchmarks/gpu_data.py stash --part {k}"
        if k == n:
            cmd += " --assemble" + (f" && {then}" if then else "")
        carry = [f"gpu_transfer/{part['name']}", "gpu_transfer/manifest.json"]
        calls.append({"command": cmd, "carry": carry, "mib": round(part["bytes"] / MIB, 1)})
    return calls


def stash(part: int, outbox: Path, store: Path) -> None:
    """Move a carried part into the store, checking its hash against the manifest."""
    manifest = json.loads((outbox / "manifest.json").read_text())
    entry = manifest["parts"][part - 1]
    src = outbox / entry["name"]
    if not src.is_file():
        raise SystemExit(f"part {part} ({entry['name']}) did not arrive: resend it")
    if _sha256(src) != entry["sha256"]:
        raise SystemExit(f"part {part} ({entry['name']}) arrived damaged: resend it")
    store.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(outbox / "manifest.json", store / "manifest.json")
    shutil.move(str(src), store / entry["name"])
    print(f"part {part} of {len(manifest['parts'])} stashed ({entry['bytes'] / MIB:.1f} MiB)")


def assemble(store: Path, sources: Path | None) -> Path:
    """Check every stashed part, join them, check the whole file; the data folder's path."""
    manifest = json.loads((store / "manifest.json").read_text())
    missing = [
        p["name"]
        for p in manifest["parts"]
        if not (store / p["name"]).is_file() or _sha256(store / p["name"]) != p["sha256"]
    ]
    if missing:
        raise SystemExit(f"missing or damaged parts: {', '.join(missing)}: resend them")
    out = store / "CIFAR10" / manifest["file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for p in manifest["parts"]:
            f.write((store / p["name"]).read_bytes())
    digest = _sha256(out)
    if digest != manifest["sha256"] or out.stat().st_size != manifest["bytes"]:
        out.unlink()
        raise SystemExit("the joined file does not match the manifest: resend every part")
    if sources is not None and sources.is_file() and digest not in sources.read_text():
        raise SystemExit(f"the joined file's SHA-256 {digest} is not the one in {sources}")
    for p in manifest["parts"]:
        (store / p["name"]).unlink()
    return out.parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("split", help="cut the data file into parts (here)")
    s.add_argument("--source", type=Path, default=SOURCE)
    s.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    p = sub.add_parser("plan", help="print the device calls to make, in order (here)")
    p.add_argument("--then", default="", help="the command the last call runs after assembly")
    t = sub.add_parser("stash", help="keep a carried part (on the device)")
    t.add_argument("--part", type=int, required=True)
    t.add_argument("--assemble", action="store_true", help="then check and join every part")
    t.add_argument("--sources", type=Path, help="SOURCES.md whose checksum the file must have")
    a = sub.add_parser("assemble", help="check and join the stashed parts (on the device)")
    a.add_argument("--sources", type=Path)
    args = ap.parse_args()
    start = time.perf_counter()
    if args.verb == "split":
        m = split(args.source, OUTBOX, args.part_mib)
        print(f"{len(m['parts'])} parts of at most {args.part_mib} MiB in {OUTBOX}")
    elif args.verb == "plan":
        json.dump(plan(OUTBOX, args.then), sys.stdout, indent=2)
        print()
    else:
        if args.verb == "stash":
            stash(args.part, OUTBOX, STASH)
        if args.verb == "assemble" or args.assemble:
            root = assemble(STASH, args.sources)
            print(f"data ready: --data-dir {root}")
    print(f"{args.verb}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
