"""``fourm data shapes`` / ``fourm data show``: byte-identical shards for any worker count, metadata, safety."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

from fourm.cli import main
from fourm.data.shapes_world import WORLD_VERSION, WorldConfig, render_scene


def _shapes(out, *extra):
    return main(["data", "shapes", "--out", str(out), "--num-samples", "10", "--shard-size", "4", "--image-size", "32",
                 "--seed", "7", *extra])


def test_shards_identical_for_one_and_two_workers(tmp_path):
    assert _shapes(tmp_path / "w1", "--workers", "1") == 0
    assert _shapes(tmp_path / "w2", "--workers", "2") == 0
    files1 = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files1 == ["metadata.json", "shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert files1 == sorted(p.name for p in (tmp_path / "w2").iterdir()), "no temporary files left"
    for name in files1:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name

    meta = json.loads((tmp_path / "w1" / "metadata.json").read_text())
    assert meta["world_version"] == WORLD_VERSION and meta["seed"] == 7 and meta["config"]["image_size"] == 32
    assert (meta["num_samples"], meta["num_shards"], meta["shard_size"]) == (10, 3, 4)

    # Shard 2 holds samples 8 and 9, which decode to exactly what the generator gives.
    with tarfile.open(tmp_path / "w1" / "shard-00002.tar") as tf:
        names = tf.getnames()
        assert names[0] == "000008.caption.txt" and len(names) == 2 * 6
        member = lambda n: tf.extractfile(n).read()  # noqa: E731
        ref = render_scene(7, 9, WorldConfig(image_size=32))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(member("000009.rgb.png")))), ref["rgb"])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(member("000009.semseg.png")))), ref["semseg"])
        assert np.array_equal(np.load(io.BytesIO(member("000009.depth.npy"))), ref["depth"])
        assert member("000009.caption.txt").decode() == ref["caption"]
        assert json.loads(member("000009.det.json")) == ref["det"]


def test_refuses_to_mix_data_sets_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "shapes", "--out", str(out), "--num-samples", "6", "--shard-size", "2", "--image-size", "32"]) == 0
    assert _shapes(out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", str(out), "--num-samples", "3", "--shard-size", "2", "--image-size", "32",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-00000.tar", "shard-00001.tar"], "stale shards removed"


def test_bad_arguments(tmp_path, capsys):
    assert _shapes(tmp_path / "x", "--image-size", "50") == 2
    assert "image_size=50 is not allowed: use a multiple of 16 from 32 to 256" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", str(tmp_path / "y"), "--num-samples", "0"]) == 2
    assert "--num-samples=0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_show_writes_sheet(tmp_path):
    assert _shapes(tmp_path / "d") == 0
    assert main(["data", "show", str(tmp_path / "d"), "--out", str(tmp_path / "sheet.png"), "--num", "5"]) == 0
    img = Image.open(tmp_path / "sheet.png")
    assert img.format == "PNG" and img.size[0] == 2 * (4 * 128 + 12) + 24
    assert main(["data", "show", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2.png")]) == 2
