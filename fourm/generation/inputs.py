"""The generation state, and turning user inputs (raw or tokens) into it.

The state maps each known modality to a batch entry the model reads as input::

    state[name] = {"tokens": (B, L), "is_input": (B, L) bool}

* image tokens: ``L = rows * cols``; ``is_input`` marks the known tokens (all, or the kept part
  of a modality being in-painted);
* sequences: ``L = num_tokens`` (``max_length + 1``); the ids from position 0, [PAD] after them,
  ``is_input`` True on the ids. A sequence may hold sentinels ``[S_1] .. [S_k]``: a sequence
  target then fills each sentinel's span;
* pixels: ``tokens`` (B, C, H, W) float, ``is_input`` (B, rows * cols) all True.

User inputs, per key (:func:`build_state`):

* a model modality name: image tokens (int16 / int32 / int64; (L,), (rows, cols), (B, L) or
  (B, rows, cols)), or images as stored (as under the raw name below: PIL, uint8, float metres),
  encoded with the modality's tokenizer;
  sequences as text (``str`` or list of ``str``, encoded with the text tokenizer), boxes (a list
  of ``{"box": [x0, y0, x1, y1], "class": name}``, or one such list per sample), or ids (list,
  list of lists, (L,) or (B, L) tensor; [PAD] = 0 is dropped); pixels as uint8 (B, C, H, W) as
  stored, or float in [-1, 1];
  or a ready entry ``{"tokens", "is_input"}``;
* an image modality's raw field (``ModalitySpec.raw_field``: ``"rgb"`` for ``tok_rgb``,
  ``"depth"``, ``"semseg"``, ``"normal"`` for ``tok_normal``): images as stored (rgb uint8
  (B, 3, H, W) or (H, W, 3), a PIL image, depth float metres (B, H, W), semseg class ids),
  encoded with the modality's tokenizer (``ModalitySpec.tokenizer``). On a model that has an
  ``rgb`` pixel modality, ``"rgb"`` is that modality (pixels in); ``"tok_rgb"`` then takes the
  images to encode as tokens (needed to in-paint or edit rgb tokens).

Sequences get [EOS] appended (as training did) unless they hold one or end with a sentinel (a
sentinel at the end stands for "the rest of the sequence, its end included").
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fourm.masking.spans import EOS_ID, NUM_SENTINELS, PAD_ID, SENTINEL_OFFSET, is_sentinel
from fourm.modalities import ModalitySpec, pixels_to_float
from fourm.vq.boxes import boxes_to_ids

State = dict[str, dict[str, Tensor]]


def raw_aliases(specs: Mapping[str, ModalitySpec]) -> dict[str, str]:
    """Raw fields of image-token modalities (``"rgb"`` -> ``"tok_rgb"``), except fields that are
    themselves token modalities of the model. A raw field that is also a pixel modality (a model
    with rgb pixel input) keeps its alias, but as an input it means the pixels (the model's own
    modality comes first); as a target, which pixels cannot be, it means the tokens."""
    return {s.raw_field: s.name for s in specs.values() if s.kind == "image"
            and (s.raw_field not in specs or specs[s.raw_field].kind == "pixels")}


def _get_tokenizer(tokenizers: Mapping[str, Any] | None, key: str, what: str) -> Any:
    if not tokenizers or key not in tokenizers:
        have = ", ".join(tokenizers) if tokenizers else "none"
        raise ValueError(f"{what} needs the {key!r} tokenizer; the sampler has: {have} "
                         f"(pass tokenizers=load_tokenizers(dir) to Sampler, or give token ids)")
    return tokenizers[key]


# ------------------------------------------------------------------------------------ sequences
def finish_sequence(ids: Sequence[int], num_tokens: int) -> list[int]:
    """Append [EOS] unless ``ids`` hold one or end with a sentinel; cut to ``num_tokens``."""
    ids = [int(t) for t in ids]
    if EOS_ID not in ids and not (ids and is_sentinel(ids[-1])):
        ids.append(EOS_ID)
    return ids[:num_tokens]


def renumber_sentinels(ids: Sequence[int]) -> tuple[list[int], int]:
    """Number the sentinels of ``ids`` [S_1], [S_2], ... in order of appearance (a sentinel that
    repeats keeps its first number). Returns the ids and the number of distinct sentinels."""
    mapping: dict[int, int] = {}
    out = []
    for t in ids:
        if is_sentinel(t):
            if t not in mapping:
                if len(mapping) + 1 >= NUM_SENTINELS:
                    raise ValueError(f"too many sentinels in one sequence (at most {NUM_SENTINELS - 2})")
                mapping[t] = SENTINEL_OFFSET + len(mapping) + 1
            t = mapping[t]
        out.append(t)
    return out, len(mapping)


def sequence_entry(seqs: Sequence[Sequence[int]], spec: ModalitySpec, device: torch.device | str) -> dict[str, Tensor]:
    """State entry of id lists (already finished): (B, num_tokens) ids, [PAD] after them."""
    L = spec.num_tokens
    tokens = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
    for b, ids in enumerate(seqs):
        if len(ids) > L:
            raise ValueError(f"{spec.name}[{b}]: {len(ids)} tokens, at most {L} fit (max_length {spec.max_length} + [EOS])")
        if ids:
            tokens[b, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    is_input = torch.arange(L)[None, :] < lengths[:, None]
    return {"tokens": tokens.to(device), "is_input": is_input.to(device)}


def sequence_ids(entry: Mapping[str, Tensor]) -> list[list[int]]:
    """The input ids of each row of a sequence entry, in order."""
    tokens, vis = entry["tokens"].cpu(), entry["is_input"].cpu()
    return [row[v].tolist() for row, v in zip(tokens, vis)]


def _is_box(x: Any) -> bool:
    return isinstance(x, Mapping) and "box" in x


def _one_sequence(value: Any, spec: ModalitySpec, tokenizers: Mapping[str, Any] | None) -> list[int]:
    """One sample's ids from text, boxes or ids."""
    if isinstance(value, str):
        return list(_get_tokenizer(tokenizers, spec.tokenizer, f"text for {spec.name!r}").encode(value))
    if isinstance(value, (Tensor, np.ndarray)):
        value = value.tolist()
    value = list(value)
    if value and all(_is_box(v) for v in value):
        return boxes_to_ids(value, _get_tokenizer(tokenizers, spec.tokenizer, f"boxes for {spec.name!r}"))
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value if int(v) != PAD_ID]
    raise TypeError(f"{spec.name!r}: cannot read {value!r:.80} as text, boxes or token ids")


