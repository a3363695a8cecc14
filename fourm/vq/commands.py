"""CLI: ``fourm tokenizer train | eval`` and ``fourm tokenize``.

    fourm tokenizer train configs/tokenizers/rgb_64.yaml [key.sub=value ...] [--resume]   (overrides before flags)
    fourm tokenizer eval --tokenizers tokenizers/ --seed 7 --num-samples 512 --json out/tok_eval.json
    fourm tokenize --input data/shapes/train --output data/shapes/train_tok --tokenizers tokenizers/

Several processes: ``accelerate launch -m fourm.cli tokenizer train CONFIG`` on GPUs; on CPUs
``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m fourm.cli tokenizer train CONFIG`` (gloo).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fourm.config import save_json_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tokenizer`` (with ``train`` and ``eval``) and ``tokenize`` to the ``fourm`` command."""
    tok = subparsers.add_parser("tokenizer", help="train and evaluate the image tokenizers")
    sub = tok.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train one image tokenizer from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/tokenizers/rgb_64.yaml")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="config overrides with dotted keys, e.g. steps=200 tokenizer.quantizer.kind=fsq "
                            "(give them before any --flag)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    tt = sub.add_parser("train-text", help="train the WordPiece text tokenizer on ShapesWorld captions or on your shards")
    tt.add_argument("--out", required=True, help="output folder (tokenizer.json + config.json)")
    tt.add_argument("--shards", default=None,
                    help="train on the texts of these raw shards (folder, glob or brace range) instead of ShapesWorld scenes")
    tt.add_argument("--field", default="caption", help="the shards' text field (default caption)")
    tt.add_argument("--classes", default=None,
                    help="comma-separated box class names, one token each (default: ShapesWorld's shape classes)")
    tt.add_argument("--seed", type=int, default=0, help="world seed of the training scenes (default 0)")
    tt.add_argument("--num-samples", type=int, default=20000,
                    help="scenes whose captions are used (default 20000); with --shards, the most texts read")
    tt.add_argument("--vocab-size", type=int, default=8192, help="upper bound on the vocabulary (default 8192)")
    tt.set_defaults(func=_train_text)

    ev = sub.add_parser("eval", help="reconstruction metrics of trained tokenizers on fresh ShapesWorld scenes")
    ev.add_argument("--tokenizers", required=True, help="folder with rgb/, depth/, semseg/ tokenizer subfolders")
    ev.add_argument("--seed", type=int, required=True, help="world seed of the scenes (one never used in training)")
    ev.add_argument("--num-samples", type=int, default=256, help="number of scenes (default 256)")
    ev.add_argument("--image-size", type=int, default=None, help="scene size in px (default: the training size)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ev.add_argument("--json", default=None, help="write the results to this JSON file")
    ev.add_argument("--no-parser", action="store_true",
                    help="skip the scene parser's object F1 on rgb reconstructions (about 35 ms per scene)")
    ev.add_argument("--decode-steps", type=int, default=None,
                    help="DDIM steps of diffusion decoders (default: each tokenizer's num_inference_steps)")
    ev.add_argument("--decode-seed", type=int, default=0, help="seed of diffusion decoders' noise (default 0)")
    ev.set_defaults(func=_eval)

    tz = subparsers.add_parser("tokenize", help="raw ShapesWorld shards -> token shards")
    tz.add_argument("--input", required=True, help="raw shards: folder, glob or brace range of .tar files")
    tz.add_argument("--output", required=True, help="folder for the token shards (same file names)")
    tz.add_argument("--tokenizers", required=True, help="folder with rgb/, depth/, semseg/ and optionally text/")
    tz.add_argument("--modalities", default=None,
                    help="comma-separated subset of the tokenizers to use, e.g. rgb,depth,text (default: all found)")
    tz.add_argument("--keep", default="",
                    help="comma-separated raw fields copied into the token shards, e.g. rgb for a model with rgb "
                         "pixel input (default: none)")
    tz.add_argument("--batch-size", type=int, default=64)
    tz.add_argument("--device", default="cpu")
    tz.add_argument("--no-progress", action="store_true")
    tz.set_defaults(func=_tokenize)


def _train(args: argparse.Namespace) -> int:
    from fourm.config import load_config
    from fourm.vq.train import TokenizerTrainConfig, train_tokenizer

    cfg = load_config(TokenizerTrainConfig, args.config, overrides=args.overrides)
    summary = train_tokenizer(cfg, resume=args.resume, progress=not args.no_progress)
    if not summary["main_process"]:
        return 0
    last, ev = summary["last"], summary["eval"]
    print(f"trained {cfg.tokenizer.modality} tokenizer: steps {summary['start_step']}..{summary['steps']} "
          f"in {summary['wall_s']:.1f} s -> {summary['tokenizer_dir']}")
    if last:
        print(f"  last loss {last['loss']:.4f}, codebook usage {last['usage']:.3f}, perplexity {last['perplexity']:.1f}")
    if ev:
        print("  held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step"))
    return 0


def _train_text(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fourm.data import shapes_world as sw
    from fourm.vq.text import train_text_tokenizer

    if args.num_samples < 1:
        raise SystemExit(f"--num-samples={args.num_samples} is not allowed: use an integer >= 1")
    classes = sw.SHAPE_CLASSES if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.shards is None:
        captions = (sw.render_scene(args.seed, i)["caption"]
                    for i in tqdm(range(args.num_samples), desc="captions", unit="scene"))
    else:
        captions = _shard_texts(args.shards, args.field, args.num_samples)
    try:
        tok = train_text_tokenizer(captions, class_names=classes, vocab_size=args.vocab_size)
    except ValueError as e:
        raise SystemExit(f"fourm tokenizer train-text: {e}") from None
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
        raise SystemExit(f"--shards {spec}: no sample has a text field {field!r}; name it with --field")
    return texts


def _eval(args: argparse.Namespace) -> int:
    from fourm.evaluation.reconstruction import evaluate_tokenizers, format_results
    from fourm.vq.vqvae import load_tokenizers

    toks = load_tokenizers(args.tokenizers, map_location=args.device)
    results = evaluate_tokenizers(toks, seed=args.seed, num_samples=args.num_samples,
                                  image_size=args.image_size, batch_size=args.batch_size,
                                  parser=not args.no_parser, decode_steps=args.decode_steps,
                                  decode_seed=args.decode_seed)
    results["tokenizers"] = str(args.tokenizers)
    print(format_results(results))
    if args.json:
        save_json_atomic(results, args.json)
        print(f"wrote {args.json}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from fourm.vq.pretokenize import tokenize_shards
    from fourm.vq.vqvae import load_tokenizers

    toks = load_tokenizers(args.tokenizers, map_location=args.device)
    if args.modalities:
        wanted = [m.strip() for m in args.modalities.split(",") if m.strip()]
        missing = [m for m in wanted if m not in toks]
        if missing:
            raise SystemExit(f"--modalities names {missing}, not found in {args.tokenizers}; found: {', '.join(toks)}")
        toks = {m: toks[m] for m in wanted}
    out = tokenize_shards(args.input, args.output, toks, batch_size=args.batch_size,
                          tokenizer_dir=Path(args.tokenizers), progress=not args.no_progress,
                          keep=[f.strip() for f in args.keep.split(",") if f.strip()])
    print(json.dumps({"written": len(out["written"]), "skipped": len(out["skipped"]), "samples": out["samples"]}))
    return 0
