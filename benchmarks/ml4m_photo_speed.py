"""Time ``fourm generate --image`` at the released sizes: 4M-7 B + the rgb, depth and semseg tokenizers.

    python benchmarks/ml4m_photo_speed.py --threads 1 --decode-steps 25

Builds a 4M-7 base model (``released_config("B")``) and the three released tokenizers (from
``../shared/fixtures/ml4m/tokenizers/released_shapes``) with random weights (no released weights
are needed: the time does not depend on their values), then runs ``run_photo`` on
scikit-image's astronaut with the default RGB->X settings (depth and semseg, ROAR 1 step,
guidance 2.0) and prints the seconds of each stage: rgb tokenizer, generation, each decoder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fourm.compat.ml4m import config_from_ml4m, released_config
from fourm.generation.photo import run_photo
from fourm.compat.ml4m_tokenizer import ReferenceTokenizer
from fourm.compat.ml4m_tokenizer_config import parse_config
from fourm.models import FourM

SHAPES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ml4m" / "tokenizers" / "released_shapes"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="B", choices=("B", "L", "XL"))
    p.add_argument("--decode-steps", type=int, default=25)
    p.add_argument("--decode-sampler", default=None, choices=("ddim", "ddpm"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = FourM(config_from_ml4m(released_config(args.size))).eval()
    toks = {}
    for name in ("rgb_16k_224-448", "depth_8k_224-448", "semseg_4k_224-448"):
        spec = json.loads((SHAPES / f"{name}.json").read_text())
        tok = ReferenceTokenizer(parse_config(spec, name=spec["hub_id"])).eval()
        with torch.no_grad():
            tok.quantize._codebook.embed.normal_()
        toks[tok.modality] = tok
    print(f"built 4M-7 {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters) and "
          f"{', '.join(toks)} tokenizers in {time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} thread(s)")
    from skimage import data

    t0 = time.perf_counter()
    res = run_photo(model, toks, data.astronaut(), seed=0, decode_steps=args.decode_steps,
                    decode_sampler=args.decode_sampler)
    total = time.perf_counter() - t0
    for k, v in res.seconds.items():
        print(f"  {k:24s} {v:7.2f} s")
    print(f"  {'total':24s} {total:7.2f} s  (depth decoded with {args.decode_steps} steps of "
          f"{args.decode_sampler or toks['depth'].spec.sampler})")


if __name__ == "__main__":
    main()