def _sequence_batch(value: Any, spec: ModalitySpec, tokenizers: Mapping[str, Any] | None) -> list[list[int]]:
    """Id lists of every sample (before [EOS] handling)."""
    if isinstance(value, str):
        return [_one_sequence(value, spec, tokenizers)]
    if isinstance(value, (Tensor, np.ndarray)):
        arr = torch.as_tensor(value)
        if arr.is_floating_point() or arr.dim() not in (1, 2):
            raise ValueError(f"{spec.name!r}: token ids must be an integer (L,) or (B, L) tensor, got "
                             f"{arr.dtype} {tuple(arr.shape)}")
        rows = arr[None] if arr.dim() == 1 else arr
        return [_one_sequence(r, spec, tokenizers) for r in rows]
    if isinstance(value, (list, tuple)):
        if not value or all(_is_box(v) for v in value) or all(isinstance(v, (int, np.integer)) for v in value):
            return [_one_sequence(value, spec, tokenizers)]
        return [_one_sequence(v, spec, tokenizers) for v in value]
    raise TypeError(f"{spec.name!r}: expected text, boxes or token ids, got {type(value).__name__}")


def encode_sequences(value: Any, spec: ModalitySpec, tokenizers: Mapping[str, Any] | None) -> list[list[int]]:
    """Finished id lists (EOS rule applied, checked against the vocabulary) of a sequence input."""
    seqs = [finish_sequence(s, spec.num_tokens) for s in _sequence_batch(value, spec, tokenizers)]
    for b, ids in enumerate(seqs):
        bad = [t for t in ids if not 0 <= t < spec.vocab_size]
        if bad:
            raise ValueError(f"{spec.name}[{b}]: token id {bad[0]} is outside this model's vocabulary "
                             f"(0..{spec.vocab_size - 1}); was the text encoded with the model's tokenizer?")
    return seqs


