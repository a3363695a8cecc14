"""Scores of dense maps: images (PSNR), depth maps (abs. rel. error, delta1) and class-id maps (mIoU).

The per-batch functions (:func:`psnr`, :func:`depth_errors`, :func:`confusion_matrix`) take
tensors and return sums or counts, so callers can pool them over batches; the per-scene functions
(:func:`semseg_scores`, :func:`depth_scores`) take one map per scene and return a dict of floats:

| function              | prediction          | scores                                         |
|-----------------------|---------------------|------------------------------------------------|
| :func:`psnr`          | uint8 images        | PSNR in dB per image (peak 255)                |
| :func:`semseg_scores` | class-id maps       | mIoU over classes, pixel accuracy              |
| :func:`depth_scores`  | depth maps (metres) | abs. rel. error and delta1 on the valid pixels |
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from fourm.data.shapes_world import SEMSEG_CLASSES

MAX_PSNR = 100.0  # reported for an exact reconstruction (zero error)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (B, C, H, W) (peak 255), capped at ``MAX_PSNR``.

    Returns:
        (B,) float64.
    """
    err = (pred.double() - target.double()).pow(2).flatten(1).mean(1)  # (B,)
    out = 10.0 * torch.log10(255.0**2 / err.clamp_min(1e-12))
    return out.clamp(max=MAX_PSNR)


def depth_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, int]:
    """Sums over valid pixels of the absolute relative error and of the delta1 hits.

    Args:
        pred, target: (B, H, W) depth in metres.
        valid: (B, H, W) bool, the pixels to score (non-sky).
    Returns:
        (sum of |pred - target| / target, number of pixels with max ratio < 1.25, number of valid pixels).
    """
    p, t = pred.double()[valid], target.double()[valid]
    rel = ((p - t).abs() / t).sum().item()
    ratio = torch.maximum(p / t, t / p)
    return rel, int((ratio < 1.25).sum()), int(valid.sum())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground-truth class, columns = predicted class."""
    idx = target.long().flatten() * num_classes + pred.long().flatten()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the ground truth or the prediction."""
    c = confusion.double()
    inter = c.diag()
    union = c.sum(0) + c.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if bool(present.any()) else float("nan")


def check_scenes(preds: Sequence[Any], gts: Sequence[Any], what: str) -> None:
    """Raise unless ``preds`` and ``gts`` hold one entry per scene each (``what`` names the caller)."""
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
    check_scenes(preds, gts, "semseg_scores")
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
    check_scenes(preds, gts, "depth_scores")
    rel = hits = n = 0.0
    for p, g, v in zip(preds, gts, valid):
        r, h, k = depth_errors(torch.as_tensor(np.asarray(p, np.float32)), torch.as_tensor(np.asarray(g, np.float32)),
                               torch.as_tensor(np.asarray(v, bool)))
        rel, hits, n = rel + r, hits + h, n + k
    return {"abs_rel": rel / max(n, 1), "delta1": hits / max(n, 1)}
