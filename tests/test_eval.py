"""The benchmark: its scores on hand-made predictions, the tokenizer bound on real scenes, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from fourm.cli import main
from fourm.data.shapes_world import parse_caption, render_scene
from fourm.evaluation.dense import depth_scores, semseg_scores
from fourm.evaluation.detection import average_precision, detection_map
from fourm.evaluation.objects import layout_scores, object_triples, triple_f1
from fourm.generation.target import Target
from fourm.evaluation.benchmark import TASKS, DecodingSettings, box_scores, parse_tasks, run_benchmark
from fourm.evaluation.report import TABLE_METRICS, task_title
from fourm.masking.spans import EOS_ID, sentinel_id
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.models import FourM, FourMConfig
from fourm.vq.boxes import boxes_to_ids
from fourm.vq.loading import load_tokenizers

TOKENIZERS = REPO / "tokenizers" / "shapes64"


def tiny_model(seed: int = 0, pixels: bool = False) -> FourM:
    """A random FourM whose modalities fit the committed 64 px tokenizers (``pixels``: with rgb pixel input)."""
    reg = shapes_world_modalities(image_size=64, downsample=8, text_vocab=4312, caption_length=64, det_length=24)
    reg = reg.subset(["rgb"] * pixels + ["tok_rgb", "tok_depth", "tok_semseg", "caption", "det"])
    return FourM(FourMConfig(modalities=reg, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2), seed=seed).eval()


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return load_tokenizers(TOKENIZERS)


@pytest.fixture(scope="module")
def model() -> FourM:
    return tiny_model()


@pytest.fixture(scope="module")
def result(model, tokenizers):
    """Every task on 6 scenes in batches of 4 (so the grid of 5 scenes spans two batches)."""
    return run_benchmark(model, tokenizers, seed=7, num_samples=6, batch_size=4, grid_scenes=5, progress=False)


# ------------------------------------------------------------------------------ scores
def test_semseg_scores():
    gt = np.zeros((8, 8), np.uint8)
    gt[4:] = 1
    gt[5:7, 2:4] = 3
    assert semseg_scores([gt, gt], [gt, gt])["miou"] == 1.0
    swapped = np.where(gt == 0, 1, np.where(gt == 1, 0, 2))  # sky <-> ground, the object becomes another class
    out = semseg_scores([swapped], [gt])
    assert out["miou"] == 0.0 and out["pixel_accuracy"] == 0.0
    half = gt.copy()
    half[5:7, 2:3] = 1  # half of the object lost to ground: object IoU 1/2, ground IoU 28/30
    assert semseg_scores([half], [gt])["miou"] == pytest.approx((1 + 28 / 30 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="class ids must lie in"):
        semseg_scores([gt + 10], [gt])


def test_depth_scores():
    gt = np.linspace(1, 50, 64, dtype=np.float32).reshape(8, 8)
    valid = np.ones((8, 8), bool)
    valid[:2] = False
    same = depth_scores([gt], [gt], [valid])
    assert same["abs_rel"] == 0.0 and same["delta1"] == 1.0
    double = depth_scores([gt * 2], [gt], [valid])
    assert double["abs_rel"] == pytest.approx(1.0) and double["delta1"] == 0.0
    sky_only_wrong = gt.copy()
    sky_only_wrong[:2] = 1000.0  # invalid pixels are not scored
    assert depth_scores([sky_only_wrong], [gt], [valid])["abs_rel"] == 0.0


BOXES = [{"box": [0.1, 0.5, 0.3, 0.7], "class": "circle"}, {"box": [0.5, 0.4, 0.9, 0.8], "class": "square"}]


def test_detection_map():
    assert detection_map([BOXES], [BOXES])["map"] == 1.0
    wrong_class = [dict(b, **{"class": "triangle"}) for b in BOXES]
    assert detection_map([wrong_class], [BOXES])["map"] == 0.0
    shifted = [{"box": [b["box"][0] + 0.15, *b["box"][1:]], "class": b["class"]} for b in BOXES[:1]]
    assert detection_map([shifted], [BOXES[:1]])["map"] == 0.0  # IoU 0.2 / 0.35 < 0.5
    # a confident hit and an unsure duplicate: the duplicate comes after full recall, AP stays 1
    dup = [dict(BOXES[0], score=0.9), dict(BOXES[0], score=0.1)]
    assert detection_map([dup], [BOXES[:1]])["map"] == 1.0
    # a confident false positive before the hit halves the precision at full recall
    fp_first = [{"box": [0.7, 0.0, 0.8, 0.1], "class": "circle", "score": 0.9}, dict(BOXES[0], score=0.1)]
    assert detection_map([fp_first], [BOXES[:1]])["map"] == pytest.approx(0.5)
    # no scores: one operating point, precision 1/2 at recall 1
    unscored = [{"box": [0.7, 0.0, 0.8, 0.1], "class": "circle"}, BOXES[0]]
    assert detection_map([unscored], [BOXES[:1]])["map"] == pytest.approx(0.5)
    # mAP averages the classes with ground truth: circle found, square missed
    assert detection_map([BOXES[:1]], [BOXES])["map"] == pytest.approx(0.5)


def test_average_precision_against_a_simple_reference():
    """Distinct scores: AP equals the sum over hits of the interpolated precision / num_gt."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, num_gt = int(rng.integers(1, 12)), int(rng.integers(1, 8))
        scores = rng.permutation(n).astype(float)
        hits = rng.random(n) < 0.5
        hits[np.cumsum(hits) > num_gt] = False
        order = np.argsort(-scores)
        prec = np.cumsum(hits[order]) / (np.arange(n) + 1)
        ref = sum(prec[i:].max() for i in range(n) if hits[order][i]) / num_gt
        assert average_precision(scores, hits, num_gt) == pytest.approx(ref)


