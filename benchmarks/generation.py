"""Generation speed on CPU: cached vs uncached caption decoding, guided MaskGIT rgb generation.

    .venv/bin/python benchmarks/generation.py                     # bundled size, 2 threads
    .venv/bin/python benchmarks/generation.py --size wide --repeats 7

Model: randomly initialised FourM with the ShapesWorld modalities of configs/fm/shapes_bundled.yaml
(8 x 8 grids, text vocabulary 4312, captions up to 64 tokens). Sizes: ``bundled`` (the model block
of that file: dim 192, 4 + 4 layers) and ``wide`` (dim 384, 6 + 6 layers, 6 heads). Speed does not
depend on the weights, except through when a caption stops: a random model rarely emits [EOS], so
captions run to ``--caption-tokens`` (the tokens actually decoded are printed).

Figures (medians over ``--repeats``, variants interleaved, after one warm-up; the machine is
shared, so run it a few times and compare medians). OpenMP threads sleep instead of spinning
(``OMP_WAIT_POLICY=PASSIVE`` unless set): with spinning threads, 2-thread runs on 2 cores that
other jobs also use slow down 3-10x.
* caption (rgb -> caption, B = 1 and B = 8): seconds per caption with the key/value cache and
  without it (the whole decoder rerun over the prefix at each token, as the reference does); the
  speed-up; tokens/s;
* rgb (caption -> tok_rgb, 64 tokens, 8 MaskGIT cosine steps, CFG 3.0): seconds per image with
  the guidance branches batched in one forward and as two forwards; tokens/s.

What to expect on CPU: a cached step reads every decoder weight once for one new token, so at
batch 1 it is bound by memory traffic (~11.5 MB per token at the bundled size), which the uncached
step pays as well; the cache's advantage grows with the batch and the model (more compute per
weight byte). Batched guidance saves per-call overhead; at larger batches its unconditional rows
are padded to the conditional rows' encoder length, which costs more than it saves on a CPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from fourm.generation import Sampler, Target
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.models import FourM, FourMConfig

ROOT = Path(__file__).resolve().parents[1]
WIDE = dict(dim=384, encoder_depth=6, decoder_depth=6, num_heads=6, mlp_ratio=4.0)


def build_model(size: str) -> FourM:
    cfg = yaml.safe_load((ROOT / "configs/fm/shapes_bundled.yaml").read_text())
    mods = dict(cfg["modalities"])
    names = mods.pop("names")
    reg = shapes_world_modalities(**mods).subset(names)
    arch = cfg["model"] if size == "bundled" else WIDE
    return FourM(FourMConfig(modalities=reg, **arch)).eval()


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds and last output of each function; runs alternate (a, b, a, b, ...) after one
    warm-up each, so that a change in the machine's load hits every variant alike."""
    outs = {k: fn() for k, fn in fns.items()}  # warm-up
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["bundled", "wide"], default="bundled")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--caption-tokens", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.size)
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.size} dim {c.dim}, {c.encoder_depth} + {c.decoder_depth} layers, {c.num_heads} heads, "
          f"{n_params / 1e6:.1f}M params; torch {torch.__version__}, {args.threads} threads")
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 1024, (8, 64), generator=g)
    caption = torch.randint(300, 4312, (8, 40), generator=g)

    cap = Target("caption", max_tokens=args.caption_tokens, temperature=1.0)
    cached, uncached = Sampler(model, use_cache=True), Sampler(model, use_cache=False)
    for B in (1, 8):
        row = timed({"cache": lambda: cached.generate({"tok_rgb": rgb[:B]}, [cap], seed=0),
                     "no cache": lambda: uncached.generate({"tok_rgb": rgb[:B]}, [cap], seed=0)}, args.repeats)
        (s1, o1), (s0, o0) = row["cache"], row["no cache"]
        assert o1.spans == o0.spans, "cached and uncached decoding disagree"
        n = sum(len(t) - 1 for t in o1.spans["caption"])  # tokens decoded after [S_1]
        print(f"caption  B={B}: {n / B:.0f} tokens/caption | cache {s1 / B * 1e3:7.1f} ms/caption, {n / s1:6.0f} tok/s"
              f" | no cache {s0 / B * 1e3:7.1f} ms/caption, {n / s0:6.0f} tok/s | speed-up {s0 / s1:.1f}x")

    img = Target("tok_rgb", steps=8, scheme="maskgit", schedule="cosine", temperature=1.0, cfg_scale=3.0)
    one, two = Sampler(model, batch_guidance=True), Sampler(model, batch_guidance=False)
    for B in (1, 8):
        row = timed({"batched": lambda: one.generate({"caption": caption[:B]}, [img], seed=0),
                     "two passes": lambda: two.generate({"caption": caption[:B]}, [img], seed=0)}, args.repeats)
        (s1, _), (s0, _) = row["batched"], row["two passes"]
        print(f"rgb      B={B}: 8 MaskGIT steps, CFG 3 | batched guidance {s1 / B:.3f} s/image, {64 * B / s1:5.0f} tok/s"
              f" | two passes {s0 / B:.3f} s/image, {64 * B / s0:5.0f} tok/s | speed-up {s0 / s1:.2f}x")

if __name__ == "__main__":
    main()
