"""How many codes does an image tokenizer need? Code statistics, and what merging codes costs.

    .venv/bin/python experiments/codebook_merge.py --tokenizers tokenizers/shapes64

For ``--num-samples`` held-out ShapesWorld scenes (world seed ``--seed``) it prints, per image
tokenizer, the distinct codes used and their unigram entropy (the most a model could have to
learn per token, against ``log K``); then for the rgb tokenizer, what merging its codes into
fewer groups costs: spherical k-means (weighted by use) on the code vectors, every code replaced by
its group's most used member, the reconstructions scored by PSNR and by the scene parser's object
F1. Merging after training is a lower bound on a tokenizer trained with that many codes.

Why it matters: a FourM generates tokens, not pixels. ShapesWorld's rgb tokenizer spends its 1024
codes almost uniformly (128 scenes of seed 777: 1020 codes used, unigram entropy 6.77 of 6.93 nats):
the ground and sky of every scene get codes of their own. The bundled FourM's tok_rgb loss stays
near 5.8 nats even when a third of the grid is given, and caption -> rgb suffers (see
experiments/rgb_infill.py). Merged into 256 groups the same tokenizer keeps 28.5 dB and object F1
0.80 (1024 codes: 32.1 dB, 0.91; 128: 26.8 dB, 0.67). A coarser vocabulary alone did not help the
bundled model, though: with its tok_rgb mapped to 256 merged codes and 300 more training steps
(stage 2's mixture), its tok_rgb loss fell by about the entropy removed (6.1 -> 4.7 nats) and
caption -> rgb stayed at 0.08 (the same 300 steps on the 1024 codes: 0.08).
"""
from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fourm.data.shapes_world import WorldConfig, render_scene  # noqa: E402
from fourm.evaluation.objects import scene_f1  # noqa: E402
from fourm.evaluation.scene_parser import parse_scene  # noqa: E402
from fourm.evaluation.dense import psnr as image_psnr  # noqa: E402
from fourm.data.image_sources import stored_image  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402


def merge_codes(codebook: torch.Tensor, usage: torch.Tensor, k: int, generator: torch.Generator,
                iters: int = 30) -> torch.Tensor:
    """Map every code to a representative: spherical k-means into ``k`` groups, weighted by use.

    Args:
        codebook: (K, D) code vectors.
        usage: (K,) how often each code was used.
        k: number of groups.
        generator: the randomness of the initial centres.

    Returns:
        (K,) int64: for each code, the most used code of its group.
    """
    cb = F.normalize(codebook.float(), dim=-1)  # (K, D)
    w = usage.float() + 1e-3  # unused codes still join a group
    centres = cb[torch.multinomial(w, k, replacement=False, generator=generator)]  # (k, D)
    for _ in range(iters):
        group = (cb @ centres.t()).argmax(1)  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, group, cb * w[:, None])
        filled = torch.bincount(group, minlength=k) > 0
        centres = torch.where(filled[:, None], F.normalize(sums, dim=-1), centres)
    group = (cb @ centres.t()).argmax(1)
    rep = torch.arange(len(cb))
    for g in group.unique():
        members = (group == g).nonzero()[:, 0]
        rep[members] = members[w[members].argmax()]
    return rep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seed", type=int, default=777, help="world seed of the held-out scenes")
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--groups", default="512,256,128,64", help="comma-separated group counts for the rgb merge")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    toks = load_tokenizers(args.tokenizers)
    scenes = [render_scene(args.seed, i, WorldConfig(image_size=args.image_size)) for i in range(args.num_samples)]
    print(f"{args.tokenizers}: {len(scenes)} scenes of seed {args.seed}")
    codes = {}
    for key in ("rgb", "depth", "semseg"):
        if key not in toks:
            continue
        with torch.no_grad():
            codes[key] = toks[key].encode(torch.stack([stored_image(s, key) for s in scenes]))  # (B, h, w)
        K = toks[key].codebook_size
        counts = torch.bincount(codes[key].flatten(), minlength=K).float()
        prob = counts[counts > 0] / counts.sum()
        print(f"{key:6s}: {int((counts > 0).sum())} of {K} codes used, unigram entropy "
              f"{float(-(prob * prob.log()).sum()):.2f} nats (log K = {math.log(K):.2f})")
    if "rgb" not in toks:
        return
    tok, rgb = toks["rgb"], codes["rgb"]
    truth = [s["objects"] for s in scenes]
    pixels = torch.stack([stored_image(s, "rgb") for s in scenes])  # (B, 3, H, W) uint8

    def score(tokens: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            rec = tok.decode(tokens).cpu()  # (B, 3, H, W) uint8
        images = rec.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) for the scene parser
        f1 = scene_f1([parse_scene(np.ascontiguousarray(im)) for im in images], truth)["f1"]
        return float(image_psnr(rec, pixels).mean()), f1

    usage = torch.bincount(rgb.flatten(), minlength=tok.codebook_size)
    print(f"rgb codes merged into groups (k-means on the code vectors):\n{'codes':>6s} {'PSNR dB':>8s} {'object F1':>10s}")
    psnr, f1 = score(rgb)
    print(f"{tok.codebook_size:6d} {psnr:8.2f} {f1:10.3f}")
    g = torch.Generator().manual_seed(0)
    for k in (int(x) for x in args.groups.split(",")):
        rep = merge_codes(tok.quantizer.codebook, usage, k, g)
        psnr, f1 = score(rep[rgb])
        print(f"{k:6d} {psnr:8.2f} {f1:10.3f}", flush=True)


if __name__ == "__main__":
    main()
