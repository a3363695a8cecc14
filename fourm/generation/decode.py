"""From tokens to things a person can look at: images, text, boxes, PNG grids and box overlays.

    out = decode_state(result.state, model.specs, tokenizers)    # {"tok_rgb": [HxWx3 uint8, ...],
                                                                 #  "caption": ["a red ...", ...], "det": [[box, ...], ...]}
    grid = render_grid(out, model.specs)                         # one row per sample, one column per modality
    save_png(grid, "out/grid.png")

What each modality decodes to (:func:`output_kind`): image modalities through their tokenizer
(``ModalitySpec.tokenizer``), as its kind stores them (rgb -> (H, W, 3) uint8, depth -> (H, W)
float metres, semseg -> (H, W) uint8 class ids); ``det`` -> boxes (``fourm.vq.boxes.parse_boxes``,
which never raises on malformed output); other sequences -> text (their tokenizer, up to [EOS]).
An image modality without a tokenizer is shown as its token grid in false colours. Only PIL and
numpy draw.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fourm.atomic import atomic_write
from fourm.data.contact_sheet import SEMSEG_PALETTE, colorize_depth, colorize_semseg
from fourm.data.shapes_world import SEMSEG_CLASSES
from fourm.generation.inputs import State, sequence_ids
from fourm.masking.spans import EOS_ID
from fourm.modalities import ModalitySpec
from fourm.vq.boxes import parse_boxes

OUTPUT_KINDS: tuple[str, ...] = ("rgb", "depth", "semseg", "image", "tokens", "text", "boxes", "pixels")
_BG, _INK, _GAP = (255, 255, 255), (20, 20, 20), 4


def output_kind(spec: ModalitySpec, tokenizers: Mapping[str, Any] | None = None) -> str:
    """What ``spec`` decodes to: one of :data:`OUTPUT_KINDS`. An image modality gives its
    tokenizer's kind (``rgb``, ``depth``, ``semseg``) when ``tokenizers`` has it, ``tokens`` when
    they lack it, and ``image`` (an image or a token grid: :func:`to_tile` tells them apart) when
    no tokenizers are given."""
    if spec.kind == "pixels":
        return "pixels"
    if spec.kind == "sequence":
        return "boxes" if spec.name.split("@")[0] == "det" else "text"
    if tokenizers is None:
        return "image"
    tok = tokenizers.get(spec.tokenizer)
    return getattr(tok, "kind", "tokens") if tok is not None else "tokens"


def _text_tokenizer(spec: ModalitySpec, tokenizers: Mapping[str, Any] | None) -> Any:
    key = spec.tokenizer
    if not tokenizers or key not in tokenizers:
        raise ValueError(f"decoding {spec.name!r} needs the {key!r} tokenizer; have: {', '.join(tokenizers or {}) or 'none'}")
    return tokenizers[key]


def decode_sequence(ids: Sequence[int], spec: ModalitySpec, tokenizers: Mapping[str, Any]) -> Any:
    """One sequence's ids (up to the first [EOS]) as text, or as boxes for ``det``."""
    ids = list(ids)
    ids = ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
    tok = _text_tokenizer(spec, tokenizers)
    if output_kind(spec) == "boxes":
        return parse_boxes(ids, tok)[0]
    return tok.decode(ids)


def decode_images(tokens: torch.Tensor, spec: ModalitySpec, tokenizers: Mapping[str, Any] | None,
                  seed: int = 0) -> list[np.ndarray]:
    """Image tokens (B, rows * cols) -> per sample: rgb (H, W, 3) uint8, depth (H, W) float32
    metres, semseg (H, W) uint8 ids; without a tokenizer, the (rows, cols) token grid.
    ``seed``: the noise of a tokenizer with a diffusion decoder (conv decoders ignore it)."""
    grid = tokens.reshape(tokens.shape[0], *spec.grid).cpu()
    tok = (tokenizers or {}).get(spec.tokenizer)
    if tok is None:
        return [g.numpy() for g in grid]
    if getattr(tok, "is_diffusion", False):
        g = torch.Generator(device=tok.device).manual_seed(seed)
        images = tok.decode(grid.to(tok.device), generator=g).cpu()
    else:
        images = tok.decode(grid.to(tok.device)).cpu()
    if tok.kind == "rgb":
        images = images.permute(0, 2, 3, 1)  # (B, H, W, 3)
    return [im.numpy() for im in images]


