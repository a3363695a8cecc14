"""How predictable an image tokenizer's codes are: the property that decides whether a model can
generate them, which reconstruction scores do not show.

A tokenizer can reconstruct well and still be unfit for generation: when many codes stand for
nearly the same patch, which of them the encoder picks is noise that no model can predict, and a
sampler drawing from those flat distributions mixes codes of different content. These statistics
measure that from counts alone, with no model:

| key | meaning |
|---|---|
| ``codes_used`` | distinct codes among the scored tokens |
| ``h_code`` | cross-entropy (nats) of a code under the code frequencies, H(code) |
| ``h_code_given_position`` | the same under per-grid-position frequencies, H(code given position) |
| ``h_code_given_left`` | the same under frequencies given the left neighbour's code, H(code given left) |

Each is a held-out cross-entropy: the frequencies are counted on ``fit`` token grids and the
codes of other ``eval`` grids are scored, so a large codebook cannot flatter itself by memorising
the scored scenes (in-sample conditional entropies fall towards zero as the codebook grows). The
conditional frequencies are interpolated with the code frequencies (add-one smoothed),
``p(c | x) = (n(x, c) + beta * p(c)) / (n(x) + beta)``, with ``beta`` chosen from a small grid by
two-fold cross-validation on the fit grids alone.

Tokens can be split into groups (for ShapesWorld: ``object`` tokens, whose patch holds an object
pixel, and ``background`` ones; :func:`object_token_mask`): each group's frequencies are counted
on that group's fit tokens and scored on its eval tokens.

A model's own cross-entropy on hidden tokens (``benchmarks/token_infill.py``) is the other half
of the picture: these counts bound what a model gets from position and one neighbour; the model
sees the whole context.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

BETAS = (0.25, 1.0, 4.0, 16.0, 64.0)  # smoothing strengths tried by cross-validation


def object_token_mask(semseg: torch.Tensor, grid: tuple[int, int], first_object_class: int = 2) -> torch.Tensor:
    """Which tokens' patches hold an object pixel.

    Args:
        semseg: (B, H, W) class ids; ids >= ``first_object_class`` are objects (ShapesWorld:
            0 sky, 1 ground, then the shapes).
        grid: the token grid (h, w); H and W must be multiples of it.
    Returns:
        (B, h, w) bool.
    """
    B, H, W = semseg.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"semseg of {H} x {W} px does not tile into a {h} x {w} token grid")
    obj = (semseg >= first_object_class).reshape(B, h, H // h, w, W // w)  # (B, h, ph, w, pw)
    return obj.any(dim=4).any(dim=2)


def _unigram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    counts = torch.bincount(codes, minlength=codebook_size).double()
    return (counts + 1.0) / (counts.sum() + codebook_size)  # add-one: every code has some mass


def _context_counts(ctx: torch.Tensor, codes: torch.Tensor, num_contexts: int, codebook_size: int) -> torch.Tensor:
    flat = torch.bincount(ctx * codebook_size + codes, minlength=num_contexts * codebook_size)
    return flat.double().reshape(num_contexts, codebook_size)


def _cross_entropy(fit_ctx: torch.Tensor, fit_codes: torch.Tensor, eval_ctx: torch.Tensor, eval_codes: torch.Tensor,
                   num_contexts: int, codebook_size: int, beta: float) -> float:
    """Mean -log p(code | context) of the eval pairs under the smoothed counts of the fit pairs."""
    uni = _unigram(fit_codes, codebook_size)
    counts = _context_counts(fit_ctx, fit_codes, num_contexts, codebook_size)
    n_ctx = counts.sum(1)  # (num_contexts,)
    p = (counts[eval_ctx, eval_codes] + beta * uni[eval_codes]) / (n_ctx[eval_ctx] + beta)
    return float(-p.log().mean())


def _conditional_entropy(fit_ctx: torch.Tensor, fit_codes: torch.Tensor, eval_ctx: torch.Tensor,
                         eval_codes: torch.Tensor, num_contexts: int, codebook_size: int) -> float:
    """Held-out cross-entropy with ``beta`` picked by two-fold cross-validation on the fit pairs."""
    if len(fit_codes) < 2:
        return _cross_entropy(fit_ctx, fit_codes, eval_ctx, eval_codes, num_contexts, codebook_size, BETAS[-1])
    half = len(fit_codes) // 2
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]

    def cv(beta: float) -> float:
        return sum(_cross_entropy(fit_ctx[a], fit_codes[a], fit_ctx[b], fit_codes[b], num_contexts,
                                  codebook_size, beta) for a, b in folds)

    beta = min(BETAS, key=cv)
    return _cross_entropy(fit_ctx, fit_codes, eval_ctx, eval_codes, num_contexts, codebook_size, beta)


def _pairs(tokens: torch.Tensor, keep: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per statistic, (context, code) of the kept tokens; contexts are ids in [0, num_contexts)."""
    B, h, w = tokens.shape
    pos = torch.arange(h * w).reshape(1, h, w).expand(B, h, w)
    left = torch.cat([tokens.new_zeros(B, h, 1), tokens[:, :, :-1]], dim=2)  # (B, h, w); column 0 has none
    has_left = keep.clone()
    has_left[:, :, 0] = False
    return {
        "h_code": (torch.zeros_like(tokens[keep]), tokens[keep]),
        "h_code_given_position": (pos[keep], tokens[keep]),
        "h_code_given_left": (left[has_left], tokens[has_left]),
    }


