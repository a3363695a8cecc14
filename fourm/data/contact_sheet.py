"""Contact sheets: every modality of a few samples side by side in one PNG, for a person to look at.

Each sample is a block of four tiles, rgb | depth (colour-mapped) | semseg (palette) | det (boxes
drawn on rgb), with its caption wrapped below; blocks are laid out ``columns`` to a row under a
header, with a legend of the semseg palette at the bottom. Only PIL and numpy.

    samples = [render_scene(0, i) for i in range(16)]
    render_contact_sheet(samples, "docs/contact_sheet.png")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fourm.data.shapes_world import FAR_DEPTH, SEMSEG_CLASSES

# Semseg palette, by class id (sky, ground, circle, square, triangle, diamond); ids past the end cycle.
SEMSEG_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 170, 230), (115, 95, 75), (240, 90, 90), (80, 200, 110), (250, 205, 60), (175, 110, 235),
    (90, 220, 220), (240, 140, 200),
)
# Anchors of a perceptually ordered map, dark (far) to bright (near).
_DEPTH_ANCHORS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float32)
NEAR_DEPTH = 2.0  # metres; depth colours span NEAR_DEPTH..FAR_DEPTH on a log scale
_TILES = ("rgb", "depth", "semseg", "det")
_GAP, _PAD, _BG, _INK = 4, 8, (255, 255, 255), (20, 20, 20)


def colorize_depth(depth: np.ndarray, near: float = NEAR_DEPTH, far: float = FAR_DEPTH) -> np.ndarray:
    """Map depth in metres to colours, bright near and dark far, on a fixed log scale.

    Shapes: (H, W) float -> (H, W, 3) uint8.
    """
    d = np.clip(np.asarray(depth, np.float32), near, far)
    t = (np.log(far) - np.log(d)) / (np.log(far) - np.log(near))  # (H, W) in [0, 1], 1 = near
    x = t * (len(_DEPTH_ANCHORS) - 1)
    i = np.minimum(x.astype(np.int64), len(_DEPTH_ANCHORS) - 2)
    f = (x - i)[..., None]
    return np.rint(_DEPTH_ANCHORS[i] * (1 - f) + _DEPTH_ANCHORS[i + 1] * f).astype(np.uint8)


def colorize_semseg(semseg: np.ndarray) -> np.ndarray:
    """Palette colours of class ids. Shapes: (H, W) int -> (H, W, 3) uint8."""
    palette = np.asarray(SEMSEG_PALETTE, np.uint8)
    return palette[np.asarray(semseg).astype(np.int64) % len(palette)]


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor from the shard reader
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _rgb_hwc(value: Any) -> np.ndarray:
    a = _as_array(value)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:  # (3, H, W) tensor layout
        a = a.transpose(1, 2, 0)
    return a.astype(np.uint8)


def _tile(arr: np.ndarray, size: int, nearest: bool = True) -> Image.Image:
    img = Image.fromarray(arr)
    if img.size != (size, size):
        up = img.size[0] < size
        img = img.resize((size, size), Image.NEAREST if (nearest or up) else Image.BOX)
    return img


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _sample_tiles(sample: Mapping[str, Any], size: int, font: Any) -> list[Image.Image]:
    """The four tiles of a sample; a modality the sample lacks gets a grey tile."""
    blank = Image.new("RGB", (size, size), (200, 200, 200))
    tiles = []
    rgb = _rgb_hwc(sample["rgb"]) if "rgb" in sample else None
    tiles.append(_tile(rgb, size, nearest=False) if rgb is not None else blank.copy())
    tiles.append(_tile(colorize_depth(_as_array(sample["depth"])), size) if "depth" in sample else blank.copy())
    tiles.append(_tile(colorize_semseg(_as_array(sample["semseg"])), size) if "semseg" in sample else blank.copy())
    det = tiles[0].copy()
    draw = ImageDraw.Draw(det)
    for obj in sample.get("det", []) or []:
        x0, y0, x1, y1 = (float(v) * size for v in obj["box"])
        name = str(obj.get("class", "?"))
        cid = SEMSEG_CLASSES.index(name) if name in SEMSEG_CLASSES else len(SEMSEG_CLASSES)
        colour = SEMSEG_PALETTE[cid % len(SEMSEG_PALETTE)]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        ty = y0 - 12 if y0 >= 12 else y1 + 1
        draw.text((x0 + 1, ty), name, fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    tiles.append(det)
    return tiles


def render_contact_sheet(samples: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: int = 2,
                         tile_size: int = 128, caption_lines: int = 4, title: str | None = None) -> Path:
    """Draw samples' modalities in a grid and save it as PNG (atomically).

    Args:
        samples: dicts with any of ``rgb`` ((H, W, 3) or (3, H, W) uint8), ``depth`` ((H, W)
            metres), ``semseg`` ((H, W) class ids), ``det`` (list of {"box", "class"}) and
            ``caption`` (str); numpy arrays or torch tensors.
        path: output PNG file.
        columns: samples per row of the sheet.
        tile_size: side of each image tile in pixels (images are resized with nearest neighbour).
        caption_lines: caption lines shown per sample (longer captions end in "...").
        title: optional line at the top.

    Returns:
        The path written. The image is ``columns * (4 * tile_size + 3 * 4) + (columns + 1) * 8``
        pixels wide.
    """
    if not samples:
        raise ValueError("samples is empty; give at least one sample to draw")
    if columns < 1 or tile_size < 16 or caption_lines < 1:
        raise ValueError(f"need columns >= 1, tile_size >= 16 and caption_lines >= 1; got {columns}, {tile_size}, {caption_lines}")
    font, small = _font(13), _font(11)
    line_h = 16
    block_w = 4 * tile_size + 3 * _GAP
    block_h = 14 + tile_size + 4 + caption_lines * line_h
    rows = -(-len(samples) // columns)
    head_h = 22 + (line_h if title else 0)
    width = columns * block_w + (columns + 1) * _PAD
    height = head_h + rows * (block_h + _PAD) + 24
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    y = 4
    if title:
        draw.text((_PAD, y), title, fill=_INK, font=font)
        y += line_h
    for c in range(columns):
        for t, name in enumerate(_TILES):
            draw.text((_PAD + c * (block_w + _PAD) + t * (tile_size + _GAP), y), name, fill=_INK, font=font)
    for k, sample in enumerate(samples):
        bx = _PAD + (k % columns) * (block_w + _PAD)
        by = head_h + (k // columns) * (block_h + _PAD)
        label = str(sample.get("__key__", k))
        draw.text((bx, by), f"#{label}", fill=(110, 110, 110), font=small)
        for t, tile in enumerate(_sample_tiles(sample, tile_size, small)):
            sheet.paste(tile, (bx + t * (tile_size + _GAP), by + 14))
        lines = _wrap(draw, str(sample.get("caption", "")), font, block_w)
        if len(lines) > caption_lines:
            lines = lines[:caption_lines]
            lines[-1] = lines[-1] + " ..."
        for i, line in enumerate(lines):
            draw.text((bx, by + 14 + tile_size + 4 + i * line_h), line, fill=_INK, font=font)
    x = _PAD
    for cid, name in enumerate(SEMSEG_CLASSES):
        draw.rectangle([x, height - 18, x + 12, height - 6], fill=SEMSEG_PALETTE[cid % len(SEMSEG_PALETTE)], outline=_INK)
        draw.text((x + 16, height - 20), name, fill=_INK, font=small)
        x += 24 + int(draw.textlength(name, font=small))
    draw.text((x + 8, height - 20), f"depth: bright = {NEAR_DEPTH:g} m, dark = {FAR_DEPTH:g} m (log)", fill=_INK, font=small)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
