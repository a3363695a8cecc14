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

Found (2026-12-08, rgb_gen, `--tokenizer tokenizers/shapes64/rgb_gen --steps 600 --batch 64
--train-limit 10000`, one thread each; object tokens given 5% / 90%): plain 6.06 / 6.17;
`--appearance input` (each code's decoded look added to its embedding) 6.04 / 6.14; `--appearance
both` (outputs scored by it too) 6.06 / 6.12; `--pos-std 0.3` 5.97 / 5.98; `--pos-std 1.0` 5.95 /
5.93 (overall given 90%: 1.67 / 1.69 / 1.68 / 1.56 / 1.53). Neither telling the model what a code
looks like nor stronger positions makes it copy an object's colour from its neighbours at this
budget (experiments/recipe_proxies/object_colour.py: a one-line neighbour rule gets 0.60).
`--object-weight 5`: objects 5.53 / 5.50 given 5% / 90% (background 3.15 / 0.71); `--object-weight
20`: 5.50 / 5.42 (background 4.25 / 2.80). Weighting lowers the objects' marginal loss, not what the
model reads from their neighbours.
Locality is what is missing: on scenes with one object each (`WorldConfig(min_objects=1,
max_objects=1)`, 10,000 + 512 scenes of seeds 0 / 1) the plain model's object tokens get *worse*
with context, 6.84 given 5% -> 7.22 given 90% (above uniform: it calls a hidden object patch
background the more confidently the more it sees), while `--local-mix` (a 3 x 3 convolution over
the embedded grid before the blocks) gives 6.87 -> 5.78 (background 0.21 -> 0.09 given 90%); on the
usual scenes `--local-mix` gives objects 5.97 -> 5.29 (plain 6.06 -> 6.17), background 0.18 (0.34).
The transformers learn the scene-wide context (the background's colours) and, at these budgets, not
which patches neighbour the one they predict.
`--distance-bias 1.0` (every attention score minus the grid distance of its two positions, no
parameters, the form SDPA takes as an additive mask) gives most of that: one-object scenes 6.90 ->
6.04, usual scenes 6.01 -> 5.49 (background 0.30 given 90%).

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


def code_appearance(tokenizer_dir: Path) -> torch.Tensor:
    """(vocab, 3 * p * p) each code's look: the centre patch of a grid of that code alone, decoded, in [0, 1]."""
    tok = ImageTokenizer.from_pretrained(tokenizer_dir)
    grid = tok.encode(torch.zeros(1, 3, tok.config.image_size, tok.config.image_size, dtype=torch.uint8)).shape[1:]
    h, w = grid
    rows = []
    with torch.no_grad():
        for lo in range(0, tok.codebook_size, 64):
            ids = torch.arange(lo, min(lo + 64, tok.codebook_size))
            im = tok.decode(ids[:, None, None].expand(-1, h, w)).float() / 255.0  # (n, 3, H, W)
            ph, pw = im.shape[2] // h, im.shape[3] // w
            rows.append(im[:, :, (h // 2) * ph:(h // 2 + 1) * ph, (w // 2) * pw:(w // 2 + 1) * pw].flatten(1))
    return torch.cat(rows)


class GridInfill(nn.Module):
    def __init__(self, vocab: int, length: int, dim: int, depth: int, heads: int,
                 appearance: torch.Tensor | None = None, tie_output: bool = False, pos_std: float = 0.02,
                 local_mix: bool = False, distance_bias: float = 0.0):
        super().__init__()
        self.mask_id = vocab
        self.embed = nn.Embedding(vocab + 1, dim)
        # --appearance: each code's decoded look (a fixed table) through a learned linear map, added to
        # its learned embedding, so that codes that look alike (one colour) start alike
        self.register_buffer("appearance", appearance, persistent=False)
        self.app_in = None if appearance is None else nn.Linear(appearance.shape[1], dim)
        self.app_out = None if appearance is None or not tie_output else nn.Linear(appearance.shape[1], dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * pos_std)
        # --local-mix: a 3 x 3 convolution over the embedded grid before the blocks, so that each
        # position starts with its neighbours' codes (a square grid)
        side = math.isqrt(length)
        self.local = nn.Conv2d(dim, dim, 3, padding=1) if local_mix else None
        self.side = side
        # --distance-bias: every attention score minus slope x the grid distance of its two positions
        # (a fixed 2D ALiBi, the same in every head and block)
        rows, cols = torch.arange(length) // side, torch.arange(length) % side
        dist = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).float().sqrt()
        self.register_buffer("bias", -distance_bias * dist if distance_bias else None, persistent=False)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        # tokens, hidden: [B, N]; hidden positions are replaced by the mask token
        shown = tokens.masked_fill(hidden, self.mask_id)
        x = self.embed(shown) + self.pos  # [B, N, D]
        if self.app_in is not None:
            look = self.app_in(self.appearance)  # [V, D]
            x = x + torch.where(hidden[..., None], torch.zeros_like(x), look[tokens.clamp(max=len(look) - 1)])
        if self.local is not None:
            B, N, D = x.shape
            grid = x.transpose(1, 2).reshape(B, D, self.side, self.side)
            x = x + self.local(grid).reshape(B, D, N).transpose(1, 2)
        y = self.norm(self.blocks(x, mask=self.bias))
        logits = self.head(y)  # [B, N, V]
        if self.app_out is not None:  # also score each code by its look
            logits = logits + y @ self.app_out(self.appearance).T / math.sqrt(y.shape[-1])
        return logits


def warmup_cosine(step: int, steps: int, peak: float, warmup: int) -> float:
    """Learning rate of ``step``: linear warmup over ``warmup`` steps, then cosine to 0 at ``steps``."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


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
    parser.add_argument("--object-weight", type=float, default=1.0,
                        help="with --tokenizer: loss weight of the tokens whose patch holds an object pixel")
    parser.add_argument("--local-mix", action="store_true", help="a 3 x 3 convolution over the embedded grid "
                        "before the transformer blocks")
    parser.add_argument("--distance-bias", type=float, default=0.0, help="subtract this slope x the grid "
                        "distance of two positions from their attention scores (a fixed 2D ALiBi)")
    parser.add_argument("--pos-std", type=float, default=0.02, help="initial scale of the learned positions "
                        "(the token embeddings start at 1)")
    parser.add_argument("--appearance", choices=("none", "input", "both"), default="none",
                        help="with --tokenizer: add each code's decoded look to its input embedding (input) "
                             "and also score the outputs by it (both)")
    args = parser.parse_args()
    if args.appearance != "none" and not args.tokenizer:
        parser.error("--appearance needs --tokenizer")

    torch.manual_seed(args.seed)
    # TransformerEncoder's eval-mode fast path with --distance-bias's float mask gave context-free
    # predictions (4.8 nats at every share while training went well); without it eval matches training
    torch.backends.mha.set_fastpath_enabled(False)
    if args.tokenizer:
        vocab = args.vocab or ImageTokenizer.from_pretrained(args.tokenizer).codebook_size
        train, train_objects = encode_grids(args.shards / "train", args.tokenizer, args.train_limit)
        val, objects = encode_grids(args.shards / "val", args.tokenizer, args.val_limit)
        print(f"encoded {len(train)} + {len(val)} grids; codes used {len(torch.unique(train))}", flush=True)
    else:
        vocab = args.vocab or read_token_metadata(args.shards / "train")["fields"][args.field]
        train = load_grids(args.shards / "train", args.field, args.train_limit)
        val = load_grids(args.shards / "val", args.field, args.val_limit)
        objects = train_objects = None
    if args.object_weight != 1.0 and train_objects is None:
        parser.error("--object-weight needs --tokenizer (the object mask comes from the raw shards' semseg)")
    length = train.shape[1]
    look = code_appearance(args.tokenizer) if args.appearance != "none" else None
    model = GridInfill(vocab, length, args.dim, args.depth, heads=4, appearance=look,
                       tie_output=args.appearance == "both", pos_std=args.pos_std,
                       local_mix=args.local_mix, distance_bias=args.distance_bias)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, args.steps, 1e-3, 100)
        idx = torch.randint(len(train), (args.batch,), generator=gen)
        tokens = train[idx]
        hidden = draw_hidden(args.batch, length, 0.05 + 0.9 * torch.rand(args.batch, generator=gen), gen)
        logits = model(tokens, hidden)
        if args.object_weight == 1.0:
            loss = F.cross_entropy(logits[hidden], tokens[hidden])
        else:  # object tokens' loss weighted, a weighted mean over the hidden tokens
            w = 1.0 + (args.object_weight - 1.0) * train_objects[idx][hidden].float()
            loss = (F.cross_entropy(logits[hidden], tokens[hidden], reduction="none") * w).sum() / w.sum()
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
           "appearance": args.appearance, "pos_std": args.pos_std, "object_weight": args.object_weight, "local_mix": args.local_mix, "distance_bias": args.distance_bias,
           "train_grids": len(train), "hidden_ce_given": row}
    if objects is not None:
        out["hidden_ce_given_by_group"] = by_group
    print(json.dumps(out))


if __name__ == "__main__":
    main()
