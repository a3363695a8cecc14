"""Generation with the bundled tokenizers: raw inputs, decoding, PNG grids, text and box edits, the CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.data.shapes_world import render_scene
from fourm.generation import Chain, Sampler, Target, add_boxes, decode_state, draw_boxes, remove_boxes, render_grid, save_png
from fourm.generation import commands
from fourm.generation.decode import class_colour, text_tile
from fourm.masking.spans import EOS_ID, sentinel_id
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.models import FourM, FourMConfig
from fourm.vq.boxes import boxes_to_ids
from fourm.vq.loading import load_tokenizers

REPO = Path(__file__).resolve().parents[1]
BOX = {"box": [0.1, 0.2, 0.4, 0.6], "class": "circle"}


@pytest.fixture(scope="module")
def toks():
    return load_tokenizers(REPO / "tokenizers" / "shapes64")


@pytest.fixture(scope="module")
def model(toks) -> FourM:
    reg = shapes_world_modalities(text_vocab=toks["text"].vocab_size, caption_length=24, det_length=24)
    reg = reg.subset(["tok_rgb", "tok_depth", "tok_semseg", "caption", "det"])
    return FourM(FourMConfig(modalities=reg, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)).eval()


@pytest.fixture(scope="module")
def scene():
    return render_scene(0, 5)


def test_raw_inputs_are_tokenized_like_the_data_pipeline(model, toks, scene):
    s = Sampler(model, toks)
    state = s.prepare({"rgb": scene["rgb"], "depth": scene["depth"], "semseg": scene["semseg"],
                       "caption": scene["caption"], "det": scene["det"]}).state
    rgb_chw = torch.from_numpy(scene["rgb"]).permute(2, 0, 1)[None]
    assert torch.equal(state["tok_rgb"]["tokens"], toks["rgb"].encode(rgb_chw).reshape(1, 64))
    assert torch.equal(state["tok_depth"]["tokens"], toks["depth"].encode(torch.from_numpy(scene["depth"])[None]).reshape(1, 64))
    assert torch.equal(state["tok_semseg"]["tokens"], toks["semseg"].encode(torch.from_numpy(scene["semseg"])[None]).reshape(1, 64))
    cap = toks["text"].encode(scene["caption"])[:24] + [EOS_ID]
    assert s.prepare({"caption": scene["caption"]}).state["caption"]["tokens"][0, : len(cap)].tolist()[: len(cap) - 1] == cap[:-1]
    det = boxes_to_ids(scene["det"], toks["text"]) + [EOS_ID]
    assert state["det"]["tokens"][0, : len(det)].tolist() == det and int(state["det"]["is_input"].sum()) == len(det)
    # a PIL image and a (3, H, W) tensor give the same tokens as the (H, W, 3) array
    pil = s.prepare({"rgb": Image.fromarray(scene["rgb"])}).state["tok_rgb"]["tokens"]
    chw = s.prepare({"rgb": rgb_chw[0]}).state["tok_rgb"]["tokens"]
    assert torch.equal(pil, state["tok_rgb"]["tokens"]) and torch.equal(chw, pil)


def test_generate_and_decode_every_modality(model, toks, scene, tmp_path):
    s = Sampler(model, toks)
    out = s.generate({"rgb": scene["rgb"], "caption": [scene["caption"], "a red ball"]},
                     [Target("tok_depth", steps=2), Target("tok_semseg", steps=2, cfg_scale=2.0),
                      Target("det", max_tokens=12), Target("caption", max_tokens=10)], seed=0)
    dec = out.decode(toks)
    assert set(dec) == {"tok_rgb", "tok_depth", "tok_semseg", "caption", "det"}
    assert dec["tok_rgb"][0].shape == (64, 64, 3) and dec["tok_rgb"][0].dtype == np.uint8
    assert dec["tok_depth"][1].shape == (64, 64) and dec["tok_depth"][1].dtype == np.float32
    assert dec["tok_semseg"][0].dtype == np.uint8 and int(dec["tok_semseg"][0].max()) < 6
    assert all(isinstance(c, str) for c in dec["caption"]) and all(isinstance(d, list) for d in dec["det"])
    grid = render_grid(dec, model.specs, size=64, row_labels=["a", "b"])
    assert grid.size[1] > 2 * 64 and grid.size[0] > 5 * 64
    path = save_png(grid, tmp_path / "sub" / "grid.png")
    assert Image.open(path).size == grid.size and not list(path.parent.glob(".*.tmp"))


def test_decoding_tokens_matches_the_tokenizer(model, toks, scene):
    s = Sampler(model, toks)
    state = s.prepare({"rgb": scene["rgb"]}).state
    dec = decode_state(state, model.specs, toks)
    want = toks["rgb"].decode(state["tok_rgb"]["tokens"].reshape(1, 8, 8))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(dec["tok_rgb"][0], want)
    # a partly known grid is shown as tokens (-1 = unknown), not decoded
    half = {"tok_rgb": {"tokens": state["tok_rgb"]["tokens"], "is_input": torch.arange(64)[None] < 32}}
    grid = decode_state(half, model.specs, toks)["tok_rgb"][0]
    assert grid.shape == (8, 8) and (grid[4:] == -1).all()


def test_box_overlay_and_text_tile():
    img = draw_boxes(np.zeros((64, 64, 3), np.uint8), [BOX], size=100, labels=False)
    assert img.size == (100, 100)
    assert img.getpixel((10, 40)) == class_colour("circle")  # left edge of the box
    assert img.getpixel((50, 10)) == (0, 0, 0)  # outside the box
    tile = np.asarray(text_tile("word " * 200, 64))
    assert tile.shape == (64, 64, 3) and (tile < 128).any()


def test_add_and_remove_boxes(model, toks, scene):
    s = Sampler(model, toks)
    start = s.prepare({"det": scene["det"]})
    added = add_boxes(start, [BOX], toks)
    want = boxes_to_ids(list(scene["det"]) + [BOX], toks["text"]) + [EOS_ID]
    assert added.state["det"]["tokens"][0, : len(want)].tolist() == want
    removed = remove_boxes(added, "circle", toks)
    left = [b for b in list(scene["det"]) + [BOX] if b["class"] != "circle"]
    want = boxes_to_ids(left, toks["text"]) + [EOS_ID]
    assert removed.state["det"]["tokens"][0].tolist()[: len(want)] == want
    assert int(removed.state["det"]["is_input"].sum()) == len(want)
    # more=True leaves the end open: a later det target keeps the known boxes and may add more
    out = Chain(s).add_boxes([BOX], more=True).then(Target("det", max_tokens=8)).run({"rgb": scene["rgb"]}, seed=0)
    box_ids = boxes_to_ids([BOX], toks["text"])
    assert out.sequences("det")[0][:5] == box_ids
    assert out.spans["det"][0][0] == sentinel_id(1)


def test_caption_edit_with_a_sentinel_is_continued(model, toks, scene):
    s = Sampler(model, toks)
    prefix = "a large red circle"
    out = (Chain(s).then(Target("caption", max_tokens=6)).edit(caption=prefix + " [S_1]")
           .then(Target("caption", max_tokens=6)).run({"rgb": scene["rgb"]}, seed=3))
    ids = toks["text"].encode(prefix)
    assert out.sequences("caption")[0][: len(ids)] == ids
    assert out.decode(toks, ["caption"])["caption"][0].startswith(prefix)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["generate", *argv])
    return args.func(args)


def test_generate_command(model, tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000010"  # a training out_dir: its newest checkpoint
    model.save_pretrained(ckpt / "model")
    (ckpt / "meta.json").write_text("{}")
    out = tmp_path / "gen"
    rc = _run_cli(["--model", str(tmp_path / "run"), "--index", "3", "--from-scene", "rgb,caption",
                   "--target", "det:max_tokens=10", "--target", "tok_depth:steps=2,cfg_scale=2,temperature_schedule=onex:0.5:0.5",
                   "--target", "rgb:steps=2,guide=caption*3,guide=det*-1", "--num-samples", "2", "--out", str(out),
                   "--json", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((out / "result.json").read_text())
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert [t["modality"] for t in report["targets"]] == ["det", "tok_depth", "tok_rgb"]
    assert report["targets"][2]["guidance"] == [{"modalities": ["caption"], "weight": 3.0},
                                                {"modalities": ["det"], "weight": -1.0}]
    assert len(report["samples"]) == 2 and isinstance(report["samples"][0]["det"], list)
    assert len(report["samples"][0]["tok_depth_tokens"]) == 64
    assert Image.open(out / "grid.png").size[0] > 5 * 128
    assert sorted(p.name for p in out.glob("tok_*.png")) == ["tok_depth_0.png", "tok_depth_1.png", "tok_rgb_0.png",
                                                           "tok_rgb_1.png"]
    # a file condition gives the same result as the scene it came from
    img = tmp_path / "scene.png"
    Image.fromarray(render_scene(0, 3)["rgb"]).save(img)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run_cli(["--model", str(ckpt), "--input", f"rgb={img}", "--target", "caption:max_tokens=5",
                     "--out", str(a)]) == 0
    assert _run_cli(["--model", str(ckpt / "model"), "--index", "3", "--target", "caption:max_tokens=5",
                     "--out", str(b)]) == 0
    ra, rb = (json.loads((d / "result.json").read_text())["samples"] for d in (a, b))
    assert ra == rb


@pytest.mark.parametrize("argv,match", [
    (["--target", "caption:stepz=3"], "unknown setting 'stepz'"),
    (["--target", "caption:steps=3"], "steps/schedule apply to image"),
    (["--target", "tok_rgb", "--input", "rbg=x.png"], "unknown input 'rbg'"),
    ([], "at least one --target"),
])
def test_generate_command_errors(model, tmp_path, capsys, argv, match):
    model.save_pretrained(tmp_path / "m")
    assert _run_cli(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), *argv]) == 2
    assert match in capsys.readouterr().err


def test_rgb_pixel_input_takes_images_as_stored():
    """A model with the rgb pixel modality: uint8 rgb (channels last or first, PIL) is normalised as in training."""
    from fourm.generation.inputs import build_state
    from fourm.data.shapes_modalities import shapes_world_modalities
    from fourm.modalities import pixels_to_float

    specs = {s.name: s for s in shapes_world_modalities(image_size=64, downsample=8).subset(["rgb", "tok_rgb"])}
    hwc = render_scene(0, 3)["rgb"]  # (64, 64, 3) uint8
    want = torch.from_numpy(hwc).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    for value in (hwc, torch.from_numpy(hwc).permute(2, 0, 1), Image.fromarray(hwc), want):
        state = build_state(specs, {"rgb": value}, None, "cpu")
        assert set(state) == {"rgb"}
        assert torch.equal(state["rgb"]["tokens"], want) and state["rgb"]["is_input"].all()
    assert torch.equal(pixels_to_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match=r"'rgb' takes pixels \(B, 3, 64, 64\)"):
        build_state(specs, {"rgb": hwc[:32]}, None, "cpu")


def test_rgb_means_pixels_as_input_and_tokens_as_target():
    """With both the rgb pixel input and tok_rgb: "rgb" conditions through the pixels, Target("rgb") makes tok_rgb."""
    reg = shapes_world_modalities(image_size=64, downsample=8, text_vocab=4312, caption_length=64, det_length=24)
    model = FourM(FourMConfig(modalities=reg.subset(["rgb", "tok_rgb", "caption"]), dim=32, encoder_depth=1,
                              decoder_depth=1, num_heads=2), seed=0).eval()
    s = Sampler(model, load_tokenizers(REPO / "tokenizers" / "shapes64"), progress=False)
    assert s.resolve("rgb").modality == "tok_rgb"
    out = s.generate({"rgb": render_scene(0, 3)["rgb"]}, [Target("rgb", steps=2)], seed=0)
    assert out.generated == ("tok_rgb",) and set(out.state) == {"rgb", "tok_rgb"}
    assert out.state["rgb"]["tokens"].dtype == torch.float32  # the pixels, normalised


def test_token_modality_name_takes_images_as_stored(toks):
    """Images under tok_rgb / tok_depth themselves are encoded (how a pixel-rgb model gets rgb tokens to in-paint)."""
    from fourm.generation.inputs import build_state

    reg = shapes_world_modalities(image_size=64, downsample=8)
    specs = {s.name: s for s in reg.subset(["rgb", "tok_rgb", "tok_depth"])}
    scene = render_scene(0, 3)
    chw = torch.from_numpy(scene["rgb"]).permute(2, 0, 1)[None]
    want = toks["rgb"].encode(chw).reshape(1, 64)
    for value in (scene["rgb"], chw, Image.fromarray(scene["rgb"])):
        assert torch.equal(build_state(specs, {"tok_rgb": value}, toks, "cpu")["tok_rgb"]["tokens"], want)
    depth = build_state(specs, {"tok_depth": scene["depth"]}, toks, "cpu")["tok_depth"]["tokens"]
    assert torch.equal(depth, toks["depth"].encode(torch.from_numpy(scene["depth"])[None]).reshape(1, 64))
    ids = build_state(specs, {"tok_rgb": want.int()}, toks, "cpu")["tok_rgb"]["tokens"]  # int ids stay ids
    assert torch.equal(ids, want)
