"""The ShapesWorld any-to-any benchmark: held-out scenes, every direction, scored exactly.

    model, toks = FourM.from_pretrained("models/shapes_bundled"), load_tokenizers("tokenizers/shapes64")
    result = run_benchmark(model, toks, seed=1000, num_samples=32)
    print(result.table()); result.save_json("eval.json"); result.save_grid("eval.png")

``num_samples`` scenes ``render_scene(seed, i)`` (a seed training never used: the bundled run
trains on seed 0 and validates on seed 1) are generated in batches of ``batch_size``. Every task
conditions on the ground truth as the model sees it (image modalities as tokens of their
tokenizer, rgb as pixels when the model has an rgb pixel input (``rgb_input``), captions and boxes
as text tokens) and is scored against the ground truth:

| task               | generated          | score                                                       |
|--------------------|--------------------|-------------------------------------------------------------|
| rgb2semseg         | semseg             | mIoU over classes, pooled over scenes                       |
| rgb2depth          | depth              | abs. rel. error and delta1 on non-sky pixels                |
| rgb2det            | det                | mAP at IoU 0.5, class = shape; a box's score is the         |
|                    |                    | geometric mean probability of its five tokens               |
| rgb2caption        | caption            | object F1 on (size, colour, shape) triples read from the    |
|                    |                    | caption (``parse_caption``) vs the scene's objects          |
| caption2rgb        | rgb                | object F1 on triples: the scene parser on the image vs the  |
|                    |                    | objects named by the conditioning caption                   |
| det2rgb, depth2rgb,| rgb                | layout: the parsed objects matched to the scene's objects   |
| semseg2rgb         |                    | (the objects the conditioning boxes / map show: visible     |
|                    |                    | boxes and shapes) on boxes alone, one to one, IoU >= 0.1;   |
|                    |                    | mean box IoU per scene object (0 if unmatched) and shape    |
|                    |                    | accuracy (matched with the right shape)                     |
| caption2det2rgb    | det, then rgb      | as caption2rgb (rgb sees the caption and the generated det) |

The tokenizer bound of each task is its score with the generation replaced by the ground truth
after a tokenizer round trip (``decode(encode(x))``; boxes and captions through the text
tokenizer): no model can do better. The scene parser's own F1 on the ground-truth images is
reported beside it (it scores every generated image).

Decoding is fixed (:class:`DecodingSettings`); all randomness comes from ``seed``: the scenes,
and one generator per (task, batch) seeded from ``(seed, task, first scene)``, so a task's
numbers do not depend on which other tasks run. They do depend on ``batch_size``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.data.image_sources import stored_image
from fourm.data.shapes_world import WorldConfig, parse_caption, render_scene
from fourm.evaluation.dense import depth_scores, semseg_scores
from fourm.evaluation.detection import detection_map
from fourm.evaluation.objects import layout_scores, object_triples, scene_f1, triple_f1
from fourm.evaluation.report import BenchmarkResult, GridRow
from fourm.evaluation.scene_parser import parse_scene
from fourm.generation.sampler import GenerationResult, Sampler
from fourm.generation.target import IMAGE_SCHEMES, Target
from fourm.masking.spans import EOS_ID
from fourm.models import FourM
from fourm.vq.boxes import boxes_to_ids, parse_boxes

DEFAULT_SEED = 1000
IMAGE_KEYS: tuple[str, ...] = ("rgb", "depth", "semseg")
RGB_INPUTS: tuple[str, ...] = ("auto", "pixels", "tokens")
# task -> (conditions, generated in order); names are raw: rgb / depth / semseg / caption / det
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rgb2semseg": (("rgb",), ("semseg",)),
    "rgb2depth": (("rgb",), ("depth",)),
    "rgb2det": (("rgb",), ("det",)),
    "rgb2caption": (("rgb",), ("caption",)),
    "caption2rgb": (("caption",), ("rgb",)),
    "det2rgb": (("det",), ("rgb",)),
    "depth2rgb": (("depth",), ("rgb",)),
    "semseg2rgb": (("semseg",), ("rgb",)),
    "caption2det2rgb": (("caption",), ("det", "rgb")),
}
LAYOUT_TASKS = ("det2rgb", "depth2rgb", "semseg2rgb")


def parse_tasks(tasks: str | Sequence[str] | None) -> tuple[str, ...]:
    """Task names (comma-separated text or a list; ``"rgb->semseg"`` is read as ``rgb2semseg``),
    in benchmark order; None = all. Unknown names raise with the list of known ones."""
    if tasks is None:
        return tuple(TASKS)
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [str(t).replace(" ", "").replace("->", "2") for t in items if str(t).strip()]
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise ValueError(f"unknown task {bad[0]!r}; known tasks: {', '.join(TASKS)}")
    if not names:
        raise ValueError(f"no task given; known tasks: {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in names)


@dataclass(frozen=True)
class DecodingSettings:
    """The fixed decoding of the benchmark.

    Args:
        image_steps: decoding steps of every image target (MaskGIT: cosine schedule).
        dense_temperature: temperature of semseg / depth from rgb (0 = greedy: a dense
            prediction has one right answer).
        rgb_temperature: temperature of generated rgb, annealed linearly to 0 over the steps.
        rgb_cfg_scale: classifier-free guidance of generated rgb over all its conditions.
        sequence_temperature: temperature of captions and det (0 = greedy).
        rgb_scheme: order in which generated rgb tokens are fixed: ``"maskgit"`` (most confident
            first, cosine schedule) or ``"roar"`` (random order, linear schedule).
    """

    image_steps: int = 8
    dense_temperature: float = 0.0
    rgb_temperature: float = 1.0
    rgb_cfg_scale: float = 3.0
    sequence_temperature: float = 0.0
    rgb_scheme: str = "maskgit"

    def __post_init__(self) -> None:
        steps = self.image_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"DecodingSettings.image_steps={steps!r}; must be an integer >= 1")
        if self.rgb_scheme not in IMAGE_SCHEMES:
            raise ValueError(f"DecodingSettings.rgb_scheme={self.rgb_scheme!r}; allowed: {', '.join(IMAGE_SCHEMES)}")
        Target("tok_rgb", steps=self.image_steps, temperature=self.rgb_temperature, cfg_scale=self.rgb_cfg_scale)
        Target("tok_depth", temperature=self.dense_temperature)
        Target("caption", temperature=self.sequence_temperature)

    def target(self, key: str, modality: str) -> Target:
        """The Target generating raw modality ``key`` (rgb, depth, semseg, caption, det) as ``modality``."""
        if key == "rgb":
            return Target(modality, steps=self.image_steps, scheme=self.rgb_scheme, temperature=self.rgb_temperature,
                          temperature_schedule="linear", cfg_scale=self.rgb_cfg_scale)
        if key in IMAGE_KEYS:
            return Target(modality, steps=self.image_steps, temperature=self.dense_temperature)
        return Target(modality, temperature=self.sequence_temperature)

    def describe(self) -> str:
        """The settings in one line of words (printed above the table)."""
        rgb_order = "MaskGIT (cosine)" if self.rgb_scheme == "maskgit" else "random order (roar, linear)"
        return (f"images: {self.image_steps} steps; semseg/depth: MaskGIT (cosine), temperature "
                f"{self.dense_temperature:g}; rgb: {rgb_order}, temperature {self.rgb_temperature:g} (linear to 0), "
                f"CFG {self.rgb_cfg_scale:g}; caption/det temperature {self.sequence_temperature:g}")


def _modality_names(model: FourM) -> dict[str, str]:
    """Raw key -> the model's modality for it (the modality whose ``raw_field`` it is)."""
    names = {}
    for spec in model.specs.values():
        if spec.kind == "image" and spec.raw_field in IMAGE_KEYS:
            names.setdefault(spec.raw_field, spec.name)
        elif spec.kind == "sequence" and spec.raw_field in ("caption", "det"):
            names.setdefault(spec.raw_field, spec.name)
    return names


