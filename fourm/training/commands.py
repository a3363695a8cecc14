"""CLI of the single trainer: ``fourm train`` (FourM), ``fourm tokenizer train`` (an image
tokenizer), ``fourm tokenizer train-text`` (the WordPiece tokenizer) and ``fourm curve``.

    fourm train configs/fm/shapes_tiny.yaml data.train.shapes.shards=data/tok/train steps=100
    fourm train configs/fm/shapes_tiny.yaml ... --resume auto        # continue out_dir's newest checkpoint
    fourm tokenizer train configs/tokenizers/rgb_64.yaml [key.sub=value ...] [--resume auto|PATH] [--until-step N]
    accelerate launch --multi_gpu --num_processes 2 -m fourm.cli train CONFIG ...   # several processes
    python -m fourm.training.commands CONFIG ...                     # fourm train without fourm.cli

Both trainers take the same options and give the same exit status: 0 when the run finished or
reached ``--until-step``; 143 (SIGTERM) or 130 (Ctrl-C) after a signal, once the checkpoint is
written, so that a job scheduler can requeue the job with ``--resume auto``; 2 for a bad config;
3 when too many steps in a row had a non-finite loss.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Callable

from fourm.cli import Parser, command_group, run_command
from fourm.errors import UsageError


def add_run_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The options every training command has."""
    parser.add_argument("config", help=f"YAML run config, e.g. {example}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. steps=200 optim.lr=1e-3 (give them before "
                             "any --option)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto': continue from the newest checkpoint in out_dir (start fresh if none); "
                             "or a checkpoint folder")
    parser.add_argument("--until-step", type=int, default=None, metavar="N",
                        help="stop after step N with a checkpoint (the schedule still spans config.steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fourm train``."""
    add_run_arguments(parser, "configs/fm/shapes_tiny.yaml")
    parser.set_defaults(func=run_train)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``curve`` and ``tokenizer train | train-text`` to the ``fourm`` command."""
    parser = subparsers.add_parser("train", help="train a FourM on token shards (accelerate; resumable)")
    add_train_arguments(parser)
    curve = subparsers.add_parser("curve", help="plot a training run's losses per modality (PNG) and print its final figures")
    curve.add_argument("run", help="a training out_dir or its metrics.jsonl")
    curve.add_argument("--out", required=True, help="PNG to write")
    curve.add_argument("--title", default=None, help="first part of the plot title")
    curve.add_argument("--smooth", type=int, default=4, help="trailing-mean window over training records (default 4)")
    curve.set_defaults(func=run_curve)

    tok = command_group(subparsers, "tokenizer", "train and evaluate tokenizers")
    train = tok.add_parser("train", help="train one image tokenizer from a YAML config (accelerate; resumable)")
    add_run_arguments(train, "configs/tokenizers/rgb_64.yaml")
    train.set_defaults(func=run_tokenizer_train)

    tt = tok.add_parser("train-text", help="train the WordPiece text tokenizer on ShapesWorld captions or on your shards")
    tt.add_argument("--out", required=True,
                    help="output folder (tokenizer.json + config.json, and the files of transformers.AutoTokenizer)")
    tt.add_argument("--shards", default=None,
                    help="train on the texts of these raw shards (folder, glob or brace range) instead of ShapesWorld scenes")
    tt.add_argument("--field", default="caption", help="the shards' text field (default caption)")
    tt.add_argument("--classes", default=None,
                    help="comma-separated box class names, one token each (default: ShapesWorld's shape classes)")
    tt.add_argument("--seed", type=int, default=0, help="world seed of the training scenes (default 0)")
    tt.add_argument("--num-samples", type=int, default=20000,
                    help="scenes whose captions are used (default 20000); with --shards, the most texts read")
    tt.add_argument("--vocab-size", type=int, default=8192, help="upper bound on the vocabulary (default 8192)")
    tt.add_argument("--max-length", type=int, default=256,
                    help="longest sequence, as declared to transformers.AutoTokenizer (default 256, the reference's)")
    tt.set_defaults(func=run_train_text)


def run_curve(args: argparse.Namespace) -> int:
    """Run ``fourm curve``: write the PNG, print the final figures as JSON."""
    from fourm.training.curve import plot_curve, read_metrics

    try:
        metrics = read_metrics(args.run)
        plot_curve(metrics, args.out, title=args.title, smooth=args.smooth)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"png": args.out, **metrics.final()}, indent=2))
    return 0


def _run(args: argparse.Namespace, load: Callable, make_task: Callable, report: Callable) -> int:
    """Load the config, train, report; the exit status of the module docstring (a user's mistake:
    a bad config, corrupt checkpoint, locked out_dir or data that do not fit, raises a
    :class:`~fourm.errors.FourmError`, which :func:`fourm.cli.run_command` turns into status 2)."""
    from fourm.training.trainer import NonFiniteLossError, run

    cfg = load(args.config, args.overrides)
    try:
        try:
            summary = run(make_task(cfg), resume=args.resume, until_step=args.until_step,
                          progress=False if args.no_progress else None)
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        if summary.is_main:
            report(cfg, summary)
    finally:
        _end_process_group()
    if summary.stopped_by in ("SIGTERM", "SIGINT"):
        return 128 + int(getattr(signal, summary.stopped_by))
    return 0


def _end_process_group() -> None:
    """Destroy the process group that training started in this process (launched with ``accelerate
    launch`` / ``torchrun``), so that no communication thread is left when the interpreter exits: a
    rank that exits with its gloo threads alive can abort with "terminate called without an active
    exception" after a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_train(args: argparse.Namespace) -> int:
    """Run ``fourm train``; returns the exit status."""
    from fourm.training.fourm_config import load_train_config
    from fourm.training.fourm_task import FourMTask

    def report(cfg, summary) -> None:
        last = summary.last or {}
        print(json.dumps({"out_dir": cfg.out_dir, "start_step": summary.start_step, "step": summary.step,
                          "stopped_by": summary.stopped_by, "loss": last.get("loss"),
                          "val_loss": (summary.val or {}).get("loss"), "checkpoint": summary.checkpoint,
                          "nonfinite_steps": summary.nonfinite_steps, "skipped_samples": summary.skipped_samples,
                          "invalid_samples": summary.invalid_samples, "tokens_seen": last.get("tokens_seen"),
                          "wall_s": round(summary.wall_s, 2)}))

    return _run(args, load_train_config, FourMTask, report)


def run_tokenizer_train(args: argparse.Namespace) -> int:
    """Run ``fourm tokenizer train``; returns the exit status."""
    from fourm.config import load_config
    from fourm.training.tokenizer_task import TokenizerTask, TokenizerTrainConfig

    def report(cfg, summary) -> None:
        last, val = summary.last or {}, summary.val or {}
        done = f" -> {summary.model_dir}" if summary.model_dir else f" (stopped: {summary.stopped_by})"
        print(f"trained {cfg.tokenizer.modality} tokenizer: steps {summary.start_step}..{summary.step} "
              f"in {summary.wall_s:.1f} s{done}")
        if last:
            print(f"  last loss {last['loss']:.4f}, codebook usage {last['usage']:.3f}, "
                  f"perplexity {last['perplexity']:.1f}")
        if val:
            print("  held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if k not in ("step", "split")))

    return _run(args, lambda path, overrides: load_config(TokenizerTrainConfig, path, overrides), TokenizerTask, report)


def run_train_text(args: argparse.Namespace) -> int:
    """Run ``fourm tokenizer train-text``."""
    from tqdm import tqdm

    from fourm.data import shapes_world as sw
    from fourm.vq.text import train_text_tokenizer

    if args.num_samples < 1:
        raise UsageError(f"--num-samples={args.num_samples} is not allowed: use an integer >= 1")
    classes = sw.SHAPE_CLASSES if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.shards is None:
        captions = (sw.render_scene(args.seed, i)["caption"]
                    for i in tqdm(range(args.num_samples), desc="captions", unit="scene"))
    else:
        captions = _shard_texts(args.shards, args.field, args.num_samples)
    try:
        tok = train_text_tokenizer(captions, class_names=classes, vocab_size=args.vocab_size,
                                   model_max_length=args.max_length)
    except ValueError as e:
        raise UsageError(f"fourm tokenizer train-text: {e}") from None
    tok.save_pretrained(args.out)
    print(f"text tokenizer: vocab {tok.vocab_size}, classes {', '.join(tok.class_names)} -> {args.out}")
    return 0


def _shard_texts(spec: str, field: str, limit: int) -> list[str]:
    """Up to ``limit`` texts of ``field`` from raw shards; a sample without it is skipped and counted."""
    from tqdm import tqdm

    from fourm.data.shard_reader import ShardDataset

    texts, missing = [], 0
    data = ShardDataset(spec, optional=[field])  # reads only the text member of each sample
    for sample in tqdm(data, desc="texts", unit="sample"):
        value = sample.get(field)
        if isinstance(value, str) and value.strip():
            texts.append(value)
            if len(texts) >= limit:
                break
        else:
            missing += 1
    skipped = data.stats
    if missing or skipped.total:
        print(f"train-text: {missing} samples without a {field!r} text; unreadable samples: {skipped}")
    if not texts:
        raise UsageError(f"--shards {spec}: no sample has a text field {field!r}; name it with --field")
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m fourm.training.commands", description="Train a FourM.")
    add_train_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may also follow the options
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
