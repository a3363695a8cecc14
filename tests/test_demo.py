"""The main job (``fourm demo``) runs end to end: data part alone, and any-to-any with a model."""
from __future__ import annotations

import json

from PIL import Image

from fourm.cli import main
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.models import FourM, FourMConfig


def test_demo_world_only_writes_split_and_sheet(tmp_path, capsys):
    rc = main(["demo", "--world-only", "--out", str(tmp_path), "--world-samples", "20", "--workers", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    world = summary["world"]
    assert world["num_samples"] == 20 and world["num_shards"] == 1 and world["world_config"]["image_size"] == 64
    assert "any_to_any" not in summary
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.width > 256 and im.height > 256
    assert "contact sheet:" in capsys.readouterr().out


def test_demo_any_to_any_with_a_model(tmp_path, capsys):
    # a tiny random model with the bundled modalities stands in for models/shapes_bundled
    reg = shapes_world_modalities(image_size=64, downsample=8, text_vocab=4312, caption_length=64, det_length=24)
    FourM(FourMConfig(modalities=reg, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2), seed=0).save_pretrained(
        tmp_path / "model")
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--model", str(tmp_path / "model"), "--num-samples", "2",
               "--grid-scenes", "1", "--world-samples", "16", "--workers", "1"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["any_to_any"]["num_scenes"] == 2
    table = (out / "benchmark.md").read_text()
    for task in ("semseg", "depth", "caption", "det"):
        assert task in table
    scores = json.loads((out / "benchmark.json").read_text())
    assert scores["num_samples"] == 2
    with Image.open(out / "any_to_any.png") as im:
        assert im.width > 8 * 64  # ground truth plus one column per direction
    assert "any-to-any grid" in capsys.readouterr().out


def test_demo_without_model_says_where_it_should_be(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "missing")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--model" in err and "missing" in err and "--world-only" in err
    assert not (tmp_path / "o").exists()
