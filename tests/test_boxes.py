"""Boxes as tokens: serialisation, ordering, direct ids, and tolerant parsing of malformed sequences."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import FIXTURES, require_shared
from fourm.vq.boxes import (
    DROP_REASONS,
    SKIP_KINDS,
    boxes_to_ids,
    boxes_to_text,
    parse_boxes,
    quantize_coord,
    sort_boxes,
)
from fourm.vq.text import TextTokenizer, train_text_tokenizer

CLASSES = ["circle", "square", "triangle", "dining table"]
ONE_BIN = 1 / 999 + 1e-9


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    rng = random.Random(0)
    texts = [f"a {rng.choice(['red', 'blue'])} {rng.choice(CLASSES)} left of a {rng.choice(CLASSES)}" for _ in range(200)]
    return train_text_tokenizer(texts, CLASSES, vocab_size=4400, show_progress=False)


@pytest.fixture(scope="module")
def ref() -> TextTokenizer:
    return TextTokenizer.from_file(require_shared(FIXTURES / "ml4m" / "text_tokenizer/text_tokenizer_4m_wordpiece_30k.json"))


def random_boxes(rng: np.random.Generator, classes, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        x0, x1 = np.sort(rng.uniform(0, 1, 2))
        y0, y1 = np.sort(rng.uniform(0, 1, 2))
        out.append({"box": [float(x0), float(y0), float(x1), float(y1)], "class": str(rng.choice(classes))})
    return out


def _box(x0, y0, x1, y1, cls="circle", **extra) -> dict:
    return {"box": [x0, y0, x1, y1], "class": cls, **extra}


# ---- serialisation ----------------------------------------------------------------------------------------
def test_text_format_matches_reference_example(ref):
    text = boxes_to_text([_box(0.012, 0.04, 0.3, 0.5125, "dog")])
    assert text == "v0=12 v1=40 v2=300 v3=512 dog"
    # ids of the reference's documented "[S_1] v0=12 v1=40 v2=300 v3=512 dog [EOS]", without [S_1] and [EOS]
    assert boxes_to_ids([_box(0.012, 0.04, 0.3, 0.5125, "dog")], ref) == [216, 1244, 2504, 3716, 4232]


def test_quantize_rounds_and_clamps():
    assert [quantize_coord(v) for v in (0.0, 1.0, -0.2, 1.7, 0.5, 0.5005)] == [0, 999, 0, 999, 500, 500]
    assert quantize_coord(0.25, num_bins=5) == 1 and quantize_coord(0.2, num_bins=5) == 1
    assert boxes_to_text([_box(-0.1, -3, 1.2, 9)]) == "v0=0 v1=0 v2=999 v3=999 circle"
    with pytest.raises(ValueError, match="not finite"):
        quantize_coord(float("nan"))


def test_ordering_by_distance_to_origin():
    a = _box(0.3, 0.0, 0.4, 0.1, "circle")    # d2 = 0.09
    b = _box(0.1, 0.4, 0.2, 0.5, "square")    # d2 = 0.17: larger, although its xmin is smaller
    c = _box(0.0, 0.0, 0.9, 0.9, "triangle")  # d2 = 0
    d = _box(0.6, 0.8, 0.7, 0.9, "circle")    # d2 = 1.0
    e = _box(0.8, 0.6, 0.9, 0.7, "square")    # d2 = 1.0: tie with d, keeps input order
    assert sort_boxes([e, d, b, a, c]) == [c, a, b, e, d]
    assert sort_boxes([d, e, b, a, c]) == [c, a, b, d, e]
    text = boxes_to_text([d, b, a, c])
    assert [t for t in text.split() if not t.startswith("v")] == ["triangle", "circle", "square", "circle"]
    assert boxes_to_text([d, b], sort=False).split()[4] == "circle"


def test_ids_equal_encoding_of_text(tok, ref):
    rng = np.random.default_rng(0)
    for tokenizer, classes in ((tok, CLASSES), (ref, list(ref.class_names))):
        for n in (0, 1, 2, 7, 30):
            boxes = random_boxes(rng, classes, n)
            assert boxes_to_ids(boxes, tokenizer) == tokenizer.encode(boxes_to_text(boxes)), boxes
    every_class = [_box(0.01 * i, 0.0, 0.9, 0.5, c) for i, c in enumerate(ref.class_names)]
    assert boxes_to_ids(every_class, ref) == ref.encode(boxes_to_text(every_class))


def test_input_validation(tok):
    assert boxes_to_text([]) == "" and boxes_to_ids([], tok) == []
    assert boxes_to_text([_box(0, 0, 1, 1, score=0.3)]) == boxes_to_text([_box(0, 0, 1, 1)])  # score ignored
    with pytest.raises(ValueError, match="box 0: expected a dict with keys 'box'"):
        boxes_to_text([{"bbox": [0, 0, 1, 1], "class": "circle"}])
    with pytest.raises(ValueError, match=r"box 0: corners inverted in \[0.5, 0.0, 0.2, 1.0\]"):
        boxes_to_text([_box(0.5, 0, 0.2, 1)])
    with pytest.raises(ValueError, match="must be finite"):
        boxes_to_text([_box(0, float("nan"), 1, 1)])
    with pytest.raises(ValueError, match=r"\[xmin, ymin, xmax, ymax\]"):
        boxes_to_text([{"box": [0, 0, 1], "class": "circle"}])
    with pytest.raises(ValueError, match="unknown class 'hexagon'; class tokens: circle, square"):
        boxes_to_ids([_box(0, 0, 1, 1, "hexagon")], tok)


# ---- round trip -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tok", "ref"])
def test_round_trip_within_one_bin(which, request):
    tokenizer = request.getfixturevalue(which)
    classes = CLASSES if which == "tok" else list(tokenizer.class_names)
    rng = np.random.default_rng(1)
    for n in (1, 3, 12, 40):
        boxes = random_boxes(rng, classes, n)
        ids = boxes_to_ids(boxes, tokenizer) + [tokenizer.eos_id] + [tokenizer.pad_id] * 5
        parsed, stats = parse_boxes(ids, tokenizer)
        assert stats.num_boxes == n == len(parsed)
        assert stats.num_dropped == 0 and not stats.skipped and stats.stopped_at_eos and stats.ignored_after_eos == 5
        for got, want in zip(parsed, sort_boxes(boxes)):
            assert got["class"] == want["class"]
            assert np.abs(np.array(got["box"]) - np.array(want["box"])).max() <= ONE_BIN
        text_parsed, _ = parse_boxes(boxes_to_text(boxes), tokenizer)  # text input gives the same boxes
        assert text_parsed == parsed


def test_parse_accepts_arrays_and_tensors(tok):
    boxes = [_box(0.1, 0.2, 0.3, 0.4), _box(0.5, 0.5, 0.9, 0.9, "square")]
    ids = boxes_to_ids(boxes, tok)
    expected, _ = parse_boxes(ids, tok)
    assert parse_boxes(np.array(ids, dtype=np.int16), tok)[0] == expected
    assert parse_boxes(torch.tensor(ids), tok)[0] == expected
    assert [b["class"] for b in expected] == ["circle", "square"]


# ---- malformed sequences ----------------------------------------------------------------------------------
def _ids(tok: TextTokenizer, text: str) -> list[int]:
    return tok.encode(text)


def test_empty_sequences(tok):
    for seq in ([], "", [tok.eos_id], [tok.pad_id] * 4):
        boxes, stats = parse_boxes(seq, tok)
        assert boxes == [] and stats.num_dropped == 0
    assert parse_boxes([tok.pad_id] * 4, tok)[1].skipped == {"padding": 4}


def test_truncated_boxes(tok):
    full = "v0=1 v1=2 v2=30 v3=40 circle v0=5 v1=6 v2=70 v3=80 square"
    ids = _ids(tok, full)
    for cut, kept in ((10, 2), (9, 1), (8, 1), (6, 1), (5, 1), (4, 0), (1, 0)):
        boxes, stats = parse_boxes(ids[:cut], tok)
        assert len(boxes) == stats.num_boxes == kept, cut
        partial = 0 if cut in (10, 5) else 1
        assert stats.dropped == ({"partial_box": partial} if partial else {}), cut
    # a new v0 before the class, a sentinel inside a box, [EOS] inside a box
    assert parse_boxes(_ids(tok, "v0=1 v1=2 v0=3 v1=4 v2=5 v3=6 circle"), tok)[1].dropped == {"partial_box": 1}
    boxes, stats = parse_boxes(_ids(tok, "v0=1 v1=2 [S_4] v2=5 v3=6 circle"), tok)
    assert boxes == [] and stats.dropped == {"partial_box": 1} and stats.skipped == {"sentinel": 1, "coordinate": 2, "word": 1}
    boxes, stats = parse_boxes(_ids(tok, "v0=1 v1=2 v2=5 v3=6 [EOS] circle"), tok)
    assert boxes == [] and stats.dropped == {"partial_box": 1} and stats.ignored_after_eos == 1
    boxes, stats = parse_boxes(_ids(tok, "v0=1 v1=2 v2=3 circle v0=1 v1=2 v2=3 v3=4 square"), tok)
    assert [b["class"] for b in boxes] == ["square"] and stats.dropped == {"partial_box": 1} and not stats.skipped


def test_unknown_classes(tok):
    text = "v0=1 v1=2 v2=30 v3=40 triangle v0=5 v1=6 v2=70 v3=80 square"
    boxes, stats = parse_boxes(text, tok, class_names=["square"])
    assert [b["class"] for b in boxes] == ["square"] and stats.dropped == {"unknown_class": 1}
    boxes, stats = parse_boxes("v0=1 v1=2 v2=30 v3=40 blue hexagon v0=5 v1=6 v2=70 v3=80 circle", tok)
    assert [b["class"] for b in boxes] == ["circle"] and stats.dropped == {"unknown_class": 1} and not stats.skipped
    boxes, stats = parse_boxes("v0=1 v1=2 v2=30 v3=40 circle square", tok)  # two classes: not one known name
    assert boxes == [] and stats.dropped == {"unknown_class": 1}
    # a class that is not a single token is found through its pieces, and returned as spelled by the caller
    boxes, stats = parse_boxes("v0=1 v1=2 v2=30 v3=40 Blue Circle", tok, class_names=["Blue Circle"])
    assert [b["class"] for b in boxes] == ["Blue Circle"] and stats.num_dropped == 0


def test_wrong_axis_order_and_inverted(tok):
    boxes, stats = parse_boxes("v0=1 v2=30 v1=2 v3=40 circle v0=5 v1=6 v2=70 v3=80 square", tok)
    assert [b["class"] for b in boxes] == ["square"] and stats.dropped == {"wrong_axis_order": 1} and not stats.skipped
    boxes, stats = parse_boxes("v0=1 v1=2 v2=30 v3=40 v3=41 circle", tok)
    assert boxes == [] and stats.dropped == {"wrong_axis_order": 1}
    boxes, stats = parse_boxes("v0=500 v1=2 v2=100 v3=40 circle v0=5 v1=600 v2=70 v3=80 square v0=5 v1=5 v2=5 v3=5 circle", tok)
    assert stats.dropped == {"inverted_box": 2} and len(boxes) == 1 and boxes[0]["box"][0] == boxes[0]["box"][2]


def test_stray_tokens(tok):
    one = "v0=1 v1=2 v2=30 v3=40 circle"
    boxes, stats = parse_boxes(f"[S_1] {one} [S_2] red {one} [SOS] v2=3 [EOS] {one}", tok)
    assert len(boxes) == 2 and stats.num_dropped == 0
    assert stats.skipped == {"sentinel": 2, "word": 1, "special": 1, "coordinate": 1}
    assert stats.stopped_at_eos and stats.ignored_after_eos == 5
    ids = boxes_to_ids([_box(0.1, 0.1, 0.2, 0.2)], tok)
    boxes, stats = parse_boxes([-3, tok.vocab_size, 10**9, 2.5, None, "x", *ids, float("nan")], tok)
    assert len(boxes) == 1 and stats.skipped == {"out_of_range": 7}
    boxes, stats = parse_boxes([*ids[:2], tok.pad_id, *ids[2:]], tok)  # [PAD] inside a box ends it
    assert boxes == [] and stats.dropped == {"partial_box": 1} and stats.skipped == {"padding": 1, "coordinate": 2, "word": 1}


def test_fuzz_never_raises(tok):
    """Random sequences over the box alphabet: parse never raises and whatever it returns is a valid box."""
    rng = np.random.default_rng(2)
    alphabet = ([tok.coord_id(a, b) for a in range(4) for b in (0, 3, 500, 998, 999)]
                + [tok.class_id(c) for c in CLASSES] + [tok.sentinel_id(1), tok.eos_id, tok.pad_id, tok.sos_id,
                   tok.unk_id, tok.token_to_id("red"), -1, tok.vocab_size + 3])
    valid = boxes_to_ids(random_boxes(rng, CLASSES, 3), tok)
    total = {"kept": 0, **{r: 0 for r in DROP_REASONS}}
    for trial in range(300):
        seq = [int(t) for t in rng.choice(alphabet, size=rng.integers(0, 40))]
        if trial % 2:  # splice in well-formed boxes so that some survive
            at = int(rng.integers(0, len(seq) + 1))
            seq = seq[:at] + valid + seq[at:]
        boxes, stats = parse_boxes(seq, tok)
        assert len(boxes) == stats.num_boxes
        assert set(stats.dropped) <= set(DROP_REASONS) and set(stats.skipped) <= set(SKIP_KINDS)
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            assert b["class"] in CLASSES and 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
        total["kept"] += stats.num_boxes
        for reason, count in stats.dropped.items():
            total[reason] += count
    assert all(v > 0 for k, v in total.items() if k != "unknown_class"), total  # every path was exercised


def test_stats_add(tok):
    _, a = parse_boxes("v0=1 v1=2 circle", tok)
    _, b = parse_boxes("v0=1 v1=2 v2=3 v3=4 circle [S_1]", tok)
    total = a + b
    assert total.num_boxes == 1 and total.dropped == {"partial_box": 1} and total.skipped == {"sentinel": 1}
    assert total.to_dict()["dropped"] == {"partial_box": 1}
