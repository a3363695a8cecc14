"""The main job runs end to end on a small split."""
from __future__ import annotations

import json

from PIL import Image

from fourm.cli import main


def test_demo_writes_split_and_sheet(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--num-samples", "20", "--workers", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_samples"] == 20 and summary["num_shards"] == 1
    assert summary["world_config"]["image_size"] == 64
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.width > 256 and im.height > 256
    assert "contact sheet:" in capsys.readouterr().out
