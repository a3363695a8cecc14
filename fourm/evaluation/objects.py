"""Object-level scores: matching objects, object F1, (size, colour, shape) triples, layouts.

Objects are anything with ``colour``, ``shape`` and ``box`` (``[xmin, ymin, xmax, ymax]`` in
[0, 1]), given as attributes (``ParsedObject``) or as mapping keys (``render_scene(...)["objects"]``),
so parsed, generated and ground-truth objects compare directly:

| function               | prediction                  | scores                                        |
|------------------------|-----------------------------|-----------------------------------------------|
| :func:`scene_f1`       | objects with boxes          | F1 of colour + shape matches at box IoU 0.5   |
| :func:`triple_f1`      | (size, colour, shape) lists | object F1 (multiset match of triples)         |
| :func:`layout_scores`  | parsed objects vs given     | mean box IoU and shape accuracy per given box |
| :class:`ParserScores`  | images (scene parser)       | triple F1 and shape accuracy, over batches    |
| :func:`shape_confusion`| objects with boxes          | shape confusion counts                        |

    pairs = match_objects(parse_scene(rgb), sample["objects"])             # [(pred_i, gt_i), ...]
    scores = scene_f1([parse_scene(s["rgb"]) for s in samples], [s["objects"] for s in samples])
    triple_f1([parse_caption(text)], [object_triples(scene["objects"])])
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fourm.evaluation.dense import check_scenes
from fourm.evaluation.detection import box_iou
from fourm.evaluation.scene_parser import parse_scene

SHAPE_MATCH_IOU = 0.5  # box IoU of a parsed object and a scene object of its colour to compare shapes
Triple = tuple[Any, str, str]  # (size word or None, colour, shape)


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def match_objects(pred: Sequence[Any], gt: Sequence[Any], iou: float = 0.5,
                  keys: tuple[str, ...] = ("colour", "shape")) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, highest IoU first, of objects that agree on ``keys``.

    Args:
        pred: predicted objects.
        gt: ground-truth objects.
        iou: smallest box IoU for a match.
        keys: attributes that must be equal; ``()`` matches on boxes alone.

    Returns:
        list of (pred index, gt index), sorted by gt index.
    """
    cands = []
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            if all(_get(p, k) == _get(g, k) for k in keys):
                v = box_iou(_get(p, "box"), _get(g, "box"))
                if v >= iou:
                    cands.append((-v, i, j))
    cands.sort()
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in cands:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return sorted(pairs, key=lambda ij: ij[1])


