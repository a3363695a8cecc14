"""The photo data source of rgb tokenizers (fourm/data/photos.py, ``data.source: photos``): the
catalogue loads offline, crops are uint8 of the right size, reproducible, never from held-out
photos; tiling round-trips exactly; bad configs are refused with the field named; the committed
photo tokenizer is the twin of the ShapesWorld one."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from fourm.config import ConfigError, from_dict, load_config, to_dict
from fourm.data.image_sources import ImageDataConfig, image_loader
from fourm.data.photos import COLOUR_PHOTOS, DEFAULT_HOLDOUT, PHOTOS, PhotoCrops, load_photo, photo_tiles, untile
from fourm.evaluation.reconstruction import photo_psnr
from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
from fourm.vq.vqvae import ImageTokenizer

CONFIGS = REPO / "configs" / "tokenizers"

OFFLINE_LOAD = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network blocked by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
from fourm.data.photos import PHOTOS, load_photo
for n in PHOTOS:
    p = load_photo(n)
    print(n, p.dtype, *p.shape)
try:
    import skimage.data
    skimage.data.eagle()   # documented as fetched over the network: must fail here
    print("eagle loaded")
except BaseException:  # under pytest, scikit-image raises pytest's Skipped
    print("eagle refused")
"""


def test_every_catalogued_photo_loads_with_no_network_and_no_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(SKIMAGE_DATADIR=str(tmp_path / "cache"), HOME=str(tmp_path), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", OFFLINE_LOAD], env=env, capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines.pop("eagle") == "refused"
    assert sorted(lines) == sorted(PHOTOS)
    for n, desc in lines.items():
        dtype, c, h, w = desc.split()
        assert dtype == "torch.uint8" and c == "3" and min(int(h), int(w)) >= 64, (n, desc)


def test_grey_photos_have_equal_channels_colour_ones_do_not():
    cam = load_photo("camera")
    assert torch.equal(cam[0], cam[1]) and torch.equal(cam[1], cam[2])
    ast = load_photo("astronaut")
    assert ast.shape == (3, 512, 512) and not torch.equal(ast[0], ast[1])
    assert "camera" not in COLOUR_PHOTOS and "astronaut" in COLOUR_PHOTOS


def test_crops_are_uint8_of_the_right_size_and_reproducible():
    a, b = PhotoCrops(seed=3, image_size=64), PhotoCrops(seed=3, image_size=64)
    other = PhotoCrops(seed=4, image_size=64)
    for i in (0, 1, 57, 2**40):
        x = a[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 64, 64)
        assert torch.equal(x, b[i])  # a fresh dataset, same seed: the same crop
        assert torch.equal(x, a[i])  # and asking twice does not advance anything
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], other[0])
    assert PhotoCrops(seed=0, image_size=32)[5].shape == (3, 32, 32)


def test_crops_never_come_from_held_out_photos():
    ds = PhotoCrops(seed=0, image_size=64)
    assert set(ds.names).isdisjoint(DEFAULT_HOLDOUT) and len(ds.names) == len(PHOTOS) - len(DEFAULT_HOLDOUT)
    # Hold out all but one photo and crop at scale 1 (no resize): every crop must be an exact
    # window of that photo, flipped or not. 16 px keeps the sums below 2^24, exact in float32.
    keep = "text"
    only = PhotoCrops(seed=1, image_size=16, holdout=[n for n in PHOTOS if n != keep], crop_scale=(1.0, 1.0))
    assert only.names == (keep,)
    photo = load_photo(keep)[:1].float()[None]  # (1, 1, H, W)
    for i in range(6):
        crop = only[i][:1].float()
        best = []
        for window in (crop, crop.flip(-1)):
            # squared distance to every window: |p|^2 - 2 p.c + |c|^2
            ssd = (F.conv2d(photo.pow(2), torch.ones(1, 1, 16, 16))
                   - 2 * F.conv2d(photo, window[None]) + window.pow(2).sum())
            best.append(float(ssd.min()))
        assert min(best) == 0.0, f"crop {i} is not a window of {keep!r}"


