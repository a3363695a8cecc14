"""Drawing token ids from logits: top-k and top-p filtering, temperature, an explicit generator.

    ids, probs = sample_logits(logits, temperature=0.7, top_k=50, top_p=0.9, generator=g)

``probs`` is the probability of each drawn id under the distribution it was drawn from (the
confidence MaskGIT ranks positions by). A temperature of 0 means greedy (argmax; no random number
is drawn). The only randomness is ``generator``: the global RNG is never used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def check_top_k(top_k: int | float | None) -> None:
    """``None``/0 (off), an int >= 1, or a float in (0, 1) (a fraction of the vocabulary)."""
    if top_k is None or (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0):
        return
    if isinstance(top_k, float) and 0.0 < top_k < 1.0:
        return
    raise ValueError(f"top_k={top_k!r}; allowed: 0 or None (off), an integer >= 1, or a fraction in (0, 1) of the vocabulary")


def check_top_p(top_p: float | None) -> None:
    """``None``/1.0 (off) or a float in (0, 1]."""
    if top_p is None or (isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0.0 < top_p <= 1.0):
        return
    raise ValueError(f"top_p={top_p!r}; allowed: a probability in (0, 1] (1.0 or None = off)")


def filter_top_k(logits: Tensor, top_k: int | float | None) -> Tensor:
    """Set all but the ``top_k`` largest logits of each row to -inf. Shapes: (n, V) -> (n, V)."""
    check_top_k(top_k)
    if not top_k:
        return logits
    V = logits.shape[-1]
    k = max(1, int(top_k * V)) if isinstance(top_k, float) else min(int(top_k), V)
    if k >= V:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (n, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, top_p: float | None) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely ids whose probability reaches
    ``top_p`` (always at least the most likely one). Shapes: (n, V) -> (n, V)."""
    check_top_p(top_p)
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (n, V)
    probs = sorted_logits.softmax(-1)
    before = torch.cumsum(probs, -1) - probs  # probability mass of the ids ranked above
    drop_sorted = before >= top_p  # the first id always has before == 0
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits: Tensor, temperature: float, top_k: int | float | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw one id per row.

    Args:
        logits: (n, V) scores.
        temperature: > 0 samples from ``softmax(logits / temperature)``; 0 takes the argmax.
        top_k: keep the k most likely ids (int), or that fraction of the vocabulary (float).
        top_p: nucleus threshold.
        generator: the randomness (required when ``temperature > 0``).

    Returns:
        ``(ids, probs)``, each (n,): the drawn ids and their probabilities (at temperature 0:
        under ``softmax(logits)`` after filtering).
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r}; must be a finite number >= 0 (0 = greedy)")
    logits = filter_top_p(filter_top_k(logits.float(), top_k), top_p)
    if logits.shape[0] == 0:
        return logits.new_zeros(0, dtype=torch.long), logits.new_zeros(0)
    if temperature == 0:
        ids = logits.argmax(-1)
        probs = F.softmax(logits, -1).gather(-1, ids[:, None])[:, 0]
        return ids, probs
    if generator is None:
        raise ValueError("sampling at temperature > 0 needs a torch.Generator (the global RNG is never used)")
    probs_all = F.softmax(logits / temperature, -1)  # (n, V)
    ids = draw(probs_all, generator)
    return ids, probs_all.gather(-1, ids[:, None])[:, 0]


def draw(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One id per row of ``probs`` (n, V) by inverse-CDF sampling: one uniform number per row
    (``torch.multinomial`` draws one exponential per vocabulary entry, ~10x slower at V = 4k)."""
    cdf = torch.cumsum(probs, -1)  # (n, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u, right=True)[:, 0]  # first id whose cdf exceeds u
    return ids.clamp_(max=probs.shape[-1] - 1)
