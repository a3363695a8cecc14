"""``fourm tokenize`` skips and counts the samples it cannot tokenise (``--strict`` stops at the
first) and never leaves a partial shard. Tiny tokenizers (configs/tokenizers/*_tiny.yaml, 32 px)
and the bundled text tokenizer; raw shards written here member by member."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from fourm.cli import main
from fourm.config import load_config
from fourm.data.pretokenize import BadSampleError, tokenize_shards
from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.data.shard_reader import ShardDataset
from fourm.data.shards import encode_sample
from fourm.training.tokenizer_task import TokenizerTrainConfig
from fourm.vq.text import TextTokenizer
from fourm.vq.vqvae import ImageTokenizer

FIELDS = ("rgb", "depth", "semseg", "det", "caption")


def scene(i: int, size: int = 32) -> dict:
    s = render_scene(0, i, WorldConfig(image_size=size))
    return {k: s[k] for k in FIELDS}


def bad_samples() -> dict[str, tuple[str, dict]]:
    """key -> (reason, raw fields) of samples that cannot be tokenised."""
    grey, nan, ids, det, big = scene(10), scene(11), scene(12), scene(13), scene(14, size=64)
    grey["rgb.png"] = grey.pop("rgb")[..., 0]  # a grey PNG where rgb is expected
    nan["depth"] = nan["depth"].copy()
    nan["depth"][3, 4] = np.nan
    ids["semseg"] = np.full_like(ids["semseg"], 200)  # class 200 of 6
    det["det"] = [{"class": "circle"}]  # a box without coordinates
    return {"000010": ("bad_image", grey), "000011": ("bad_image", nan), "000012": ("bad_image", ids),
            "000013": ("bad_sequence", det), "000014": ("image_size", big),
            "../000015": ("bad_key", scene(15)), "/abs/000016": ("bad_key", scene(16))}


def write_raw(path: Path, samples: dict[str, dict]) -> None:
    """One raw shard, member by member (ShardWriter refuses the bad keys that a foreign tar may hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, fields in samples.items():
            for suffix, data in sorted(encode_sample(fields).items()):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    toks = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for m in ("rgb", "depth", "semseg"):
            cfg = load_config(TokenizerTrainConfig, REPO / "configs" / "tokenizers" / f"{m}_tiny.yaml",
                              overrides=["out_dir=unused"])
            toks[m] = ImageTokenizer(cfg.tokenizer).eval()
    toks["text"] = TextTokenizer.from_pretrained(REPO / "tokenizers" / "shapes64" / "text")
    return toks


@pytest.fixture
def raw(tmp_path) -> Path:
    good = {f"{i:06d}": scene(i) for i in range(4)}
    write_raw(tmp_path / "raw" / "shard-00000.tar", good)
    write_raw(tmp_path / "raw" / "shard-00001.tar", {**{k: v for k, (_, v) in bad_samples().items()},
                                                    "000017": scene(17)})
    return tmp_path / "raw"


def test_bad_samples_are_skipped_and_counted(tmp_path, raw, tokenizers):
    out = tokenize_shards(raw, tmp_path / "tok", tokenizers, batch_size=3, progress=False)
    want = {}
    for reason, _ in bad_samples().values():
        want[reason] = want.get(reason, 0) + 1
    assert out["bad_samples"] == want == {"bad_image": 3, "bad_sequence": 1, "image_size": 1, "bad_key": 2}
    assert out["samples"] == 5 and len(out["written"]) == 2 and out["unreadable"] == 0
    assert sorted(s["__key__"] for s in ShardDataset(tmp_path / "tok")) == ["000000", "000001", "000002", "000003",
                                                                             "000017"]
    examples = "\n".join(out["examples"])
    assert "'000010'" in examples and "rgb must have shape (B, 3, H, W)" in examples
    assert "depth contains NaN" in examples and "semseg class ids must lie in [0, 5], got values in [200, 200]" in examples
    meta = json.loads((tmp_path / "tok" / "metadata.json").read_text())
    assert meta["bad_samples"] == out["bad_samples"] and sorted(meta["shard_files"]) == ["shard-00000.tar",
                                                                                          "shard-00001.tar"]


def test_strict_stops_at_the_first_bad_sample_and_leaves_no_partial_shard(tmp_path, raw, tokenizers):
    with pytest.raises(BadSampleError, match=r"sample '000010' of '.*shard-00001.tar': bad_image: rgb must have shape "
                                             r".*\(drop --strict to skip and count such samples\)"):
        tokenize_shards(raw, tmp_path / "tok", tokenizers, batch_size=3, progress=False, strict=True)
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["shard-00000.tar"]  # the good shard; nothing else


def test_the_cli_reports_the_bad_samples(tmp_path, raw, tokenizers, capsys):
    folder = tmp_path / "toks"
    for name, tok in tokenizers.items():
        tok.save_pretrained(folder / name)
    args = ["tokenize", "--input", str(raw), "--output", str(tmp_path / "tok"), "--tokenizers", str(folder),
            "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["samples"] == 5 and report["bad_samples"] == 7 and report["bad_by_reason"]["bad_key"] == 2
    assert main([*args[:4], str(tmp_path / "tok2"), *args[5:], "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: sample '000010'") and "Traceback" not in "\n".join(err)
