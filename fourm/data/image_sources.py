"""Where image tokenizers get their training images: ShapesWorld scenes, raw shards or photographs.

    config = ImageDataConfig(source="generator", seed=0, batch_size=32)
    loader = image_loader(config, "rgb", image_size=64, start=0, rank=0, world_size=1)
    images = next(iter(loader))  # (32, 3, 64, 64) uint8: micro-batch 0 (or [images, objects] pairs)

Images are in the tokenizer's stored format (:func:`stored_image`: rgb uint8 (3, H, W), depth
float32 metres (H, W), semseg uint8 ids (H, W)). Micro-batch ``m`` of process ``r`` of ``W`` is a
pure function of ``m``:

* ``generator``: ShapesWorld scenes ``[(m * W + r) * B, (m * W + r + 1) * B)`` of world ``seed``
  (mod ``num_scenes`` when set), rendered on the fly;
* ``photos``: crops with the same indices (:class:`fourm.data.photos.PhotoCrops`);
* ``shards``: positions ``[m * B, (m + 1) * B)`` of this process's share of the shards
  (``ShardDataset``'s rank / world size), shuffled per epoch by ``seed``.

So a resumed run reads what an uninterrupted one would have read. With ``with_objects`` each item
is a pair (image, object mask), for the object-weighted rgb loss (:func:`object_mask`: the object
pixels of a ShapesWorld semseg map).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fourm.data.photos import DEFAULT_HOLDOUT, PHOTOS, PhotoCrops, check_photo_names, training_photos
from fourm.data.shapes_world import SEMSEG_CLASSES, SHAPE_CLASSES, WorldConfig, render_scene

SEMSEG_FIELD = "semseg"  # the field whose class ids locate the objects (loss.object_weight)
FIRST_OBJECT_CLASS = SEMSEG_CLASSES.index(SHAPE_CLASSES[0])  # ids below it: sky and ground


def object_mask(sample: Mapping[str, Any]) -> torch.Tensor:
    """(H, W) bool: the object pixels of a ShapesWorld sample (its semseg ids of a shape class)."""
    return stored_image(sample, SEMSEG_FIELD) >= FIRST_OBJECT_CLASS


def stored_image(sample: Mapping[str, Any], field: str) -> torch.Tensor:
    """One image field of a sample as a tensor in the tokenizer's stored format, without batch dim.

    ``render_scene`` gives rgb channels-last (H, W, 3) numpy; the shard reader gives (3, H, W)
    tensors. Both become (3, H, W); single-channel maps (H, W) pass through as tensors.
    """
    if field not in sample:
        raise KeyError(f"sample has no {field!r}; it has: {', '.join(sorted(k for k in sample if not k.startswith('__')))}")
    value = sample[field]
    x = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if x.ndim == 3 and x.shape[0] != 3 and x.shape[-1] == 3:
        x = x.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
    return x


@dataclass(frozen=True)
class ImageDataConfig:
    """Where training images come from.

    Args:
        source: ``generator`` (render ShapesWorld scenes on the fly), ``shards`` (read them) or
            ``photos`` (random crops of scikit-image's photographs; rgb tokenizers only).
        seed: world seed of the training scenes (generator), seed of the crops (photos) or of
            the shard order (shards).
        batch_size: images per micro-batch and process.
        num_scenes: cycle through this many scenes instead of fresh ones each step (generator).
        shards: shard spec (folder, glob, brace range) for ``source: shards``.
        num_workers: DataLoader worker processes (0 renders in the training process).
        holdout: photos never cropped for training; their tiles are the held-out set (photos).
        crop_scale: range of a crop's side in units of the tokenizer's image size, drawn
            log-uniformly; the crop is resized to the image size (photos).
    """

    source: Literal["generator", "shards", "photos"] = "generator"
    seed: int = 0
    batch_size: int = 32
    num_scenes: int | None = None
    shards: str | None = None
    num_workers: int = 0
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT
    crop_scale: tuple[float, float] = (1.0, 3.0)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"data.batch_size={self.batch_size} must be >= 1 and data.num_workers="
                             f"{self.num_workers} >= 0")
        if self.source == "photos":
            if self.shards:
                raise ValueError("data.shards is set but data.source is 'photos'; "
                                 "set data.source: shards or drop data.shards")
            if self.num_scenes is not None:
                raise ValueError(f"data.num_scenes={self.num_scenes} is for data.source: generator; "
                                 "drop it with data.source: photos")
            object.__setattr__(self, "holdout", check_photo_names(self.holdout, "data.holdout"))
            if not training_photos(self.holdout):
                raise ValueError(f"data.holdout holds all {len(PHOTOS)} photos; leave some for training")
            lo, hi = self.crop_scale
            if not 0 < lo <= hi:
                raise ValueError(f"data.crop_scale={list(self.crop_scale)}: need 0 < low <= high, e.g. [1.0, 3.0]")
        if self.source == "shards" and not self.shards:
            raise ValueError("data.source is 'shards' but data.shards is empty; give a folder or glob of tar files")
        if self.source == "generator" and self.shards:
            raise ValueError("data.shards is set but data.source is 'generator'; set data.source: shards")
        if self.num_scenes is not None and self.num_scenes < 1:
            raise ValueError(f"data.num_scenes={self.num_scenes}: must be >= 1 (or null for fresh scenes)")


class SceneImages(Dataset):
    """ShapesWorld scene ``index`` (mod ``num_scenes``) of world ``seed``, field ``field`` in stored
    format; with ``with_objects`` a pair (image, object mask) (for ``loss.object_weight``)."""

    def __init__(self, field: str, seed: int, image_size: int, num_scenes: int | None = None,
                 with_objects: bool = False) -> None:
        self.field, self.seed, self.num_scenes, self.with_objects = field, seed, num_scenes, with_objects
        self.world = WorldConfig(image_size=image_size)

    def __len__(self) -> int:
        return self.num_scenes or 2**62

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        i = index % self.num_scenes if self.num_scenes else index
        sample = render_scene(self.seed, i, self.world)
        image = stored_image(sample, self.field)
        return (image, object_mask(sample)) if self.with_objects else image


class MicroBatchIndices:
    """Item indices of micro-batches ``start, start + 1, ...``: micro-batch ``m`` of process ``r``
    of ``W`` gets ``[(m * W + r) * B, (m * W + r + 1) * B)`` (an endless sampler)."""

    def __init__(self, start: int, batch_size: int, rank: int, world_size: int) -> None:
        self.start, self.b, self.rank, self.world = start, batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            lo = (m * self.world + self.rank) * self.b
            yield list(range(lo, lo + self.b))
            m += 1


class ShardImages(IterableDataset):
    """One field of the samples in shards (already in stored format), epoch after epoch.

    Each process reads its own share (``ShardDataset``'s rank / world_size), shuffled per epoch by
    ``seed``. ``skip`` positions of this process's stream are passed over (resume). With
    ``with_objects`` each item is a pair (image, object mask).
    """

    def __init__(self, shards: str, field: str, seed: int, rank: int, world_size: int, skip: int = 0,
                 with_objects: bool = False) -> None:
        super().__init__()
        self.shards, self.field, self.seed = shards, field, seed
        self.rank, self.world_size, self.skip, self.with_objects = rank, world_size, skip, with_objects

    def __iter__(self):
        from fourm.data.shard_reader import ShardDataset

        fields = [self.field, SEMSEG_FIELD] if self.with_objects else [self.field]
        ds = ShardDataset(self.shards, fields=fields, shuffle=True, seed=self.seed,
                          rank=self.rank, world_size=self.world_size)
        n = ds.num_samples()
        if n == 0:
            raise ValueError(f"no samples for rank {self.rank} in shards {self.shards!r}")
        epoch, start = divmod(self.skip, n)
        while True:
            ds.set_epoch(epoch, start)
            for sample in ds:
                image = stored_image(sample, self.field)
                yield (image, object_mask(sample)) if self.with_objects else image
            epoch, start = epoch + 1, 0


def image_loader(config: ImageDataConfig, field: str, image_size: int, start: int, rank: int, world_size: int,
                 with_objects: bool = False) -> DataLoader:
    """An endless DataLoader of micro-batches ``start, start + 1, ...`` of one process (see the
    module docstring): (B, ...) stored-format images, or [images, object masks (B, H, W)] pairs."""
    d = config
    if d.source in ("generator", "photos"):
        ds = (PhotoCrops(d.seed, image_size, d.holdout, d.crop_scale) if d.source == "photos"
              else SceneImages(field, d.seed, image_size, d.num_scenes, with_objects=with_objects))
        sampler = MicroBatchIndices(start, d.batch_size, rank, world_size)
        return DataLoader(ds, batch_sampler=sampler, num_workers=d.num_workers, generator=_own_generator())
    ds = ShardImages(d.shards, field, d.seed, rank, world_size, skip=start * d.batch_size, with_objects=with_objects)
    return DataLoader(ds, batch_size=d.batch_size, num_workers=d.num_workers, generator=_own_generator())


def _own_generator() -> torch.Generator:
    """A DataLoader's own generator: starting an iterator draws a seed, which must not come from
    torch's global generator (a trainer seeds that per step, and a resumed run starts its
    iterator at another step than the uninterrupted one). The items depend on their index only."""
    return torch.Generator().manual_seed(0)
