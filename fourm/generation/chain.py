"""Chains: several targets in sequence, with edits in between.

    chain = (Chain(sampler)
             .then(Target("caption"))                       # rgb -> caption
             .edit(caption="a large red circle")            # replace the caption
             .then(Target("tok_rgb", steps=8, cfg_scale=3.0)))  # regenerate rgb from it
    out = chain.run({"rgb": image}, seed=0)

Each step sees everything known after the previous one: generated targets become inputs of the
next target. Edits change that state; a later target regenerates whatever an edit left open:

* ``edit(caption="a [S_1] circle")``: replace a modality's content (raw or tokens, as in
  ``Sampler.generate`` inputs). Sentinels in text ask a later ``Target("caption")`` to fill
  them in; a sentinel at the end asks for more text at the end.
* ``inpaint("tok_rgb", mask)``: forget the tokens where ``mask`` (rows, cols) or
  (B, rows, cols) is True; a later ``Target("tok_rgb")`` regenerates exactly those and keeps
  every other token.
* ``add_boxes([...], more=True)`` / ``remove_boxes("circle")``: change the boxes of ``det``
  (``more=True`` appends a sentinel: a later ``Target("det")`` may add boxes).
* ``drop("caption")``: forget a modality (it no longer conditions anything).

The same edits exist as functions on a :class:`GenerationResult` (``edit(result, ...)`` etc.), so
a chain is exactly its steps composed by hand with one generator::

    g = torch.Generator().manual_seed(0)
    r = sampler.generate(inputs, [Target("caption")], seed=g)
    r = edit(r, sampler.tokenizers, caption="a large red circle")
    r = sampler.generate(r, [Target("tok_rgb", steps=8)], seed=g)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from fourm.generation.inputs import State, broadcast_entry, build_state, sequence_entry, sequence_ids
from fourm.generation.sampler import GenerationResult, Sampler, make_generator
from fourm.generation.target import Target, as_targets
from fourm.masking.spans import EOS_ID, sentinel_id
from fourm.vq.boxes import boxes_to_ids, parse_boxes

BoxFilter = Callable[[Mapping[str, Any]], bool]


def _with_state(result: GenerationResult, state: State) -> GenerationResult:
    return replace(result, state=state, num_rows=result.batch_size)


def edit(result: GenerationResult, tokenizers: Mapping[str, Any] | None = None, **values: Any) -> GenerationResult:
    """Replace modalities: ``edit(result, toks, caption="a red [S_1]", tok_rgb=tokens)``.

    Values are read as ``Sampler.generate`` inputs (text, boxes, ids, token grids, raw images
    under the tokenizer's name); one value is used for every sample, or give one per sample.
    """
    device = next((e["tokens"].device for e in result.state.values()), torch.device("cpu"))
    new = build_state(result.specs, values, tokenizers, device)
    state = dict(result.state)
    for name, entry in new.items():
        state[name] = broadcast_entry(entry, result.batch_size, f"edit of {name!r}")
    return _with_state(result, state)


def _token_mask(mask: Any, spec_grid: tuple[int, int], B: int, name: str, device: torch.device) -> Tensor:
    m = torch.as_tensor(mask, device=device)
    L = spec_grid[0] * spec_grid[1]
    if m.dtype != torch.bool:
        raise TypeError(f"inpaint mask of {name!r} must be boolean (True = regenerate), got {m.dtype}")
    if m.dim() == 1 and m.shape[0] == L or m.dim() == 2 and tuple(m.shape) == spec_grid:
        m = m.reshape(1, L).expand(B, L)
    elif m.dim() == 3 and tuple(m.shape[1:]) == spec_grid or m.dim() == 2 and m.shape[1] == L:
        m = m.reshape(m.shape[0], L)
    else:
        raise ValueError(f"inpaint mask of {name!r} has shape {tuple(m.shape)}; expected {spec_grid}, ({L},), "
                         f"(B, {spec_grid[0]}, {spec_grid[1]}) or (B, {L})")
    if m.shape[0] != B:
        raise ValueError(f"inpaint mask of {name!r} has {m.shape[0]} samples; the result has {B}")
    return m


def inpaint(result: GenerationResult, modality: str, mask: Any) -> GenerationResult:
    """Forget the tokens of an image modality where ``mask`` is True (a later target refills them).

    Args:
        result: the current result; ``modality`` must be in its state.
        modality: an image-token modality.
        mask: bool (rows, cols) / (L,) for every sample, or (B, rows, cols) / (B, L).
    """
    if modality not in result.state:
        raise KeyError(f"cannot in-paint {modality!r}: it is not in the state ({', '.join(result.state)}); "
                       "generate it first")
    spec = result.specs[modality]
    if spec.kind != "image":
        raise ValueError(f"inpaint applies to image modalities; {modality!r} is a {spec.kind}: edit its text instead")
    entry = result.state[modality]
    m = _token_mask(mask, tuple(spec.grid), result.batch_size, modality, entry["tokens"].device)
    state = dict(result.state)
    state[modality] = {"tokens": entry["tokens"], "is_input": entry["is_input"] & ~m}
    return _with_state(result, state)


def drop(result: GenerationResult, *modalities: str) -> GenerationResult:
    """Forget modalities (they stop conditioning later targets)."""
    missing = [m for m in modalities if m not in result.state]
    if missing:
        raise KeyError(f"cannot drop {missing}: not in the state ({', '.join(result.state)})")
    return _with_state(result, {k: v for k, v in result.state.items() if k not in modalities})


def _boxes_per_sample(result: GenerationResult, modality: str,
                      tokenizers: Mapping[str, Any] | None) -> tuple[Any, list[list[dict]], list[bool]]:
    """The text tokenizer, the boxes of each sample and whether its sequence ends open (a sentinel)."""
    spec = result.specs[modality]
    key = spec.tokenizer
    if not tokenizers or key not in tokenizers:
        raise ValueError(f"box edits of {modality!r} need the {key!r} tokenizer; pass tokenizers")
    tok = tokenizers[key]
    if modality not in result.state:
        return tok, [[] for _ in range(result.batch_size)], [False] * result.batch_size
    boxes, open_end = [], []
    for ids in sequence_ids(result.state[modality]):
        open_end.append(bool(ids) and ids[-1] != EOS_ID and tok.sentinel_from_id(ids[-1]) is not None)
        boxes.append(parse_boxes(ids, tok)[0])
    return tok, boxes, open_end


def _set_boxes(result: GenerationResult, modality: str, tok: Any, boxes: list[list[dict]],
               more: list[bool]) -> GenerationResult:
    """Write boxes back as ``modality``; ``more[b]`` ends sample b with a sentinel instead of [EOS]."""
    spec = result.specs[modality]
    seqs = []
    for b, bx in enumerate(boxes):
        ids = boxes_to_ids(bx, tok)
        ids = ids + [sentinel_id(1)] if more[b] else ids + [EOS_ID]
        if len(ids) > spec.num_tokens:
            raise ValueError(f"{modality}[{b}]: {len(bx)} boxes need {len(ids)} tokens; at most {spec.num_tokens} fit")
        seqs.append(ids)
    device = next((e["tokens"].device for e in result.state.values()), torch.device("cpu"))
    state = dict(result.state)
    state[modality] = sequence_entry(seqs, spec, device)
    return _with_state(result, state)


def add_boxes(result: GenerationResult, boxes: Sequence[Any], tokenizers: Mapping[str, Any] | None,
              modality: str = "det", more: bool = False) -> GenerationResult:
    """Add boxes (``{"box": [x0, y0, x1, y1], "class": name}``, normalised) to every sample, or
    one list per sample. ``more=True`` ends the sequence with a sentinel, so that a later
    ``Target(modality)`` may add boxes of its own; the known boxes stay as they are."""
    tok, current, _ = _boxes_per_sample(result, modality, tokenizers)
    B = result.batch_size
    per_sample = [list(b) for b in boxes] if boxes and not isinstance(boxes[0], Mapping) else [list(boxes)] * B
    if len(per_sample) != B:
        raise ValueError(f"add_boxes: {len(per_sample)} box lists for {B} samples")
    return _set_boxes(result, modality, tok, [c + n for c, n in zip(current, per_sample)], [more] * B)


def remove_boxes(result: GenerationResult, where: str | Sequence[int] | BoxFilter, tokenizers: Mapping[str, Any] | None,
                 modality: str = "det") -> GenerationResult:
    """Remove boxes: those of a class (``where="circle"``), at indices in sequence order
    (``where=[0, 2]``) or those for which ``where(box)`` is True. Applies to every sample."""
    tok, current, open_end = _boxes_per_sample(result, modality, tokenizers)
    if isinstance(where, str):
        keep = [[b for b in bx if b["class"] != where] for bx in current]
    elif callable(where):
        keep = [[b for b in bx if not where(b)] for bx in current]
    else:
        drop_idx = {int(i) for i in where}
        keep = [[b for i, b in enumerate(bx) if i not in drop_idx] for bx in current]
    return _set_boxes(result, modality, tok, keep, open_end)


@dataclass(frozen=True)
class _Step:
    kind: str  # "target" or "edit"
    target: Target | None = None
    apply: Callable[[GenerationResult, Mapping[str, Any]], GenerationResult] | None = None
    label: str = ""


class Chain:
    """Targets and edits in sequence; each builder call returns a new Chain (chains can branch).

    Args:
        sampler: the Sampler that generates every target (its tokenizers serve text/box edits).
    """

    def __init__(self, sampler: Sampler, steps: tuple[_Step, ...] = ()) -> None:
        self.sampler = sampler
        self.steps = steps

    def _add(self, step: _Step) -> "Chain":
        return Chain(self.sampler, self.steps + (step,))

    def then(self, *targets: Target | str) -> "Chain":
        """Generate ``targets`` next, in order."""
        chain = self
        for t in as_targets(list(targets)):
            self.sampler.resolve(t)  # fail now, not in the middle of a run
            chain = chain._add(_Step("target", target=t, label=f"then({t.modality})"))
        return chain

    def edit(self, **values: Any) -> "Chain":
        """Replace modalities (see :func:`edit`)."""
        return self._add(_Step("edit", apply=lambda r, toks: edit(r, toks, **values), label=f"edit({', '.join(values)})"))

    def inpaint(self, modality: str, mask: Any) -> "Chain":
        """Forget the tokens of ``modality`` under ``mask`` (see :func:`inpaint`)."""
        return self._add(_Step("edit", apply=lambda r, toks: inpaint(r, modality, mask), label=f"inpaint({modality})"))

    def drop(self, *modalities: str) -> "Chain":
        """Forget modalities (see :func:`drop`)."""
        return self._add(_Step("edit", apply=lambda r, toks: drop(r, *modalities), label=f"drop({', '.join(modalities)})"))

    def add_boxes(self, boxes: Sequence[Any], modality: str = "det", more: bool = False) -> "Chain":
        """Add boxes (see :func:`add_boxes`)."""
        return self._add(_Step("edit", apply=lambda r, toks: add_boxes(r, boxes, toks, modality, more),
                               label=f"add_boxes({modality})"))

    def remove_boxes(self, where: str | Sequence[int] | BoxFilter, modality: str = "det") -> "Chain":
        """Remove boxes (see :func:`remove_boxes`)."""
        return self._add(_Step("edit", apply=lambda r, toks: remove_boxes(r, where, toks, modality),
                               label=f"remove_boxes({modality})"))

    def apply(self, fn: Callable[[GenerationResult], GenerationResult], label: str = "apply") -> "Chain":
        """Any other edit: ``fn(result) -> result``."""
        return self._add(_Step("edit", apply=lambda r, toks: fn(r), label=label))

    def run(self, inputs: Mapping[str, Any] | GenerationResult | None = None, seed: int | torch.Generator = 0,
            num_samples: int = 1, keep_logits: bool = False) -> GenerationResult:
        """Run every step on ``inputs`` with one generator (seeded by ``seed``).

        Returns:
            The final result; ``generated``, ``spans`` and ``logits`` collect every target step.
        """
        s = self.sampler
        g = make_generator(seed, s.device)
        result = s.prepare(inputs, num_samples)
        generated, spans, logits = (), {}, {}
        for step in self.steps:
            if step.kind == "target":
                result = s.generate(result, [step.target], seed=g, keep_logits=keep_logits)
                generated += result.generated
                spans.update(result.spans)
                logits.update(result.logits)
            else:
                result = step.apply(result, s.tokenizers)
        return replace(result, generated=generated, spans=spans, logits=logits)

    def __repr__(self) -> str:
        return "Chain(" + " -> ".join(step.label for step in self.steps) + ")"
