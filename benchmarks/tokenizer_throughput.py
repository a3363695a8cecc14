"""Encode and decode throughput of the image tokenizers, in images per second.

    python benchmarks/tokenizer_throughput.py                       # untrained, configs/tokenizers/*_64.yaml
    python benchmarks/tokenizer_throughput.py --tokenizers tokenizers/ --threads 2 --batch-size 64

Images are ShapesWorld scenes at the tokenizer's training size. Each figure is the median of
``--repeats`` timed calls after ``--warmup`` untimed ones. Prints a table; ``--json`` writes it too.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fourm.config import load_config
from fourm.evaluation.reconstruction import render_batch
from fourm.training.tokenizer_task import TokenizerTrainConfig
from fourm.vq.loading import load_tokenizers
from fourm.vq.vqvae import ImageTokenizer

REPO = Path(__file__).resolve().parents[1]


def timed(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", default=None, help="folder of trained tokenizers (default: untrained, from configs)")
    p.add_argument("--configs", default=str(REPO / "configs" / "tokenizers"), help="folder with {rgb,depth,semseg}_64.yaml")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.tokenizers:
        toks = {m: t for m, t in load_tokenizers(args.tokenizers, map_location=args.device).items()
                if isinstance(t, ImageTokenizer)}
    else:
        toks = {}
        for m in ("rgb", "depth", "semseg"):
            cfg = load_config(TokenizerTrainConfig, Path(args.configs) / f"{m}_64.yaml")
            torch.manual_seed(0)
            toks[m] = ImageTokenizer(cfg.tokenizer).to(args.device).eval()
    rows = []
    for m, tok in toks.items():
        batch = render_batch(0, range(args.batch_size), tok.config.image_size)[m]
        tokens = tok.encode(batch)
        sync = torch.cuda.synchronize if tok.device.type == "cuda" else (lambda: None)
        enc = timed(lambda: (tok.encode(batch), sync()), args.warmup, args.repeats)
        dec = timed(lambda: (tok.decode(tokens), sync()), args.warmup, args.repeats)
        rows.append({
            "modality": m, "image_size": tok.config.image_size, "grid": list(tokens.shape[1:]),
            "params_m": sum(p.numel() for p in tok.parameters()) / 1e6,
            "encode_img_s": args.batch_size / enc, "decode_img_s": args.batch_size / dec,
        })
    print(f"tokenizer throughput: batch {args.batch_size}, {args.threads} threads, device {args.device}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{'trained: ' + args.tokenizers if args.tokenizers else 'untrained (configs)'}")
    print(f"{'modality':<8} {'px':>4} {'grid':>6} {'params':>8} {'encode img/s':>13} {'decode img/s':>13}")
    for r in rows:
        grid = "x".join(map(str, r["grid"]))
        print(f"{r['modality']:<8} {r['image_size']:>4} {grid:>6} {r['params_m']:>7.2f}M "
              f"{r['encode_img_s']:>13.0f} {r['decode_img_s']:>13.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
