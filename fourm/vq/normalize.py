"""Per-kind normalisation that lives inside the image tokenizers.

A tokenizer takes images exactly as they are stored and returns them the same way; the network
sees normalised tensors only. The reference leaves this to the caller, and mixing up its two
RGB conventions is its most reported misuse. Here each kind of image has one object that

- checks what it is given (dtype, shape, range) and says how to fix a wrong input,
- maps stored values to what the network reads (``to_model``),
- maps what the network writes back to stored values (``from_model``).

A tokenizer's kind (``normalize.kind``) says how its modality is stored; it defaults to the
modality's name, so ``rgb``, ``depth`` and ``semseg`` need no kind, and a new modality names the
kind it is stored as (surface normals kept as a float map: ``kind: depth``). Stored formats
(batched; a single image without the batch dimension is accepted too):

| kind     | stored                                   | network input             | network output            |
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

from fourm.vq.losses import row_mean_background

IMAGE_KINDS: tuple[str, ...] = ("rgb", "depth", "semseg")


@dataclass(frozen=True)
class NormalizeConfig:
    """Fixed normalisation constants, saved with the tokenizer.

    Args:
        depth_near: smallest depth in metres that the depth tokenizer distinguishes.
        depth_far: largest depth in metres (the world's sky depth); larger values are clamped.
        num_classes: number of semantic classes (ids 0 .. num_classes - 1).
        kind: how the images are stored: ``rgb`` (uint8 colour), ``depth`` (positive float map,
            log-scaled between ``depth_near`` and ``depth_far``) or ``semseg`` (class ids);
            ``null``: the tokenizer's modality name, which must then be one of these.
        flat: rgb only: the network reads (and the decoder learns to draw) each image flat,
            :func:`flat_rgb`: saturated pixels at full value (shading gone, colour kept), pale
            pixels as their row's mean pale colour (texture gone). A tokenizer for generation:
            its codes carry layout and colours only. ``decode`` returns flat images.
    """

    depth_near: float = 0.5
    depth_far: float = 50.0
    num_classes: int = 6
    kind: Literal["rgb", "depth", "semseg"] | None = None
    flat: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in IMAGE_KINDS:
            raise ValueError(f"normalize.kind={self.kind!r}; allowed: {', '.join(IMAGE_KINDS)}")
        if not (0 < self.depth_near < self.depth_far):
            raise ValueError(
                f"normalize.depth_near={self.depth_near} and depth_far={self.depth_far}: need 0 < near < far"
            )
        if self.num_classes < 2:
            raise ValueError(f"normalize.num_classes={self.num_classes}: need at least 2 classes")
        if not isinstance(self.flat, bool):
            raise ValueError(f"normalize.flat={self.flat!r}: must be true or false")


# flat_rgb: a pixel is an object's when its saturation and value reach these (ShapesWorld's
# backgrounds stay below saturation 0.35 and its palette colours are above 0.75; very dark pixels
# carry too little colour to name). The value is the scene parser's; the saturation sits between the
# backgrounds' 0.35 and the parser's 0.45.
FLAT_MIN_SATURATION = 0.4
FLAT_MIN_VALUE = 0.12


def flat_rgb(x: torch.Tensor) -> torch.Tensor:
    """``normalize.flat``: images (B, 3, H, W) in [-1, 1] redrawn flat, in [-1, 1].

    Saturated pixels (saturation >= ``FLAT_MIN_SATURATION``, value >= ``FLAT_MIN_VALUE``) are
    set to full value, ``rgb / max(rgb)``: shading scales a colour, so this removes it and keeps
    the colour. Every other (pale) pixel becomes the mean of the pale pixels of its row, which
    removes ground texture and keeps the sky gradient and the horizon. Needs no object mask, so
    ``encode`` applies it to any image.
    """
    u = (x.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
    value = u.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    saturation = (value - u.amin(dim=1, keepdim=True)) / value.clamp_min(1e-6)
    vivid = (saturation >= FLAT_MIN_SATURATION) & (value >= FLAT_MIN_VALUE)  # (B, 1, H, W)
    plain = row_mean_background(u, vivid[:, 0])  # (B, 3, H, W): pale pixels as their row's pale mean
    out = torch.where(vivid, u / value.clamp_min(1e-6), plain)
    return out * 2.0 - 1.0


def as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Accept a torch tensor or a numpy array; anything else raises naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class Normalizer:
    """Base class: validation plus stored <-> network mappings for one kind of image.

    ``name`` is the modality's name, used in error messages (default: the kind).
    """

    kind: str = ""
    in_channels: int = 1
    out_channels: int = 1

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind

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
    """uint8 (B, 3, H, W) <-> float [-1, 1]; with ``flat`` the network reads :func:`flat_rgb`."""

    kind = "rgb"
    in_channels = 3
    out_channels = 3

    def __init__(self, name: str | None = None, flat: bool = False) -> None:
        super().__init__(name)
        self.flat = flat

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, self.name)
        if x.dtype != torch.uint8:
            raise TypeError(f"{self.name} must be uint8 in [0, 255], got {x.dtype}; pass the image as stored "
                            "(no scaling or normalising)")
        x, single = _check_spatial(x, self.name, "(B, 3, H, W)", 3)
        if x.shape[1] != 3:
            hint = ""
            if x.shape[-1] == 3:
                hint = "; it looks channels-last: use image.permute(2, 0, 1) (or (0, 3, 1, 2) for a batch)"
            raise ValueError(f"{self.name} must have shape (B, 3, H, W), got {tuple(x.shape)}{hint}")
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() / 127.5 - 1.0  # (B, 3, H, W)
        return flat_rgb(y) if self.flat else y

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


class DepthNormalizer(Normalizer):
    """Metres (B, H, W) <-> normalised log-depth (B, 1, H, W) in [-1, 1]."""

    kind = "depth"

    def __init__(self, near: float, far: float, name: str | None = None) -> None:
        super().__init__(name)
        self.near, self.far = float(near), float(far)
        self.log_near = math.log(self.near)
        self.log_span = math.log(self.far) - self.log_near

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, self.name)
        if not x.dtype.is_floating_point:
            raise TypeError(f"{self.name} must be float32 metres, got {x.dtype}; pass the map as stored "
                            "(metres, not scaled integers)")
        x, single = _check_spatial(x, self.name, "(B, H, W)", 2)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.name} contains NaN or infinite values; the sky is stored as the world's far depth")
        lo = float(x.min()) if x.numel() else 1.0
        if lo <= 0:
            raise ValueError(f"{self.name} must be positive metres, got a minimum of {lo}")
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        d = x.float().clamp(self.near, self.far)
        return (2.0 * (d.log() - self.log_near) / self.log_span - 1.0).unsqueeze(1)  # (B, 1, H, W)

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        z = y.float().squeeze(1).clamp(-1, 1)  # (B, H, W)
        return torch.exp((z + 1.0) * 0.5 * self.log_span + self.log_near)


class SemsegNormalizer(Normalizer):
    """Class ids (B, H, W) <-> int64 ids in, logits (B, K, H, W) out."""

    kind = "semseg"

    def __init__(self, num_classes: int, name: str | None = None) -> None:
        super().__init__(name)
        self.num_classes = int(num_classes)
        self.out_channels = self.num_classes

    def check(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        x = as_tensor(x, self.name)
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{self.name} must hold integer class ids (uint8 or int64), got {x.dtype}")
        x, single = _check_spatial(x, self.name, "(B, H, W)", 2)
        if x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"{self.name} class ids must lie in [0, {self.num_classes - 1}], got values in [{lo}, {hi}]"
                )
        return x, single

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()  # (B, H, W)

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return y.argmax(dim=1).to(torch.uint8)  # (B, K, H, W) -> (B, H, W)


def build_normalizer(kind: str, config: NormalizeConfig, name: str | None = None) -> Normalizer:
    """The normaliser of images of ``kind`` (``rgb``, ``depth`` or ``semseg``); ``name`` (the
    modality) appears in its error messages."""
    if config.flat and kind != "rgb":
        raise ValueError(f"normalize.flat applies to rgb images, not {kind}; remove it")
    if kind == "rgb":
        return RGBNormalizer(name, flat=config.flat)
    if kind == "depth":
        return DepthNormalizer(config.depth_near, config.depth_far, name)
    if kind == "semseg":
        return SemsegNormalizer(config.num_classes, name)
    raise ValueError(f"unknown image kind {kind!r}; known: {', '.join(IMAGE_KINDS)}")
