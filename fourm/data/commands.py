"""``fourm data ...`` and ``fourm tokenize``: write ShapesWorld shards, draw contact sheets of shard
folders, turn raw shards into token shards.

    fourm data shapes --out data/shapes --num-samples 10000 --image-size 64 --seed 0 --shard-size 1000 --workers 2
    fourm data show data/shapes --out sheet.png --num 16
    fourm tokenize --input data/shapes/train --output data/shapes_tok/train --tokenizers tokenizers/shapes64 --keep rgb
    fourm tokenize ... --config my_run.yaml             # the fields a training run's modalities name

Shard ``k`` holds samples ``k * K .. k * K + K - 1`` and is written whole by one worker (under a
temporary name, then renamed), so the output is byte-identical for any number of workers. The
metadata JSON is written last: a folder with ``metadata.json`` is complete.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

import fourm
from fourm.data import shapes_world as sw
from fourm.data.pretokenize import TEXT_FIELDS
from fourm.data.shard_metadata import RECORDS_KEY, describe_shards
from fourm.data.shards import ShardWriter, encode_sample, list_shards, write_metadata, write_shard
from fourm.locking import FolderLock

METADATA_NAME = "metadata.json"
SHARD_PREFIX = "shard"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the ``fourm`` parser."""
    data = subparsers.add_parser("data", help="generate and inspect data sets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("shapes", help="write ShapesWorld samples as webdataset shards",
                       description="Write ShapesWorld samples (rgb, depth, semseg, det, caption, objects) as webdataset "
                                   "shards plus metadata.json. Output is byte-identical for any --workers.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--num-samples", type=int, required=True, help="number of samples (indices 0..N-1)")
    p.add_argument("--image-size", type=int, default=64, help="side in pixels: a multiple of 16 from 32 to 256 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="world seed; use different seeds for train and held-out sets")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each writing whole shards (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace shards and metadata already in --out")
    p.set_defaults(func=cmd_shapes)

    s = sub.add_parser("show", help="draw a contact sheet of the first samples of a shard folder")
    s.add_argument("shards", help="shard folder, tar file, glob or brace range")
    s.add_argument("--out", required=True, type=Path, help="output PNG")
    s.add_argument("--num", type=int, default=16, help="number of samples (default 16)")
    s.add_argument("--columns", type=int, default=2, help="samples per row (default 2)")
    s.set_defaults(func=cmd_show)

    tz = subparsers.add_parser("tokenize", help="raw shards -> token shards (fourm.data.pretokenize)")
    tz.add_argument("--input", required=True, help="raw shards: folder, glob or brace range of .tar files")
    tz.add_argument("--output", required=True, help="folder for the token shards (same file names)")
    tz.add_argument("--tokenizers", required=True, help="tokenizer set: a folder with rgb/, depth/, ..., text/")
    tz.add_argument("--modalities", default=None,
                    help="comma-separated subset of the tokenizers to use, e.g. rgb,depth,text (default: all found)")
    tz.add_argument("--config", default=None,
                    help="a fourm train YAML config: tokenize the fields its modalities name (raw_field -> "
                         "token_field with their tokenizer) instead of one field per tokenizer")
    tz.add_argument("--text-fields", default=",".join(TEXT_FIELDS),
                    help=f"comma-separated raw text fields for the text tokenizer (default {','.join(TEXT_FIELDS)})")
    tz.add_argument("--keep", default="",
                    help="comma-separated raw fields copied into the token shards, e.g. rgb for a model with rgb "
                         "pixel input (default: none)")
    tz.add_argument("--strict", action="store_true",
                    help="stop at the first sample that cannot be tokenised (default: skip and count it)")
    tz.add_argument("--batch-size", type=int, default=64, help="samples encoded together (default 64)")
    tz.add_argument("--device", default="cpu", help="torch device of the tokenizers (default cpu)")
    tz.add_argument("--no-progress", action="store_true", help="no progress bar")
    tz.set_defaults(func=cmd_tokenize)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _write_one_shard(out_dir: str, shard: int, start: int, stop: int, seed: int, config: dict, key_width: int,
                     on_sample: Callable[[], None] | None = None) -> tuple[str, int]:
    """Render samples [start, stop) and write them as shard number ``shard``. Top level: spawn-safe."""
    cfg = sw.WorldConfig(**config)
    path = ShardWriter(out_dir, prefix=SHARD_PREFIX).shard_path(shard)

    def items():
        for i in range(start, stop):
            yield f"{i:0{key_width}d}", encode_sample(sw.render_scene(seed, i, cfg))
            if on_sample is not None:
                on_sample()

    return str(path), write_shard(path, items())


