"""Analytic scene parser and object metrics."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from fourm.data.shapes_world import COLOURS, SHAPE_CLASSES, render_scene, silhouette_sdf
from fourm.evaluation.detection import box_iou
from fourm.evaluation.objects import match_objects, scene_f1, shape_confusion
from fourm.evaluation.scene_parser import ParsedObject, colour_map, label_components, parse_scene

SEED = 123  # not a seed the other tests train or look at


@pytest.fixture(scope="module")
def parsed():
    samples = [render_scene(SEED, i) for i in range(60)]
    return [parse_scene(s["rgb"]) for s in samples], [s["objects"] for s in samples]


def test_f1_on_ground_truth_scenes(parsed):
    preds, gts = parsed
    scores = scene_f1(preds, gts)
    assert scores["tp"] + scores["fn"] == sum(len(g) for g in gts)
    assert scores["f1"] >= 0.9, scores
    assert scores["size_accuracy"] >= 0.9, scores


def test_parser_is_tolerant_to_noise():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for i in range(20):
        s = render_scene(SEED, 100 + i)
        noisy = np.clip(s["rgb"] + rng.normal(0, 8, s["rgb"].shape), 0, 255).astype(np.uint8)
        preds.append(parse_scene(noisy))
        gts.append(s["objects"])
    assert scene_f1(preds, gts)["f1"] >= 0.8


def _draw(shape: str, colour: str, box_px: tuple[float, float, float], n: int = 64) -> np.ndarray:
    """A pale background with one flat object whose square box has left, top, side in pixels."""
    img = np.full((n, n, 3), (200, 205, 210), np.uint8)
    left, top, side = box_px
    c = np.arange(n) + 0.5
    u = (c[None, :] - left - side / 2) / (side / 2)
    v = (c[:, None] - top - side / 2) / (side / 2)
    img[silhouette_sdf(shape, u, v) <= 0] = COLOURS[colour]
    return img


@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_single_drawn_object(shape):
    # base at row 50 with side 18: side / (base - horizon) = 18 / 26.96 -> large; side 9 at the same base -> small
    for side, size in ((18.0, "large"), (9.0, "small")):
        img = _draw(shape, "green", (20.3, 50.0 - side, side))
        objs = parse_scene(img)
        assert len(objs) == 1
        o = objs[0]
        assert (o.colour, o.shape, o.size) == ("green", shape, size)
        assert box_iou(o.box, (20.3 / 64, (50 - side) / 64, (20.3 + side) / 64, 50 / 64)) > 0.75


def test_occluded_object_keeps_its_shape():
    img = _draw("circle", "blue", (20.0, 20.0, 20.0))  # farther, base at row 40
    near = _draw("square", "red", (30.0, 32.0, 14.0))  # nearer, base at row 46, covers the circle's lower right
    mask = (near != (200, 205, 210)).any(axis=2)
    img[mask] = near[mask]
    objs = {o.colour: o for o in parse_scene(img)}
    assert objs["blue"].shape == "circle" and objs["red"].shape == "square"


def test_colour_map_survives_shading():
    rgb = np.array([[[int(v * f) for v in COLOURS[name]] for f in (0.45, 0.7, 1.0)] for name in COLOURS], np.uint8)
    cm = colour_map(rgb)
    assert (cm == np.arange(len(COLOURS))[:, None]).all()
    assert (colour_map(np.full((2, 2, 3), (210, 200, 190), np.uint8)) == -1).all(), "pale pixels are background"


def _bfs_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    k = 0
    for r, c in zip(*np.nonzero(mask)):
        if seen[r, c]:
            continue
        k += 1
        q = deque([(r, c)])
        seen[r, c] = True
        while q:
            y, x = q.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
    return k


def test_label_components_matches_bfs():
    rng = np.random.default_rng(1)
    for p in (0.3, 0.5, 0.6):
        mask = rng.random((23, 31)) < p
        labels, k = label_components(mask)
        assert k == _bfs_count(mask)
        assert set(np.unique(labels[mask])) == set(range(k)) and (labels[~mask] == -1).all()
        for dy, dx in ((1, 0), (0, 1)):  # 4-neighbours inside the mask share a label
            a, b = labels[: mask.shape[0] - dy, : mask.shape[1] - dx], labels[dy:, dx:]
            both = mask[: mask.shape[0] - dy, : mask.shape[1] - dx] & mask[dy:, dx:]
            assert (a[both] == b[both]).all()


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        parse_scene(np.zeros((8, 8, 3), np.float32))


def _obj(colour, shape, box, size="small"):
    return ParsedObject(colour, shape, size, box, 1.0, 10)


def test_match_objects_and_f1():
    gt = [{"colour": "red", "shape": "circle", "box": [0, 0, 0.5, 0.5], "size": "small"},
          {"colour": "blue", "shape": "square", "box": [0.5, 0.5, 1, 1], "size": "large"}]
    pred = [_obj("blue", "square", (0.5, 0.5, 1, 0.9), "small"),  # IoU 0.8, wrong size
            _obj("red", "circle", (0.3, 0.3, 0.8, 0.8)),  # IoU ~0.08: no match
            _obj("red", "circle", (0, 0, 0.5, 0.45))]  # IoU 0.9
    assert match_objects(pred, gt) == [(2, 0), (0, 1)]
    assert match_objects(pred, gt, iou=0.85) == [(2, 0)]
    s = scene_f1([pred], [gt])
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0 and s["size_accuracy"] == 0.5
    with pytest.raises(ValueError, match="one list of objects per scene"):
        scene_f1([pred], [])


def test_shape_confusion_counts():
    gt = [{"colour": "red", "shape": "circle", "box": [0, 0, 0.5, 0.5]},
          {"colour": "blue", "shape": "square", "box": [0.5, 0.5, 1, 1]}]
    pred = [_obj("red", "diamond", (0, 0, 0.5, 0.5)), _obj("green", "triangle", (0.1, 0.6, 0.3, 0.9))]
    table = shape_confusion([pred], [gt], SHAPE_CLASSES)
    ci, di, si, ti = (SHAPE_CLASSES.index(x) for x in ("circle", "diamond", "square", "triangle"))
    none = len(SHAPE_CLASSES)
    assert table[ci][di] == 1 and table[si][none] == 1 and table[none][ti] == 1
    assert sum(map(sum, table)) == 3
