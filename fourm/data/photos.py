"""Photographs bundled with scikit-image, a data source of rgb tokenizers (``data.source: photos``).

    crops = PhotoCrops(seed=0, image_size=64, holdout=DEFAULT_HOLDOUT)   # crops[i]: uint8 (3, 64, 64)
    tiles = held_out_tiles(DEFAULT_HOLDOUT, 64)                          # uint8 (N, 3, 64, 64)

The catalogue is the photographs that ``skimage.data`` ships inside the package (checked with the
network blocked and an empty data cache, scikit-image 0.26; ``tests/test_photos.py`` repeats the
check). Colour photographs are kept as they are; grey ones are replicated to three equal channels:
they add textures (brick, grass, gravel), a lunar surface, microscopy and printed text that the
eight colour photographs lack, and a tokenizer of colour images must reproduce grey ones too.

Left out, by reason:
* fetched over the network (pooch) on first use: brain, cells3d, eagle, human_mitosis, kidney,
  lily, nickel_solidification, palisades_of_vogt, protein_transport, skin, vortex;
* drawn, not photographed: binary_blobs, checkerboard, colorwheel, horse (a silhouette), logo,
  shepp_logan_phantom; lfw_subset (25 x 25 faces) is smaller than a crop;
* duplicates: cat (the same array as chelsea), the right view and disparity of stereo_motorcycle
  (``motorcycle`` here is its left view).

Training crops: crop ``i`` of ``seed`` draws from its own ``numpy`` generator seeded by
``(seed, i)``: a training photo (uniformly over photos, whatever their size), a square side of
``image_size * s`` pixels with ``s`` log-uniform in ``crop_scale`` (capped by the photo's short
side), a uniform position, a horizontal flip with probability 1/2; the square is resized to
``image_size`` (bilinear, antialiased). A crop depends on ``(seed, i)`` only, so a resumed run reads
what an uninterrupted one would. Held-out photos are never cropped for training.

Held-out tiles: each photo cut into non-overlapping ``image_size`` squares (the photo centre-
cropped to a multiple of the tile size); ``fourm.evaluation.reconstruction.photo_psnr`` round-trips
every tile through a tokenizer and reports one PSNR per photo.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                 "motorcycle", "retina", "rocket")
GREY_PHOTOS = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "microaneurysms", "moon",
               "page", "text")
PHOTOS = tuple(sorted(COLOUR_PHOTOS + GREY_PHOTOS))
# two colour and two grey photographs: a portrait, a still life, a street scene, a coin tray
DEFAULT_HOLDOUT = ("astronaut", "camera", "coffee", "coins")


def check_photo_names(names: Iterable[str], field: str) -> tuple[str, ...]:
    """``names`` as a tuple, after checking each is a catalogued photo and none repeats.

    Raises:
        ValueError naming ``field``, the bad name and the catalogue.
    """
    names = tuple(names)
    for n in names:
        if n not in PHOTOS:
            raise ValueError(f"{field}: unknown photo {n!r}; known: {', '.join(PHOTOS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{field}: {', '.join(dup)} listed more than once")
    return names


def load_photo(name: str) -> torch.Tensor:
    """One catalogued photograph as stored rgb.

    Returns:
        uint8 (3, H, W); grey photographs have three equal channels.
    """
    check_photo_names([name], "photo")
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("the photo data source needs scikit-image (pip install 'scikit-image>=0.22')") from e
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != (3 if name in COLOUR_PHOTOS else 2):
        raise ValueError(f"skimage.data.{name} gave {image.dtype} {image.shape}; expected uint8 "
                         f"{'(H, W, 3)' if name in COLOUR_PHOTOS else '(H, W)'}: another scikit-image version?")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()  # (3, H, W)


def training_photos(holdout: Iterable[str]) -> tuple[str, ...]:
    """The catalogued photos not in ``holdout``, sorted."""
    held = set(check_photo_names(holdout, "holdout"))
    return tuple(n for n in PHOTOS if n not in held)


def random_crop(photo: torch.Tensor, size: int, rng: np.random.Generator,
                scale: tuple[float, float] = (1.0, 3.0)) -> torch.Tensor:
    """A random square of ``photo``, resized to ``size``, flipped left-right with probability 1/2.

    Args:
        photo: uint8 (3, H, W) with H, W >= size.
        size: output side in pixels.
        rng: the generator of every random choice.
        scale: range of the square's side in units of ``size`` (drawn log-uniformly).
    Returns:
        uint8 (3, size, size).
    """
    _, h, w = photo.shape
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    side = max(min(round(size * s), h, w), 1)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    flip = bool(rng.random() < 0.5)
    crop = photo[:, y:y + side, x:x + side]  # (3, side, side)
    if side != size:
        resized = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        crop = resized.round().clamp(0, 255).to(torch.uint8)
    return crop.flip(-1) if flip else crop


class PhotoCrops(Dataset):
    """Random crops of the training photos: item ``i`` is crop ``i`` of ``seed`` (see module docstring)."""

    def __init__(self, seed: int, image_size: int, holdout: Iterable[str] = DEFAULT_HOLDOUT,
                 crop_scale: tuple[float, float] = (1.0, 3.0)) -> None:
        self.seed, self.image_size, self.crop_scale = seed, image_size, tuple(crop_scale)
        self.names = training_photos(holdout)
        if not self.names:
            raise ValueError("holdout: every catalogued photo is held out; leave some for training")
        self.photos = [load_photo(n) for n in self.names]
        for n, p in zip(self.names, self.photos):
            if min(p.shape[1:]) < image_size:
                raise ValueError(f"photo {n!r} is {tuple(p.shape[1:])}, smaller than image_size={image_size}")

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.photos)))
        return random_crop(self.photos[k], self.image_size, rng, self.crop_scale)


def photo_tiles(photo: torch.Tensor, tile: int) -> torch.Tensor:
    """Non-overlapping ``tile`` squares of ``photo``, centre-cropped to a multiple of ``tile``, row by row.

    Args:
        photo: (C, H, W) with H, W >= tile.
    Returns:
        (H // tile * W // tile, C, tile, tile).
    """
    c, h, w = photo.shape
    rows, cols = h // tile, w // tile
    if rows == 0 or cols == 0:
        raise ValueError(f"photo of {h} x {w} px holds no {tile} px tile")
    y, x = (h - rows * tile) // 2, (w - cols * tile) // 2
    crop = photo[:, y:y + rows * tile, x:x + cols * tile]
    return rearrange(crop, "c (rows t1) (cols t2) -> (rows cols) c t1 t2", t1=tile, t2=tile)


def held_out_tiles(holdout: Iterable[str], tile: int) -> torch.Tensor:
    """The tiles of every held-out photo, photo after photo: uint8 (N, 3, tile, tile)."""
    names = check_photo_names(holdout, "holdout")
    return torch.cat([photo_tiles(load_photo(n), tile) for n in names])


def untile(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of ``photo_tiles``: (rows * cols, C, t, t) -> (C, rows * t, cols * t)."""
    assert tiles.shape[0] == rows * cols, (tiles.shape, rows, cols)
    return rearrange(tiles, "(rows cols) c t1 t2 -> c (rows t1) (cols t2)", rows=rows, cols=cols)