def test_triple_f1():
    gt = [("small", "red", "circle"), ("large", "blue", "square")]
    assert triple_f1([gt], [gt])["f1"] == 1.0
    assert triple_f1([[("small", "green", "triangle")]], [gt])["f1"] == 0.0
    assert triple_f1([[]], [gt])["f1"] == 0.0
    wrong_size = [("large", "red", "circle"), (None, "blue", "square")]
    out = triple_f1([wrong_size], [gt])
    assert out["f1"] == 0.0 and out["f1_colour_shape"] == 1.0
    half = triple_f1([gt[:1]], [gt])
    assert half["precision"] == 1.0 and half["recall"] == 0.5 and half["f1"] == pytest.approx(2 / 3)


def test_caption_triples_match_scene_objects():
    """The caption names every object with its size: its triples are the scene's objects."""
    for i in range(20):
        s = render_scene(3, i)
        assert triple_f1([parse_caption(s["caption"])], [object_triples(s["objects"])])["f1"] == 1.0


def test_layout_scores():
    parsed = [{"box": b["box"], "shape": b["class"]} for b in BOXES]
    out = layout_scores([parsed], [BOXES])
    assert out["box_iou"] == 1.0 and out["shape_accuracy"] == 1.0 and out["num_matched"] == 2
    wrong_shape = [{"box": b["box"], "shape": "diamond"} for b in BOXES]
    out = layout_scores([wrong_shape], [BOXES])
    assert out["box_iou"] == 1.0 and out["shape_accuracy"] == 0.0
    far = [{"box": [0.0, 0.0, 0.05, 0.05], "shape": "circle"}]
    out = layout_scores([far, []], [BOXES, BOXES])
    assert out["box_iou"] == 0.0 and out["shape_accuracy"] == 0.0 and out["num_reference"] == 4
    one = layout_scores([parsed[:1]], [BOXES])
    assert one["box_iou"] == 0.5 and one["shape_accuracy"] == 0.5


def test_box_scores_are_the_geometric_mean_token_probability(tokenizers):
    text = tokenizers["text"]
    ids = boxes_to_ids(BOXES, text)
    span = [sentinel_id(1), *ids, EOS_ID]
    V = text.vocab_size
    logits = torch.zeros(len(span) - 1, V)  # row t gives span[t + 1]
    p = torch.tensor([0.9] * 5 + [0.5] * 5 + [0.99])
    for t, (tok, pt) in enumerate(zip(span[1:], p)):
        logits[t, tok] = math.log(pt * (V - 1) / (1 - pt))  # softmax gives exactly pt
    from fourm.vq.boxes import parse_boxes

    boxes = parse_boxes(span[1:], text)[0]
    assert [b["class"] for b in boxes] == ["circle", "square"]
    assert box_scores(span, logits, boxes, text) == pytest.approx([0.9, 0.5], abs=1e-5)