def decode_state(state: State, specs: Mapping[str, ModalitySpec], tokenizers: Mapping[str, Any] | None,
                 modalities: Sequence[str] | None = None, seed: int = 0) -> dict[str, list[Any]]:
    """Decode modalities of a generation state.

    Args:
        state: modality -> entry (``tokens``, ``is_input``), e.g. ``GenerationResult.state``.
        specs: the model's modalities.
        tokenizers: ``load_tokenizers`` output (image tokenizers and ``"text"``).
        modalities: which to decode (default: every one in the state).
        seed: noise seed of image tokenizers with a diffusion decoder.

    Returns:
        modality -> one output per sample (see :func:`output_kind`). Image modalities are only
        decoded from complete grids; a partly known grid keeps its tokens (unknown = -1).
    """
    names = list(state) if modalities is None else list(modalities)
    out: dict[str, list[Any]] = {}
    for name in names:
        if name not in state:
            raise KeyError(f"{name!r} is not in the state; it has: {', '.join(state)}")
        spec, entry = specs[name], state[name]
        kind = output_kind(spec)
        if kind == "pixels":
            out[name] = [x.cpu().numpy() for x in entry["tokens"]]
        elif spec.kind == "sequence":
            out[name] = [decode_sequence(ids, spec, tokenizers) for ids in sequence_ids(entry)]
        elif bool(entry["is_input"].all()):
            out[name] = decode_images(entry["tokens"], spec, tokenizers, seed)
        else:
            tokens = entry["tokens"].masked_fill(~entry["is_input"], -1)
            out[name] = [g.numpy() for g in tokens.reshape(-1, *spec.grid).cpu()]
    return out


