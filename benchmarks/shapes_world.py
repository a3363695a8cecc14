"""ShapesWorld generation speed in samples/s: render only, render + encode, and the shard writer
(`fourm data shapes`) with 1 and --workers processes, at 64 and 224 px.

    .venv/bin/python benchmarks/shapes_world.py                 # default: 64 and 224 px, 1 and 2 workers
    .venv/bin/python benchmarks/shapes_world.py --num 2000 --workers 4
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from fourm.data.commands import write_shapes
from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.data.shards import encode_sample


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--num", type=int, default=1000, help="samples per measurement at 64 px (scaled down by area above)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores available: {cores}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'size':>5} {'samples':>8} {'render':>10} {'render+encode':>14} {'writer x1':>10} {'writer x' + str(args.workers):>10}   (samples/s)")
    for size in args.sizes:
        cfg = WorldConfig(image_size=size)
        n = max(50, int(args.num * min(1.0, (64 / size) ** 2) * 2))  # enough work for a stable figure
        render_scene(args.seed, 0, cfg)  # warm caches
        r_render = rate(lambda i: render_scene(args.seed, i, cfg), n)
        r_encode = rate(lambda i: encode_sample(render_scene(args.seed, i, cfg)), n)
        writer = []
        for w in (1, args.workers):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                write_shapes(d, n, args.seed, cfg, shard_size=max(1, n // (2 * args.workers)), workers=w, progress=False)
                writer.append(n / (time.perf_counter() - t0))
        print(f"{size:>5} {n:>8} {r_render:>10.0f} {r_encode:>14.0f} {writer[0]:>10.0f} {writer[1]:>10.0f}")
    print("render: render_scene only, one process; render+encode: plus PNG/npy/JSON encoding; writer: "
          "`fourm data shapes` end to end (tar, fsync, metadata; worker start-up included), whole shards per worker")


if __name__ == "__main__":
    main()
