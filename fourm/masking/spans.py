"""T5-style span masking of token sequences with sentinels, and its inverse.

Text ids follow the reference tokenizer (and fourm's): ``[PAD]=0, [UNK]=1, [SOS]=2, [EOS]=3``
and sentinels ``[S_i] = 4 + i`` for ``i in 0..199``. Span masking numbers its sentinels from
``[S_1]`` (id 5), so ``[S_0]`` is never used.

For a sequence ``a b c d e [EOS]`` where ``b c`` and ``e`` are masked::

    input  = a [S_1] d [S_2] [EOS]
    target = [S_1] b c [S_2] e [S_3]

Every masked run becomes one sentinel in the input; the target lists each run after its
sentinel and always ends with one more sentinel. :func:`merge_spans` puts the runs back.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

PAD_ID = 0
UNK_ID = 1
SOS_ID = 2
EOS_ID = 3
SENTINEL_OFFSET = 4
NUM_SENTINELS = 200
KEEP_DECAY = 0.9  # the reference's keep_prob_decay_factor
_SENTINEL_END = SENTINEL_OFFSET + NUM_SENTINELS
_NOT_IN_RAW = frozenset([PAD_ID, EOS_ID, *range(SENTINEL_OFFSET, _SENTINEL_END)])


def sentinel_id(index: int) -> int:
    """Token id of sentinel ``[S_index]``."""
    if not 0 <= index < NUM_SENTINELS:
        raise ValueError(f"sentinel index {index} out of range; allowed: 0..{NUM_SENTINELS - 1}")
    return SENTINEL_OFFSET + index


def is_sentinel(token: int) -> bool:
    return SENTINEL_OFFSET <= token < SENTINEL_OFFSET + NUM_SENTINELS


def max_sentinel_index(num_tokens: int) -> int:
    """Highest sentinel index span masking can emit for a sequence of ``num_tokens`` tokens.

    At most ``ceil(n / 2)`` masked runs fit in ``n`` tokens, plus the final sentinel.
    """
    return (num_tokens + 1) // 2 + 1


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(t) for t in ids]


def prepare_sequence(
    ids: Sequence[int] | torch.Tensor, num_tokens: int, vocab_size: int, name: str = "sequence"
) -> list[int]:
    """Append ``[EOS]`` and truncate to ``num_tokens`` (= max_length + 1) tokens.

    Args:
        ids: raw token ids without ``[EOS]``; list, tuple or 1-D tensor.
        num_tokens: longest allowed result.
        vocab_size: ids must be below it.
        name: used in error messages.

    Returns:
        The ids to mask.

    Raises:
        ValueError: on ``[PAD]``, ``[EOS]``, a sentinel or an out-of-vocabulary id in ``ids``.
    """
    out = _as_list(ids)
    if out and (min(out) < 0 or max(out) >= vocab_size or not _NOT_IN_RAW.isdisjoint(out)):
        bad = [t for t in out if t < 0 or t >= vocab_size or t in _NOT_IN_RAW]
        raise ValueError(
            f"{name}: token id {bad[0]} is not allowed in a raw sequence; raw ids must be in [0, {vocab_size}) "
            f"and not [PAD]={PAD_ID}, [EOS]={EOS_ID} (masking appends it) or a sentinel "
            f"({SENTINEL_OFFSET}..{SENTINEL_OFFSET + NUM_SENTINELS - 1})"
        )
    out.append(EOS_ID)
    return out[:num_tokens]


def span_mask(ids: Sequence[int], masked: Iterable[bool]) -> tuple[list[int], list[int]]:
    """Replace each masked run by a sentinel; return (input ids, target ids).

    Args:
        ids: the sequence.
        masked: one flag per id, True = hidden from the input (goes to the target).

    Returns:
        ``input`` with one sentinel per masked run, numbered from ``[S_1]``, and ``target`` =
        ``[S_1] run1 [S_2] run2 ... [S_{k+1}]``.
    """
    inp: list[int] = []
    tgt: list[int] = []
    prev = False
    k = 0
    for token, m in zip(ids, masked):
        if m:
            if not prev:
                k += 1
                inp.append(SENTINEL_OFFSET + k)
                tgt.append(SENTINEL_OFFSET + k)
            tgt.append(token)
        else:
            inp.append(token)
        prev = bool(m)
    tgt.append(SENTINEL_OFFSET + k + 1)
    return inp, tgt


def sample_span_masks(
    lengths: torch.Tensor,
    keep_prob: torch.Tensor,
    input_budget: torch.Tensor,
    generator: torch.Generator,
    attempts_per_draw: int = 8,
) -> torch.Tensor:
    """Per sample, draw which tokens are masked so that the span-masked input fits its budget.

    Each attempt keeps a token with probability ``p`` (independently); if the input (kept tokens
    plus one sentinel per masked run) is longer than the budget, ``p`` is multiplied by 0.9 and a
    fresh attempt is drawn, as in the reference. Attempts are drawn ``attempts_per_draw`` at a
    time for all unfinished samples at once; the first attempt that fits is used, which is the
    same distribution as trying them one after the other. A budget of 0 masks everything.

    Args:
        lengths: (B,) sequence lengths (>= 1).
        keep_prob: (B,) starting keep probabilities in [0, 1].
        input_budget: (B,) most input tokens.
        generator: randomness.
        attempts_per_draw: attempts drawn per round (speed only; any value gives the same law).

    Returns:
        (B, max(lengths)) bool, True = masked; False beyond each length.
    """
    B = lengths.numel()
    n = int(lengths.max()) if B else 0
    valid = torch.arange(n)[None, :] < lengths[:, None]  # (B, n)
    out = valid.clone()  # budget 0: everything masked
    pending = torch.nonzero(input_budget > 0).flatten()
    decay = KEEP_DECAY ** torch.arange(attempts_per_draw, dtype=torch.float64)  # (T,)
    start = 0
    while pending.numel():
        P, T = pending.numel(), attempts_per_draw
        p = keep_prob[pending, None].to(torch.float64) * decay[None, :] * KEEP_DECAY**start  # (P, T)
        noise = torch.rand(P, T, n, generator=generator, dtype=torch.float64)  # (P, T, n)
        v = valid[pending][:, None, :]  # (P, 1, n)
        keep = (noise < p[..., None]) & v  # p = 0 keeps nothing, p = 1 keeps everything
        masked = v & ~keep
        run_start = masked & ~F.pad(masked[..., :-1], (1, 0), value=False)
        input_len = keep.sum(-1) + run_start.sum(-1)  # (P, T)
        fits = input_len <= input_budget[pending, None]
        done = fits.any(-1)
        first = fits.to(torch.uint8).argmax(-1)  # first attempt that fits
        rows = torch.nonzero(done).flatten()
        out[pending[rows]] = masked[rows, first[rows]]
        pending = pending[~done]
        start += T
    return out


def truncate_target(target: list[int], budget: int, generator: torch.Generator) -> list[int]:
    """Cut a too-long target at a random sentinel, as the reference does.

    A sentinel other than the final one is picked at random; the target is cut to ``budget``
    tokens from there, or, when fewer than ``budget`` tokens follow it, it starts from the
    earliest sentinel whose tail fits instead (to use the budget fully).

    Args:
        target: span-masking target ``[S_i] ... [S_j]``.
        budget: most tokens to keep (>= 0).
        generator: randomness.

    Returns:
        ``target`` itself if it fits, else a slice of it that starts with a sentinel.
    """
    if len(target) <= budget:
        return target
    sentinels = [i for i, t in enumerate(target) if SENTINEL_OFFSET <= t < _SENTINEL_END]
    pick = int(torch.randint(max(1, len(sentinels) - 1), (1,), generator=generator))
    start = sentinels[pick]
    if len(target) - start >= budget:
        return target[start : start + budget]
    for idx in sentinels:
        if len(target) - idx <= budget:
            return target[idx:]
    raise AssertionError("the final sentinel always fits a budget >= 1")


def split_by_sentinel(target: Sequence[int] | torch.Tensor) -> dict[int, list[int]]:
    """Map each sentinel id in ``target`` to the ids that follow it up to the next sentinel.

    Tokens before the first sentinel belong to no span and are dropped.
    """
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for t in _as_list(target):
        if is_sentinel(t):
            current = spans.setdefault(t, [])
        elif current is not None:
            current.append(t)
    return spans


def merge_spans(input_ids: Sequence[int] | torch.Tensor, target_ids: Sequence[int] | torch.Tensor) -> list[int]:
    """Undo span masking: replace each input sentinel by the span that follows it in the target.

    A sentinel that the target does not contain (e.g. a target cut to its budget, or a generated
    target that stopped early) is replaced by nothing, as in the reference's
    ``merge_span_masking``.

    Args:
        input_ids: span-masked input (no padding).
        target_ids: its target ``[S_1] span1 [S_2] ...`` (no padding).

    Returns:
        The merged ids; for a complete target, the original sequence (with its ``[EOS]``).
    """
    spans = split_by_sentinel(target_ids)
    out: list[int] = []
    for t in _as_list(input_ids):
        if is_sentinel(t):
            out.extend(spans.get(t, ()))
        else:
            out.append(t)
    return out
