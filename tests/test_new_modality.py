"""A new image modality with its own tokenizer, end to end, with no code change.

Surface normals stand in for any new modality: the raw shards get a ``normal`` field (here a copy
of the ShapesWorld depth map, a positive float map), and from there only configs and commands:

1. ``fourm tokenizer train`` a ``normal`` tokenizer stored like depth (``normalize.kind: depth``)
   on those shards;
2. ``fourm tokenize`` with a tokenizer set holding it (``normal/``) and the text tokenizer: the
   token shards get ``tok_normal`` (raw field ``normal`` -> tokenizer ``normal`` -> token field
   ``tok_normal``, the spec's naming convention);
3. ``fourm train`` a FourM whose config lists ``tok_normal`` beside rgb pixels and captions;
4. generation: rgb -> ``tok_normal`` decoded by the normal tokenizer into float maps, raw normals
   in through their raw field, and ``fourm generate`` writing the new modality's images.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import REPO
from fourm.cli import main as cli
from fourm.data.shard_reader import ShardDataset
from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.data.shards import ShardWriter, encode_sample
from fourm.generation import Sampler, Target
from fourm.models import FourM
from fourm.vq.loading import load_tokenizers

SIZE = 32  # configs/tokenizers/depth_tiny.yaml's image size: 4 x 4 tokens of 64 codes
MODALITIES = ("modalities={rgb: {kind: pixels, grid: [4, 4], patch_size: 8, decoder: false}, "
              "tok_normal: {kind: image, vocab_size: 64, grid: [4, 4]}, "
              "caption: {kind: sequence, vocab_size: 4312, max_length: 64}}")
MASKING = ("masking={modalities: [rgb, tok_normal, caption], num_input_tokens: 16, num_target_tokens: 16, "
           "components: [{input_alphas: {rgb: 1.0, tok_normal: 1.0, caption: 1.0}, "
           "target_alphas: {tok_normal: 1.0, caption: 1.0}}]}")


def write_raw_shards(folder: Path, n: int) -> None:
    """ShapesWorld samples plus a ``normal`` field (a float map: the depth, copied)."""
    with ShardWriter(folder, shard_size=n // 2) as w:
        for i in range(n):
            s = render_scene(0, i, WorldConfig(image_size=SIZE))
            fields = {k: s[k] for k in ("rgb", "depth", "semseg", "caption", "det")}
            w.write(f"{i:06d}", encode_sample({**fields, "normal": s["depth"].copy()}))


def test_a_new_modality_goes_from_raw_shards_to_generation_without_code(tmp_path, capsys):
    raw, toks, tok_shards, run = tmp_path / "raw", tmp_path / "toks", tmp_path / "tok", tmp_path / "run"
    write_raw_shards(raw, 16)

    # 1. its tokenizer, trained by the single trainer on the new raw field
    assert cli(["tokenizer", "train", str(REPO / "configs" / "tokenizers" / "depth_tiny.yaml"),
                f"out_dir={tmp_path / 'normal_tok'}", "tokenizer.modality=normal", "tokenizer.normalize.kind=depth",
                "data.source=shards", f"data.shards={raw}", "data.batch_size=4", "val=null", "steps=2",
                "logging.progress=false", "--no-progress"]) == 0
    assert "trained normal tokenizer: steps 0..2" in capsys.readouterr().out
    shutil.copytree(tmp_path / "normal_tok" / "tokenizer", toks / "normal")
    shutil.copytree(REPO / "tokenizers" / "shapes64" / "text", toks / "text")
    tokenizers = load_tokenizers(toks)
    assert sorted(tokenizers) == ["normal", "text"] and tokenizers["normal"].kind == "depth"

    # 2. token shards: raw normal -> tok_normal, captions -> tok_caption, rgb pixels kept
    assert cli(["tokenize", "--input", str(raw), "--output", str(tok_shards), "--tokenizers", str(toks),
                "--keep", "rgb", "--no-progress"]) == 0
    meta = json.loads((tok_shards / "metadata.json").read_text())
    assert meta["fields"]["tok_normal"] == 64 and meta["fields"]["rgb"] == "raw"
    raw_by_key = {s["__key__"]: s for s in ShardDataset(raw)}
    for s in ShardDataset(tok_shards):
        assert s["tok_normal"].dtype == torch.int16 and s["tok_normal"].shape == (4, 4)
        assert torch.equal(s["tok_normal"].long(), tokenizers["normal"].encode(raw_by_key[s["__key__"]]["normal"]))

    # 3. a FourM with the new modality, from the config alone
    capsys.readouterr()
    assert cli(["train", str(REPO / "configs" / "fm" / "shapes_tiny.yaml"), f"out_dir={run}",
                f"data.train.shapes.shards={tok_shards}", "data.batch_size=4", "steps=3", "optim.warmup_steps=1",
                "threads=1", "logging.progress=false", MODALITIES, MASKING, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("loss/tok_normal" in x for x in logged)

    # 4. generation: rgb -> normals (float maps through the normal tokenizer), and raw normals in
    model = FourM.from_pretrained(run / "model")
    assert model.specs["tok_normal"].tokenizer == "normal" and model.specs["tok_normal"].raw_field == "normal"
    scene = render_scene(1, 0, WorldConfig(image_size=SIZE))
    sampler = Sampler(model, tokenizers)
    out = sampler.generate({"rgb": scene["rgb"]}, [Target("tok_normal", steps=2)], seed=0)
    normal = out.decode(tokenizers)["tok_normal"][0]
    assert normal.shape == (SIZE, SIZE) and normal.dtype == np.float32 and (normal > 0).all()
    back = sampler.generate({"normal": scene["depth"]}, [Target("caption", max_tokens=8)], seed=0)
    assert torch.equal(back.state["tok_normal"]["tokens"][0].reshape(4, 4), tokenizers["normal"].encode(scene["depth"]))
    assert isinstance(back.decode(tokenizers)["caption"][0], str)
    Image.fromarray(scene["rgb"]).save(tmp_path / "scene.png")
    assert cli(["generate", "--model", str(run), "--tokenizers", str(toks), "--input", f"rgb={tmp_path / 'scene.png'}",
                "--target", "tok_normal:steps=2", "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "tok_normal_0.png").is_file()