def _rgb_pixels(model: FourM, rgb_input: str) -> str | None:
    """The pixel modality that takes rgb conditions (``rgb_input`` auto / pixels), or None for tokens."""
    if rgb_input not in RGB_INPUTS:
        raise ValueError(f"rgb_input={rgb_input!r}; allowed: {', '.join(RGB_INPUTS)}")
    pixels = [s.name for s in model.specs.values() if s.kind == "pixels" and s.in_channels == 3
              and s.name in model.encoder_embeddings]
    if rgb_input == "pixels" and not pixels:
        raise ValueError("rgb_input='pixels' but this model has no rgb pixel input modality "
                         f"(it has: {', '.join(model.specs)}); use 'tokens' or 'auto'")
    return pixels[0] if pixels and rgb_input != "tokens" else None


def _check_setup(model: FourM, tokenizers: Mapping[str, Any], tasks: Sequence[str],
                 rgb_input: str = "auto") -> tuple[dict[str, str], dict[str, str]]:
    """(generation names, condition names): raw key -> the model's modality."""
    names = _modality_names(model)
    cond_names = dict(names)
    pixels = _rgb_pixels(model, rgb_input)
    if pixels is not None:
        cond_names["rgb"] = pixels
    for task in tasks:
        conds, gens = TASKS[task]
        for key in conds + gens:
            if key not in names:
                raise ValueError(f"task {task!r} needs modality {key!r}, which this model lacks; it has: "
                                 f"{', '.join(model.specs)} (choose other tasks with --tasks)")
            need = model.specs[names[key]].tokenizer
            if need not in tokenizers:
                raise ValueError(f"task {task!r} needs the {need!r} tokenizer; have: {', '.join(tokenizers) or 'none'}")
        for key in conds:
            if cond_names[key] not in model.encoder_embeddings:
                raise ValueError(f"task {task!r}: {cond_names[key]!r} is not an input of this model")
        for key in gens:
            if names[key] not in model.decoder_embeddings:
                raise ValueError(f"task {task!r}: {names[key]!r} is not a target of this model")
    return names, cond_names


