"""Contact sheet: layout, size, tiles that show the right pixels, colour maps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fourm.data.contact_sheet import colorize_depth, colorize_semseg, render_contact_sheet
from fourm.data.shapes_world import FAR_DEPTH, SEMSEG_CLASSES, WorldConfig, render_scene


def test_sheet_size_and_tiles(tmp_path):
    samples = [render_scene(0, i) for i in range(3)]
    path = render_contact_sheet(samples, tmp_path / "sub" / "sheet.png", columns=2, tile_size=128)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] == 2 * (4 * 128 + 3 * 4) + 3 * 8
    one_row = np.asarray(Image.open(render_contact_sheet(samples[:2], tmp_path / "b.png", columns=2)))
    assert img.shape[0] > one_row.shape[0], "a second row of samples makes the sheet taller"
    # The rgb tile of the first sample is its image upscaled 2x (nearest): find it in the sheet.
    want = np.kron(samples[0]["rgb"], np.ones((2, 2, 1), np.uint8))
    hits = [(y, x) for y in range(0, 60) for x in range(0, 20) if np.array_equal(img[y:y + 128, x:x + 128], want)]
    assert hits, "the first rgb tile is not in the sheet"
    y, x = hits[0]
    sem = colorize_semseg(samples[0]["semseg"])
    assert np.array_equal(img[y:y + 128, x + 2 * (128 + 4):x + 2 * (128 + 4) + 128], np.kron(sem, np.ones((2, 2, 1), np.uint8)))
    assert not list(tmp_path.glob("sub/.*")), "no temporary file left behind"


def test_sheet_accepts_tensor_layout_and_missing_fields(tmp_path):
    import torch

    s = render_scene(1, 0, WorldConfig(image_size=32))
    sample = {"rgb": torch.from_numpy(s["rgb"]).permute(2, 0, 1), "depth": torch.from_numpy(s["depth"]), "caption": s["caption"]}
    path = render_contact_sheet([sample], tmp_path / "t.png", columns=1, tile_size=64)
    assert Image.open(path).size[0] == 4 * 64 + 3 * 4 + 2 * 8


def test_colour_maps():
    depth = np.array([[2.0, 5.0, 20.0, FAR_DEPTH]], np.float32)
    lum = colorize_depth(depth).astype(float) @ np.array([0.3, 0.6, 0.1])
    assert np.all(np.diff(lum[0]) < 0), "nearer is brighter"
    sem = colorize_semseg(np.arange(len(SEMSEG_CLASSES))[None])
    assert len({tuple(c) for c in sem[0]}) == len(SEMSEG_CLASSES), "one colour per class"


def test_sheet_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="samples is empty"):
        render_contact_sheet([], tmp_path / "x.png")
