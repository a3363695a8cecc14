"""Speed of the 4M reference's tokenizers in fourm at the released sizes (random weights).

    python benchmarks/ml4m_tokenizer_speed.py --threads 1 --steps 25
    python benchmarks/ml4m_tokenizer_speed.py --tokenizer rgb_16k_224-448 --batch 2 --device cuda

Builds the released architecture from ``../shared/fixtures/ml4m/tokenizers/released_shapes/<name>.json``
(its constructor arguments; weights random, ``--seed``), then times per image at ``--size`` px:
the encoder (``encode``: normalisation, ViT-B, quantizer) and, for a DiVAE, ``decode`` with
``--steps`` DDIM steps (default 25, the reference's decode_dict setting); a VQ-VAE decodes in one
pass. One untimed warm-up call each; the median of ``--repeats`` timed calls, divided by the batch.
Random weights cost the same time as trained ones (no data-dependent work).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fourm.compat.ml4m_tokenizer import ReferenceTokenizer
from fourm.compat.ml4m_tokenizer_config import parse_config

SHAPES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ml4m" / "tokenizers" / "released_shapes"


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", default="rgb_16k_224-448", help="released_shapes/<name>.json (default rgb_16k_224-448)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of a DiVAE decode (default 25)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec_json = json.loads((SHAPES / f"{args.tokenizer}.json").read_text())
    spec = parse_config(spec_json, name=spec_json["hub_id"])
    torch.manual_seed(args.seed)
    tok = ReferenceTokenizer(spec).to(args.device).eval()
    with torch.no_grad():  # random codebook rows: unit vectors, as a trained cosine codebook's are nearly
        tok.quantize._codebook.embed.copy_(torch.nn.functional.normalize(tok.quantize._codebook.embed.normal_(), dim=-1))
    n_params = sum(p.numel() for p in tok.parameters())
    g = torch.Generator().manual_seed(args.seed)
    s, b = args.size, args.batch
    if spec.modality == "semseg":
        images = torch.randint(0, spec.n_labels, (b, s, s), generator=g)
    elif spec.modality == "depth":
        images = torch.rand(b, s, s, generator=g) * 10 + 0.5
    elif spec.modality == "clip":
        images = torch.randn(b, spec.n_channels, s // 16, s // 16, generator=g)
    else:
        images = torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)
    tokens = tok.encode(images)
    enc = _time(lambda: tok.encode(images), args.repeats, args.device) / b
    steps = args.steps if tok.is_diffusion else None
    sampler = "ddim" if tok.is_diffusion else None
    dec = _time(lambda: tok.decode(tokens, steps=steps, generator=torch.Generator().manual_seed(0), sampler=sampler),
                args.repeats, args.device) / b
    what = f"{args.steps} DDIM steps" if tok.is_diffusion else "one pass"
    print(f"{spec_json['hub_id']} ({spec.kind}, {n_params / 1e6:.1f}M parameters, {spec.codebook_size} codes), "
          f"{s} px -> {tuple(tokens.shape[1:])} tokens, batch {b}, {torch.get_num_threads()} thread(s), {args.device}")
    print(f"  encode: {enc * 1000:8.1f} ms per image")
    print(f"  decode: {dec * 1000:8.1f} ms per image ({what}; {dec / args.steps * 1000 if steps else dec * 1000:.1f} ms "
          f"per {'step' if steps else 'pass'})")


if __name__ == "__main__":
    main()