# ------------------------------------------------------------------------------------ drawing
def font(size: int = 12) -> Any:
    """PIL's default font at ``size`` (the fixed bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _resize(img: Image.Image, size: int) -> Image.Image:
    return img if img.size == (size, size) else img.resize((size, size), Image.NEAREST)


def class_colour(name: str) -> tuple[int, int, int]:
    """The semseg palette colour of a ShapesWorld class; other names get a fixed colour by hash."""
    idx = SEMSEG_CLASSES.index(name) if name in SEMSEG_CLASSES else sum(map(ord, name)) + len(SEMSEG_CLASSES)
    return SEMSEG_PALETTE[idx % len(SEMSEG_PALETTE)]


def draw_boxes(image: Image.Image | np.ndarray | None, boxes: Sequence[Mapping[str, Any]], size: int = 128,
               labels: bool = True) -> Image.Image:
    """Boxes (normalised ``[x0, y0, x1, y1]`` + ``class``) drawn over ``image`` (grey if None),
    resized to ``size`` x ``size``."""
    if image is None:
        img = Image.new("RGB", (size, size), (200, 200, 200))
    else:
        img = _resize(Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image, size).convert("RGB")
    draw, f = ImageDraw.Draw(img), font(11)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) * size for v in box["box"])
        colour = class_colour(str(box.get("class", "?")))
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=2)
        if labels:
            ty = y0 - 12 if y0 >= 12 else y1 + 1
            draw.text((x0 + 1, ty), str(box.get("class", "?")), fill=colour, font=f, stroke_width=1, stroke_fill=(0, 0, 0))
    return img


def text_tile(text: str, size: int = 128, font_size: int = 11) -> Image.Image:
    """``text`` word-wrapped on a white square tile (cut with "..." when it does not fit)."""
    img = Image.new("RGB", (size, size), _BG)
    draw, f = ImageDraw.Draw(img), font(font_size)
    lines: list[str] = []
    for word in str(text).split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=f) <= size - 4:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    line_h = font_size + 3
    fit = max(1, (size - 4) // line_h)
    if len(lines) > fit:
        lines = lines[: fit - 1] + [lines[fit - 1] + " ..."]
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * line_h), line, fill=_INK, font=f)
    return img


def token_grid_image(grid: np.ndarray, size: int = 128) -> Image.Image:
    """A token grid (rows, cols) in false colours (a fixed hash of each id; -1 = unknown, grey)."""
    g = np.asarray(grid).astype(np.int64)
    h = (g * 2654435761) % (1 << 32)
    rgb = np.stack([(h >> s) & 255 for s in (0, 8, 16)], -1).astype(np.uint8)  # (rows, cols, 3)
    rgb[g < 0] = 200
    return _resize(Image.fromarray(rgb), size)


def to_tile(kind: str, value: Any, size: int = 128, background: Any = None) -> Image.Image:
    """One decoded output as a ``size`` x ``size`` tile. ``background``: the rgb (H, W, 3) that
    boxes are drawn on."""
    if kind == "boxes":
        return draw_boxes(background, value, size)
    if kind == "text":
        return text_tile(value, size)
    arr = np.asarray(value)
    if kind == "image":  # decoded without knowing the tokenizer: read the kind off the array
        kind = "tokens" if arr.dtype == np.int64 else "rgb" if arr.ndim == 3 else "depth" if arr.dtype.kind == "f" else "semseg"
    if kind == "tokens" or (kind in ("rgb", "depth", "semseg") and arr.dtype == np.int64):  # a token grid
        return token_grid_image(arr, size)
    if kind == "rgb":
        return _resize(Image.fromarray(arr.astype(np.uint8)), size)
    if kind == "depth":
        return _resize(Image.fromarray(colorize_depth(arr)), size)
    if kind == "semseg":
        return _resize(Image.fromarray(colorize_semseg(arr)), size)
    return Image.new("RGB", (size, size), (200, 200, 200))  # pixels: not drawn


def render_grid(decoded: Mapping[str, Sequence[Any]], specs: Mapping[str, ModalitySpec], size: int = 128,
                columns: Sequence[str] | None = None, titles: Mapping[str, str] | None = None,
                row_labels: Sequence[str] | None = None) -> Image.Image:
    """A grid: one row per sample, one column per modality, a title over each column.

    Args:
        decoded: :func:`decode_state` output.
        specs: the model's modalities.
        size: tile side in pixels.
        columns: modalities in column order (default: the keys of ``decoded``).
        titles: column titles (default: the modality names).
        row_labels: a label per row, drawn at its left.

    Returns:
        The grid image; boxes are drawn over the sample's decoded rgb when there is one.
    """
    columns = list(decoded) if columns is None else list(columns)
    if not columns:
        raise ValueError("nothing to draw: decoded is empty")
    rows = len(decoded[columns[0]])
    rgb_name = next((n for n in decoded if specs[n].kind == "image" and decoded[n] and np.asarray(decoded[n][0]).ndim == 3
                     and np.asarray(decoded[n][0]).dtype == np.uint8), None)
    f = font(12)
    label_w = 40 if row_labels else 0
    head = 18
    width = label_w + len(columns) * (size + _GAP) + _GAP
    height = head + rows * (size + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        title = (titles or {}).get(name, name)
        draw.text((label_w + _GAP + c * (size + _GAP), 3), title, fill=_INK, font=f)
    for r in range(rows):
        y = head + r * (size + _GAP)
        if row_labels:
            draw.text((3, y + size // 2 - 6), str(row_labels[r]), fill=_INK, font=f)
        for c, name in enumerate(columns):
            kind = output_kind(specs[name])
            bg = decoded[rgb_name][r] if kind == "boxes" and rgb_name is not None else None
            if bg is not None and np.asarray(bg).ndim != 3:
                bg = None
            sheet.paste(to_tile(kind, decoded[name][r], size, bg), (label_w + _GAP + c * (size + _GAP), y))
    return sheet


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
