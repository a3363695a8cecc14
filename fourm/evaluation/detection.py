"""Scores of boxes: IoU, average precision and mean average precision (class = shape).

    detection_map([[{"box": [...], "class": "circle", "score": 0.9}]], [[{"box": [...], "class": "circle"}]])
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from fourm.evaluation.dense import check_scenes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[xmin, ymin, xmax, ymax]`` boxes (0 when both are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0



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
    check_scenes(preds, gts, "detection_map")
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
