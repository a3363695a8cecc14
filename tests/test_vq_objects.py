"""Object identity in the rgb tokenizer: the scene-parser scores of ``fourm tokenizer eval`` and of
training's held-out evaluation, and the object-weighted loss (``loss.object_weight``)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import REPO
from fourm.cli import main as cli
from fourm.config import from_dict, load_config, to_dict
from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.data.image_sources import object_mask
from fourm.evaluation.objects import ParserScores
from fourm.evaluation.reconstruction import evaluate_tokenizers, render_batch
from fourm.training import checkpoint as ckpt
from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
from fourm.vq.config import TokenizerConfig
from fourm.vq.losses import object_weight_map
from fourm.vq.vqvae import ImageTokenizer

CONFIGS = REPO / "configs" / "tokenizers"
PARSER_KEYS = ("parser_f1", "parser_precision", "parser_recall", "shape_accuracy")


def tiny_cfg(tmp_path, *overrides: str) -> TokenizerTrainConfig:
    return load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml",
                       overrides=[f"out_dir={tmp_path / 'run'}", "steps=2", "checkpoint.every=2", *overrides])


def obj(colour: str, shape: str, box: list[float], size: str = "small") -> dict:
    return {"colour": colour, "shape": shape, "box": box, "size": size}


class _Parsed:  # attribute access, like ParsedObject
    def __init__(self, colour: str, shape: str, box: list[float], size: str = "small") -> None:
        self.colour, self.shape, self.box, self.size = colour, shape, box, size


# --- parser scores ------------------------------------------------------------------------------

def test_parser_scores_count_triples_and_shapes_of_matched_objects():
    box = [0.1, 0.5, 0.3, 0.7]
    gt = [[obj("red", "diamond", box), obj("blue", "triangle", [0.6, 0.6, 0.7, 0.7])]]
    s = ParserScores()
    # red object found at its place but as a circle (a blob), blue one vanished
    s.update([[_Parsed("red", "circle", box)]], gt)
    r = s.result()
    assert r["parser_f1"] == 0.0 and r["parser_recall"] == 0.0 and r["shape_accuracy"] == 0.0
    s2 = ParserScores()
    s2.update([[_Parsed("red", "diamond", box)]], gt)
    r2 = s2.result("_x")
    assert r2["parser_precision_x"] == 1.0 and r2["parser_recall_x"] == 0.5
    assert math.isclose(r2["parser_f1_x"], 2 / 3) and r2["shape_accuracy_x"] == 1.0
    # a wrong size spoils the triple but not the shape
    s3 = ParserScores()
    s3.update([[_Parsed("red", "diamond", box, size="large")]], gt)
    assert s3.result()["parser_f1"] == 0.0 and s3.result()["shape_accuracy"] == 1.0
    assert math.isnan(ParserScores().result()["shape_accuracy"])
    with pytest.raises(ValueError, match="2 parsed scenes but 1"):
        ParserScores().update([[], []], gt)


class _Identity(ImageTokenizer):  # decode(encode(x)) == x
    def encode(self, images):
        self._last = images
        return torch.zeros(images.shape[0], images.shape[-2] // 8, images.shape[-1] // 8, dtype=torch.long)

    def decode(self, tokens):
        return self._last


class _Blank(_Identity):  # decodes every image to flat grey: no object survives
    def decode(self, tokens):
        return torch.full_like(self._last, 128)


def test_eval_parser_scores_bound_reconstructions_by_originals():
    cfg = TokenizerConfig(modality="rgb", image_size=64)
    same = evaluate_tokenizers({"rgb": _Identity(cfg)}, seed=777, num_samples=6, batch_size=4, progress=False)["rgb"]
    for k in PARSER_KEYS:
        assert same[k] == same[k + "_original"]
    assert same["parser_f1_original"] > 0.8  # the parser reads clean 64 px scenes
    blank = evaluate_tokenizers({"rgb": _Blank(cfg)}, seed=777, num_samples=6, batch_size=4, progress=False)["rgb"]
    assert blank["parser_f1"] == 0.0 and blank["parser_recall"] == 0.0 and math.isnan(blank["shape_accuracy"])
    assert blank["parser_f1_original"] == same["parser_f1_original"]
    off = evaluate_tokenizers({"rgb": _Identity(cfg)}, seed=777, num_samples=2, progress=False, parser=False)["rgb"]
    assert not any(k.startswith(("parser", "shape")) for k in off)


def test_cli_eval_reports_parser_scores_and_no_parser_drops_them(tmp_path, capsys):
    tok = ImageTokenizer(tiny_cfg(tmp_path).tokenizer)
    tok.save_pretrained(tmp_path / "toks" / "rgb")
    out = tmp_path / "eval.json"
    args = ["tokenizer", "eval", "--tokenizers", str(tmp_path / "toks"), "--seed", "5", "--num-samples", "3"]
    assert cli(args + ["--json", str(out)]) == 0
    assert "scene parser on the original images" in capsys.readouterr().out
    rgb = json.loads(out.read_text())["rgb"]
    assert all(0 <= rgb[k] <= 1 for k in ("parser_f1", "parser_f1_original"))
    assert cli(args + ["--json", str(out), "--no-parser"]) == 0
    assert "parser_f1" not in json.loads(out.read_text())["rgb"]


# --- the object-weighted loss ---------------------------------------------------------------------

def test_object_weight_config_is_validated():
    with pytest.raises(ValueError, match="object_weight=2.0 applies to rgb only, not depth"):
        from_dict(TokenizerConfig, {"modality": "depth", "loss": {"object_weight": 2.0}})
    with pytest.raises(ValueError, match="object_weight=-1.0: must be a finite number >= 0"):
        from_dict(TokenizerConfig, {"modality": "rgb", "loss": {"object_weight": -1.0}})
    with pytest.raises(ValueError, match="data.source 'photos' does not have"):
        load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml",
                    overrides=["tokenizer.loss.object_weight=4", "data.source=photos", "data.holdout=[coins]"])
    assert not from_dict(TokenizerConfig, {"modality": "rgb", "loss": {"object_weight": 0.0}}).needs_objects


def test_object_weight_map_weights_objects_and_their_edges():
    objects = torch.zeros(1, 8, 8, dtype=torch.bool)  # ground
    objects[0, 3:5, 3:5] = True  # a 2 x 2 object
    w = object_weight_map(objects, 4.0)[0, 0]  # (8, 8)
    assert w.shape == (8, 8) and math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    ring = torch.zeros(8, 8, dtype=torch.bool)
    ring[2:6, 2:6] = True  # the object grown by one pixel
    assert torch.allclose(w[ring], 5 * w[~ring][0]) and torch.allclose(w[~ring], w[~ring][0])
    empty = object_weight_map(torch.zeros(2, 8, 8, dtype=torch.bool), 4.0)
    assert torch.equal(empty, torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="objects must be a bool"):
        object_weight_map(torch.zeros(2, 8, 8, dtype=torch.uint8), 4.0)
    # ShapesWorld's object pixels: semseg ids of a shape class (0 sky, 1 ground)
    scene = render_scene(3, 0, WorldConfig(image_size=32))
    mask = object_mask(scene)
    assert mask.dtype == torch.bool and mask.any() and torch.equal(mask, torch.as_tensor(scene["semseg"] >= 2))


def test_object_weighted_loss_punishes_object_errors_more():
    plain = ImageTokenizer(TokenizerConfig(modality="rgb", image_size=32))
    weighted = ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb", "image_size": 32,
                                                           "loss": {"object_weight": 4.0}}))
    b = render_batch(3, range(2), 32)
    target = torch.zeros(2, 3, 32, 32)
    objects = b["semseg"] >= 2  # (B, H, W): the shape classes
    on_objects = objects.unsqueeze(1).expand(-1, 3, -1, -1).float()  # (B, 3, H, W)
    w = object_weight_map(objects, 4.0)
    err_obj, err_bg = target + on_objects, target + (1 - on_objects)
    assert weighted.forward_loss(err_obj, target, w) > plain.forward_loss(err_obj, target)
    assert weighted.forward_loss(err_bg, target, w) < plain.forward_loss(err_bg, target)
    with pytest.raises(ValueError, match="the images' object pixels"):
        weighted(b["rgb"])
    with pytest.raises(ValueError, match="would be unused"):
        plain(b["rgb"], objects)
    with pytest.raises(ValueError, match="objects has shape"):
        weighted(b["rgb"], objects[:1])
    out = weighted(b["rgb"], objects)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in weighted.decoder.parameters())


def test_training_with_object_weight_and_parser_eval(tmp_path):
    cfg = tiny_cfg(tmp_path, "tokenizer.loss.object_weight=4", "val.samples=4")
    summary = train_tokenizer(cfg, progress=False)
    ev = summary.val
    assert 0 < ev["psnr"] < 100 and all(0 <= ev[k] <= 1 for k in ("parser_f1", "parser_f1_original"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "parser_f1" in [x for x in lines if x["split"] == "val"][-1]
    saved = ImageTokenizer.from_pretrained(summary.model_dir)
    assert saved.config.loss.object_weight == 4.0
    off = train_tokenizer(tiny_cfg(tmp_path / "b", "val.parser=false", "val.samples=4"), progress=False)
    assert "parser_f1" not in off.val


def test_training_with_object_weight_reads_semseg_from_shards(tmp_path):
    from fourm.data.shards import ShardWriter, encode_sample

    world = WorldConfig(image_size=32)
    with ShardWriter(tmp_path / "shards", shard_size=8) as w:
        for i in range(8):
            s = render_scene(0, i, world)
            w.write(f"{i:06d}", encode_sample({k: s[k] for k in ("rgb", "depth", "semseg", "det", "caption")}))
    cfg = tiny_cfg(tmp_path, "tokenizer.loss.object_weight=4", "data.source=shards",
                   f"data.shards={tmp_path / 'shards'}", "val.samples=2", "val.parser=false")
    summary = train_tokenizer(cfg, progress=False)
    assert math.isfinite(summary.last["loss"])


def test_resume_accepts_a_run_saved_before_object_weight_existed(tmp_path):
    cfg = tiny_cfg(tmp_path, "val.parser=false", "val.samples=2", "steps=4")
    train_tokenizer(cfg, until_step=2, progress=False)
    path = ckpt.latest_checkpoint(tmp_path / "run") / ckpt.STATE_NAME
    state = json.loads(path.read_text())
    del state["config"]["tokenizer"]["loss"]["object_weight"]  # as written by the code before the field
    path.write_text(json.dumps(state))
    meta = json.loads((path.parent / ckpt.META_NAME).read_text())
    del meta["files"]  # that code wrote no file hashes either (such a checkpoint is read in full instead)
    (path.parent / ckpt.META_NAME).write_text(json.dumps(meta))
    assert train_tokenizer(cfg, resume="auto", progress=False).start_step == 2


def test_objects_config_differs_from_rgb_64_in_loss_decoder_and_length_only():
    base = to_dict(load_config(TokenizerTrainConfig, CONFIGS / "rgb_64.yaml"))
    objs = to_dict(load_config(TokenizerTrainConfig, CONFIGS / "rgb_objects_64.yaml"))
    assert {k for k in base if base[k] != objs[k]} == {"tokenizer", "out_dir", "steps", "data"}
    assert {k for k in base["data"] if base["data"][k] != objs["data"][k]} == {"batch_size"}
    images = [c["steps"] * c["data"]["batch_size"] for c in (base, objs)]
    assert images[1] == 4 * images[0]  # 4x the images
    bt, ot = base["tokenizer"], objs["tokenizer"]
    assert {k for k in bt if bt[k] != ot[k]} == {"loss", "decoder"}
    assert ot["loss"]["object_weight"] > 0 and ot["quantizer"]["codebook_size"] == bt["quantizer"]["codebook_size"]
    assert ot["image_size"] // ot["downsample"] == 8
