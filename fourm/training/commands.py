"""CLI: ``fourm train CONFIG [dotted.key=value ...] [--resume auto|PATH] [--until-step N]`` and
``fourm curve RUN --out PNG`` (the run's loss curves and final figures).

    fourm train configs/fm/shapes_tiny.yaml data.train.shapes.shards=data/tok/train steps=100
    fourm train configs/fm/shapes_tiny.yaml ... --resume auto        # continue out_dir's newest checkpoint
    accelerate launch --multi_gpu --num_processes 2 -m fourm.cli train CONFIG ...   # several processes
    python -m fourm.training.commands CONFIG ...                     # the same without fourm.cli

Exit status: 0 when the run finished or reached ``--until-step``; 143 (SIGTERM) or 130 (Ctrl-C)
after a signal, once the checkpoint is written, so that a job scheduler can requeue the job with
``--resume auto``; 2 for a bad config; 3 when too many steps in a row had a non-finite loss.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fourm train``."""
    parser.add_argument("config", help="YAML run config, e.g. configs/fm/shapes_tiny.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. steps=200 data.train.shapes.shards=DIR")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto': continue from the newest checkpoint in out_dir (start fresh if none); "
                             "or a checkpoint folder")
    parser.add_argument("--until-step", type=int, default=None, metavar="N",
                        help="stop after step N with a checkpoint (the schedule still spans config.steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``fourm`` command."""
    parser = subparsers.add_parser("train", help="train a FourM on token shards (accelerate; resumable)")
    add_train_arguments(parser)
    curve = subparsers.add_parser("curve", help="plot a training run's losses per modality (PNG) and print its final figures")
    curve.add_argument("run", help="a training out_dir or its metrics.jsonl")
    curve.add_argument("--out", required=True, help="PNG to write")
    curve.add_argument("--title", default=None, help="first part of the plot title")
    curve.add_argument("--smooth", type=int, default=4, help="trailing-mean window over training records (default 4)")
    curve.set_defaults(func=run_curve)


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


def run_train(args: argparse.Namespace) -> int:
    """Run ``fourm train``; returns the exit status."""
    from fourm.config import ConfigError
    from fourm.training.config import load_train_config
    from fourm.training.trainer import NonFiniteLossError, train

    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg, resume=args.resume, until_step=args.until_step,
                        progress=False if args.no_progress else None)
    except (ConfigError, FileExistsError, FileNotFoundError) as e:  # shards vs vocabulary, resume mismatches
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    last = summary.last or {}
    if summary.is_main:
        print(json.dumps({"out_dir": cfg.out_dir, "start_step": summary.start_step, "step": summary.step,
                          "stopped_by": summary.stopped_by, "loss": last.get("loss"),
                          "val_loss": (summary.val or {}).get("loss"), "checkpoint": summary.checkpoint,
                          "nonfinite_steps": summary.nonfinite_steps, "skipped_samples": summary.skipped_samples,
                          "wall_s": round(summary.wall_s, 2)}))
    if summary.stopped_by in ("SIGTERM", "SIGINT"):
        return 128 + int(getattr(signal, summary.stopped_by))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fourm.training.commands", description="Train a FourM.")
    add_train_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may also follow the options
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