def token_predictability(fit_tokens: torch.Tensor, eval_tokens: torch.Tensor, codebook_size: int,
                         fit_groups: Mapping[str, torch.Tensor] | None = None,
                         eval_groups: Mapping[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """The predictability statistics of the module docstring.

    Args:
        fit_tokens: (N, h, w) integer codes the frequencies are counted on.
        eval_tokens: (M, h, w) codes of other scenes, the ones scored.
        codebook_size: number of codes K.
        fit_groups, eval_groups: optional {group name: (N, h, w) / (M, h, w) bool} subsets of
            tokens (e.g. ``object`` and ``background``), scored separately; same names in both.
    Returns:
        {"all": stats, group: stats, ...}; each stats dict has ``tokens`` (scored), ``codes_used``,
        ``h_code``, ``h_code_given_position`` and ``h_code_given_left`` (nats).
    """
    fit_tokens, eval_tokens = fit_tokens.long().cpu(), eval_tokens.long().cpu()
    for name, t in (("fit_tokens", fit_tokens), ("eval_tokens", eval_tokens)):
        if t.ndim != 3:
            raise ValueError(f"{name} must have shape (N, h, w), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= codebook_size):
            raise ValueError(f"{name} hold codes in [{int(t.min())}, {int(t.max())}], outside [0, {codebook_size - 1}]")
    if fit_tokens.shape[1:] != eval_tokens.shape[1:]:
        raise ValueError(f"fit grids {tuple(fit_tokens.shape[1:])} and eval grids {tuple(eval_tokens.shape[1:])} differ")
    fit_groups, eval_groups = dict(fit_groups or {}), dict(eval_groups or {})
    if set(fit_groups) != set(eval_groups):
        raise ValueError(f"fit_groups {sorted(fit_groups)} and eval_groups {sorted(eval_groups)} must name the same groups")
    if "all" in fit_groups:
        raise ValueError("'all' is reserved for every token; name the group otherwise")
    h, w = fit_tokens.shape[1:]
    num_contexts = {"h_code": 1, "h_code_given_position": h * w, "h_code_given_left": codebook_size}
    groups = {"all": (torch.ones_like(fit_tokens, dtype=torch.bool), torch.ones_like(eval_tokens, dtype=torch.bool))}
    groups.update({g: (fit_groups[g].bool().cpu(), eval_groups[g].bool().cpu()) for g in fit_groups})
    out: dict[str, dict[str, float]] = {}
    for g, (fit_keep, eval_keep) in groups.items():
        fit, ev = _pairs(fit_tokens, fit_keep), _pairs(eval_tokens, eval_keep)
        stats: dict[str, float] = {"tokens": int(eval_keep.sum()),
                                   "codes_used": int(torch.unique(eval_tokens[eval_keep]).numel())}
        for key, n_ctx in num_contexts.items():
            (fc, fk), (ec, ek) = fit[key], ev[key]
            stats[key] = _conditional_entropy(fc, fk, ec, ek, n_ctx, codebook_size) if len(ek) and len(fk) else math.nan
        out[g] = stats
    return out


def format_predictability(stats: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A text table: one row per tokenizer and token group."""
    lines = [f"  {'tokens':<20} {'codes used':>10} {'H(code)':>8} {'H(c|pos)':>9} {'H(c|left)':>10}   (nats, held out)"]
    for modality, groups in stats.items():
        for g, s in groups.items():
            lines.append(f"  {modality + ' ' + g:<20} {s['codes_used']:>10d} {s['h_code']:>8.2f} "
                         f"{s['h_code_given_position']:>9.2f} {s['h_code_given_left']:>10.2f}")
    return "\n".join(lines)