def test_loader_batches_depend_on_the_step_only():
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml",
                      overrides=["data.source=photos", "data.holdout=[astronaut,coffee]", "steps=4", "data.batch_size=3"])

    def batches(start: int, n: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
        return list(itertools.islice(image_loader(cfg.data, "rgb", 32, start, rank, world_size), n))

    full, resumed = batches(0, 4), batches(2, 2)
    assert full[0].dtype == torch.uint8 and full[0].shape == (3, 3, 32, 32)
    assert torch.equal(full[2], resumed[0]) and torch.equal(full[3], resumed[1])
    rank1 = batches(0, 1, rank=1, world_size=2)
    assert not torch.equal(rank1[0], full[0])  # another process, other crops


def test_tiles_round_trip_and_identity_scores_100():
    photo = torch.arange(3 * 150 * 200, dtype=torch.int64).reshape(3, 150, 200) % 251
    tiles = photo_tiles(photo, 64)  # 2 x 3 tiles of the centre 128 x 192
    assert tiles.shape == (6, 3, 64, 64)
    assert torch.equal(tiles[4], photo[:, 11 + 64:11 + 128, 4 + 64:4 + 128])  # row 1, column 1
    assert torch.equal(untile(tiles, 2, 3), photo[:, 11:139, 4:196])
    with pytest.raises(ValueError, match="no 64 px tile"):
        photo_tiles(photo[:, :50], 64)

    class Identity(ImageTokenizer):
        def encode(self, images):
            self._last = images
            return torch.zeros(images.shape[0], 8, 8, dtype=torch.long)

        def decode(self, tokens):
            return self._last

    cfg = load_config(TokenizerTrainConfig, CONFIGS / "rgb_photos_64.yaml")
    scores = photo_psnr(Identity(cfg.tokenizer), ["coins"])
    assert scores == {"coins": 100.0}


def test_config_errors_name_the_field_the_value_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"data.holdout: unknown photo 'astronot'; known: .*astronaut"):
        ImageDataConfig(source="photos", holdout=("astronot",))
    with pytest.raises(ValueError, match="data.holdout: coffee listed more than once"):
        ImageDataConfig(source="photos", holdout=("coffee", "coffee"))
    with pytest.raises(ValueError, match="holds all 19 photos"):
        ImageDataConfig(source="photos", holdout=PHOTOS)
    with pytest.raises(ValueError, match=r"data.crop_scale=\[2.0, 1.0\]"):
        ImageDataConfig(source="photos", crop_scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="data.num_scenes=10 is for data.source: generator"):
        ImageDataConfig(source="photos", num_scenes=10)
    with pytest.raises(ValueError, match="data.shards is set but data.source is 'photos'"):
        ImageDataConfig(source="photos", shards="x/*.tar")
    with pytest.raises(ConfigError, match="'photo' is not allowed; allowed: 'generator', 'shards', 'photos'"):
        from_dict(ImageDataConfig, {"source": "photo"}, path="data")
    with pytest.raises(ValueError, match="gives rgb images only, but tokenizer 'depth' stores depth"):
        load_config(TokenizerTrainConfig, CONFIGS / "depth_tiny.yaml", overrides=["data.source=photos"])
    ImageDataConfig(source="photos", holdout=("astronaut",), crop_scale=(1.0, 1.0))  # a valid one passes


def test_tiny_training_on_photos_runs_and_scores_the_held_out_tiles(tmp_path):
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml",
                      overrides=[f"out_dir={tmp_path}", "data.source=photos", "data.holdout=[coins]", "steps=2",
                                 "checkpoint.every=2"])
    summary = train_tokenizer(cfg, progress=False)
    assert 0 < summary.val["psnr"] < 100
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["data"]["source"] == "photos" and saved["data"]["holdout"] == ["coins"]


def _without_object_weight(cfg: dict) -> dict:
    cfg["loss"]["object_weight"] = None  # photographs have no object maps: the one setting the twin cannot share
    return cfg


def test_photo_twin_config_differs_from_the_bundled_rgb_config_in_data_only():
    shapes = to_dict(load_config(TokenizerTrainConfig, CONFIGS / "rgb_objects_64.yaml"))
    photos = to_dict(load_config(TokenizerTrainConfig, CONFIGS / "rgb_photos_64.yaml"))
    assert photos["data"]["source"] == "photos" and photos["data"]["holdout"] == list(DEFAULT_HOLDOUT)
    assert {k for k in shapes if shapes[k] != photos[k]} == {"data", "out_dir", "tokenizer"}
    assert _without_object_weight(shapes["tokenizer"]) == photos["tokenizer"]


def test_committed_photo_tokenizer_is_the_twin_of_the_shapes_one():
    photos = ImageTokenizer.from_pretrained(REPO / "tokenizers" / "photos64" / "rgb")
    shapes = ImageTokenizer.from_pretrained(REPO / "tokenizers" / "shapes64" / "rgb")
    assert to_dict(photos.config) == _without_object_weight(to_dict(shapes.config))
    assert (REPO / "tokenizers" / "photos64" / "rgb" / "model.safetensors").stat().st_size < 6_000_000
    x = load_photo("coins")[:, :64, :64][None]
    assert photos.encode(x).shape == (1, 8, 8)