# ------------------------------------------------------------------------------------ images
def image_tokens(value: Any, spec: ModalitySpec) -> Tensor:
    """(B, L) int64 image tokens from (L,), (rows, cols), (B, L) or (B, rows, cols) ints."""
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    L, grid = spec.num_tokens, tuple(spec.grid)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{spec.name!r} takes integer token ids, got {t.dtype}; give raw images under its raw "
                        f"field ({spec.raw_field!r}) to encode them")
    if t.dim() == 1 and t.shape[0] == L or t.dim() == 2 and tuple(t.shape) == grid:
        t = t.reshape(1, L)
    elif t.dim() == 3 and tuple(t.shape[1:]) == grid or t.dim() == 2 and t.shape[1] == L:
        t = t.reshape(t.shape[0], L)
    else:
        raise ValueError(f"{spec.name!r}: token shape {tuple(t.shape)}; expected ({L},), {grid}, (B, {L}) or "
                         f"(B, {grid[0]}, {grid[1]})")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= spec.vocab_size):
        raise ValueError(f"{spec.name!r}: token ids must lie in [0, {spec.vocab_size - 1}], "
                         f"got [{int(t.min())}, {int(t.max())}]")
    return t.long()


def _raw_images(value: Any, kind: str) -> Tensor:
    """Batched images as stored: rgb (B, 3, H, W), depth / semseg kinds (B, H, W)."""
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        value = np.asarray(value.convert("RGB") if kind == "rgb" else value)
    if isinstance(value, (list, tuple)):
        return torch.cat([_raw_images(v, kind) for v in value])
    t = torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value  # a copy: arrays may be read-only
    if not isinstance(t, Tensor):
        raise TypeError(f"raw {kind} input must be an array, tensor or PIL image, got {type(value).__name__}")
    if kind == "rgb":
        if t.dim() in (3, 4) and t.shape[-1] == 3 and t.shape[-3] != 3:  # channels last
            t = t.movedim(-1, -3)
        return t[None] if t.dim() == 3 else t
    return t[None] if t.dim() == 2 else t


def _is_raw_image(value: Any) -> bool:
    """Whether a value given under an image-token modality's own name is an image as stored (a PIL
    image, uint8 pixels or class ids, float metres) rather than token ids (int16 / int32 / int64)."""
    if hasattr(value, "convert") and hasattr(value, "size"):
        return True
    if isinstance(value, (list, tuple)):
        return bool(value) and _is_raw_image(value[0])
    if isinstance(value, Tensor):
        return value.dtype == torch.uint8 or value.is_floating_point()
    if isinstance(value, np.ndarray):
        return value.dtype == np.uint8 or value.dtype.kind == "f"
    return False


def tokenize_images(value: Any, spec: ModalitySpec, tokenizers: Mapping[str, Any] | None) -> Tensor:
    """Encode raw images with ``spec``'s tokenizer into (B, L) tokens."""
    tok = _get_tokenizer(tokenizers, spec.tokenizer, f"raw input {spec.raw_field!r}")
    images = _raw_images(value, getattr(tok, "kind", spec.raw_field))
    codes = tok.encode(images)  # (B, rows, cols)
    return image_tokens(codes.cpu(), spec)


# ------------------------------------------------------------------------------------ the state
def broadcast_entry(entry: dict[str, Tensor], B: int, what: str) -> dict[str, Tensor]:
    """Repeat a one-sample modality entry to ``B`` samples; ``what`` names it in the error."""
    n = entry["tokens"].shape[0]
    if n == B:
        return entry
    if n != 1:
        raise ValueError(f"{what} has {n} samples, the others {B}: they disagree on the batch size (give 1 or {B})")
    return {k: v.expand(B, *v.shape[1:]).clone() for k, v in entry.items()}


