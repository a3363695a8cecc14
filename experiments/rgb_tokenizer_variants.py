"""Train rgb tokenizer variants side by side and score each with PSNR and the scene parser.

    python experiments/rgb_tokenizer_variants.py --out out/tokenizers_rgb_variants            # all variants
    python experiments/rgb_tokenizer_variants.py --out /tmp/v --steps 3 --eval-samples 8 --variants base,ow4

Each variant is ``configs/tokenizers/rgb_64.yaml`` plus config overrides (``VARIANTS``); all keep
the 8 x 8 token grid at 64 px. The variants run as parallel subprocesses (one per variant, sharing
the device), so their training times are measured under that contention: compare them with each
other, not with a run alone. Each variant writes ``OUT/NAME/tokenizer/`` (save_pretrained format),
``OUT/NAME/result.json`` (config overrides, training wall time, and ``fourm tokenizer eval``'s rgb
metrics on ``--eval-samples`` held-out scenes of world ``--eval-seed``); ``--tar-dir`` also packs
each tokenizer folder into ``TAR_DIR/NAME.tar``. At the end ``OUT/summary.json`` and a markdown
table of all variants are written and printed. ``--deadline`` seconds after the start, variants
still running are stopped and reported as unfinished.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from fourm.config import save_json_atomic

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "tokenizers" / "rgb_64.yaml"
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "ow4": ["tokenizer.loss.object_weight=4"],
    "dec32": ["tokenizer.decoder.dim=32"],
    "ow4_dec32": ["tokenizer.loss.object_weight=4", "tokenizer.decoder.dim=32"],
    "ow8_dec32": ["tokenizer.loss.object_weight=8", "tokenizer.decoder.dim=32"],
    "ow8": ["tokenizer.loss.object_weight=8"],
    "ow16_dec32": ["tokenizer.loss.object_weight=16", "tokenizer.decoder.dim=32"],
    "ow8_dec32_seed1": ["tokenizer.loss.object_weight=8", "tokenizer.decoder.dim=32", "seed=1"],
    "ow4_dec32_k4096": ["tokenizer.loss.object_weight=4", "tokenizer.decoder.dim=32",
                        "tokenizer.quantizer.codebook_size=4096"],
}


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Train and evaluate variant ``name``; write its folder and result.json."""
    import torch

    from fourm.config import load_config, save_json_atomic
    from fourm.evaluation.reconstruction import evaluate_tokenizers
    from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
    from fourm.vq.vqvae import ImageTokenizer

    torch.set_num_threads(args.threads)
    out = Path(args.out) / name
    overrides = VARIANTS[name] + [f"out_dir={out}", f"steps={args.steps}", f"data.num_workers={args.num_workers}",
                                  "val.every=0", f"checkpoint.every={args.steps}", "checkpoint.keep_last=1"]
    cfg = load_config(TokenizerTrainConfig, BASE_CONFIG, overrides=overrides)
    summary = train_tokenizer(cfg, progress=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = ImageTokenizer.from_pretrained(summary.model_dir, map_location=device)
    ev = evaluate_tokenizers({"rgb": tok}, seed=args.eval_seed, num_samples=args.eval_samples, progress=False)
    result = {"variant": name, "overrides": VARIANTS[name], "steps": args.steps, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "train_wall_s": summary.wall_s, "train_last": summary.last, "train_eval": summary.val,
              "eval_seed": args.eval_seed, "eval_samples": args.eval_samples, "rgb": ev["rgb"],
              "parameters": sum(p.numel() for p in tok.parameters())}
    save_json_atomic(result, out / "result.json")
    if args.tar_dir:
        Path(args.tar_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(args.tar_dir) / f".{name}.tar.tmp"
        with tarfile.open(tmp, "w") as tf:
            tf.add(summary.model_dir, arcname=f"{name}/tokenizer")
            tf.add(out / "result.json", arcname=f"{name}/result.json")
        os.replace(tmp, Path(args.tar_dir) / f"{name}.tar")
    return result


def table(results: list[dict]) -> str:
    """Markdown table of variant results."""
    rows = ["| variant | PSNR (dB) | parser F1 | shape acc. | codes used | train s | params |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["rgb"]
        rows.append(f"| {r['variant']} | {m['psnr']:.2f} | {m['parser_f1']:.3f} | {m['shape_accuracy']:.3f} | "
                    f"{m['codes_used']:.0%} | {r['train_wall_s']:.0f} | {r['parameters'] / 1e3:.0f}k |")
    if results:
        m = results[0]["rgb"]
        f1, acc = m["parser_f1_original"], m["shape_accuracy_original"]
        rows.append(f"| (originals) | - | {f1:.3f} | {acc:.3f} | - | - | - |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the variants' run folders")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-seed", type=int, default=777)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--num-workers", type=int, default=2, help="scene-rendering workers per variant")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant")
    p.add_argument("--tar-dir", default=None, help="also pack each tokenizer folder into TAR_DIR/NAME.tar")
    p.add_argument("--deadline", type=float, default=0.0, help="stop unfinished variants after this many s (0: never)")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one variant, in this process
    args = p.parse_args()
    if args.only:
        run_one(args.only, args)
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant {bad[0]!r}; known: {', '.join(VARIANTS)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    passthrough = ["--out", args.out, "--steps", str(args.steps), "--eval-seed", str(args.eval_seed),
                   "--eval-samples", str(args.eval_samples), "--num-workers", str(args.num_workers),
                   "--threads", str(args.threads)] + (["--tar-dir", args.tar_dir] if args.tar_dir else [])
    procs = {n: subprocess.Popen([sys.executable, __file__, "--only", n, *passthrough]) for n in names}
    while any(pr.poll() is None for pr in procs.values()):
        if args.deadline and time.perf_counter() - start > args.deadline:
            for n, pr in procs.items():
                if pr.poll() is None:
                    print(f"{n}: stopped at the deadline", flush=True)
                    pr.kill()
            break
        time.sleep(1.0)
    results, unfinished = [], []
    for n in names:
        f = Path(args.out) / n / "result.json"
        (results.append(json.loads(f.read_text())) if f.is_file() else unfinished.append(n))
    summary = {"results": results, "unfinished": unfinished, "wall_s": time.perf_counter() - start,
               "concurrent_variants": len(names)}
    save_json_atomic(summary, Path(args.out) / "summary.json")
    print(table(results))
    if unfinished:
        print("unfinished:", ", ".join(unfinished))
    print(f"{len(names)} variants in parallel, {summary['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
