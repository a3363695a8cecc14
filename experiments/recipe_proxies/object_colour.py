"""Does a model know an object's colour when it predicts that object's hidden rgb tokens? (issue #15)

    .venv/bin/python experiments/recipe_proxies/object_colour.py models/shapes_bundled --tokenizers tokenizers/shapes64

Generated objects come out many-coloured; the hidden-token cross-entropy of object tokens stays at
4-6 nats for every model and tokenizer tried. This splits that figure. Each code of the model's rgb
tokenizer is given a colour: decode a grid of that code alone, take its pixels of HSV saturation
>= 0.35 (ShapesWorld's backgrounds stay below, its object colours above, whatever the shading),
and name the palette colour (``COLOURS``) nearest in hue to the most of them; a code with fewer
than 10% such pixels is colourless. Then, as benchmarks/token_infill.py does (same scenes, same
masks), a share ``--given`` of each tok_rgb grid is the input and the rest the targets; on the
hidden tokens whose true code has a colour (object patches) it reports the probability mass the
model puts on codes of the same colour, of another colour and colourless, and how often the most
likely code has the right colour. A colour is unique per scene, so the visible patches of the same
object say which colour it is.

Found (2026-12-08, 256 scenes of seed 1000, given 50% / 90%): mass on the right colour 0.10-0.12
for every model (the bundled one on `rgb`, P1 and P6 at two lengths on `rgb_gen`), about a sixth of
the mass they put on coloured codes, that is chance; their most likely code has the right colour
0.08-0.20 of the time. The tokens themselves say the colour: a coloured patch's `rgb_gen` code has
the patch's colour 0.64 of the time (`rgb` 0.47; decoded alone, while in context the decoders also
read the neighbours; all 107 interior patches of 512 scenes, checked once, got their colour's one
interior code), and the neighbour rule (the commonest colour among the visible coloured
neighbours, no model) is right 0.61 / 0.60 of the time on `rgb_gen` (0.35 / 0.37 on `rgb`); a count
table P(code | left code) from 2,000 other scenes puts 0.43 of its mass on the right colour and 0.26
on others (`rgb`: 0.20 / 0.35), where the models put 0.12 / 0.60. Given only the left neighbour's
code, P6 stage 1 puts 0.04 / 0.20 on the right / other colours (the same code moved to a far
corner: 0.10 / 0.46): exactly the chance ratio, so the neighbour's colour does not reach its
prediction at all. The models do not learn to copy a colour from a neighbour.
Table: experiments/recipe_proxies/README.md ("P6 at the bundled length").
"""
from __future__ import annotations

import argparse
import colorsys
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fourm.data.shapes_world import COLOURS  # noqa: E402
from fourm.evaluation.reconstruction import render_batch  # noqa: E402
from fourm.models import FourM  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402

HUES = np.array([colorsys.rgb_to_hsv(*(np.array(c) / 255.0))[0] for c in COLOURS.values()])