def task_seed(seed: int, task: str, first_scene: int) -> int:
    """Seed of the generator of one (task, batch)."""
    return int(np.random.SeedSequence([seed, list(TASKS).index(task), first_scene]).generate_state(1)[0])


def box_scores(span: Sequence[int], logits: torch.Tensor, boxes: Sequence[dict], tokenizer: Any) -> list[float]:
    """Confidence of each parsed box: the geometric mean probability of its five tokens.

    Args:
        span: the raw decoder output ``[S_1] tokens ... [EOS]`` of one sample.
        logits: (T, V) logits of that sample, row t giving ``span[t + 1]``.
        boxes: ``parse_boxes`` output of the span, in sequence order.
        tokenizer: the text tokenizer.

    Returns:
        one score per box (1.0 for a box whose tokens cannot be found again, which cannot happen
        for boxes parsed from ``span``).
    """
    ids = list(span[1:])
    logp = torch.log_softmax(logits[: len(ids)].float(), -1)  # (T, V)
    tok_logp = logp.gather(1, torch.as_tensor(ids, dtype=torch.long, device=logp.device)[:, None])[:, 0]  # (T,)
    out, pos = [], 0
    for box in boxes:
        pattern = boxes_to_ids([box], tokenizer, sort=False)
        n = len(pattern)
        at = next((j for j in range(pos, len(ids) - n + 1) if ids[j:j + n] == pattern), None)
        if at is None:
            out.append(1.0)
            continue
        out.append(float(tok_logp[at:at + n].mean().exp()))
        pos = at + n
    return out


class _Batch:
    """Ground truth of a batch of scenes, its tokens and its tokenizer round trips."""

    def __init__(self, scenes: list[dict], image_tokenizers: Mapping[str, Any]) -> None:
        """``image_tokenizers``: raw key (rgb, depth, semseg) -> the tokenizer of the model's modality for it."""
        self.scenes = scenes
        self.tokens: dict[str, torch.Tensor] = {}
        self.recon: dict[str, list[np.ndarray]] = {}
        for key, tok in image_tokenizers.items():
            self.tokens[key] = tok.encode(torch.stack([stored_image(s, key) for s in scenes])).cpu()  # (B, h, w)
            images = tok.decode(self.tokens[key].to(tok.device)).cpu()
            images = images.permute(0, 2, 3, 1) if tok.kind == "rgb" else images  # rgb (B, H, W, 3)
            self.recon[key] = [im.numpy() for im in images]
        self._parsed_recon: list | None = None

    @property
    def parsed_recon(self) -> list:
        """Scene-parser objects of the round-tripped rgb."""
        if self._parsed_recon is None:
            self._parsed_recon = [parse_scene(np.ascontiguousarray(im)) for im in self.recon["rgb"]]
        return self._parsed_recon

    def condition(self, key: str, name: str, spec: Any) -> Any:
        """The input value of raw modality ``key`` for the sampler, as the model's ``name`` (``spec``)."""
        spec_grid = spec.grid
        if spec.kind == "pixels":  # rgb as stored (uint8): the sampler normalises it as training did
            px = torch.stack([stored_image(s, key) for s in self.scenes])
            if tuple(px.shape[2:]) != tuple(spec.image_size):
                raise ValueError(f"{key} images of these scenes are {tuple(px.shape[2:])} but the model's {name!r} "
                                 f"takes {tuple(spec.image_size)}; set image_size to the model's training size")
            return px
        if key in IMAGE_KEYS:
            t = self.tokens[key]
            if tuple(t.shape[1:]) != tuple(spec_grid):
                raise ValueError(f"{key} tokens of these scenes form a {tuple(t.shape[1:])} grid but the model's {name!r} "
                                 f"takes {tuple(spec_grid)}; set image_size to the model's training size")
            return t.reshape(t.shape[0], -1)
        if key == "caption":
            return [s["caption"] for s in self.scenes]
        return [s["det"] for s in self.scenes]


