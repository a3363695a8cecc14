"""``fourm demo``: the main job, any-to-any generation with the bundled model on ShapesWorld.

    fourm demo                       # models/shapes_bundled + tokenizers/shapes64 (run from the checkout) -> out/demo/
    fourm demo --num-samples 8       # quicker, noisier table
    fourm demo --world-only          # only the data part (no model needed)

It writes into ``--out``:

* ``contact_sheet.png``: a ShapesWorld split written as webdataset shards and read back through
  the shard reader (what a trainer sees): rgb, depth, semseg, boxes and caption per row;
* ``any_to_any.png``: for the first held-out scenes, the ground truth of every modality, then the
  model's generation in every direction (rgb -> semseg / depth / det / caption; caption / det /
  depth / semseg -> rgb; caption -> det and caption -> det -> rgb);
* ``benchmark.md`` and ``benchmark.json``: the ShapesWorld benchmark (``fourm eval``) on those
  scenes, each score beside its tokenizer bound;
* ``summary.json``: paths, settings and wall times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fourm.atomic import atomic_write_text
from fourm.cli import BUNDLED_MODEL, BUNDLED_TOKENIZERS, bundled_default
from fourm.data import shapes_world as sw
from fourm.data.commands import write_shapes
from fourm.data.contact_sheet import render_contact_sheet
from fourm.data.shard_reader import ShardDataset
from fourm.data.shards import list_shards
from fourm.errors import UsageError
from fourm.hub import looks_like_repo_id

DEMO_SEED = 1000  # held-out world: the bundled model trained on seed 0 and validated on seed 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job: any-to-any generation with the bundled model on ShapesWorld",
                              description="Write a ShapesWorld split as shards and its contact sheet, then generate "
                                          "every modality from every other with a FourM and score it beside the "
                                          "tokenizer bound (any_to_any.png, benchmark.md / .json, summary.json).")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--model", default=None,
                   help=f"FourM folder or Hub repo id (default: {BUNDLED_MODEL} of the fourm checkout you run from)")
    p.add_argument("--tokenizers", default=None,
                   help=f"tokenizer folder or Hub repo id (default: {BUNDLED_TOKENIZERS} of the fourm checkout you "
                        "run from)")
    p.add_argument("--num-samples", type=int, default=32,
                   help="held-out scenes of the benchmark table (default: 32)")
    p.add_argument("--grid-scenes", type=int, default=4, help="scenes shown in any_to_any.png (default: 4)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"held-out world seed (default: {DEMO_SEED})")
    p.add_argument("--world-samples", type=int, default=64, help="samples of the ShapesWorld split (default: 64)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels of the data part (default: 64)")
    p.add_argument("--workers", type=int, default=2, help="ShapesWorld generator processes (default: 2)")
    p.add_argument("--world-only", action="store_true", help="only write the ShapesWorld split and its contact sheet")
    p.set_defaults(func=run)


def world_part(out: Path, num_samples: int, seed: int, image_size: int, workers: int) -> dict:
    """Write a ShapesWorld split as shards, read it back, render the contact sheet."""
    t0 = time.perf_counter()
    shard_dir = out / "shapes"
    meta = write_shapes(shard_dir, num_samples=num_samples, seed=seed, config=sw.WorldConfig(image_size=image_size),
                        shard_size=min(128, num_samples), workers=workers, overwrite=True)  # the demo's own folder
    t_gen = time.perf_counter() - t0
    samples = []
    for sample in ShardDataset(list_shards(shard_dir), to_tensor=False):  # the path training uses
        samples.append(sample)
        if len(samples) == 16:
            break
    sheet = render_contact_sheet(samples, out / "contact_sheet.png",
                                 title=f"ShapesWorld {sw.WORLD_VERSION} - seed {seed} - {image_size} px")
    print(f"wrote {num_samples} ShapesWorld samples to {shard_dir} in {t_gen:.1f} s; contact sheet: {sheet}")
    return {"shards": str(shard_dir), "num_samples": num_samples, "num_shards": len(list_shards(shard_dir)),
            "generation_seconds": round(t_gen, 2), "samples_per_second": round(num_samples / t_gen, 1),
            "contact_sheet": str(sheet), "world_version": meta["world_version"], "world_config": meta["config"]}


def model_part(out: Path, model_dir: str, tok_dir: str, num_samples: int, grid_scenes: int, seed: int) -> dict:
    """Any-to-any generation and the benchmark table on held-out scenes."""
    from fourm.evaluation.benchmark import run_benchmark
    from fourm.generation.commands import load_model
    from fourm.vq.loading import load_tokenizers

    t0 = time.perf_counter()
    model = load_model(model_dir, "cpu")
    tokenizers = load_tokenizers(tok_dir)
    t_load = time.perf_counter() - t0
    result = run_benchmark(model, tokenizers, seed=seed, num_samples=num_samples, grid_scenes=grid_scenes)
    result.info.update({"model": str(model_dir), "tokenizers": str(tok_dir), "device": "cpu"})
    table = result.table()
    print(table)
    atomic_write_text(out / "benchmark.md", table + "\n")
    result.save_json(out / "benchmark.json")
    result.save_grid(out / "any_to_any.png")
    print(f"any-to-any grid: {out / 'any_to_any.png'}; table: {out / 'benchmark.md'}; scores: {out / 'benchmark.json'}")
    return {"model": str(model_dir), "tokenizers": str(tok_dir), "seed": seed, "num_scenes": num_samples,
            "load_seconds": round(t_load, 2), "benchmark_seconds": round(result.wall_s, 1),
            "any_to_any": str(out / "any_to_any.png"), "benchmark": str(out / "benchmark.json")}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    for name, value, low in (("--world-samples", args.world_samples, 1), ("--workers", args.workers, 1)):
        if value < low:
            raise UsageError(f"{name} {value}; must be >= {low}")
    try:
        sw.WorldConfig(image_size=args.image_size)
    except ValueError as e:
        raise UsageError(f"--image-size {args.image_size}: {e}") from None
    if not args.world_only:
        # before the data part, which takes a while: a folder that is there, or a Hub repo id
        model_dir = bundled_default(args.model, "--model", BUNDLED_MODEL)
        tok_dir = bundled_default(args.tokenizers, "--tokenizers", BUNDLED_TOKENIZERS)
        for flag, value, what in (("--model", model_dir, "config.json"), ("--tokenizers", tok_dir, "rgb")):
            if Path(value).exists() and not (Path(value) / what).exists():
                raise UsageError(f"{flag} {value}: no {what} there (--world-only runs the data part alone)")
            if not Path(value).exists() and not looks_like_repo_id(value):
                raise UsageError(f"{flag} {value}: no such folder, and not a Hub repo id (--world-only runs the "
                                 "data part alone)")
        for name, value, low in (("--num-samples", args.num_samples, 1), ("--grid-scenes", args.grid_scenes, 0)):
            if value < low:
                raise UsageError(f"{name} {value}; must be >= {low}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"world": world_part(out, args.world_samples, 0, args.image_size, args.workers)}
    if not args.world_only:
        summary["any_to_any"] = model_part(out, model_dir, tok_dir, args.num_samples, args.grid_scenes, args.seed)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"summary: {out / 'summary.json'} ({summary['wall_seconds']:.0f} s)")
    return 0
