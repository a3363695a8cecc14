"""How many tokens each decoding step commits, and at which temperature.

Token schedules (image modalities, MaskGIT and random-order decoding) split the ``n`` tokens still
to generate over ``steps`` steps:

* ``"cosine"`` (MaskGIT): the fraction still hidden before step ``i`` is
  ``s_i = (1 + cos(pi * i / steps)) / 2``; after step ``i``, ``round(n * (1 - s_{i+1}))`` tokens
  are decoded in all. Few tokens early (when the model knows least), many late. Rounding the
  cumulative count (rather than each step's share, as the reference does, which then puts the
  remainder on the last step) keeps every count >= 0 and the total exactly ``n``.
* ``"linear"``: near-equal chunks, the larger ones first (the reference's ``linear_schedule``).

Counts are per sample (``n`` may differ per sample, e.g. when in-painting regions of different
sizes): :func:`token_counts` returns a (B, steps) table.

Temperature schedules give the sampling temperature of each step from the base temperature ``T``
and ``r``, the fraction of tokens still to generate before the step (1 at the first step):

* ``"constant"``: ``T``;
* ``"linear"``: ``T * r`` (hot first, near-greedy at the end);
* ``"onex:MIN:POWER"``: a ``1 / x**POWER`` curve over ``x = linspace(1, 100, steps)``, rescaled
  to [0, 1], times ``r``, mapped to ``[MIN, T]`` (the reference's ``onex``; e.g.
  ``"onex:0.5:0.5"``).

    counts = token_counts("cosine", torch.tensor([64, 20]), steps=8)   # (2, 8), rows sum to 64, 20
    sched = TemperatureSchedule.parse("onex:0.5:0.5")
    temps = [sched(3.0, i, 8, r) for i, r in enumerate(remaining_fractions(counts[0]))]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TOKEN_SCHEDULES: tuple[str, ...] = ("cosine", "linear")
TEMPERATURE_SCHEDULES: tuple[str, ...] = ("constant", "linear", "onex:MIN:POWER")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; must be an integer >= 1")


def decoded_fraction(schedule: str, steps: int) -> Tensor:
    """Fraction of the tokens decoded after each step, (steps,) float64, ending at exactly 1."""
    _check_steps(steps)
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    if schedule == "cosine":
        frac = 1.0 - (1.0 + torch.cos(math.pi * i / steps)) / 2.0
    elif schedule == "linear":
        frac = i / steps
    else:
        raise ValueError(f"token schedule {schedule!r}; allowed: {', '.join(TOKEN_SCHEDULES)}")
    frac[-1] = 1.0
    return frac


def token_counts(schedule: str, num_tokens: Tensor | int, steps: int) -> Tensor:
    """Tokens committed at each step, per sample.

    Args:
        schedule: ``"cosine"`` or ``"linear"``.
        num_tokens: (B,) tokens to generate per sample (or one int).
        steps: decoding steps.

    Returns:
        (B, steps) int64 (or (steps,) for an int): non-negative, each row sums to its
        ``num_tokens``. ``"linear"`` gives chunks that differ by at most one, larger first.

    Shapes:
        num_tokens (B,) -> (B, steps).
    """
    single = not isinstance(num_tokens, Tensor)
    n = torch.as_tensor(num_tokens, dtype=torch.long).reshape(-1).cpu()  # (B,)
    if (n < 0).any():
        raise ValueError(f"num_tokens must be >= 0, got {n.tolist()}")
    if schedule == "linear":
        _check_steps(steps)
        i = torch.arange(1, steps + 1)  # (S,)
        # larger chunks first: the first n % steps steps get one extra token
        cum = i[None, :] * (n // steps)[:, None] + torch.minimum(i[None, :], (n % steps)[:, None])  # (B, S)
    else:
        frac = decoded_fraction(schedule, steps)  # (S,)
        cum = torch.round(n[:, None].to(torch.float64) * frac[None, :]).long()  # (B, S)
        cum[:, -1] = n
    counts = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1]))
    return counts[0] if single else counts


def remaining_fractions(counts: Tensor) -> list[float]:
    """Fraction of the tokens still to generate before each step of one schedule row (steps,)."""
    total = int(counts.sum())
    if total == 0:
        return [1.0] * counts.numel()
    before = torch.cumsum(counts, 0) - counts  # tokens decoded before each step
    return (1.0 - before.double() / total).tolist()


@dataclass(frozen=True)
class TemperatureSchedule:
    """A temperature schedule: ``kind`` ``"constant"``, ``"linear"`` or ``"onex"`` (with
    ``min_temperature`` and ``power``). Build it from text with :meth:`parse`."""

    kind: str = "constant"
    min_temperature: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "onex"):
            raise ValueError(f"temperature schedule {self.kind!r}; allowed: {', '.join(TEMPERATURE_SCHEDULES)}")
        if self.min_temperature < 0 or not math.isfinite(self.min_temperature):
            raise ValueError(f"temperature schedule: min temperature {self.min_temperature!r} must be >= 0")
        if self.power <= 0 or not math.isfinite(self.power):
            raise ValueError(f"temperature schedule: power {self.power!r} must be > 0")

    @classmethod
    def parse(cls, spec: "str | TemperatureSchedule") -> "TemperatureSchedule":
        """``"constant"``, ``"linear"`` or ``"onex:MIN:POWER"`` (e.g. ``"onex:0.5:0.5"``)."""
        if isinstance(spec, TemperatureSchedule):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"temperature_schedule must be a string such as 'linear', got {type(spec).__name__}")
        parts = spec.split(":")
        if parts[0] in ("constant", "linear") and len(parts) == 1:
            return cls(parts[0])
        if parts[0] == "onex" and len(parts) == 3:
            try:
                return cls("onex", float(parts[1]), float(parts[2]))
            except ValueError:
                pass
        raise ValueError(f"temperature_schedule={spec!r}; allowed: {', '.join(TEMPERATURE_SCHEDULES)} "
                         f"(e.g. 'onex:0.5:0.5')")

    def __call__(self, temperature: float, step: int, steps: int, remaining: float) -> float:
        """Temperature of ``step`` (0-based) of ``steps``, with ``remaining`` the fraction of
        tokens still to generate before the step (1.0 at step 0)."""
        if self.kind == "constant":
            return float(temperature)
        if self.kind == "linear":
            return float(temperature) * remaining
        x = torch.linspace(1.0, 100.0, max(steps, 2), dtype=torch.float64) ** -self.power  # (S,)
        curve = float((x[min(step, len(x) - 1)] - x[-1]) / (x[0] - x[-1]))  # 1 at step 0, 0 at the end
        return self.min_temperature + (float(temperature) - self.min_temperature) * curve * remaining
