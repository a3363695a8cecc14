"""Object-level scores for ShapesWorld: box IoU, matching, F1 and a shape confusion matrix.

Objects are anything with ``colour``, ``shape`` and ``box`` (``[xmin, ymin, xmax, ymax]`` in
[0, 1]), given as attributes (``ParsedObject``) or as dict keys (``render_scene(...)["objects"]``),
so parsed, generated and ground-truth objects compare directly:

    pairs = match_objects(parse_scene(rgb), sample["objects"])             # [(pred_i, gt_i), ...]
    scores = scene_f1([parse_scene(s["rgb"]) for s in samples], [s["objects"] for s in samples])
"""
from __future__ import annotations

from typing import Any, Sequence


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[xmin, ymin, xmax, ymax]`` boxes (0 when both are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
