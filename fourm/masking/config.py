"""Typed masking configs: a mixture of Dirichlet components and the token totals.

A :class:`MixtureComponent` says how one kind of training example spreads its token budget over
the modalities (one Dirichlet for inputs, one for targets, a keep scheme per sequence). A
:class:`MaskingConfig` lists the modalities, the components and the total token counts. Both are
frozen dataclasses, validated at construction; ``MaskingConfig.from_dict`` builds one from plain
data (YAML) and rejects unknown keys.

    cfg = MaskingConfig(
        modalities=("rgb", "tok_rgb", "tok_depth", "caption"),
        components=(
            all_to_all_component(("tok_rgb", "tok_depth", "caption"), alpha=0.5),
            rgb_to_all_component("rgb", ("tok_rgb", "tok_depth", "caption")),
        ),
        num_input_tokens=128, num_target_tokens=128,
    )

The reference's mixture files (per modality: lists with one value per component) convert with
:func:`mixture_from_reference`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

KeepScheme = Literal["random", "all", "binary"]
KEEP_SCHEMES: tuple[str, ...] = ("random", "all", "binary")


def _check_alphas(where: str, alphas: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, a in alphas.items():
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise ValueError(f"{where}[{name!r}] = {a!r}: alphas must be finite numbers >= 0 (0 = never chosen)")
        out[str(name)] = float(a)
    return out


@dataclass(frozen=True)
class MixtureComponent:
    """One Dirichlet setting of the mixture.

    Args:
        input_alphas: Dirichlet concentration per modality for the input budget. A modality that
            is absent or has alpha 0 never gets input tokens; a large alpha (e.g. 1000) on one
            modality gives it the whole budget. All zero means this component has no inputs.
        target_alphas: the same for the target budget.
        keep: per sequence modality, how its keep-probability is drawn: ``"random"`` (U(0, 1),
            the default), ``"all"`` (1: the whole sequence is input when the budget allows) or
            ``"binary"`` (0 or 1 with equal probability).
        weight: relative sampling weight of this component (>= 0; 0 disables it).
        name: a label for logs.
        input_tokens: ``(low, high)``: this component draws its input total uniformly from
            ``low..high`` (inclusive, within ``[0, num_input_tokens]``) instead of the config's
            range. With one image modality as the only input and target, ``(4, 60)`` of 64 tokens
            is MaskGIT's task: a uniform share of the grid given, the rest predicted, so every
            step of iterative decoding is trained. ``None``: the config's range.
        whole_inputs: modalities given whole as input in this component (every token of an image,
            the whole sequence), outside the Dirichlet split: ``input_tokens`` (or the config's
            range) counts the other inputs only. With ``whole_inputs: [tok_semseg]``, tok_rgb as
            the only other input and target, and ``input_tokens: [0, 60]``, this is conditional
            MaskGIT's task: the full condition and a uniform share of the grid given, the rest
            predicted. A whole input must not also have an input alpha.
    """

    input_alphas: dict[str, float] = field(default_factory=dict)
    target_alphas: dict[str, float] = field(default_factory=dict)
    keep: dict[str, KeepScheme] = field(default_factory=dict)
    weight: float = 1.0
    name: str = ""
    input_tokens: tuple[int, int] | None = None
    whole_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        label = f"MixtureComponent {self.name!r}" if self.name else "MixtureComponent"
        object.__setattr__(self, "input_alphas", _check_alphas(f"{label}.input_alphas", self.input_alphas))
        object.__setattr__(self, "target_alphas", _check_alphas(f"{label}.target_alphas", self.target_alphas))
        for name, scheme in self.keep.items():
            if scheme not in KEEP_SCHEMES:
                raise ValueError(f"{label}.keep[{name!r}] = {scheme!r}: allowed: {', '.join(map(repr, KEEP_SCHEMES))}")
        object.__setattr__(self, "keep", dict(self.keep))
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{label}.weight = {w!r}: must be a finite number >= 0 (0 disables the component)")
        object.__setattr__(self, "weight", float(w))
        if self.input_tokens is not None:
            rng = tuple(self.input_tokens)
            if (len(rng) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in rng)
                    or not 0 <= rng[0] <= rng[1]):
                raise ValueError(f"{label}.input_tokens = {self.input_tokens!r}: must be [low, high], integers "
                                 "with 0 <= low <= high (e.g. [4, 60])")
            object.__setattr__(self, "input_tokens", rng)
        whole = self.whole_inputs
        if isinstance(whole, str) or not all(isinstance(m, str) for m in whole) or len(set(whole)) != len(whole):
            raise ValueError(f"{label}.whole_inputs = {whole!r}: must be a list of distinct modality names")
        object.__setattr__(self, "whole_inputs", tuple(whole))
        for name in self.whole_inputs:
            if self.input_alphas.get(name, 0.0) > 0:
                raise ValueError(f"{label}.whole_inputs names {name!r}, which also has input_alphas[{name!r}] = "
                                 f"{self.input_alphas[name]}: a whole input is outside the Dirichlet split; drop one")

    def modality_names(self) -> set[str]:
        return set(self.input_alphas) | set(self.target_alphas) | set(self.keep) | set(self.whole_inputs)


@dataclass(frozen=True)
class MaskingConfig:
    """Token totals and the Dirichlet mixture.

    Args:
        modalities: the modalities that masking produces, in order (every batch has all of them).
        components: the mixture; each sample draws one component with probability proportional
            to its ``weight``.
        num_input_tokens: total input tokens per sample (the most, when ``min_input_tokens`` is
            set).
        num_target_tokens: total target tokens per sample (likewise).
        min_input_tokens: if set, the input total is drawn per sample from
            U{min_input_tokens, ..., num_input_tokens}; ``None`` keeps it fixed.
        min_target_tokens: the same for targets.
    """

    modalities: tuple[str, ...]
    components: tuple[MixtureComponent, ...]
    num_input_tokens: int = 128
    num_target_tokens: int = 128
    min_input_tokens: int | None = None
    min_target_tokens: int | None = None

    def __post_init__(self) -> None:
        mods = tuple(self.modalities)
        object.__setattr__(self, "modalities", mods)
        if not mods:
            raise ValueError("MaskingConfig.modalities is empty; name at least one modality")
        dup = sorted({m for m in mods if mods.count(m) > 1})
        if dup:
            raise ValueError(f"MaskingConfig.modalities lists {dup} more than once: {list(mods)}")
        comps = tuple(self.components)
        object.__setattr__(self, "components", comps)
        if not comps:
            raise ValueError("MaskingConfig.components is empty; give at least one MixtureComponent")
        for i, comp in enumerate(comps):
            if not isinstance(comp, MixtureComponent):
                raise ValueError(f"MaskingConfig.components[{i}] must be a MixtureComponent, got {type(comp).__name__}")
            for fname in ("input_alphas", "target_alphas", "keep", "whole_inputs"):
                unknown = sorted(set(getattr(comp, fname)) - set(mods))
                if unknown:
                    raise ValueError(
                        f"MaskingConfig.components[{i}].{fname}: unknown modality {unknown[0]!r}; "
                        f"known (MaskingConfig.modalities): {', '.join(mods)}"
                    )
        if sum(c.weight for c in comps) <= 0:
            raise ValueError("MaskingConfig.components: all weights are 0; give at least one component weight > 0")
        for total, low in (("num_input_tokens", "min_input_tokens"), ("num_target_tokens", "min_target_tokens")):
            n, m = getattr(self, total), getattr(self, low)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"MaskingConfig.{total} = {n!r}: must be an integer >= 0")
            if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= n):
                raise ValueError(f"MaskingConfig.{low} = {m!r}: must be an integer in [0, {total}={n}] or None")
        for i, comp in enumerate(comps):
            if comp.input_tokens is not None and comp.input_tokens[1] > self.num_input_tokens:
                raise ValueError(f"MaskingConfig.components[{i}].input_tokens = {list(comp.input_tokens)}: high must "
                                 f"be at most num_input_tokens={self.num_input_tokens} (the encoder's input slots)")

    @property
    def input_range(self) -> tuple[int, int]:
        """(low, high) of the per-sample input total, inclusive."""
        low = self.num_input_tokens if self.min_input_tokens is None else self.min_input_tokens
        return low, self.num_input_tokens

    def component_input_ranges(self) -> list[tuple[int, int]]:
        """(low, high) of the input total of each component: its ``input_tokens`` or ``input_range``."""
        return [c.input_tokens or self.input_range for c in self.components]

    @property
    def target_range(self) -> tuple[int, int]:
        """(low, high) of the per-sample target total, inclusive."""
        low = self.num_target_tokens if self.min_target_tokens is None else self.min_target_tokens
        return low, self.num_target_tokens

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MaskingConfig":
        """Build from plain data (e.g. YAML); unknown keys raise :class:`fourm.config.ConfigError`."""
        from fourm.config import from_dict

        return from_dict(cls, dict(data), "MaskingConfig")

    def to_dict(self) -> dict:
        from fourm.config import to_dict

        return to_dict(self)


def all_to_all_component(
    modalities: Sequence[str],
    alpha: float = 0.5,
    keep: Mapping[str, KeepScheme] | None = None,
    weight: float = 1.0,
    name: str = "all2all",
) -> MixtureComponent:
    """Every given modality may be input and target with the same alpha (the reference's all2all)."""
    return MixtureComponent(
        input_alphas={m: alpha for m in modalities},
        target_alphas={m: alpha for m in modalities},
        keep=dict(keep or {}),
        weight=weight,
        name=name,
    )


def rgb_to_all_component(
    input_modality: str,
    target_modalities: Sequence[str],
    input_alpha: float = 1000.0,
    target_alpha: float = 0.5,
    weight: float = 1.0,
    name: str = "rgb2all",
) -> MixtureComponent:
    """Only ``input_modality`` is input (alpha 1000); the others are targets (the reference's rgb2all)."""
    return MixtureComponent(
        input_alphas={input_modality: input_alpha},
        target_alphas={m: target_alpha for m in target_modalities},
        weight=weight,
        name=name,
    )


def mixture_from_reference(
    per_modality: Mapping[str, Mapping[str, Any]],
    sampling_weights: Sequence[float] | None = None,
) -> tuple[MixtureComponent, ...]:
    """Convert the reference's mixture layout into components.

    The reference writes, per modality, ``input_alphas`` / ``target_alphas`` (and for sequences
    ``keep``) as lists with one entry per component; a single number or a hyphen-separated string
    (``"0.5-1.0"``) is also accepted, as in its data configs.

    Args:
        per_modality: ``{modality: {"input_alphas": [...], "target_alphas": [...], "keep": [...]}}``.
        sampling_weights: one weight per component, or None for equal weights.

    Returns:
        The components, in order.
    """
    allowed = {"input_alphas", "target_alphas", "keep"}
    lists: dict[str, dict[str, list]] = {}
    num = None
    for mod, entry in per_modality.items():
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ValueError(f"mixture[{mod!r}]: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        lists[mod] = {}
        for key in ("input_alphas", "target_alphas", "keep"):
            if key not in entry:
                if key == "keep":
                    continue
                raise ValueError(f"mixture[{mod!r}]: missing {key!r} (one value per mixture component)")
            value = entry[key]
            if isinstance(value, str) and key != "keep":
                value = [float(v) for v in value.split("-")]
            elif isinstance(value, (str, int, float)):
                value = [value]
            value = list(value)
            if num is None:
                num = len(value)
            if len(value) != num:
                raise ValueError(
                    f"mixture[{mod!r}].{key} has {len(value)} entries but earlier lists have {num}; "
                    "every list needs one value per mixture component"
                )
            lists[mod][key] = value
    if num is None or num == 0:
        raise ValueError("mixture is empty: give at least one modality with input_alphas and target_alphas")
    if sampling_weights is not None and len(sampling_weights) != num:
        raise ValueError(f"sampling_weights has {len(sampling_weights)} entries for {num} mixture components")
    weights = list(sampling_weights) if sampling_weights is not None else [1.0] * num
    return tuple(
        MixtureComponent(
            input_alphas={m: v["input_alphas"][k] for m, v in lists.items()},
            target_alphas={m: v["target_alphas"][k] for m, v in lists.items()},
            keep={m: v["keep"][k] for m, v in lists.items() if "keep" in v},
            weight=weights[k],
            name=f"component{k}",
        )
        for k in range(num)
    )
