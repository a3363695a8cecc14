"""``fourm demo``: the main job on the bundled default, ShapesWorld.

It writes a small ShapesWorld split as webdataset shards, reads it back through the shard reader
(the same path training uses) and renders the contact sheet. Once a trained model is bundled it
grows into the any-to-any demo.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fourm.data import shapes_world as sw
from fourm.data.commands import write_shapes
from fourm.data.contact_sheet import render_contact_sheet
from fourm.data.shards import ShardDataset, list_shards


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job on ShapesWorld (data split + contact sheet)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--num-samples", type=int, default=256, help="samples in the split (default: 256)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--workers", type=int, default=2, help="generator processes (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    shard_dir = out / "shapes"
    meta = write_shapes(
        shard_dir, num_samples=args.num_samples, seed=args.seed,
        config=sw.WorldConfig(image_size=args.image_size), shard_size=min(128, args.num_samples),
        workers=args.workers,
    )
    t_gen = time.perf_counter() - t0

    # Read back through the reader: the contact sheet shows what a trainer would see.
    dataset = ShardDataset(list_shards(shard_dir), to_tensor=False)
    samples = []
    for sample in dataset:
        samples.append(sample)
        if len(samples) == 16:
            break
    sheet = render_contact_sheet(samples, out / "contact_sheet.png",
                                 title=f"ShapesWorld {sw.WORLD_VERSION} - seed {args.seed} - {args.image_size} px")
    summary = {
        "shards": str(shard_dir),
        "num_samples": args.num_samples,
        "num_shards": len(list_shards(shard_dir)),
        "generation_seconds": round(t_gen, 2),
        "samples_per_second": round(args.num_samples / t_gen, 1),
        "contact_sheet": str(sheet),
        "world_version": meta["world_version"],
        "world_config": meta["config"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.num_samples} ShapesWorld samples to {shard_dir} in {t_gen:.1f} s")
    print(f"contact sheet: {sheet}")
    print(f"summary: {out / 'summary.json'}")
    return 0
