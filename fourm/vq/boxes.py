"""Boxes as text tokens (the ``det`` modality), after the reference (ml-4m/fourm/data/modality_transforms.py).

A box is a dict ``{"box": [xmin, ymin, xmax, ymax], "class": name}`` with coordinates normalised to
[0, 1]; other keys (such as ``"score"``) are ignored. A scene is serialised as one group per box::

    v0=<xmin bin> v1=<ymin bin> v2=<xmax bin> v3=<ymax bin> <class name>

with ``bin = round(coord * (num_bins - 1))`` (Python's round, as the reference; values outside [0, 1]
are clamped) and the boxes ordered by ``xmin**2 + ymin**2`` of their unquantised corners (a stable
sort, so ties keep their input order). ``boxes_to_ids`` builds the ids directly and equals
``tokenizer.encode(boxes_to_text(...))``.

``parse_boxes`` reads generated sequences back. It never raises on bad model output: every box that
cannot be read is dropped and counted by reason in ``ParseStats.dropped``, and every token outside a
box is counted by kind in ``ParseStats.skipped``. Drop reasons:

- ``partial_box``: fewer than four coordinates, or four without a class, before something else
  (another ``v0=``, a sentinel, [EOS], [PAD], the end).
- ``wrong_axis_order``: a coordinate for the wrong axis (``v0 v2 ...``); the rest of that box is
  absorbed up to its class name or the next ``v0=``.
- ``unknown_class``: the words after the four coordinates are not a known class name.
- ``inverted_box``: ``xmax < xmin`` or ``ymax < ymin``. Such boxes are dropped, not swapped: the
  model was trained on ordered corners, so an inverted pair is a failed sample, and swapping would
  hand an evaluation credit for a box the model never produced. Zero-width boxes are kept.

A box is five consecutive tokens: any other token inside it (a sentinel, [PAD], [SOS], an id outside
the vocabulary) ends it as a ``partial_box``. The class is the run of word tokens after ``v3=`` (one
class token, or several pieces when ``class_names`` holds names that are not single tokens; [UNK]
counts as a word, so it can only make an unknown class). Parsing stops at the first [EOS]; [PAD] is
skipped (padding after a sequence without [EOS]).

Unlike the reference's parser (which reads the text, ignores which axis a coordinate names and fails
with an IndexError on a sequence that does not start with ``v0=``), this one works on ids and checks
the axis order.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fourm.vq.text import DEFAULT_NUM_BINS, NUM_AXES, TextTokenizer, coord_token

Box = dict[str, Any]
DROP_REASONS: tuple[str, ...] = ("partial_box", "wrong_axis_order", "unknown_class", "inverted_box")
SKIP_KINDS: tuple[str, ...] = ("word", "coordinate", "sentinel", "special", "padding", "out_of_range")


@dataclass
class ParseStats:
    """What ``parse_boxes`` kept, dropped and skipped.

    Attributes:
        num_boxes: boxes returned.
        dropped: boxes dropped, by reason (keys from ``DROP_REASONS``).
        skipped: tokens outside any box, by kind (keys from ``SKIP_KINDS``): ``word`` (words or class
            tokens with no box before them), ``coordinate`` (v1/v2/v3 with no v0 before them), ``sentinel``,
            ``special`` ([SOS]), ``padding`` ([PAD]), ``out_of_range`` (ids outside the vocabulary, non-integers).
        stopped_at_eos: an [EOS] ended the sequence.
        ignored_after_eos: tokens after that [EOS], not read.
    """

    num_boxes: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    stopped_at_eos: bool = False
    ignored_after_eos: int = 0

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def __add__(self, other: "ParseStats") -> "ParseStats":
        """Sum over sequences (``stopped_at_eos`` becomes "any stopped")."""
        return ParseStats(self.num_boxes + other.num_boxes, self.dropped + other.dropped, self.skipped + other.skipped,
                          self.stopped_at_eos or other.stopped_at_eos, self.ignored_after_eos + other.ignored_after_eos)

    def to_dict(self) -> dict[str, Any]:
        return {"num_boxes": self.num_boxes, "dropped": dict(self.dropped), "skipped": dict(self.skipped),
                "stopped_at_eos": self.stopped_at_eos, "ignored_after_eos": self.ignored_after_eos}


def quantize_coord(value: float, num_bins: int = DEFAULT_NUM_BINS) -> int:
    """Bin of a normalised coordinate: ``round(value * (num_bins - 1))``, clamped to 0 .. num_bins - 1."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"box coordinate {value!r} is not finite")
    return min(max(round(value * (num_bins - 1)), 0), num_bins - 1)