def _write_one_shard_star(args: tuple) -> tuple[str, int]:
    return _write_one_shard(*args)


def write_shapes(out: str | Path, num_samples: int, seed: int = 0, config: sw.WorldConfig | None = None,
                 shard_size: int = 1000, workers: int = 1, progress: bool = True, overwrite: bool = False) -> dict:
    """Write a ShapesWorld split as shards plus metadata; the library side of ``fourm data shapes``.

    Args:
        out: output folder (created if missing; locked while writing, see :class:`fourm.locking.FolderLock`).
        num_samples: samples ``0 .. num_samples - 1`` of world ``seed``.
        seed: world seed.
        config: world knobs (image size ...); default ``WorldConfig()``.
        shard_size: samples per shard.
        workers: processes; each renders and writes whole shards (spawned, so safe everywhere).
        progress: show a tqdm bar.
        overwrite: replace the shards and metadata of a data set already in ``out``.

    Returns:
        The metadata dict written to ``out/metadata.json`` (with each shard's record,
        :mod:`fourm.data.shard_metadata`).

    Raises:
        FileExistsError: ``out`` holds a data set and ``overwrite`` is False.
        FolderLockedError: another process writes to ``out``.
    """
    cfg = config if config is not None else sw.WorldConfig()
    for name, value, low in (("num_samples", num_samples, 1), ("shard_size", shard_size, 1), ("workers", workers, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed: use an integer >= {low}")
    out = Path(out)
    with FolderLock(out, "fourm data shapes", "--out"):
        stale = sorted(out.glob(f"{SHARD_PREFIX}-*.tar")) + ([out / METADATA_NAME] if (out / METADATA_NAME).exists() else [])
        if stale and not overwrite:
            raise FileExistsError(f"--out {str(out)!r} already holds a data set ({len(stale)} files); pass --overwrite "
                                  "to replace it")
        for f in stale:  # old shards beyond the new count would otherwise be read as part of the set
            f.unlink()
        return _write_shapes_locked(out, num_samples, seed, cfg, shard_size, workers, progress)


def _write_shapes_locked(out: Path, num_samples: int, seed: int, cfg: sw.WorldConfig, shard_size: int, workers: int,
                         progress: bool) -> dict:
    """The body of :func:`write_shapes`, with ``out`` locked and empty of an earlier data set."""
    num_shards = -(-num_samples // shard_size)
    key_width = max(6, len(str(num_samples - 1)))
    jobs = [(str(out), k, k * shard_size, min((k + 1) * shard_size, num_samples), seed, cfg.to_dict(), key_width)
            for k in range(num_shards)]
    paths: list[str] = [""] * num_shards
    with tqdm(total=num_samples, unit="sample", desc=f"shapes -> {out}", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                path, _ = _write_one_shard(*job, on_sample=lambda: bar.update(1))
                paths[job[1]] = path
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(workers, num_shards)) as pool:
                for job, (path, count) in zip(jobs, pool.imap(_write_one_shard_star, jobs)):
                    paths[job[1]] = path
                    bar.update(count)
    meta = {
        "world": "ShapesWorld",
        "world_version": sw.WORLD_VERSION,
        "fourm_version": fourm.__version__,
        "seed": seed,
        "config": cfg.to_dict(),
        "num_samples": num_samples,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "shards": [Path(p).name for p in paths],
        "key_format": f"sample index, zero-padded to {key_width} digits",
        "fields": {"rgb": "rgb.png", "depth": "depth.npy", "semseg": "semseg.png", "det": "det.json",
                   "caption": "caption.txt", "objects": "objects.json"},
        "semseg_classes": list(sw.SEMSEG_CLASSES),
        "shape_classes": list(sw.SHAPE_CLASSES),
        "colours": {k: list(v) for k, v in sw.COLOURS.items()},
        "size_words": list(sw.SIZE_WORDS),
        "far_depth": sw.FAR_DEPTH,
        RECORDS_KEY: describe_shards(paths),
    }
    write_metadata(out, meta, name=METADATA_NAME)
    return meta


def cmd_shapes(args: argparse.Namespace) -> int:
    try:
        cfg = sw.WorldConfig(image_size=args.image_size)
    except ValueError as e:
        return _fail(f"--image-size: {e}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        return _fail(f"--out {str(out)!r} exists and is not a folder")
    for name, value, low in (("--num-samples", args.num_samples, 1), ("--shard-size", args.shard_size, 1),
                             ("--workers", args.workers, 1), ("--seed", args.seed, 0)):
        if value < low:
            return _fail(f"{name}={value} is not allowed: use an integer >= {low}")
    meta = write_shapes(out, args.num_samples, args.seed, cfg, args.shard_size, args.workers, overwrite=args.overwrite)
    print(f"wrote {meta['num_samples']} samples in {meta['num_shards']} shards to {out} "
          f"(ShapesWorld {meta['world_version']}, seed {meta['seed']}, {cfg.image_size} px)")
    return 0


def read_samples(shards: str | Path, num: int) -> list[dict]:
    """The first ``num`` samples of a shard set in stored order, decoded to numpy / Python objects."""
    from fourm.data.shard_reader import ShardDataset  # imports torch: only when reading

    ds = ShardDataset(shards, fields=["rgb"], optional=["depth", "semseg", "det", "caption"], to_tensor=False)
    out = []
    for sample in ds:
        out.append(sample)
        if len(out) >= num:
            break
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from fourm.data.contact_sheet import render_contact_sheet

    if args.num < 1 or args.columns < 1:
        return _fail(f"--num and --columns must be >= 1, got {args.num} and {args.columns}")
    try:
        list_shards(args.shards)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    samples = read_samples(args.shards, args.num)
    if not samples:
        return _fail(f"no readable samples in {args.shards!r}")
    title = None
    meta_path = Path(args.shards) / METADATA_NAME
    if meta_path.is_file():
        from fourm.data.shards import read_metadata

        meta = read_metadata(meta_path)
        title = (f"ShapesWorld {meta.get('world_version')} - seed {meta.get('seed')} - "
                 f"{meta.get('config', {}).get('image_size')} px - first {len(samples)} of {meta.get('num_samples')} samples")
    path = render_contact_sheet(samples, args.out, columns=args.columns, title=title)
    print(f"wrote {path} ({len(samples)} samples)")
    return 0


def _names(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Run ``fourm tokenize``; prints what was written as JSON."""
    import json

    from fourm.data.pretokenize import tokenize_shards
    from fourm.vq.loading import load_tokenizers

    if args.batch_size < 1:
        return _fail(f"--batch-size {args.batch_size}: must be an integer >= 1")
    toks = load_tokenizers(args.tokenizers, map_location=args.device)
    if args.modalities:
        wanted = _names(args.modalities)
        missing = [m for m in wanted if m not in toks]
        if missing:
            return _fail(f"--modalities names {missing}, not found in {args.tokenizers}; found: {', '.join(toks)}")
        toks = {m: toks[m] for m in wanted}
    specs = None
    if args.config is not None:
        from fourm.config import load_yaml
        from fourm.modalities import ModalityRegistry

        try:
            specs = list(ModalityRegistry.from_mapping(load_yaml(args.config).get("modalities") or {}))
        except ValueError as e:
            return _fail(f"--config {args.config}: {e}")
    try:
        out = tokenize_shards(args.input, args.output, toks, batch_size=args.batch_size,
                              tokenizer_dir=Path(args.tokenizers), progress=not args.no_progress,
                              keep=_names(args.keep), specs=specs, text_fields=_names(args.text_fields),
                              strict=args.strict)
    except ValueError as e:
        return _fail(str(e))
    bad = {k: n for k, n in out["bad_samples"].items() if n}
    print(json.dumps({"written": len(out["written"]), "skipped": len(out["skipped"]), "samples": out["samples"],
                      "bad_samples": sum(bad.values()), "bad_by_reason": bad, "unreadable_samples": out["unreadable"]}))
    for example in out["examples"]:
        print(f"  skipped {example}", file=sys.stderr)
    return 0
