"""Per-modality normalisation that lives inside the image tokenizers.

A tokenizer takes images exactly as they are stored and returns them the same way; the network
sees normalised tensors only. The reference leaves this to the caller, and mixing up its two
RGB conventions is its most reported misuse. Here each modality has one object that

- checks what it is given (dtype, shape, range) and says how to fix a wrong input,
- maps stored values to what the network reads (``to_model``),
- maps what the network writes back to stored values (``from_model``).

Stored formats (batched; a single image without the batch dimension is accepted too):

| modality | stored                                   | network input             | network output            |
|----------|------------------------------------------|---------------------------|---------------------------|
| rgb      | uint8 (B, 3, H, W) in [0, 255]            | float (B, 3, H, W) [-1,1] | float (B, 3, H, W) [-1,1] |
| depth    | float (B, H, W) metres, > 0               | float (B, 1, H, W) [-1,1] | float (B, 1, H, W)        |
| semseg   | integer (B, H, W) class ids in [0, K)     | int64 (B, H, W)           | logits (B, K, H, W)       |

Depth is normalised as log-depth over a fixed range [near, far] taken from the world (the sky
sits at far): ``2 * (log d - log near) / (log far - log near) - 1``. Values outside the range are
clamped, so an error of x in the normalised space is a relative depth error of about
``x * log(far / near) / 2`` everywhere in the range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

IMAGE_MODALITIES: tuple[str, ...] = ("rgb", "depth", "semseg")
Modality = Literal["rgb", "depth", "semseg"]


@dataclass(frozen=True)
class NormalizeConfig:
    """Fixed normalisation constants, saved with the tokenizer.

    Args:
        depth_near: smallest depth in metres that the depth tokenizer distinguishes.
        depth_far: largest depth in metres (the world's sky depth); larger values are clamped.
        num_classes: number of semantic classes (ids 0 .. num_classes - 1).
    """

    depth_near: float = 0.5
    depth_far: float = 50.0
    num_classes: int = 6

    def __post_init__(self) -> None:
        if not (0 < self.depth_near < self.depth_far):
            raise ValueError(
                f"normalize.depth_near={self.depth_near} and depth_far={self.depth_far}: need 0 < near < far"
            )
        if self.num_classes < 2:
            raise ValueError(f"normalize.num_classes={self.num_classes}: need at least 2 classes")


def as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Accept a torch tensor or a numpy array; anything else raises naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class Normalizer:
    """Base class: validation plus stored <-> network mappings for one modality."""

    modality: str = ""
    in_channels: int = 1
    out_channels: int = 1

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        """Validate a stored image or batch.

        Returns:
            (batch, was_single): the input as a batched tensor and whether a batch dimension was added.
        """
        raise NotImplementedError

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Stored batch (already checked) -> network input."""
        raise NotImplementedError

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        """Network output -> stored batch."""
        raise NotImplementedError


def _check_spatial(x: torch.Tensor, name: str, layout: str, single_ndim: int) -> tuple[torch.Tensor, bool]:
    if x.ndim == single_ndim:
        return x.unsqueeze(0), True
    if x.ndim == single_ndim + 1:
        return x, False
    raise ValueError(f"{name} must have shape {layout} (or one image without B), got shape {tuple(x.shape)}")


class RGBNormalizer(Normalizer):
    """uint8 (B, 3, H, W) <-> float [-1, 1]."""

    modality = "rgb"
    in_channels = 3
    out_channels = 3

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, "rgb")
        if x.dtype != torch.uint8:
            raise TypeError(
                f"rgb must be uint8 in [0, 255], got {x.dtype}; pass the image as stored (no scaling or normalising)"
            )
        x, single = _check_spatial(x, "rgb", "(B, 3, H, W)", 3)
        if x.shape[1] != 3:
            hint = ""
            if x.shape[-1] == 3:
                hint = "; it looks channels-last: use image.permute(2, 0, 1) (or (0, 3, 1, 2) for a batch)"
            raise ValueError(f"rgb must have shape (B, 3, H, W), got {tuple(x.shape)}{hint}")
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1.0  # (B, 3, H, W)

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


class DepthNormalizer(Normalizer):
    """Metres (B, H, W) <-> normalised log-depth (B, 1, H, W) in [-1, 1]."""

    modality = "depth"

    def __init__(self, near: float, far: float) -> None:
        self.near, self.far = float(near), float(far)
        self.log_near = math.log(self.near)
        self.log_span = math.log(self.far) - self.log_near

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, "depth")
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"depth must be float32 metres, got {x.dtype}; pass the depth map as stored (metres, not scaled integers)"
            )
        x, single = _check_spatial(x, "depth", "(B, H, W)", 2)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("depth contains NaN or infinite values; the sky is stored as the world's far depth")
        lo = float(x.min()) if x.numel() else 1.0
        if lo <= 0:
            raise ValueError(f"depth must be positive metres, got a minimum of {lo}")
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        d = x.float().clamp(self.near, self.far)
        return (2.0 * (d.log() - self.log_near) / self.log_span - 1.0).unsqueeze(1)  # (B, 1, H, W)

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        z = y.float().squeeze(1).clamp(-1, 1)  # (B, H, W)
        return torch.exp((z + 1.0) * 0.5 * self.log_span + self.log_near)


class SemsegNormalizer(Normalizer):
    """Class ids (B, H, W) <-> int64 ids in, logits (B, K, H, W) out."""

    modality = "semseg"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.out_channels = self.num_classes

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, "semseg")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"semseg must hold integer class ids (uint8 or int64), got {x.dtype}")
        x, single = _check_spatial(x, "semseg", "(B, H, W)", 2)
        if x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"semseg class ids must lie in [0, {self.num_classes - 1}], got values in [{lo}, {hi}]"
                )
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()  # (B, H, W)

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return y.argmax(dim=1).to(torch.uint8)  # (B, K, H, W) -> (B, H, W)


def build_normalizer(modality: str, config: NormalizeConfig) -> Normalizer:
    """The normaliser of ``modality`` (``rgb``, ``depth`` or ``semseg``)."""
    if modality == "rgb":
        return RGBNormalizer()
    if modality == "depth":
        return DepthNormalizer(config.depth_near, config.depth_far)
    if modality == "semseg":
        return SemsegNormalizer(config.num_classes)
    raise ValueError(f"unknown image modality {modality!r}; known: {', '.join(IMAGE_MODALITIES)}")


def from_world(sample: dict, modality: str) -> torch.Tensor:
    """One modality of a ShapesWorld sample in the tokenizer's stored format.

    ``render_scene`` gives rgb channels-last (H, W, 3) numpy; the shard reader gives (3, H, W)
    tensors. Both become uint8 (3, H, W); depth and semseg (H, W) pass through as tensors.

    Args:
        sample: mapping with ``rgb``, ``depth`` (H, W) float32 and/or ``semseg`` (H, W) uint8.
        modality: ``rgb``, ``depth`` or ``semseg``.
    Returns:
        A tensor without batch dimension.
    """
    if modality not in IMAGE_MODALITIES:
        raise ValueError(f"unknown image modality {modality!r}; known: {', '.join(IMAGE_MODALITIES)}")
    if modality not in sample:
        raise KeyError(f"sample has no {modality!r}; it has: {', '.join(sorted(sample))}")
    value = sample[modality]
    x = value if isinstance(value, torch.Tensor) else as_tensor(np.asarray(value), modality)
    if modality == "rgb" and x.ndim == 3 and x.shape[0] != 3 and x.shape[-1] == 3:
        x = x.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
    return x