def dequantize_coord(bin_index: int, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """Normalised coordinate of a bin: ``bin / (num_bins - 1)``; within half a bin of the original."""
    return bin_index / (num_bins - 1)


def _check_box(box: Mapping[str, Any], index: int) -> tuple[list[float], str]:
    if not isinstance(box, Mapping) or "box" not in box or "class" not in box:
        raise ValueError(f"box {index}: expected a dict with keys 'box' ([xmin, ymin, xmax, ymax]) and 'class', got {box!r}")
    coords, name = box["box"], box["class"]
    if len(coords) != NUM_AXES:
        raise ValueError(f"box {index}: 'box' must be [xmin, ymin, xmax, ymax], got {coords!r}")
    coords = [float(c) for c in coords]
    if not all(math.isfinite(c) for c in coords):
        raise ValueError(f"box {index}: coordinates must be finite, got {coords}")
    if coords[2] < coords[0] or coords[3] < coords[1]:
        raise ValueError(f"box {index}: corners inverted in {coords}; need xmin <= xmax and ymin <= ymax")
    if not isinstance(name, str) or not name:
        raise ValueError(f"box {index}: 'class' must be a non-empty string, got {name!r}")
    return coords, name


def sort_boxes(boxes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Boxes ordered by ``xmin**2 + ymin**2`` (distance of the top-left corner to the origin), stable."""
    for i, box in enumerate(boxes):
        _check_box(box, i)
    return sorted(boxes, key=lambda b: float(b["box"][0]) ** 2 + float(b["box"][1]) ** 2)


def _groups(boxes: Sequence[Mapping[str, Any]], num_bins: int, sort: bool) -> list[tuple[list[int], str]]:
    ordered = sort_boxes(boxes) if sort else list(boxes)
    out = []
    for i, box in enumerate(ordered):
        coords, name = _check_box(box, i)
        out.append(([quantize_coord(c, num_bins) for c in coords], name))
    return out


def boxes_to_text(boxes: Sequence[Mapping[str, Any]], *, num_bins: int = DEFAULT_NUM_BINS, sort: bool = True) -> str:
    """Serialise boxes as ``"v0=.. v1=.. v2=.. v3=.. <class> v0=.. ..."``.

    Args:
        boxes: dicts with ``"box"`` ([xmin, ymin, xmax, ymax] in [0, 1]) and ``"class"``.
        num_bins: bins per axis (the tokenizer's ``num_bins``).
        sort: order by distance of (xmin, ymin) to the origin, as the reference; False keeps the input order.

    Returns:
        The text; "" for no boxes.
    """
    groups = _groups(boxes, num_bins, sort)
    return " ".join(" ".join([*(coord_token(a, b) for a, b in enumerate(bins)), name]) for bins, name in groups)


def boxes_to_ids(boxes: Sequence[Mapping[str, Any]], tokenizer: TextTokenizer, *, sort: bool = True) -> list[int]:
    """Token ids of ``boxes_to_text(boxes)`` built directly (no text round trip); no [EOS] is appended.

    Raises:
        ValueError: a class is not one of the tokenizer's class tokens.
    """
    out: list[int] = []
    for bins, name in _groups(boxes, tokenizer.num_bins, sort):
        out += [tokenizer.coord_id(a, b) for a, b in enumerate(bins)]
        out.append(tokenizer.class_id(name))
    return out


class _BoxReader:
    """The state machine behind ``parse_boxes``: one pending box and the drop/skip counters."""

    def __init__(self, tokenizer: TextTokenizer, known: Mapping[str, str]) -> None:
        self.tok, self.known = tokenizer, known
        self.boxes: list[Box] = []
        self.stats = ParseStats()
        self.bins: list[int] = []  # coordinates of the pending box, axes 0 .. len - 1
        self.absorbing = False     # inside a box already dropped: swallow its remaining tokens

    def drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1
        self.bins, self.absorbing = [], True

    def interrupt(self) -> None:
        """A token that cannot belong to a box ends any pending one."""
        if self.bins:
            self.stats.dropped["partial_box"] += 1
        self.bins, self.absorbing = [], False

    def coord(self, axis: int, bin_index: int) -> None:
        if axis == 0:
            if self.bins:
                self.stats.dropped["partial_box"] += 1
            self.bins, self.absorbing = [bin_index], False
        elif self.absorbing:
            pass
        elif axis == len(self.bins):
            self.bins.append(bin_index)
        elif self.bins:
            self.drop("wrong_axis_order")
        else:
            self.stats.skipped["coordinate"] += 1

    def words(self, run: list[int]) -> None:
        """A run of word / class tokens: the class name of a complete box, or stray text."""
        if self.absorbing:
            self.absorbing = False
        elif len(self.bins) == NUM_AXES:
            self.finish(run)
        elif self.bins:
            self.stats.dropped["partial_box"] += 1
        else:
            self.stats.skipped["word"] += len(run)
        self.bins = []

    def finish(self, run: list[int]) -> None:
        name = self.tok.class_from_id(run[0]) if len(run) == 1 else None
        if name is None:
            name = " ".join(self.tok.decode(run, skip_special=False).split())
        canonical = self.known.get(name) or self.known.get(" ".join(self.tok.normalize(name).split()))
        x0, y0, x1, y1 = self.bins
        if canonical is None:
            self.stats.dropped["unknown_class"] += 1
        elif x1 < x0 or y1 < y0:
            self.stats.dropped["inverted_box"] += 1
        else:
            n = self.tok.num_bins
            self.boxes.append({"box": [dequantize_coord(b, n) for b in self.bins], "class": canonical})
            self.stats.num_boxes += 1


def parse_boxes(
    ids_or_text: str | Sequence[int] | Any,
    tokenizer: TextTokenizer,
    class_names: Sequence[str] | None = None,
) -> tuple[list[Box], ParseStats]:
    """Read boxes back from a (possibly malformed) generated sequence. Never raises on bad content.

    Args:
        ids_or_text: token ids (list, numpy array, torch tensor; ids outside the vocabulary are skipped
            and counted) or text, which is encoded with ``tokenizer`` first.
        tokenizer: a tokenizer with the 4M layout.
        class_names: accepted classes (default: the tokenizer's class tokens). A class may span several
            word pieces; it is matched after the tokenizer's normalisation and returned as spelled here.

    Returns:
        ``(boxes, stats)``: boxes as ``{"box": [xmin, ymin, xmax, ymax], "class": name}`` in sequence order,
        coordinates at bin centres (within half a bin of the serialised value); see ``ParseStats``.
    """
    if class_names is None:
        class_names = tokenizer.class_names
    known: dict[str, str] = {}
    for name in class_names:
        known.setdefault(name, name)
        known.setdefault(" ".join(tokenizer.normalize(name).split()), name)
    if isinstance(ids_or_text, str):
        ids: list[Any] = tokenizer.encode(ids_or_text)
    else:
        ids = ids_or_text.tolist() if hasattr(ids_or_text, "tolist") else list(ids_or_text)
    reader = _BoxReader(tokenizer, known)
    stats = reader.stats
    vocab_size, eos, pad = tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id
    specials = {tokenizer.sos_id}
    run: list[int] = []  # word / class tokens waiting for the next non-word token

    i = 0
    while i < len(ids):
        token = ids[i]
        token = token if isinstance(token, int) else _int_or_none(token)
        is_word = token is not None and 0 <= token < vocab_size and token not in specials and token not in (eos, pad) \
            and tokenizer.coord_from_id(token) is None and tokenizer.sentinel_from_id(token) is None
        if is_word:
            run.append(token)
            i += 1
            continue
        if run:
            reader.words(run)
            run = []
        if token is None or not 0 <= token < vocab_size:
            reader.interrupt()
            stats.skipped["out_of_range"] += 1
        elif token == eos:
            reader.interrupt()
            stats.stopped_at_eos = True
            stats.ignored_after_eos = len(ids) - i - 1
            break
        elif token == pad:
            reader.interrupt()
            stats.skipped["padding"] += 1
        elif token in specials:
            reader.interrupt()
            stats.skipped["special"] += 1
        elif tokenizer.sentinel_from_id(token) is not None:
            reader.interrupt()
            stats.skipped["sentinel"] += 1
        else:
            reader.coord(*tokenizer.coord_from_id(token))
        i += 1
    if run:
        reader.words(run)
    reader.interrupt()
    return reader.boxes, stats


def _int_or_none(value: Any) -> int | None:
    """An integer id from an int-like value (numpy integer, integral float), else None."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return None
    return int(as_float) if math.isfinite(as_float) and as_float == int(as_float) else None
