"""Diffusion decoder vs plain decoder: rgb tokenizers scored on the same held-out scenes.

    python benchmarks/diffusion_decoder.py out/tokenizers/rgb_diffusion_64/tokenizer tokenizers/shapes64/rgb \
        --num-samples 512 --device cuda --decode-steps 10,25,50 --json out/diffusion_decoder.json

Each positional argument is an rgb tokenizer folder (config.json + model.safetensors) or a folder
with an ``rgb/`` subfolder; give two or more. All of them round-trip the same ``--num-samples``
ShapesWorld scenes of world ``--seed`` (one training never saw; ``fourm tokenizer eval``'s held-out
set) and are scored as ``fourm tokenizer eval`` scores rgb: PSNR, and the scene parser's object F1
and shape accuracy on the reconstructions (the originals' parse, computed once, is the ceiling
row). A diffusion decoder is scored once per entry of ``--decode-steps`` (default: its configured
``num_inference_steps``), its noise drawn from one generator seeded with ``--decode-seed``; a conv
decoder once. ``decode ms/img`` times ``decode`` alone (encoding and parsing excluded; CUDA
synchronised; after one untimed warm-up decode), divided by the number of scenes: compare it
between rows of one run only.

The issue keeps the diffusion decoder only if it measurably beats the plain decoder at the same
token count, so the table lists each tokenizer's token grid and vocabulary too and warns when they
differ.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fourm.config import save_json_atomic
from fourm.evaluation.objects import parse_images
from fourm.evaluation.reconstruction import ReconstructionMetrics, decode_settings, decoder_for, render_batch
from fourm.vq.vqvae import ImageTokenizer


def load_rgb_tokenizer(folder: Path, device: str) -> ImageTokenizer:
    """The rgb tokenizer in ``folder`` (or in ``folder/rgb``)."""
    path = folder / "rgb" if (folder / "rgb" / "config.json").is_file() else folder
    tok = ImageTokenizer.from_pretrained(path, map_location=device)
    if tok.modality != "rgb":
        raise SystemExit(f"{path} holds a {tok.modality!r} tokenizer; give rgb tokenizer folders")
    return tok


def parse_steps(text: str | None) -> list[int | None]:
    """``"10,25"`` -> [10, 25]; None -> [None] (each tokenizer's configured steps)."""
    if not text:
        return [None]
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--decode-steps={text!r}: give comma-separated integers, e.g. 10,25,50") from None
    if not steps or min(steps) < 1:
        raise SystemExit(f"--decode-steps={text!r}: each step count must be >= 1")
    return steps


def score(tok: ImageTokenizer, settings: dict, scenes: list[dict], device: str) -> dict:
    """PSNR, parser scores, code usage and decode time of ``tok`` under ``settings`` on ``scenes``."""
    acc = ReconstructionMetrics("rgb", tok.codebook_size, parser=True)
    decoder_for(tok, settings)(tok.encode(scenes[0]["rgb"][:1]))  # warm-up (own generator), not timed
    decode = decoder_for(tok, settings)
    decode_s, n = 0.0, 0
    for batch in scenes:
        tokens = tok.encode(batch["rgb"])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        recon = decode(tokens)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        decode_s += time.perf_counter() - t0
        n += tokens.shape[0]
        acc.update(tokens, recon, batch)
    out = acc.result()
    out["decode_ms_per_image"] = 1000.0 * decode_s / max(n, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizers", nargs="+", type=Path, help="two or more rgb tokenizer folders")
    ap.add_argument("--seed", type=int, default=777, help="world seed of the held-out scenes (default 777)")
    ap.add_argument("--num-samples", type=int, default=256, help="held-out scenes (default 256)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--decode-steps", default=None,
                    help="comma-separated DDIM step counts for diffusion decoders (default: each one's configured)")
    ap.add_argument("--decode-seed", type=int, default=0, help="seed of the diffusion decoders' noise (default 0)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    if len(args.tokenizers) < 2:
        raise SystemExit("give at least two tokenizer folders to compare (e.g. a diffusion and a conv one)")
    if args.num_samples < 1:
        raise SystemExit(f"--num-samples={args.num_samples}: must be >= 1")
    steps_list = parse_steps(args.decode_steps)

    toks = {str(p): load_rgb_tokenizer(p, args.device) for p in args.tokenizers}
    sizes = {t.config.image_size for t in toks.values()}
    if len(sizes) > 1:
        raise SystemExit(f"the tokenizers were trained at different sizes {sorted(sizes)}; compare same-size ones")
    size = sizes.pop()
    grids = {name: (t.token_grid(size, size), t.codebook_size) for name, t in toks.items()}
    if len(set(grids.values())) > 1:
        print(f"WARNING: token grids / vocabularies differ: {grids}; the comparison is not at the same token count")

    scenes = []
    for lo in tqdm(range(0, args.num_samples, args.batch_size), desc="render + parse originals", unit="batch"):
        batch = render_batch(args.seed, range(lo, min(lo + args.batch_size, args.num_samples)), size, objects=True)
        batch["parsed"] = parse_images(batch["rgb"])  # the reference parse, once for every tokenizer
        scenes.append(batch)

    rows = []
    for name, tok in toks.items():
        for steps in steps_list if tok.is_diffusion else [None]:
            settings = decode_settings(tok, steps, args.decode_seed)
            res = score(tok, settings, scenes, args.device)
            (h, w), vocab = grids[name]
            rows.append({"tokenizer": name, "decoder": settings["kind"], "ddim_steps": settings.get("steps"),
                         "decoder_params": sum(p.numel() for p in tok.decoder.parameters()),
                         "tokens": f"{h}x{w}", "vocab": vocab, **res})
            print(f"  {name} ({settings['kind']}, steps {settings.get('steps', '-')}): PSNR {res['psnr']:.2f} dB, "
                  f"parser F1 {res['parser_f1']:.3f}, {res['decode_ms_per_image']:.2f} ms/img")

    print(f"\nrgb tokenizers on {args.num_samples} held-out scenes of seed {args.seed}, {size} px, "
          f"device {args.device}, decode noise seed {args.decode_seed}\n")
    print("| tokenizer | decoder | params | tokens | vocab | DDIM steps | PSNR dB | parser F1 | shape acc. "
          "| codes used | decode ms/img |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        steps = "-" if r["ddim_steps"] is None else r["ddim_steps"]
        print(f"| {r['tokenizer']} | {r['decoder']} | {r['decoder_params'] / 1e6:.2f} M | {r['tokens']} | {r['vocab']} "
              f"| {steps} | {r['psnr']:.2f} | {r['parser_f1']:.3f} | {r['shape_accuracy']:.3f} "
              f"| {r['codes_used']:.3f} | {r['decode_ms_per_image']:.2f} |")
    ref = rows[0]
    print(f"| original images (parser ceiling) | - | - | - | - | - | - | {ref['parser_f1_original']:.3f} "
          f"| {ref['shape_accuracy_original']:.3f} | - | - |")
    if args.json:
        save_json_atomic({"seed": args.seed, "num_samples": args.num_samples, "image_size": size,
                          "device": args.device, "decode_seed": args.decode_seed, "rows": rows}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
