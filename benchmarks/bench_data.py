"""Data throughput on this machine's CPU: JPEG decoding from an archive, and batched
augmentation by ``TensorLoader`` (pad + random crop + flip + normalise).

    python benchmarks/bench_data.py [--archive PATH] [--limit N] [--batch 128] [--batches 100]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.data import ImageSet, TensorLoader
from resnetlab.data.archive import iter_files
from resnetlab.data.folder import decode, is_image_name

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def bench_decode(archive: Path, limit: int) -> tuple[int, float, float, torch.Tensor]:
    """Seconds to read ``limit`` JPEGs from the archive, and to decode them, plus the images."""
    start = time.perf_counter()
    blobs = []
    for name, read in iter_files(archive):
        if read is not None and is_image_name(name):
            blobs.append(read())
            if len(blobs) == limit:
                break
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    arrays = [decode(b) for b in blobs]
    decode_s = time.perf_counter() - start
    return len(blobs), read_s, decode_s, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def bench_loader(images: torch.Tensor, batch: int, batches: int, train: bool) -> float:
    """Images per second through ``TensorLoader.epoch`` on the CPU."""
    data = ImageSet(images, torch.zeros(len(images), dtype=torch.int64), ["x"], "bench")
    loader = TensorLoader(
        data, batch, train=train, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26], drop_last=True
    )
    done, start, epoch = 0, time.perf_counter(), 0
    while done < batches * batch:
        for x, _ in loader.epoch(epoch):
            done += len(x)
            if done >= batches * batch:
                break
        epoch += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--limit", type=int, default=20_000, help="JPEGs to decode")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    n, read_s, decode_s, images = bench_decode(args.archive, args.limit)
    rows = [
        (f"read {n:,} JPEG files from {args.archive.name}", n / read_s),
        (f"decode {n:,} JPEGs (Pillow, 1 process)", n / decode_s),
        (f"TensorLoader train (augment), batch {args.batch}", None),
        (f"TensorLoader eval (no augment), batch {args.batch}", None),
    ]
    rows[2] = (rows[2][0], bench_loader(images, args.batch, args.batches, train=True))
    rows[3] = (rows[3][0], bench_loader(images, args.batch, args.batches, train=False))
    cpu = platform.processor() or platform.machine()
    print(
        f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"| {'step':<52} | {'images/s':>10} |")
    print(f"|{'-' * 54}|{'-' * 12}|")
    for label, rate in rows:
        print(f"| {label:<52} | {rate:>10,.0f} |")


if __name__ == "__main__":
    main()