def pixels_colour(p: np.ndarray) -> int:
    """Palette index of a patch's colour from its (n, 3) pixels in [0, 1]: the palette hue nearest to the
    most of its pixels of saturation >= 0.35; -1 when fewer than 10% of its pixels are that saturated."""
    mx, mn = p.max(1), p.min(1)
    coloured = p[(mx - mn) / np.maximum(mx, 1e-6) >= 0.35]
    if len(coloured) < 0.1 * len(p):
        return -1
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] for c in coloured[:: max(1, len(coloured) // 256)]])
    d = np.abs(hue[:, None] - HUES[None])
    return int(np.bincount(np.minimum(d, 1 - d).argmin(1), minlength=len(HUES)).argmax())


def code_colours(tok, vocab: int, grid: tuple[int, int]) -> np.ndarray:
    """(vocab,) palette index of each code's colour (a grid of that code alone, decoded), -1 for none."""
    out = np.full(vocab, -1)
    for lo in range(0, vocab, 64):
        ids = torch.arange(lo, min(lo + 64, vocab))
        images = tok.decode(ids[:, None, None].expand(-1, *grid).to(tok.device)).cpu()  # (n, 3, H, W) uint8
        px = (images.float() / 255.0).permute(0, 2, 3, 1).reshape(len(ids), -1, 3).numpy()
        out[lo:lo + len(ids)] = [pixels_colour(p) for p in px]
    return out


def patch_colours(images: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """(B, h, w) palette index of each real patch's colour, -1 if none. images: (B, 3, H, W) uint8."""
    B, _, H, W = images.shape
    h, w = grid
    px = (images.float() / 255.0).reshape(B, 3, h, H // h, w, W // w).permute(0, 2, 4, 3, 5, 1)
    px = px.reshape(B, h, w, -1, 3).numpy()
    out = np.full((B, h, w), -1)
    for idx in np.ndindex(B, h, w):
        out[idx] = pixels_colour(px[idx])
    return out


def colour_mass(prob: torch.Tensor, colour_of: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``prob`` (n, V): the mass on codes of colour ``truth`` (n,) and on codes of another colour."""
    same = (prob * (colour_of[None] == truth[:, None])).sum(1)
    other = (prob * ((colour_of[None] >= 0) & (colour_of[None] != truth[:, None]))).sum(1)
    return same, other


def neighbour_rule(labels: torch.Tensor, visible: torch.Tensor) -> tuple[float, int]:
    """How often the most common colour among a hidden coloured code's visible coloured 8-neighbours is
    its own colour (no model: what copying a neighbour's colour gives). labels, visible: (B, h, w)."""
    right = n = 0
    B, h, w = labels.shape
    for b, i, j in zip(*torch.nonzero(~visible & (labels >= 0), as_tuple=True)):
        nb = labels[b, max(0, i - 1):i + 2, max(0, j - 1):j + 2][visible[b, max(0, i - 1):i + 2, max(0, j - 1):j + 2]]
        nb = nb[nb >= 0]
        if len(nb):
            n += 1
            right += int(torch.bincount(nb, minlength=len(HUES)).argmax() == labels[b, i, j])
    return right / max(n, 1), n


def left_table_colour(colour_of: torch.Tensor, vocab: int, table_codes: torch.Tensor,
                      codes: torch.Tensor) -> tuple[float, float, int]:
    """A count table P(code | left neighbour's code) fitted on ``table_codes`` (other scenes): its mass
    on the right colour and on another colour, for the coloured codes of ``codes`` with a coloured left
    neighbour. (B, h, w) each."""
    counts = torch.full((vocab, vocab), 0.01, dtype=torch.float64)
    counts.index_put_((table_codes[:, :, :-1].reshape(-1), table_codes[:, :, 1:].reshape(-1)),
                      torch.ones(table_codes[:, :, 1:].numel(), dtype=torch.float64), accumulate=True)
    table = counts / counts.sum(1, keepdim=True)
    left, this = codes[:, :, :-1].reshape(-1), codes[:, :, 1:].reshape(-1)
    keep = (colour_of[left] >= 0) & (colour_of[this] >= 0)
    probs, truth = table[left[keep]], colour_of[this[keep]]  # (n, V), (n,)
    same, other = colour_mass(probs, colour_of, truth)
    return float(same.mean()), float(other.mean()), int(keep.sum())


@torch.no_grad()
def single_neighbour(model: FourM, colour_of: torch.Tensor, codes: torch.Tensor, far: bool) -> tuple[float, float, int]:
    """The model's mass on the right / another colour for a coloured code whose only input is its coloured
    left neighbour's code: in place, or (``far``) moved to a far corner of the grid. codes: (B, h, w)."""
    B, h, w = codes.shape
    b, i, j = torch.nonzero((colour_of[codes[:, :, 1:]] >= 0) & (colour_of[codes[:, :, :-1]] >= 0), as_tuple=True)
    j = j + 1  # the coded patch; its left neighbour is j - 1
    src_i, src_j = (h - 1 - i, torch.where(j > w // 2, 0, w - 1)) if far else (i, j - 1)
    n = len(b)
    tokens = codes[b].reshape(n, -1).clone()
    tokens[torch.arange(n), src_i * w + src_j] = codes[b, i, j - 1]
    is_input = torch.zeros(n, h * w, dtype=torch.bool)
    is_input[torch.arange(n), src_i * w + src_j] = True
    is_target = torch.zeros_like(is_input)
    is_target[torch.arange(n), i * w + j] = True
    pred = model({"tok_rgb": {"tokens": tokens, "is_input": is_input, "is_target": is_target}}, 1, 1,
                 return_logits=True).predictions["tok_rgb"]
    prob, truth = pred.logits.float().softmax(-1), colour_of[pred.target_ids]
    same, other = colour_mass(prob, colour_of, truth)
    return float(same.mean()), float(other.mean()), n


@torch.no_grad()
def colour_masses_given(model: FourM, flat: torch.Tensor, colour_of: torch.Tensor, given: float) -> dict:
    """With ``given`` of each tok_rgb grid ``flat`` (B, L) as input (token_infill's masks, seed 0), the
    model's mean mass on the right colour, another colour and colourless codes, and how often its
    most likely code has the right colour, over the hidden tokens whose true code has a colour."""
    B, L = flat.shape
    k = round(given * L)
    order = torch.rand(B, L, generator=torch.Generator().manual_seed(0)).argsort(dim=1)
    is_input = torch.zeros(B, L, dtype=torch.bool).scatter_(1, order[:, :k], True)
    same = other = none = top = n = 0.0
    for lo in range(0, B, 64):
        sl = slice(lo, lo + 64)
        pred = model({"tok_rgb": {"tokens": flat[sl], "is_input": is_input[sl], "is_target": ~is_input[sl]}},
                     k, L, return_logits=True).predictions["tok_rgb"]
        truth = colour_of[pred.target_ids]  # (N,)
        keep = truth >= 0
        prob, truth = pred.logits.float().softmax(-1)[keep], truth[keep]  # (n, V), (n,)
        right, wrong = colour_mass(prob, colour_of, truth)
        same += float(right.sum())
        other += float(wrong.sum())
        none += float(prob[:, colour_of < 0].sum(1).sum())
        top += float((colour_of[prob.argmax(1)] == truth).sum())
        n += int(keep.sum())
    return {"right": same / n, "other": other / n, "none": none / n, "top": top / n, "n": int(n),
            "is_input": is_input}


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--given", default="0.5,0.9")
    p.add_argument("--table-scenes", type=int, default=2000, help="scenes of world seed 7 for the count table")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FourM.from_pretrained(args.model).eval()
    spec = model.specs["tok_rgb"]
    tok = load_tokenizers(args.tokenizers)[spec.tokenizer]
    colour_of = torch.as_tensor(code_colours(tok, spec.vocab_size, tuple(spec.grid)))
    print(f"{args.model} (tok_rgb: {spec.tokenizer}): codes per colour "
          + ", ".join(f"{n} {int((colour_of == i).sum())}" for i, n in enumerate(COLOURS))
          + f", colourless {int((colour_of < 0).sum())}")
    batch = render_batch(args.seed, range(args.num_samples), tok.config.image_size)
    codes = tok.encode(batch[spec.raw_field])  # (B, h, w)
    real = torch.as_tensor(patch_colours(batch[spec.raw_field], tuple(codes.shape[1:])))
    agree = float((colour_of[codes][real >= 0] == real[real >= 0]).float().mean())
    print(f"  the tokenizer itself: a coloured patch's code has the patch's colour {agree:.3f} of the time "
          f"({int((real >= 0).sum())} coloured patches)")
    table_codes = torch.cat([tok.encode(render_batch(7, range(lo, min(lo + 250, args.table_scenes)),
                                                     tok.config.image_size)[spec.raw_field])
                             for lo in range(0, args.table_scenes, 250)])
    same, other, n = left_table_colour(colour_of, spec.vocab_size, table_codes.long(), codes.long())
    print(f"  a count table P(code | left code) from {args.table_scenes} other scenes: mass on the right colour "
          f"{same:.3f}, another colour {other:.3f} ({n} coloured codes with a coloured left neighbour)")
    for far in (False, True):
        same, other, n = single_neighbour(model, colour_of, codes.long(), far)
        where = "moved to a far corner" if far else "in place"
        print(f"  the left neighbour's code alone as input, {where}: mass on the right colour {same:.3f}, "
              f"another colour {other:.3f} ({n} codes)")
    flat = codes.reshape(args.num_samples, -1)  # (B, L)
    for given in (float(g) for g in args.given.split(",")):
        m = colour_masses_given(model, flat, colour_of, given)
        rule_right, rule_n = neighbour_rule(colour_of[flat].reshape(codes.shape), m["is_input"].reshape(codes.shape))
        print(f"  given {given:.0%}: {m['n']} hidden coloured tokens; mass on the right colour {m['right']:.3f}, "
              f"another colour {m['other']:.3f}, colourless {m['none']:.3f}; most likely code's colour right "
              f"{m['top']:.3f}; the neighbour rule right {rule_right:.3f} (on {rule_n})")


if __name__ == "__main__":
    sys.exit(main())
