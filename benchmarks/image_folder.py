"""How fast image folders stream: training batches per second for 0, 1, 2, ... workers.

    python benchmarks/image_folder.py [--images 768] [--workers 0 1 2]

Writes a fake ImageNet-like folder (JPEGs of about 500x375, smooth content so they compress
like photographs) into a temporary directory, then times one epoch of
``FolderSplit.train_batches`` (decode, random-resized crop to 224, flip, normalise) for each
worker count, after a warm-up batch. On a machine with few cores this measures the decode
cost per image; on a GPU server it tells how many workers keep a GPU fed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from admmcompress.data import Augment
from admmcompress.data.image_folder import FolderOptions, load_image_folder
from common import write_results


def fake_folder(root: Path, images: int, classes: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            c = i % classes
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(330, 420)), int(rng.integers(450, 550))
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack(
                [
                    np.sin(xx / rng.uniform(10, 60) + k) * np.cos(yy / rng.uniform(10, 60))
                    for k in range(3)
                ],
                axis=-1,
            )
            pixels = ((base + 1) * 127.5 + rng.normal(0, 8, base.shape)).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(d / f"img{i}.JPEG", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)  # the decoding is the work; one thread for the main process
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fake_folder(Path(tmp), args.images)
        for workers in args.workers:
            train = load_image_folder("imagenet", tmp, FolderOptions(workers=workers)).train
            gen = torch.Generator().manual_seed(0)
            batches = train.train_batches(args.batch_size, gen, None, Augment(hflip=True))
            next(batches)  # start-up (worker processes) is not counted
            start, seen = time.perf_counter(), 0
            for x, _, _ in batches:
                seen += x.shape[0]
            seconds = time.perf_counter() - start
            rows.append(
                {"workers": workers, "images": seen, "seconds": seconds, "per_s": seen / seconds}
            )
    base = rows[0]["per_s"]
    table = "| workers | images | seconds | images/s | vs first |\n"
    table += "| ---: | ---: | ---: | ---: | ---: |\n"
    table += "\n".join(
        f"| {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['per_s']:.0f} | "
        f"{r['per_s'] / base:.2f}x |"
        for r in rows
    )
    write_results("image_folder", {"batch_size": args.batch_size, "rows": rows}, table)


if __name__ == "__main__":
    main()