def build_state(specs: Mapping[str, ModalitySpec], inputs: Mapping[str, Any] | None,
                tokenizers: Mapping[str, Any] | None, device: torch.device | str, num_samples: int = 1) -> State:
    """The generation state of ``inputs`` (see the module docstring).

    Args:
        specs: the model's modalities by name.
        inputs: modality (or raw tokenizer) name -> value; None or {} for unconditional generation.
        tokenizers: ``load_tokenizers`` output, for raw images, text and boxes.
        device: where the state lives (the model's device).
        num_samples: repeat every sample this many times (each repeat draws its own tokens).

    Returns:
        The state, batch size ``B_inputs * num_samples`` (1 input sample broadcasts to the others).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; must be an integer >= 1")
    aliases = raw_aliases(specs)
    state: State = {}
    for key, value in (inputs or {}).items():
        if key in specs:
            name = key
        elif key in aliases:
            name = aliases[key]
        else:
            known = sorted(set(specs) | set(aliases))
            raise KeyError(f"unknown input {key!r}; this model takes: {', '.join(known)}")
        spec = specs[name]
        if not spec.encoder:
            raise ValueError(f"{name!r} cannot be an input of this model (encoder=False)")
        if name in state:
            raise ValueError(f"inputs give {name!r} twice (as {name!r} and its raw name)")
        if isinstance(value, Mapping):
            if "tokens" not in value:
                raise KeyError(f"input entry {key!r} has no 'tokens'; keys: {sorted(value)}")
            tokens = torch.as_tensor(value["tokens"])
            if spec.kind == "image":
                tokens = image_tokens(tokens, spec)  # (B, L)
            B = tokens.shape[0]
            if value.get("is_input") is not None:
                vis = torch.as_tensor(value["is_input"]).reshape(B, -1).bool()
            elif spec.kind == "sequence":
                vis = tokens != PAD_ID
            else:
                vis = torch.ones(B, spec.num_tokens, dtype=torch.bool)
            entry = {"tokens": tokens.to(device), "is_input": vis.to(device)}
        elif spec.kind == "sequence":
            entry = sequence_entry(encode_sequences(value, spec, tokenizers), spec, device)
        elif spec.kind == "image":
            raw = key != name or _is_raw_image(value)
            tokens = tokenize_images(value, spec, tokenizers) if raw else image_tokens(value, spec)
            entry = {"tokens": tokens.to(device), "is_input": torch.ones_like(tokens, dtype=torch.bool, device=device)}
        else:  # pixels
            if isinstance(value, Tensor) and value.is_floating_point():
                px = value  # normalised already
            elif spec.in_channels == 3:  # rgb as stored (uint8, channels first or last, PIL): normalised as in training
                px = pixels_to_float(_raw_images(value, "rgb"))
            else:
                px = pixels_to_float(value)
            px = px[None] if px.dim() == 3 else px
            if not px.is_floating_point() or px.dim() != 4 or tuple(px.shape[1:]) != (spec.in_channels, *spec.image_size):
                raise ValueError(f"{name!r} takes pixels (B, {spec.in_channels}, {spec.image_size[0]}, "
                                 f"{spec.image_size[1]}): uint8 as stored, or float normalised to [-1, 1]; "
                                 f"got {px.dtype} {tuple(px.shape)}")
            entry = {"tokens": px.to(device),
                     "is_input": torch.ones(px.shape[0], spec.num_tokens, dtype=torch.bool, device=device)}
        state[name] = entry
    B = max((e["tokens"].shape[0] for e in state.values()), default=1)
    state = {k: broadcast_entry(v, B, f"input {k!r}") for k, v in state.items()}
    if num_samples > 1:
        state = {k: {f: t.repeat_interleave(num_samples, 0) for f, t in v.items()} for k, v in state.items()}
    return state


def batch_size(state: State, default: int = 1) -> int:
    """Batch size of a state (``default`` when it is empty)."""
    return next(iter(state.values()))["tokens"].shape[0] if state else default