# ------------------------------------------------------------------------------ the benchmark
def test_tokenizer_bound_is_high_on_real_scenes(result):
    bound = {t: s["tokenizer_bound"] for t, s in result.scores.items()}
    assert bound["rgb2semseg"]["miou"] > 0.9  # the semseg tokenizer: mIoU 0.976 on 512 held-out scenes
    assert bound["rgb2depth"]["abs_rel"] < 0.05 and bound["rgb2depth"]["delta1"] > 0.95
    assert bound["rgb2det"]["map"] > 0.95  # 1000 bins per axis: boxes survive to well within IoU 0.5
    assert bound["rgb2caption"]["f1"] == 1.0  # the text tokenizer keeps every colour, shape and size word
    # The rgb tokenizer keeps where objects are (their boxes) but blurs corners, so shapes suffer;
    # the bound says how far generated rgb can be trusted.
    for task in ("det2rgb", "depth2rgb", "semseg2rgb"):
        assert bound[task]["box_iou"] > 0.5
    assert result.parser["f1"] >= 0.95  # the scene parser on the ground-truth images


def test_result_table_json_and_grid(result, tmp_path):
    table = result.table()
    for task in TASKS:
        assert f"| {task_title(task)} |" in table
        assert task in result.scores
        for key, _ in TABLE_METRICS[task]:
            assert key in result.scores[task]["model"] and key in result.scores[task]["tokenizer_bound"]
    assert "6 scenes, seed 7" in table and "images: 8 steps; semseg/depth: MaskGIT (cosine)" in table and "rgb: MaskGIT" in table and "wall time" in table
    result.save_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["tasks"]) == set(TASKS) and data["num_samples"] == 6 and data["seed"] == 7
    assert data["tasks"]["caption2det2rgb"]["generated"] == ["det", "rgb"]
    result.save_grid(tmp_path / "g.png", tile=64)
    img = Image.open(tmp_path / "g.png")
    columns = 5 + sum(len(TASKS[t][1]) for t in TASKS)  # the truth, then every generation
    assert img.size == (columns * 68 + 4, 18 + 5 * 68 + 4)


def test_tasks_do_not_depend_on_which_others_run(result, model, tokenizers):
    alone = run_benchmark(model, tokenizers, seed=7, num_samples=6, batch_size=4, tasks="caption2rgb,rgb2det",
                          grid_scenes=0, progress=False)
    assert alone.tasks == ("rgb2det", "caption2rgb")
    for task in alone.tasks:
        assert alone.scores[task] == result.scores[task]



def test_rgb_conditions_enter_through_pixel_input_when_the_model_has_it(tokenizers, monkeypatch):
    from fourm.generation.sampler import Sampler

    seen = []
    generate = Sampler.generate

    def spy(self, inputs, *a, **k):
        seen.append({n: (v.dtype, tuple(v.shape)) for n, v in inputs.items() if isinstance(v, torch.Tensor)})
        return generate(self, inputs, *a, **k)

    monkeypatch.setattr(Sampler, "generate", spy)
    px = tiny_model(pixels=True)
    auto = run_benchmark(px, tokenizers, seed=7, num_samples=2, tasks="rgb2depth", grid_scenes=0, progress=False)
    assert seen[-1] == {"rgb": (torch.uint8, (2, 3, 64, 64))} and "rgb conditions: rgb (pixels)" in auto.decoding_text
    toks = run_benchmark(px, tokenizers, seed=7, num_samples=2, tasks="rgb2depth", grid_scenes=0, progress=False,
                         rgb_input="tokens")
    assert seen[-1] == {"tok_rgb": (torch.int64, (2, 64))} and "(tokens)" in toks.decoding_text
    assert auto.scores["rgb2depth"]["model"] != toks.scores["rgb2depth"]["model"]  # a different input, another depth
    with pytest.raises(ValueError, match="rgb_input='pixels' but this model has no rgb pixel input modality"):
        run_benchmark(tiny_model(), tokenizers, num_samples=1, tasks="rgb2depth", rgb_input="pixels")
    with pytest.raises(ValueError, match="rgb_input='both'; allowed: auto, pixels, tokens"):
        run_benchmark(px, tokenizers, num_samples=1, tasks="rgb2depth", rgb_input="both")


