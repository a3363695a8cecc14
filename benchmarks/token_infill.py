"""How well a model predicts hidden image tokens from the rest of the same grid.

    .venv/bin/python benchmarks/token_infill.py models/shapes_bundled --tokenizers tokenizers/shapes64

For ``--num-samples`` held-out ShapesWorld scenes (world ``--seed``, never used in training), each
image-token modality of the model (tok_rgb, tok_depth, tok_semseg) is tokenized; for each share
``--given`` (default 50% and 90%), a random subset of that share of the grid is the model's only
input and the rest are its targets; the figure is the mean cross-entropy (nats) of the hidden
tokens, overall and for the tokens whose patch holds an object pixel (``object``) or not
(``background``). The masks are drawn from ``--mask-seed``, the same for every model, so two models
are scored on the same hidden tokens.

``--condition tok_semseg`` (or tok_depth, tok_rgb: any other image-token modality of the model)
also gives that modality's whole grid as input, and ``--given`` may then include 0: this is a step
of conditional generation (semseg -> rgb with MaskGIT: the condition and the tokens decoded so
far in, the rest out), scored before sampling noise and the scene parser blur the comparison.

Read it beside ``fourm tokenizer eval``'s predictability table: a tokenizer whose codes cannot be
predicted from their neighbours (codes that stand for nearly the same patch, picked by noise) leaves
even a good model near H(code | position), and such codes, sampled, draw mixed-up images. A
tokenizer fit for generation is one whose hidden codes a trained model predicts well.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fourm.evaluation.token_stats import object_token_mask  # noqa: E402
from fourm.models import FourM  # noqa: E402
from fourm.evaluation.reconstruction import render_batch  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402


@torch.no_grad()
def infill_cross_entropy(model: FourM, name: str, tokens: torch.Tensor, is_object: torch.Tensor, given: float,
                         generator: torch.Generator, batch_size: int = 64,
                         condition: tuple[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Mean cross-entropy of the hidden tokens of modality ``name`` given ``given`` of its grid.

    Args:
        model: the FourM.
        name: an image-token modality of the model.
        tokens: (B, h, w) codes.
        is_object: (B, h, w) bool, the tokens whose patch holds an object pixel.
        given: share of each grid given as input, in (0, 1).
        generator: draws which tokens are given.
        condition: (modality, (B, h', w') codes) given whole beside the share of ``name``'s grid.
    Returns:
        {"all", "object", "background"}: mean cross-entropy in nats; "hidden": tokens scored.
    """
    B = tokens.shape[0]
    flat, obj = tokens.reshape(B, -1), is_object.reshape(B, -1)  # (B, L)
    L = flat.shape[1]
    k = round(given * L)
    if not (0 if condition else 1) <= k < L:
        raise ValueError(f"given={given} leaves {k} of {L} tokens as input; need at least one input (or a "
                         "condition) and one target")
    cond_name, cond = condition if condition else (None, None)
    cond_flat = None if cond is None else cond.reshape(B, -1)
    n_enc = k + (0 if cond_flat is None else cond_flat.shape[1])
    order = torch.rand(B, L, generator=generator).argsort(dim=1)
    is_input = torch.zeros(B, L, dtype=torch.bool).scatter_(1, order[:, :k], True)
    losses, objects = [], []
    for lo in range(0, B, batch_size):
        sl = slice(lo, lo + batch_size)
        batch = {name: {"tokens": flat[sl], "is_input": is_input[sl], "is_target": ~is_input[sl]}}
        if cond_flat is not None:
            c = cond_flat[sl]
            batch[cond_name] = {"tokens": c, "is_input": torch.ones_like(c, dtype=torch.bool),
                                "is_target": torch.zeros_like(c, dtype=torch.bool)}
        out = model(batch, max(n_enc, 1), L, return_logits=True)
        pred = out.predictions[name]
        losses.append(F.cross_entropy(pred.logits.float(), pred.target_ids, reduction="none"))
        objects.append(obj[sl][pred.batch_index, pred.position])
    loss, o = torch.cat(losses), torch.cat(objects)
    return {"all": float(loss.mean()), "object": float(loss[o].mean()), "background": float(loss[~o].mean()),
            "hidden": int(loss.numel())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a saved FourM with image-token modalities")
    p.add_argument("--tokenizers", default="tokenizers/shapes64", help="the tokenizers the model was trained with")
    p.add_argument("--seed", type=int, default=1000, help="world seed of the held-out scenes")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--given", default="0.5,0.9", help="comma-separated shares of the grid given as input")
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument("--condition", default=None,
                   help="an image-token modality given whole as well (e.g. tok_semseg); --given may then include 0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = FourM.from_pretrained(args.model).eval()
    toks = load_tokenizers(args.tokenizers)
    specs = [s for s in model.specs.values() if s.kind == "image" and s.decoder and s.tokenizer in toks]
    if not specs:
        raise SystemExit(f"error: {args.model} has no image-token modality with a tokenizer in {args.tokenizers}")
    if args.condition is not None and args.condition not in {s.name for s in specs}:
        raise SystemExit(f"error: --condition {args.condition!r}: allowed: the model's image-token modalities "
                         f"({', '.join(s.name for s in specs)})")
    batch = render_batch(args.seed, range(args.num_samples), toks[specs[0].tokenizer].config.image_size)
    results: dict = {"model": args.model, "tokenizers": args.tokenizers, "seed": args.seed,
                     "num_samples": args.num_samples, "mask_seed": args.mask_seed, "condition": args.condition,
                     "given": {}}
    encoded = {s.name: toks[s.tokenizer].encode(batch[s.raw_field]) for s in specs}  # (B, h, w) each
    condition = None if args.condition is None else (args.condition, encoded[args.condition])
    with_cond = "" if condition is None else f", {args.condition} given whole"
    print(f"hidden-token cross-entropy (nats), {args.num_samples} scenes of seed {args.seed}{with_cond}, {args.model}")
    print(f"  {'modality':<11} {'given':>5} {'all':>6} {'object':>7} {'background':>11}")
    for spec in specs:  # each with the tokenizer its spec names (tok_rgb may use rgb_gen/)
        name = spec.name
        if name == args.condition:
            continue
        tokens = encoded[name]
        is_object = object_token_mask(batch["semseg"], tuple(tokens.shape[1:]))
        for given in (float(g) for g in args.given.split(",")):
            gen = torch.Generator().manual_seed(args.mask_seed)
            r = infill_cross_entropy(model, name, tokens, is_object, given, gen, condition=condition)
            results["given"].setdefault(str(given), {})[name] = r
            print(f"  {name:<11} {given:>5.0%} {r['all']:>6.2f} {r['object']:>7.2f} {r['background']:>11.2f}")
    results["wall_s"] = time.perf_counter() - t0
    print(f"({results['wall_s']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
