"""Classifier-free guidance over one or several conditions, as branches stacked on the batch axis.

A guided step runs the model on ``G`` branches of the same batch that differ only in which input
modalities the encoder may see. Branch 0 is the reference ("unconditional") branch; branch ``i``
adds condition ``i`` back. The guided logits are

    l = l_0 + sum_i w_i * (l_i - l_0)

* plain CFG (``cfg_scale = s`` over the modalities ``C``): branches {hide C} and {nothing
  hidden}, weight ``s``; ``s = 1`` is the unguided conditional model, ``s = 0`` the unconditional one.
* weighted guidance over conditions ``C_1 .. C_K`` with weights ``w_i`` (negative weights push
  away from a condition): branch 0 hides every ``C_i``; branch ``i`` hides all but ``C_i``.

Every branch goes through ONE forward: :func:`stack_branches` repeats the batch ``G`` times on the
batch axis (row ``g * B + b`` is branch ``g`` of sample ``b``) and clears ``is_input`` of the hidden
modalities. Hiding is what the model saw in training, where any modality may be missing (the
reference's guidance relies on the same: it has no separate condition dropout). The target
modality's own known tokens stay visible in every branch.

    plan = plan_guidance(cfg_scale=3.0, cfg_conditions=None, guidance=(), available=["caption"])
    stacked = stack_branches(batch, plan.drops)     # (G * B, ...)
    logits = plan.combine(logits.view(plan.num_branches, -1, V))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

Batch = dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class Condition:
    """One term of weighted guidance: the input ``modalities`` that form the condition and its
    ``weight`` (negative = steer away from it)."""

    modalities: tuple[str, ...]
    weight: float

    def __post_init__(self) -> None:
        mods = (self.modalities,) if isinstance(self.modalities, str) else tuple(self.modalities)
        object.__setattr__(self, "modalities", mods)
        if not mods or not all(isinstance(m, str) and m for m in mods):
            raise ValueError(f"Condition.modalities={self.modalities!r}; give one or more modality names")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"Condition.weight={self.weight!r}; must be a finite number (negative allowed)")


@dataclass(frozen=True)
class GuidancePlan:
    """Branches of a guided forward.

    Attributes:
        drops: per branch, the input modalities hidden from the encoder (branch 0 first).
        weights: weight of each branch after the first (empty: no guidance, one branch).
    """

    drops: tuple[frozenset[str], ...]
    weights: tuple[float, ...]

    @property
    def num_branches(self) -> int:
        return len(self.drops)

    @property
    def guided(self) -> bool:
        return len(self.drops) > 1

    def combine(self, logits: Tensor) -> Tensor:
        """``l_0 + sum_i w_i (l_i - l_0)`` in float32. Shapes: (G, ..., V) -> (..., V)."""
        if logits.shape[0] != self.num_branches:
            raise ValueError(f"logits have {logits.shape[0]} branches, the plan has {self.num_branches}")
        base = logits[0].float()
        if not self.guided:
            return base
        out = base.clone()
        for w, branch in zip(self.weights, logits[1:]):
            out += w * (branch.float() - base)
        return out


NO_GUIDANCE = GuidancePlan((frozenset(),), ())


def plan_guidance(cfg_scale: float, cfg_conditions: Sequence[str] | None, guidance: Sequence[Condition],
                  available: Iterable[str]) -> GuidancePlan:
    """The branches for a target.

    Args:
        cfg_scale: plain CFG scale (1.0 = off).
        cfg_conditions: modalities hidden in the unconditional branch of plain CFG (``None``: all
            available inputs).
        guidance: weighted conditions (exclusive with ``cfg_scale != 1``).
        available: the input modalities present (the target's own tokens excluded).

    Returns:
        The plan. Conditions that are not among ``available`` are ignored (in a chain, a
        modality may only appear later); guidance with nothing to hide becomes no guidance.
    """
    available = set(available)
    if guidance:
        if cfg_scale != 1.0:
            raise ValueError(f"cfg_scale={cfg_scale} and guidance={list(guidance)} both given; use one: cfg_scale for "
                             "plain CFG, guidance for weighted conditions")
        sets = [frozenset(c.modalities) & available for c in guidance]
        hidden = frozenset().union(*sets)
        if not hidden:
            return NO_GUIDANCE
        return GuidancePlan((hidden, *(hidden - s for s in sets)), tuple(float(c.weight) for c in guidance))
    if cfg_scale == 1.0:
        return NO_GUIDANCE
    hidden = frozenset(available if cfg_conditions is None else cfg_conditions) & available
    if not hidden:
        return NO_GUIDANCE
    return GuidancePlan((hidden, frozenset()), (float(cfg_scale),))


def stack_branches(batch: Mapping[str, Mapping[str, Tensor]], drops: Sequence[frozenset[str]]) -> Batch:
    """Repeat a batch once per branch on the batch axis, hiding ``drops[g]`` in branch ``g``.

    Args:
        batch: modality -> entry (``tokens``, ``is_input``, optional ``is_target``), batch size B.
        drops: per branch, modalities whose ``is_input`` is cleared.

    Returns:
        The stacked batch, batch size ``G * B``; row ``g * B + b`` is branch ``g`` of sample ``b``.
        With one branch that hides nothing, ``batch`` itself (no copy).
    """
    G = len(drops)
    if G == 1 and not drops[0]:
        return {k: dict(v) for k, v in batch.items()}
    out: Batch = {}
    for name, entry in batch.items():
        tokens = entry["tokens"]
        new = {"tokens": tokens.repeat(G, *([1] * (tokens.dim() - 1)))}  # (G * B, ...)
        if "is_input" in entry:
            vis = entry["is_input"]
            new["is_input"] = torch.cat([torch.zeros_like(vis) if name in d else vis for d in drops])
        if "is_target" in entry:
            new["is_target"] = entry["is_target"].repeat(G, *([1] * (entry["is_target"].dim() - 1)))
        out[name] = new
    return out


def branch(batch: Mapping[str, Mapping[str, Tensor]], drop: frozenset[str]) -> Batch:
    """One branch of :func:`stack_branches` on its own (batch size B), for two-pass guidance."""
    return stack_branches(batch, [drop]) if drop else {k: dict(v) for k, v in batch.items()}
