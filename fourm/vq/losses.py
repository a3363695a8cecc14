"""The training losses of the image tokenizers, apart from the quantizer's own (commitment) loss.

    weights = object_weight_map(objects, object_weight=8.0)         # (B, 1, H, W), mean 1 per image
    target = row_mean_background(x, objects)                        # loss.background: row_mean
    loss = reconstruction_loss(output, target, "rgb", config.loss_weights, weights)

Each term is a function of tensors and resolved weights (``TokenizerConfig.loss_weights``), so a
new term is a new function here and one line in ``ImageTokenizer.forward``.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F


def object_weight_map(objects: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights of ``loss.object_weight``, normalised to mean 1 per image.

    Args:
        objects: (B, H, W) bool, the object pixels (the data says which they are: for ShapesWorld,
            ``fourm.data.image_sources.object_mask`` of a semseg map).
        object_weight: extra weight of object pixels and of the one-pixel ring around them.
    Returns:
        (B, 1, H, W) float32 weights: ``1 + object_weight`` on (dilated) objects, 1 elsewhere,
        divided by the image's mean.
    """
    if objects.ndim != 3 or objects.dtype != torch.bool:
        raise ValueError(f"objects must be a bool (B, H, W) mask, got {objects.dtype} {tuple(objects.shape)}")
    obj = objects.float().unsqueeze(1)  # (B, 1, H, W)
    ring = F.max_pool2d(obj, kernel_size=3, stride=1, padding=1)  # objects grown by one pixel: their edges
    w = 1.0 + object_weight * ring
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


def row_mean_background(x: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """``loss.background: row_mean``: ``x`` with each background pixel replaced by the mean
    colour of its row's background pixels (objects excluded, so their colours do not bleed in).

    Args:
        x: (B, C, H, W) normalised images.
        objects: (B, H, W) bool, the object pixels.
    Returns:
        (B, C, H, W): object pixels as in ``x``; background pixels constant along each row.
    """
    if objects.shape != (x.shape[0], *x.shape[-2:]) or objects.dtype != torch.bool:
        raise ValueError(f"objects must be a bool {(x.shape[0], *x.shape[-2:])} mask, got {objects.dtype} "
                         f"{tuple(objects.shape)}")
    bg = (~objects).unsqueeze(1).to(x.dtype)  # (B, 1, H, W)
    row = (x * bg).sum(-1, keepdim=True) / bg.sum(-1, keepdim=True).clamp_min(1.0)  # (B, C, H, 1)
    return torch.where(bg.bool(), row.expand_as(x), x)


def latent_invariance(z: torch.Tensor, z_plain: torch.Tensor) -> torch.Tensor:
    """``loss.invariance``: mean ``1 - cos`` between latents (B, D, h, w) and the latents of the
    same images with a plain background (held fixed: no gradient through them). Returns () ."""
    return (1.0 - F.cosine_similarity(z.float(), z_plain.detach().float(), dim=1)).mean()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, kind: str, weights: Mapping[str, float],
                        pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction loss of a conv decoder's output.

    Args:
        output: (B, C_out, H, W) network output: normalised values (rgb, depth) or class logits (semseg).
        target: (B, C, H, W) the normalised input, or (B, H, W) class ids for ``kind == "semseg"``.
        kind: the tokenizer's kind (``rgb``, ``depth``, ``semseg``).
        weights: ``l1`` and ``mse`` (rgb, depth) or ``cross_entropy`` (semseg).
        pixel_weights: (B, 1, H, W) of mean 1 (:func:`object_weight_map`) weighting the per-pixel
            l1 / mse terms; None weighs every pixel the same.
    Returns:
        () float32.
    """
    out = output.float()
    if kind == "semseg":
        return weights["cross_entropy"] * F.cross_entropy(out, target)
    if pixel_weights is None:
        loss = weights["l1"] * F.l1_loss(out, target)
        if weights["mse"]:
            loss = loss + weights["mse"] * F.mse_loss(out, target)
        return loss
    diff = out - target  # (B, C, H, W)
    loss = weights["l1"] * (diff.abs() * pixel_weights).mean()
    if weights["mse"]:
        loss = loss + weights["mse"] * (diff.square() * pixel_weights).mean()
    return loss