def run_benchmark(model: FourM, tokenizers: Mapping[str, Any], *, seed: int = DEFAULT_SEED, num_samples: int = 32,
                  image_size: int = 64, tasks: str | Sequence[str] | None = None,
                  decoding: DecodingSettings | None = None, batch_size: int = 32, grid_scenes: int = 4,
                  progress: bool = True, rgb_input: str = "auto") -> BenchmarkResult:
    """Score ``model`` on every task (and the tokenizer bound) over held-out ShapesWorld scenes.

    Args:
        model: a FourM with the ShapesWorld modalities (tok_rgb, tok_depth, tok_semseg, caption, det).
        tokenizers: ``load_tokenizers`` output (rgb, depth, semseg, text).
        seed: world seed of the scenes and of all sampling.
        num_samples: number of scenes (>= 1).
        image_size: scene size in pixels (the tokenizers' and the model's).
        tasks: task names (see ``TASKS``) or None for all.
        decoding: the decoding settings (default: :class:`DecodingSettings`).
        batch_size: scenes generated together.
        grid_scenes: scenes shown in the result's PNG grid.
        progress: show a progress bar.
        rgb_input: how rgb conditions enter the model: ``"pixels"`` (its rgb pixel input
            modality), ``"tokens"`` (``tok_rgb``) or ``"auto"`` (pixels when the model has them).

    Returns:
        A :class:`~fourm.evaluation.report.BenchmarkResult`.
    """
    checks = (("num_samples", num_samples, 1), ("batch_size", batch_size, 1), ("grid_scenes", grid_scenes, 0))
    for arg, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg}={value!r}; must be an integer >= {low}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}; must be an integer")
    tasks = parse_tasks(tasks)
    decoding = decoding or DecodingSettings()
    names, cond_names = _check_setup(model, tokenizers, tasks, rgb_input)
    cfg = WorldConfig(image_size=image_size)
    text = next((tokenizers[model.specs[names[k]].tokenizer] for k in ("caption", "det") if k in names
                 and model.specs[names[k]].tokenizer in tokenizers), None)
    sampler = Sampler(model, tokenizers, progress=False)
    # image modalities to tokenize: the conditions, and the last generation of each task (its bound)
    keys = {k for t in tasks for k in TASKS[t][0] + TASKS[t][1][-1:] if k in IMAGE_KEYS}
    image_tokenizers = {k: tokenizers[model.specs[names[k]].tokenizer] for k in sorted(keys, key=IMAGE_KEYS.index)}
    preds: dict[str, dict[str, list]] = {t: {"model": [], "bound": []} for t in tasks}
    gt_parsed, truth = [], []
    grid: list[GridRow] = []
    start = time.perf_counter()
    bar = tqdm(total=num_samples * len(tasks), desc="fourm eval", unit="scene", disable=not progress)
    for lo in range(0, num_samples, batch_size):
        idx = range(lo, min(lo + batch_size, num_samples))
        scenes = [render_scene(seed, i, cfg) for i in idx]
        batch = _Batch(scenes, image_tokenizers)
        truth += [{k: s[k] for k in ("objects", "caption", "semseg", *keys & {"depth"})} for s in scenes]
        gt_parsed += [parse_scene(s["rgb"]) for s in scenes]
        rows = [GridRow(s) for s in scenes[: max(0, grid_scenes - lo)]]
        for task in tasks:
            bar.set_postfix_str(task)
            out = _run_task(task, sampler, batch, names, cond_names, decoding, task_seed(seed, task, lo), text)
            preds[task]["model"] += out["score"]
            preds[task]["bound"] += _bound(task, batch, text)
            for r, row in enumerate(rows):
                row.outputs[task] = {k: v[r] for k, v in out["show"].items()}
            bar.update(len(idx))
        grid += rows
    bar.close()
    scores = {t: {"model": _score(t, preds[t]["model"], truth),
                  "tokenizer_bound": _score(t, preds[t]["bound"], truth)} for t in tasks}
    parser = scene_f1(gt_parsed, [s["objects"] for s in truth])
    via = "pixels" if cond_names.get("rgb") != names.get("rgb") else "tokens"
    rgb_via = f"rgb conditions: {cond_names.get('rgb', 'tok_rgb')} ({via})"
    return BenchmarkResult(
        tasks=tasks, scores=scores, seed=seed, num_samples=num_samples, image_size=image_size,
        batch_size=batch_size, decoding=asdict(decoding), decoding_text=f"{decoding.describe()}; {rgb_via}",
        wall_s=time.perf_counter() - start, parser={k: parser[k] for k in ("f1", "precision", "recall", "size_accuracy")},
        grid=grid, task_io={t: TASKS[t] for t in tasks},
    )


