"""``fourm eval`` (the ShapesWorld any-to-any benchmark) and ``fourm tokenizer eval`` (the image
tokenizers' reconstruction scores) from the command line.

    fourm eval                                            # models/shapes_bundled, tokenizers/shapes64 (run from the checkout)
    fourm eval --model out/fm/shapes_bundled --num-samples 64 --json eval.json --grid eval.png
    fourm eval --tasks rgb2semseg,rgb2depth,caption2rgb --seed 1000 --batch-size 16

Prints a markdown table (task, metric, model, tokenizer bound; with the number of scenes, the
seed, the decoding settings and the wall time); ``--json`` writes every score and setting,
``--grid`` a PNG of the first scenes: the ground truth (the conditions), then each task's
generations. Tasks: rgb2semseg, rgb2depth, rgb2det, rgb2caption, caption2rgb, det2rgb,
depth2rgb, semseg2rgb, caption2det2rgb (``rgb->semseg`` is accepted too).

    fourm tokenizer eval --tokenizers tokenizers/shapes64 --seed 777 --num-samples 512 --json eval.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fourm.cli import BUNDLED_MODEL, BUNDLED_TOKENIZERS, bundled_default, command_group, for_flag
from fourm.config import save_json_atomic
from fourm.evaluation.benchmark import DEFAULT_SEED, RGB_INPUTS, TASKS, DecodingSettings, parse_tasks, run_benchmark
from fourm.models import ATTENTION_BACKENDS
from fourm.generation.target import IMAGE_SCHEMES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fourm eval`` to the ``fourm`` parser."""
    examples = __doc__.split("\n\n")[1]
    p = subparsers.add_parser("eval", help="the ShapesWorld any-to-any benchmark of a FourM model",
                              description="Score a FourM model on held-out ShapesWorld scenes in every direction "
                                          "(rgb -> semseg / depth / det / caption, caption / det / depth / semseg -> "
                                          "rgb, caption -> det -> rgb) beside the tokenizer bound.",
                              epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a FourM.save_pretrained folder, a training out_dir or checkpoint, or a Hub repo id (default: "
                        f"{BUNDLED_MODEL} of the fourm checkout you run from)")
    p.add_argument("--tokenizers", default=None,
                   help="tokenizer folder with rgb/, depth/, semseg/, text/, or a Hub repo id laid out so (default: "
                        f"{BUNDLED_TOKENIZERS} of the fourm checkout you run from)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"world and sampling seed; use one training never saw (default {DEFAULT_SEED}; "
                        "the bundled run trains on 0 and validates on 1)")
    p.add_argument("--num-samples", type=int, default=32, help="number of scenes (default 32)")
    p.add_argument("--image-size", type=int, default=64, help="scene size in pixels (default 64)")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated tasks (default all): {', '.join(TASKS)}")
    p.add_argument("--batch-size", type=int, default=32, help="scenes generated together (default 32)")
    p.add_argument("--image-steps", type=int, default=DecodingSettings.image_steps,
                   help=f"decoding steps of image targets (default {DecodingSettings.image_steps})")
    p.add_argument("--rgb-scheme", choices=IMAGE_SCHEMES, default=DecodingSettings.rgb_scheme,
                   help="order in which generated rgb tokens are fixed: maskgit (most confident first) or roar "
                        f"(random order) (default {DecodingSettings.rgb_scheme})")
    p.add_argument("--cfg-scale", type=float, default=DecodingSettings.rgb_cfg_scale,
                   help=f"classifier-free guidance of generated rgb (default {DecodingSettings.rgb_cfg_scale:g}; 1 = off)")
    p.add_argument("--rgb-input", choices=RGB_INPUTS, default="auto",
                   help="rgb conditions as the model's rgb pixel input or as tok_rgb tokens (default auto: pixels "
                        "when the model has them)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--grid", type=Path, default=None, help="write a PNG grid of the first scenes here")
    p.add_argument("--grid-scenes", type=int, default=4, help="scenes in the grid (default 4)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto",
                   help="attention kernel: auto (xformers where installed and working on the device, else SDPA), "
                        "sdpa or xformers (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    ev = command_group(subparsers, "tokenizer", "train and evaluate tokenizers").add_parser(
        "eval", help="reconstruction scores of trained image tokenizers on fresh ShapesWorld scenes")
    ev.add_argument("--tokenizers", required=True, help="tokenizer folder with rgb/, depth/, semseg/ subfolders")
    ev.add_argument("--seed", type=int, required=True, help="world seed of the scenes (one never used in training)")
    ev.add_argument("--num-samples", type=int, default=256, help="number of scenes (default 256)")
    ev.add_argument("--image-size", type=int, default=None, help="scene size in px (default: the training size)")
    ev.add_argument("--batch-size", type=int, default=64, help="scenes reconstructed together (default 64)")
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ev.add_argument("--json", default=None, help="write the results to this JSON file")
    ev.add_argument("--no-parser", action="store_true",
                    help="skip the scene parser's object F1 on rgb reconstructions (about 35 ms per scene)")
    ev.add_argument("--decode-steps", type=int, default=None,
                    help="DDIM steps of diffusion decoders (default: each tokenizer's num_inference_steps)")
    ev.add_argument("--decode-seed", type=int, default=0, help="seed of diffusion decoders' noise (default 0)")
    ev.add_argument("--predictability-samples", type=int, default=1500,
                    help="scenes (after the scored ones, same seed) whose codes are counted for the token "
                         "predictability table: H(code), H(code | grid position), H(code | left neighbour) per "
                         "tokenizer, for all, object and background tokens (default 1500; 0 skips it)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    ev.set_defaults(func=cmd_tokenizer_eval)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_eval(args: argparse.Namespace) -> int:
    from fourm.generation.commands import load_model
    from fourm.vq.loading import load_tokenizers

    for name in ("num_samples", "batch_size", "image_steps"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be an integer >= 1")
    try:
        tasks = parse_tasks(args.tasks)
        if args.grid is not None and args.grid.suffix.lower() != ".png":
            raise ValueError(f"--grid {args.grid}: the grid is written as PNG; give a path ending in .png")
        decoding = DecodingSettings(image_steps=args.image_steps, rgb_cfg_scale=args.cfg_scale,
                                    rgb_scheme=args.rgb_scheme)
        model_path = bundled_default(args.model, "--model", BUNDLED_MODEL)
        tok_path = bundled_default(args.tokenizers, "--tokenizers", BUNDLED_TOKENIZERS)
        device = torch.device(args.device)
        model = for_flag("--model", load_model, model_path, str(device), attention=args.attention)
        tokenizers = for_flag("--tokenizers", load_tokenizers, tok_path, map_location=device)
        result = run_benchmark(model, tokenizers, seed=args.seed, num_samples=args.num_samples,
                               image_size=args.image_size, tasks=tasks, decoding=decoding, batch_size=args.batch_size,
                               grid_scenes=args.grid_scenes if args.grid else 0, progress=not args.no_progress,
                               rgb_input=args.rgb_input)
    except (ValueError, KeyError, FileNotFoundError) as e:
        return _fail(str(e).strip("'\""))
    result.info.update({"model": str(model_path), "tokenizers": str(tok_path), "device": str(device)})
    print(result.table())
    if args.json:
        result.save_json(args.json)
        print(f"wrote {args.json}")
    if args.grid:
        result.save_grid(args.grid)
        print(f"wrote {args.grid}")
    return 0


def cmd_tokenizer_eval(args: argparse.Namespace) -> int:
    """Run ``fourm tokenizer eval``: print the scores, optionally write them as JSON."""
    from fourm.evaluation.reconstruction import evaluate_tokenizers, format_results
    from fourm.vq.loading import load_tokenizers

    for name in ("num_samples", "batch_size"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be an integer >= 1")
    if args.predictability_samples < 0:
        return _fail(f"--predictability-samples {args.predictability_samples}: must be an integer >= 0 (0 = no table)")
    toks = load_tokenizers(args.tokenizers, map_location=args.device)
    try:
        results = evaluate_tokenizers(toks, seed=args.seed, num_samples=args.num_samples,
                                      image_size=args.image_size, batch_size=args.batch_size,
                                      parser=not args.no_parser, decode_steps=args.decode_steps,
                                      decode_seed=args.decode_seed,
                                      predictability_samples=args.predictability_samples,
                                      progress=not args.no_progress)
    except ValueError as e:  # a scene size or decoder setting the tokenizers do not take
        return _fail(f"fourm tokenizer eval --tokenizers {args.tokenizers}: {e}")
    results["tokenizers"] = str(args.tokenizers)
    print(format_results(results))
    if args.json:
        save_json_atomic(results, args.json)
        print(f"wrote {args.json}")
    return 0
