"""How consistently an rgb tokenizer codes plain background: for sky and ground tokens (8 x 8
patches wholly of one class) of 256 ShapesWorld scenes (seed 777), how often a token has the same
code as its left neighbour, how many codes one row of ground uses, and how many the sky of one image.

    python experiments/tokenizer_proxies/same_code.py tokenizers/shapes64/rgb out/tokenizer_proxies/H/tokenizer

Uniform sky or ground coded with many near-duplicate codes is noise a FourM cannot predict
(README.md beside this file has the figures).
"""
from __future__ import annotations

import sys

import torch

from fourm.evaluation.reconstruction import render_batch
from fourm.vq.vqvae import ImageTokenizer

SKY, GROUND = 0, 1  # semseg classes


def main(paths: list[str], num_scenes: int = 256, seed: int = 777) -> None:
    torch.set_num_threads(1)
    for path in paths:
        tok = ImageTokenizer.from_pretrained(path)
        b = render_batch(seed, range(num_scenes), tok.config.image_size)
        codes = tok.encode(b["rgb"])  # (N, h, w)
        n, h, w = codes.shape
        d = tok.config.downsample
        patches = b["semseg"].reshape(n, h, d, w, d)
        for name, cls in (("sky", SKY), ("ground", GROUND)):
            plain = (patches == cls).all(4).all(2)  # (N, h, w)
            pair = plain[:, :, 1:] & plain[:, :, :-1]
            same = (codes[:, :, 1:] == codes[:, :, :-1])[pair].float().mean().item()
            per_image = sum(len(set(codes[i][plain[i]].tolist())) for i in range(n)) / n
            rows = [len(set(codes[i, r][plain[i, r]].tolist())) for i in range(n) for r in range(h)
                    if plain[i, r].sum() >= 4]
            print(f"{path}  {name:6s} same code as left {same:.3f}  codes per image {per_image:.1f}  "
                  f"codes per row (rows of >= 4 tokens) {sum(rows) / max(1, len(rows)):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