def _run_task(task: str, sampler: Sampler, batch: _Batch, names: Mapping[str, str], cond_names: Mapping[str, str],
              decoding: DecodingSettings, seed: int, text: Any) -> dict[str, Any]:
    """Generate one task for a batch. Returns ``score``: per scene what :func:`_score` reads, and
    ``show``: raw key -> per scene the decoded generation (for the grid)."""
    conds, gens = TASKS[task]
    specs = sampler.specs
    inputs = {cond_names[k]: batch.condition(k, cond_names[k], specs[cond_names[k]]) for k in conds}
    targets = [decoding.target(k, names[k]) for k in gens]
    result: GenerationResult = sampler.generate(inputs, targets, seed=seed, keep_logits=task == "rgb2det")
    decoded = result.decode(sampler.tokenizers, [names[k] for k in gens])
    show = {k: decoded[names[k]] for k in gens}
    last = show[gens[-1]]
    if gens[-1] == "rgb":
        return {"score": [parse_scene(np.ascontiguousarray(im)) for im in last], "show": show}
    if gens[-1] == "det":
        logits = result.logits[names["det"]]  # (B, T, V)
        scored = []
        for b, span in enumerate(result.spans[names["det"]]):
            boxes = parse_boxes(span[1:], text)[0]
            conf = box_scores(span, logits[b], boxes, text)
            scored.append([dict(bx, score=c) for bx, c in zip(boxes, conf)])
        return {"score": scored, "show": show}
    if gens[-1] == "caption":
        return {"score": [parse_caption(c) for c in last], "show": show}
    return {"score": last, "show": show}


def _bound(task: str, batch: _Batch, text: Any) -> list:
    """The tokenizer-bound stand-in of a task's generations for one batch."""
    last = TASKS[task][1][-1]
    if last == "rgb":
        return batch.parsed_recon
    if last == "det":
        out = []
        for s in batch.scenes:
            boxes = parse_boxes(boxes_to_ids(s["det"], text) + [EOS_ID], text)[0]
            out.append(boxes)
        return out
    if last == "caption":
        return [parse_caption(text.decode(text.encode(s["caption"]))) for s in batch.scenes]
    return batch.recon[last]


def _score(task: str, preds: list, truth: list[dict]) -> dict[str, Any]:
    """Scores of one task from per-scene predictions (model or bound) against the ground truth
    (per scene: ``objects``, ``caption`` and the dense maps)."""
    if task == "rgb2semseg":
        return semseg_scores(preds, [s["semseg"] for s in truth])
    if task == "rgb2depth":
        return depth_scores(preds, [s["depth"] for s in truth], [s["semseg"] != 0 for s in truth])
    if task == "rgb2caption":
        return triple_f1(preds, [object_triples(s["objects"]) for s in truth])
    gt_det = [[{"box": o["box"], "class": o["shape"]} for o in s["objects"]] for s in truth]
    if task == "rgb2det":
        return detection_map(preds, gt_det)
    if task in LAYOUT_TASKS:
        return layout_scores(preds, gt_det)
    # caption2rgb, caption2det2rgb: against the objects the conditioning caption names
    return triple_f1([object_triples(p) for p in preds], [parse_caption(s["caption"]) for s in truth])