def test_rgb_scheme_reaches_the_rgb_target_only(model, tokenizers, monkeypatch):
    from fourm.generation.sampler import Sampler

    schemes = []
    generate = Sampler.generate

    def spy(self, inputs=None, targets=(), *a, **k):
        listed = targets if isinstance(targets, (list, tuple)) else [targets]
        schemes.append({t.modality: t.scheme for t in listed if isinstance(t, Target)})
        return generate(self, inputs, targets, *a, **k)

    monkeypatch.setattr(Sampler, "generate", spy)
    roar = run_benchmark(model, tokenizers, seed=7, num_samples=2, tasks="semseg2rgb,rgb2depth", grid_scenes=0,
                         progress=False, decoding=DecodingSettings(rgb_scheme="roar"))
    assert {"tok_rgb": "roar"} in schemes and {"tok_depth": None} in schemes  # depth keeps its default (maskgit)
    assert "rgb: random order (roar, linear)" in roar.decoding_text
    with pytest.raises(ValueError, match="rgb_scheme='random'; allowed: maskgit, roar"):
        DecodingSettings(rgb_scheme="random")


def test_parse_tasks():
    assert parse_tasks(None) == tuple(TASKS)
    assert parse_tasks("semseg2rgb, rgb->depth") == ("rgb2depth", "semseg2rgb")
    with pytest.raises(ValueError, match=r"unknown task 'rgb2dpeth'; known tasks: rgb2semseg, rgb2depth"):
        parse_tasks("rgb2dpeth")


def test_bad_settings_name_the_field(model, tokenizers):
    with pytest.raises(ValueError, match="num_samples=0; must be an integer >= 1"):
        run_benchmark(model, tokenizers, num_samples=0)
    no_text = {k: v for k, v in tokenizers.items() if k != "text"}
    with pytest.raises(ValueError, match="task 'rgb2det' needs the 'text' tokenizer"):
        run_benchmark(model, no_text, num_samples=1, tasks="rgb2det")


# ------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


def _eval(model_dir, tmp_path, name, *extra):
    return main(["eval", "--model", str(model_dir), "--tokenizers", str(TOKENIZERS), "--num-samples", "2",
                 "--no-progress", "--json", str(tmp_path / f"{name}.json"), *extra])


def test_cli_writes_json_and_grid_and_names_every_task(model_dir, tmp_path, capsys):
    assert _eval(model_dir, tmp_path, "a", "--grid", str(tmp_path / "a.png"), "--seed", "3") == 0
    out = capsys.readouterr().out
    for task in TASKS:
        assert f"| {task_title(task)} |" in out
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["model"] == str(model_dir) and data["num_samples"] == 2 and data["seed"] == 3
    assert Image.open(tmp_path / "a.png").format == "PNG"


def test_cli_same_seed_same_metrics(model_dir, tmp_path):
    tasks = ["--tasks", "caption2rgb,rgb2det,rgb2semseg", "--seed", "5"]
    assert _eval(model_dir, tmp_path, "a", *tasks) == 0
    assert _eval(model_dir, tmp_path, "b", *tasks) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["tasks"] == b["tasks"]
    assert set(a["tasks"]) == {"caption2rgb", "rgb2det", "rgb2semseg"}


def test_cli_errors(model_dir, tmp_path, capsys):
    assert _eval(model_dir, tmp_path, "x", "--tasks", "rgb2sky") == 2
    err = capsys.readouterr().err
    assert "unknown task 'rgb2sky'" in err and "caption2det2rgb" in err
    assert main(["eval", "--model", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert f"--model {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert _eval(model_dir, tmp_path, "x", "--grid", str(tmp_path / "g.jpg")) == 2
    assert "give a path ending in .png" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
