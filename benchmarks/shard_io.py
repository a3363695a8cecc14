"""Shard write / read throughput on synthetic ShapesWorld-like samples (prints figures, asserts nothing).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shard_io.py --num-samples 2000 --image-size 64

Each read line gives samples per second of wall time and per second of CPU time (this process and
its DataLoader workers, which have exited when the line is printed). On a machine shared with other
jobs the wall figure swings with their load; the CPU figure is the steadier one to compare.
To compare two versions of the reader, run this script with PYTHONPATH pointing at each checkout.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from fourm.data.shard_reader import ShardDataset, index_shard
from fourm.data.shards import ShardWriter, encode_sample


def synthetic_sample(i: int, size: int) -> dict:
    rng = np.random.default_rng(i)
    # Smooth images (like rendered scenes) rather than noise, so PNG sizes are realistic.
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([(xx * 255 // size), (yy * 255 // size), np.full_like(xx, i % 256)], -1).astype(np.uint8)
    return {
        "rgb": rgb,
        "semseg": ((xx // 8 + yy // 8) % 6).astype(np.uint8),
        "depth": (1.0 + yy / size * 20).astype(np.float32),
        "det": [{"box": [0.1, 0.2, 0.3, 0.4], "class": "cube"}] * int(rng.integers(1, 5)),
        "caption": f"a small red cube left of a large blue ball ({i})",
    }


def stack_images(batch: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in batch]) for k in ("rgb", "semseg", "depth")}


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (DataLoader workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def report(label: str, count: Callable[[], int]) -> None:
    t, c = time.perf_counter(), cpu_seconds()
    n = count()
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    print(f"{label + ':':52s} {n / wall:8.0f} samples/s   {n / cpu:8.0f} samples per CPU-s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=500)
    args = ap.parse_args()
    n = args.num_samples
    with tempfile.TemporaryDirectory() as out:
        samples = [synthetic_sample(i, args.image_size) for i in range(n)]
        t = time.perf_counter()
        encoded = [encode_sample(s) for s in samples]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        with ShardWriter(out, shard_size=args.shard_size) as w:
            for i, members in enumerate(encoded):
                w.write(f"{i:06d}", members)
        t_write = time.perf_counter() - t
        print(f"encode: {n / t_enc:8.0f} samples/s   write tars: {n / t_write:8.0f} samples/s   ({len(w.shards)} shards)")
        t = time.perf_counter()
        members = 0
        for path in w.shards:
            with open(path, "rb") as f:
                members += sum(len(g.members) for g in index_shard(f))
        print(f"header index: {(time.perf_counter() - t) / members * 1e6:6.1f} us per member")
        for workers in (0, 1, 2):
            loader = DataLoader(ShardDataset(out), batch_size=None, num_workers=workers)
            report(f"read+decode+tensor, {workers} workers", lambda: sum(1 for _ in loader))
        for workers in (0, 2):  # batch mode: one tensor per field per batch crosses the process boundary
            loader = DataLoader(ShardDataset(out, batch_size=64), batch_size=None, num_workers=workers,
                                collate_fn=stack_images)
            report(f"batch mode (64, stacked), {workers} workers", lambda: sum(len(b["rgb"]) for b in loader))
        for world_size in (2, 8):
            report(f"one rank of {world_size} (reads all headers, decodes 1/{world_size})",
                   lambda: sum(1 for _ in ShardDataset(out, world_size=world_size)))

if __name__ == "__main__":
    main()
