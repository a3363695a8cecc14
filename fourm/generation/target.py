"""``Target``: what to generate and how, one small frozen object per generated modality.

    Target("caption", temperature=0.7, top_p=0.9)                         # autoregressive
    Target("tok_rgb", steps=8, scheme="maskgit", temperature=2.0,
           temperature_schedule="linear", cfg_scale=3.0)                   # MaskGIT, guided
    Target("tok_depth", steps=4, scheme="roar")                            # random order
    Target("tok_rgb", guidance=(Condition("caption", 3.0), Condition("det", -1.0)))

A target generates every token of its modality that is not an input: the holes of a partly known
modality (in-painting; a caption with sentinels), or the whole modality when it is absent or
complete (a complete input is replaced, not kept).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

from fourm.generation.guidance import Condition
from fourm.generation.sampling import check_top_k, check_top_p
from fourm.generation.schedules import TOKEN_SCHEDULES, TemperatureSchedule
from fourm.modalities import ModalitySpec

IMAGE_SCHEMES: tuple[str, ...] = ("maskgit", "roar")
SEQUENCE_SCHEMES: tuple[str, ...] = ("autoregressive",)
DEFAULT_IMAGE_STEPS = 8


@dataclass(frozen=True)
class Target:
    """One modality to generate.

    Args:
        modality: a target modality of the model (``"tok_rgb"``, ``"caption"``, ...).
        steps: decoding steps of an image modality (default 8); sequences decode one token per
            step and take no ``steps``.
        scheme: ``"maskgit"`` (default for images: every remaining position is predicted, the
            most confident ones are kept), ``"roar"`` (random order: a random subset is predicted
            and kept) or ``"autoregressive"`` (sequences; the default and only choice there).
        schedule: tokens per step, ``"cosine"`` (default for maskgit) or ``"linear"`` (default
            for roar).
        temperature: sampling temperature; 0 = greedy.
        temperature_schedule: ``"constant"``, ``"linear"`` or ``"onex:MIN:POWER"`` (see
            :mod:`fourm.generation.schedules`).
        top_k: keep the k most likely ids (int) or that fraction of the vocabulary (float); 0 = off.
        top_p: nucleus threshold; 1.0 = off.
        cfg_scale: classifier-free guidance scale; 1.0 = off (the plain conditional model).
        cfg_conditions: input modalities hidden in the unconditional branch; ``None`` = every input.
        guidance: weighted guidance over several conditions (exclusive with ``cfg_scale``):
            ``l_0 + sum_i w_i (l_i - l_0)``; see :mod:`fourm.generation.guidance`.
        max_tokens: sequences: most tokens generated after the start sentinel (default: the
            modality's ``num_tokens + 1``, room for a whole sequence, its [EOS] and the closing
            sentinel).
    """

    modality: str
    steps: int | None = None
    scheme: str | None = None
    schedule: str | None = None
    temperature: float = 1.0
    temperature_schedule: str = "constant"
    top_k: int | float | None = 0
    top_p: float | None = 1.0
    cfg_scale: float = 1.0
    cfg_conditions: tuple[str, ...] | None = None
    guidance: tuple[Condition, ...] = ()
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.modality, str) or not self.modality:
            raise ValueError(f"Target.modality={self.modality!r}; give a modality name such as 'tok_rgb'")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"Target({self.modality!r}).steps={self.steps!r}; must be an integer >= 1")
        allowed = IMAGE_SCHEMES + SEQUENCE_SCHEMES
        if self.scheme is not None and self.scheme not in allowed:
            raise ValueError(f"Target({self.modality!r}).scheme={self.scheme!r}; allowed: {', '.join(allowed)}")
        if self.schedule is not None and self.schedule not in TOKEN_SCHEDULES:
            raise ValueError(f"Target({self.modality!r}).schedule={self.schedule!r}; allowed: {', '.join(TOKEN_SCHEDULES)}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"Target({self.modality!r}).temperature={t!r}; must be a finite number >= 0 (0 = greedy)")
        TemperatureSchedule.parse(self.temperature_schedule)
        check_top_k(self.top_k)
        check_top_p(self.top_p)
        s = self.cfg_scale
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"Target({self.modality!r}).cfg_scale={s!r}; must be a finite number (1.0 = no guidance)")
        if self.cfg_conditions is not None:
            conds = (self.cfg_conditions,) if isinstance(self.cfg_conditions, str) else tuple(self.cfg_conditions)
            object.__setattr__(self, "cfg_conditions", conds)
        guidance = tuple(self.guidance)
        if not all(isinstance(c, Condition) for c in guidance):
            raise ValueError(f"Target({self.modality!r}).guidance must hold Condition objects, got {self.guidance!r}")
        object.__setattr__(self, "guidance", guidance)
        if guidance and s != 1.0:
            raise ValueError(f"Target({self.modality!r}): cfg_scale={s} and guidance both given; use cfg_scale for plain "
                             "CFG or guidance for weighted conditions")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise ValueError(f"Target({self.modality!r}).max_tokens={self.max_tokens!r}; must be an integer >= 1")

    def replace(self, **changes) -> "Target":
        """A copy with some fields changed (validated again); unknown names raise."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown Target fields {unknown}; allowed: {sorted(known)}")
        return replace(self, **changes)

    # ---------------------------------------------------------------- resolved against a model
    def resolve(self, spec: ModalitySpec) -> "Target":
        """Fill the defaults that depend on the modality's kind and check the combination."""
        if not spec.decoder:
            raise ValueError(f"Target({self.modality!r}): {spec.kind!r} modality {spec.name!r} cannot be generated")
        if spec.kind == "sequence":
            if self.scheme not in (None, "autoregressive"):
                raise ValueError(f"Target({self.modality!r}).scheme={self.scheme!r}: sequences decode with "
                                 f"'autoregressive'; {', '.join(IMAGE_SCHEMES)} are for image modalities")
            if self.steps is not None or self.schedule is not None:
                raise ValueError(f"Target({self.modality!r}): steps/schedule apply to image modalities; a sequence "
                                 "decodes one token per step (limit it with max_tokens)")
            return replace(self, scheme="autoregressive")
        if self.scheme == "autoregressive":
            raise ValueError(f"Target({self.modality!r}).scheme='autoregressive' is for sequences; image modalities "
                             f"take {', '.join(IMAGE_SCHEMES)}")
        if self.max_tokens is not None:
            raise ValueError(f"Target({self.modality!r}).max_tokens applies to sequences; image modalities take steps")
        scheme = self.scheme or "maskgit"
        schedule = self.schedule or ("cosine" if scheme == "maskgit" else "linear")
        return replace(self, scheme=scheme, schedule=schedule, steps=self.steps or DEFAULT_IMAGE_STEPS)


def as_targets(targets: Target | str | Sequence[Target | str]) -> list[Target]:
    """Accept one Target, a modality name, or a sequence of them."""
    if isinstance(targets, (Target, str)):
        targets = [targets]
    out = []
    for t in targets:
        if isinstance(t, str):
            t = Target(t)
        if not isinstance(t, Target):
            raise TypeError(f"targets must be Target objects or modality names, got {type(t).__name__}")
        out.append(t)
    return out
