"""How much do an image token's neighbours say about it, for a dedicated model?

Trains a small bidirectional transformer on one token grid alone (MaskGIT-style: a share of the
grid drawn uniformly in [0.05, 0.95] is given, the rest is predicted) and reports the hidden-token
cross-entropy given 5% ... 90% of the grid on the validation shards. It is the ceiling that
`benchmarks/token_infill.py` measures the unified model against: if a dedicated model cannot use
the context either, the token space is the limit; if it can, the unified model's recipe is.

    python experiments/recipe_proxies/grid_infill.py <token shard dir> --field tok_rgb --steps 1500
    python experiments/recipe_proxies/grid_infill.py <raw shard dir> --tokenizer <rgb tokenizer dir>

With ``--tokenizer`` the grids are that tokenizer's codes of the raw shards' rgb images (encoded
here, so a tokenizer proxy can be screened before any token shards are written), and the figures
are also split into object tokens (an object pixel in the patch) and background tokens.

Found (2026-12-07, 600 steps x 64, hidden cross-entropy given 5 / 30 / 50 / 70 / 90% of the grid):
tokenizer proxy L (flat view) 3.77 / 2.96 / 2.86 / 2.77 / 2.80; proxy M (flat view + patch-local
encoder) 2.73 / 1.43 / 1.32 / 1.27 / 1.32, where the unified FourM proxy on M's tokens (P5) stays at
3.85 ... 3.45: the token space and the recipe both limit it (README.md beside this file). Split
by token: M's background 2.11 -> 0.27 but objects 4.93 -> 4.86 (L: 3.24 -> 1.98 and 5.66 -> 5.55);
at 1800 steps x 64, M overall 2.50 -> 1.12, background 1.86 -> 0.17, objects 4.81 -> 4.33.

The library never imports this file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fourm.data.pretokenize import read_token_metadata
from fourm.data.shard_reader import ShardDataset
from fourm.evaluation.token_stats import object_token_mask
from fourm.vq.vqvae import ImageTokenizer


def read_split(split_dir: Path, fields: list[str], limit: int | None, batch: int = 512):
    """The split's samples in stored order (the first ``limit``), as lists of up to ``batch``."""
    samples = itertools.islice(ShardDataset(str(split_dir), fields=fields), limit)
    while chunk := list(itertools.islice(samples, batch)):
        yield chunk


def load_grids(split_dir: Path, field: str, limit: int | None) -> torch.Tensor:
    """(N, h * w) int64 token grids of a token shard folder."""
    return torch.cat([torch.stack([s[field].reshape(-1).long() for s in chunk])
                      for chunk in read_split(split_dir, [field], limit)])


def encode_grids(split_dir: Path, tokenizer_dir: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, object) of the raw shards' scenes: (N, h * w) int64 codes of ``tokenizer_dir`` and
    (N, h * w) bool, whether the token's patch holds an object pixel."""
    tok = ImageTokenizer.from_pretrained(tokenizer_dir).eval()
    codes, objects = [], []
    for chunk in read_split(split_dir, ["rgb", "semseg"], limit):
        with torch.no_grad():
            grid = tok.encode(torch.stack([s["rgb"] for s in chunk]))  # (B, h, w)
        mask = object_token_mask(torch.stack([s["semseg"] for s in chunk]), tuple(grid.shape[1:]))  # (B, h, w)
        codes.append(grid.reshape(len(chunk), -1).long())
        objects.append(mask.reshape(len(chunk), -1))
    return torch.cat(codes), torch.cat(objects)


class GridInfill(nn.Module):
    def __init__(self, vocab: int, length: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.mask_id = vocab
        self.embed = nn.Embedding(vocab + 1, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        # tokens, hidden: [B, N]; hidden positions are replaced by the mask token
        x = self.embed(tokens.masked_fill(hidden, self.mask_id)) + self.pos  # [B, N, D]
        return self.head(self.norm(self.blocks(x)))  # [B, N, V]


def draw_hidden(batch: int, length: int, given: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # given: [B] share of the grid given; returns hidden [B, N] with at least one hidden token
    num_given = (given * length).round().clamp(1, length - 1).long()
    order = torch.rand(batch, length, generator=generator).argsort(dim=1)
    ranks = order.argsort(dim=1)
    return ranks >= num_given[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("--field", default="tok_rgb")
    parser.add_argument("--vocab", type=int, default=None, help="default: from metadata.json or the tokenizer")
    parser.add_argument("--tokenizer", type=Path, default=None, help="encode the raw shards' rgb with it")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--val-limit", type=int, default=512)
    parser.add_argument("--given", default="0.05,0.3,0.5,0.7,0.9")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.tokenizer:
        vocab = args.vocab or ImageTokenizer.from_pretrained(args.tokenizer).codebook_size
        train = encode_grids(args.shards / "train", args.tokenizer, args.train_limit)[0]
        val, objects = encode_grids(args.shards / "val", args.tokenizer, args.val_limit)
        print(f"encoded {len(train)} + {len(val)} grids; codes used {len(torch.unique(train))}", flush=True)
    else:
        vocab = args.vocab or read_token_metadata(args.shards / "train")["fields"][args.field]
        train = load_grids(args.shards / "train", args.field, args.train_limit)
        val = load_grids(args.shards / "val", args.field, args.val_limit)
        objects = None
    length = train.shape[1]
    model = GridInfill(vocab, length, args.dim, args.depth, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        lr = 1e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(train), (args.batch,), generator=gen)
        tokens = train[idx]
        hidden = draw_hidden(args.batch, length, 0.05 + 0.9 * torch.rand(args.batch, generator=gen), gen)
        logits = model(tokens, hidden)
        loss = F.cross_entropy(logits[hidden], tokens[hidden])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    model.eval()
    eval_gen = torch.Generator().manual_seed(1000)
    row, by_group = {}, {"object": {}, "background": {}}
    with torch.no_grad():
        for share in (float(s) for s in args.given.split(",")):
            hidden = draw_hidden(len(val), length, torch.full((len(val),), share), eval_gen)
            ce = F.cross_entropy(model(val, hidden).transpose(1, 2), val, reduction="none")  # (B, N)
            row[share] = ce[hidden].mean().item()
            if objects is not None:  # with --tokenizer: split by whether the patch holds an object
                by_group["object"][share] = ce[hidden & objects].mean().item()
                by_group["background"][share] = ce[hidden & ~objects].mean().item()
    out = {"shards": str(args.shards), "tokenizer": str(args.tokenizer), "field": args.field, "steps": args.steps,
           "train_grids": len(train), "hidden_ce_given": row}
    if objects is not None:
        out["hidden_ce_given_by_group"] = by_group
    print(json.dumps(out))


if __name__ == "__main__":
    main()
