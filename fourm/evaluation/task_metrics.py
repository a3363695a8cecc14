"""The scores of the ShapesWorld benchmark, one function per kind of prediction.

Every function takes plain Python / numpy values (one entry per scene) and returns a dict of
floats, so the same code scores a model's generations and the tokenizer bound
(``fourm.evaluation.benchmark``):

| function             | prediction                  | scores                                        |
|----------------------|-----------------------------|-----------------------------------------------|
| :func:`semseg_scores`| class-id maps               | mIoU over classes, pixel accuracy             |
| :func:`depth_scores` | depth maps (metres)         | abs. rel. error and delta1 on non-sky pixels  |
| :func:`detection_map`| boxes with scores           | mAP at IoU 0.5 over shape classes             |
| :func:`triple_f1`    | (size, colour, shape) lists | object F1 (multiset match of triples)         |
| :func:`layout_scores`| parsed objects vs given     | mean box IoU and shape accuracy per given box |

    detection_map([[{"box": [...], "class": "circle", "score": 0.9}]], [[{"box": [...], "class": "circle"}]])
    triple_f1([parse_caption(text)], [object_triples(scene["objects"])])
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fourm.data.shapes_world import SEMSEG_CLASSES
from fourm.evaluation.metrics import box_iou, match_objects
from fourm.vq.evaluate import confusion_matrix, depth_errors, miou

Triple = tuple[Any, str, str]  # (size word or None, colour, shape)


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _check_scenes(preds: Sequence[Any], gts: Sequence[Any], what: str) -> None:
    if len(preds) != len(gts):
        raise ValueError(f"{what}: {len(preds)} predicted scenes but {len(gts)} ground-truth scenes; "
                         "give one entry per scene in both")


def semseg_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                  num_classes: int = len(SEMSEG_CLASSES)) -> dict[str, float]:
    """mIoU of class-id maps, from one confusion matrix pooled over all scenes.

    Args:
        preds: per scene, (H, W) integer class ids.
        gts: per scene, (H, W) ground-truth class ids.
        num_classes: K; ids must lie in [0, K).

    Returns:
        ``miou`` (mean IoU over the classes present in the ground truth or the prediction) and
        ``pixel_accuracy``.
    """
    _check_scenes(preds, gts, "semseg_scores")
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for p, g in zip(preds, gts):
        p, g = torch.as_tensor(np.asarray(p)).long(), torch.as_tensor(np.asarray(g)).long()
        if p.shape != g.shape:
            raise ValueError(f"semseg_scores: prediction shape {tuple(p.shape)} != ground truth {tuple(g.shape)}")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
            raise ValueError(f"semseg_scores: class ids must lie in [0, {num_classes - 1}], "
                             f"got [{int(p.min())}, {int(p.max())}]")
        conf += confusion_matrix(p, g, num_classes)
    return {"miou": miou(conf), "pixel_accuracy": float(conf.diag().sum()) / max(int(conf.sum()), 1)}


def depth_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                 valid: Sequence[np.ndarray]) -> dict[str, float]:
    """Depth errors pooled over the valid pixels of all scenes.

    Args:
        preds: per scene, (H, W) depth in metres.
        gts: per scene, (H, W) ground-truth depth in metres (> 0).
        valid: per scene, (H, W) bool: the pixels to score (non-sky: ``semseg != 0``).

    Returns:
        ``abs_rel`` (mean ``|pred - gt| / gt``) and ``delta1`` (share with
        ``max(pred / gt, gt / pred) < 1.25``).
    """
    _check_scenes(preds, gts, "depth_scores")
    rel = hits = n = 0.0
    for p, g, v in zip(preds, gts, valid):
        r, h, k = depth_errors(torch.as_tensor(np.asarray(p, np.float32)), torch.as_tensor(np.asarray(g, np.float32)),
                               torch.as_tensor(np.asarray(v, bool)))
        rel, hits, n = rel + r, hits + h, n + k
    return {"abs_rel": rel / max(n, 1), "delta1": hits / max(n, 1)}


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], num_gt: int) -> float:
    """Area under the interpolated precision-recall curve (all points, as VOC 2010+).

    Predictions of equal score form one operating point (no order among tied predictions is
    invented), so predictions without confidences give ``precision * recall``.

    Args:
        scores: confidence of each prediction.
        is_tp: whether each prediction matched a ground-truth object.
        num_gt: ground-truth objects of the class (> 0).

    Returns:
        AP in [0, 1].
    """
    if num_gt <= 0:
        raise ValueError(f"average_precision: num_gt={num_gt}; needs at least one ground-truth object")
    if not len(scores):
        return 0.0
    s, tp = np.asarray(scores, np.float64), np.asarray(is_tp, np.float64)
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]
    last = np.r_[s[1:] != s[:-1], True]  # last prediction of each group of equal scores
    ctp, cnt = np.cumsum(tp)[last], (np.arange(len(s)) + 1.0)[last]
    recall, precision = np.r_[0.0, ctp / num_gt], np.r_[1.0, ctp / cnt]
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolate: best precision at any higher recall
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def detection_map(preds: Sequence[Sequence[Mapping[str, Any]]], gts: Sequence[Sequence[Mapping[str, Any]]],
                  iou: float = 0.5) -> dict[str, Any]:
    """Mean average precision of boxes, class = shape.

    Per scene, predictions (highest ``score`` first; a missing score counts as 1) take the
    unmatched ground-truth box of their class with the highest IoU >= ``iou``; AP per class from
    the pooled predictions (:func:`average_precision`); mAP over the classes with ground truth.

    Args:
        preds: per scene, ``{"box": [x0, y0, x1, y1], "class": name, "score": float}``.
        gts: per scene, ``{"box": ..., "class": name}``.
        iou: smallest IoU of a true positive.

    Returns:
        ``map`` (NaN when no scene has ground truth), ``ap`` per class, ``num_pred``, ``num_gt``.
    """
    _check_scenes(preds, gts, "detection_map")
    per_class: dict[str, list[tuple[float, bool]]] = {}
    num_gt: Counter = Counter()
    for pred, gt in zip(preds, gts):
        for g in gt:
            num_gt[g["class"]] += 1
        used: set[int] = set()
        for p in sorted(pred, key=lambda b: -float(b.get("score", 1.0))):
            best, best_j = iou, -1
            for j, g in enumerate(gt):
                if j not in used and g["class"] == p["class"]:
                    v = box_iou(p["box"], g["box"])
                    if v >= best:
                        best, best_j = v, j
            if best_j >= 0:
                used.add(best_j)
            per_class.setdefault(p["class"], []).append((float(p.get("score", 1.0)), best_j >= 0))
    ap = {}
    for name in sorted(num_gt):
        hits = per_class.get(name, [])
        ap[name] = average_precision([h[0] for h in hits], [h[1] for h in hits], num_gt[name])
    return {"map": float(np.mean(list(ap.values()))) if ap else float("nan"), "ap": ap,
            "num_pred": sum(len(p) for p in preds), "num_gt": sum(num_gt.values())}


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
    _check_scenes(preds, gts, "triple_f1")

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
    _check_scenes(parsed, reference, "layout_scores")
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