def scene_f1(preds: Sequence[Sequence[Any]], gts: Sequence[Sequence[Any]], iou: float = 0.5) -> dict[str, float]:
    """Object F1 over scenes: a true positive is a colour + shape match with box IoU >= ``iou``.

    Also reports the size-word accuracy over true positives whose objects both carry a ``size``.

    Args:
        preds: per scene, the predicted objects.
        gts: per scene, the ground-truth objects.
        iou: smallest box IoU for a match.

    Returns:
        dict with tp, fp, fn, precision, recall, f1, size_accuracy (NaN when no size was compared).
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds has {len(preds)} scenes but gts has {len(gts)}; give one list of objects per scene")
    tp = fp = fn = size_ok = size_n = 0
    for pred, gt in zip(preds, gts):
        pairs = match_objects(pred, gt, iou)
        tp += len(pairs)
        fp += len(pred) - len(pairs)
        fn += len(gt) - len(pairs)
        for i, j in pairs:
            try:
                ps, gs = _get(pred[i], "size"), _get(gt[j], "size")
            except (KeyError, AttributeError):
                continue
            size_n += 1
            size_ok += int(ps == gs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "size_accuracy": size_ok / size_n if size_n else float("nan")}


def shape_confusion(preds: Sequence[Sequence[Any]], gts: Sequence[Sequence[Any]], classes: Sequence[str],
                    iou: float = 0.5) -> list[list[int]]:
    """Confusion counts between shapes for objects matched by colour and box alone.

    Returns:
        (C + 1) x (C + 1) counts: row = ground-truth shape, column = predicted shape; the extra last
        row counts predictions matching no ground truth and the extra last column ground truth no
        prediction matched.
    """
    c = len(classes)
    index = {name: k for k, name in enumerate(classes)}
    table = [[0] * (c + 1) for _ in range(c + 1)]
    for pred, gt in zip(preds, gts):
        pairs = match_objects(pred, gt, iou, keys=("colour",))
        for i, j in pairs:
            table[index[_get(gt[j], "shape")]][index[_get(pred[i], "shape")]] += 1
        matched_p = {i for i, _ in pairs}
        matched_g = {j for _, j in pairs}
        for j, g in enumerate(gt):
            if j not in matched_g:
                table[index[_get(g, "shape")]][c] += 1
        for i, p in enumerate(pred):
            if i not in matched_p:
                table[c][index[_get(p, "shape")]] += 1
    return table


def object_triples(objects: Sequence[Any]) -> list[Triple]:
    """(size, colour, shape) of objects given as dicts (``render_scene(...)["objects"]``) or
    attributes (``ParsedObject``)."""
    return [(_get(o, "size"), _get(o, "colour"), _get(o, "shape")) for o in objects]


def triple_f1(preds: Sequence[Sequence[Triple]], gts: Sequence[Sequence[Triple]]) -> dict[str, float]:
    """Object F1 over scenes, objects as (size, colour, shape) triples.

    A true positive is a predicted triple equal to a ground-truth triple of the same scene (each
    used once: multisets). A triple with a size of None (a caption that named no size) matches
    nothing. ``f1_colour_shape`` scores (colour, shape) pairs alone, ignoring sizes.

    Args:
        preds: per scene, predicted triples (``parse_caption`` output, or :func:`object_triples`).
        gts: per scene, ground-truth triples.

    Returns:
        ``f1``, ``precision``, ``recall``, ``f1_colour_shape``, ``tp``, ``fp``, ``fn``.
    """
    check_scenes(preds, gts, "triple_f1")

    def f1(tp: int, n_pred: int, n_gt: int) -> tuple[float, float, float]:
        p, r = (tp / n_pred if n_pred else 0.0), (tp / n_gt if n_gt else 0.0)
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    tp = tp2 = n_pred = n_gt = 0
    for pred, gt in zip(preds, gts):
        pred, gt = [tuple(t) for t in pred], [tuple(t) for t in gt]
        tp += sum((Counter(pred) & Counter(gt)).values())
        tp2 += sum((Counter(t[1:] for t in pred) & Counter(t[1:] for t in gt)).values())
        n_pred, n_gt = n_pred + len(pred), n_gt + len(gt)
    precision, recall, score = f1(tp, n_pred, n_gt)
    return {"f1": score, "precision": precision, "recall": recall, "f1_colour_shape": f1(tp2, n_pred, n_gt)[2],
            "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp}


def layout_scores(parsed: Sequence[Sequence[Any]], reference: Sequence[Sequence[Any]],
                  min_iou: float = 0.1) -> dict[str, float]:
    """How well parsed objects reproduce a given layout (boxes and shapes).

    Per scene, parsed objects and reference objects are matched one to one on boxes alone
    (greedy, highest IoU first, IoU >= ``min_iou``; colour and shape play no part). Each
    reference object scores the IoU of its match (0 when unmatched) and counts as a correct shape
    when its match has its shape.

    Args:
        parsed: per scene, objects read from a generated image (``parse_scene`` output).
        reference: per scene, the objects the conditions show (``box`` and ``shape``, or ``class``
            as in det boxes).
        min_iou: smallest IoU of a match.

    Returns:
        ``box_iou`` (mean over reference objects), ``shape_accuracy`` (share of reference objects),
        ``num_reference``, ``num_parsed``, ``num_matched``.
    """
    check_scenes(parsed, reference, "layout_scores")
    ious, shape_ok, n_ref, n_parsed, n_matched = 0.0, 0, 0, 0, 0
    for pred, ref in zip(parsed, reference):
        ref = [{"box": _get(r, "box"), "shape": r["class"] if isinstance(r, Mapping) and "class" in r
                else _get(r, "shape")} for r in ref]
        for i, j in match_objects(pred, ref, min_iou, keys=()):
            ious += box_iou(_get(pred[i], "box"), ref[j]["box"])
            shape_ok += int(_get(pred[i], "shape") == ref[j]["shape"])
            n_matched += 1
        n_ref, n_parsed = n_ref + len(ref), n_parsed + len(pred)
    nan = float("nan")
    return {"box_iou": ious / n_ref if n_ref else nan, "shape_accuracy": shape_ok / n_ref if n_ref else nan,
            "num_reference": n_ref, "num_parsed": n_parsed, "num_matched": n_matched}


def parse_images(rgb: torch.Tensor) -> list[list]:
    """The analytic scene parser (``fourm.evaluation.scene_parser``) on each image.

    Args:
        rgb: uint8 (B, 3, H, W) images as stored.
    Returns:
        per image, its ``ParsedObject`` list.
    """
    hwc = rgb.detach().cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return [parse_scene(np.ascontiguousarray(im)) for im in hwc]


class ParserScores:
    """Scene-parser scores of images against the scenes' objects, accumulated over batches.

    ``f1`` / ``precision`` / ``recall``: (size, colour, shape) triples as multisets per scene (the
    benchmark's ``triple_f1``). ``shape_accuracy``: among parsed objects matched one to one to a
    scene object of the same colour with box IoU >= ``SHAPE_MATCH_IOU``, the share with the right
    shape (objects that vanished count in ``recall``, not here).
    """

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.matched = self.shape_ok = 0

    def update(self, parsed: Sequence[Sequence[Any]], objects: Sequence[Sequence[Mapping]]) -> None:
        """Add scenes: per scene, the parsed objects and the ground-truth objects."""
        if len(parsed) != len(objects):
            raise ValueError(f"{len(parsed)} parsed scenes but {len(objects)} scenes of objects")
        r = triple_f1([object_triples(p) for p in parsed], [object_triples(o) for o in objects])
        self.tp, self.fp, self.fn = self.tp + r["tp"], self.fp + r["fp"], self.fn + r["fn"]
        for pred, gt in zip(parsed, objects):
            for i, j in match_objects(pred, gt, SHAPE_MATCH_IOU, keys=("colour",)):
                self.matched += 1
                self.shape_ok += int(pred[i].shape == gt[j]["shape"])

    def result(self, suffix: str = "") -> dict[str, float]:
        """``parser_f1``, ``parser_precision``, ``parser_recall``, ``shape_accuracy`` (names + suffix)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        out = {"parser_f1": 2 * p * r / (p + r) if p + r else 0.0, "parser_precision": p, "parser_recall": r,
               "shape_accuracy": self.shape_ok / self.matched if self.matched else float("nan")}
        return {k + suffix: v for k, v in out.items()}
