"""What ``fourm eval`` hands back: a markdown table, a JSON dict and a PNG grid.

    result = run_benchmark(model, toks, seed=1000, num_samples=32)
    print(result.table())               # | task | metric | model | tokenizer bound |
    result.save_json("eval.json")       # every score (also precision, recall, counts), settings, wall time
    result.save_grid("eval.png")        # per scene: the ground truth (the conditions), then each task's generation
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw

import fourm
from fourm.config import save_json_atomic
from fourm.generation.decode import font, save_png, to_tile

# The scores in the table, per task: (key in the task's scores, label). Arrows say which way is better.
TABLE_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "rgb2semseg": (("miou", "mIoU ↑"),),
    "rgb2depth": (("abs_rel", "abs. rel. error ↓"), ("delta1", "delta1 ↑")),
    "rgb2det": (("map", "mAP@0.5 ↑"),),
    "rgb2caption": (("f1", "object F1 ↑"),),
    "caption2rgb": (("f1", "object F1 ↑"),),
    "det2rgb": (("box_iou", "box IoU ↑"), ("shape_accuracy", "shape accuracy ↑")),
    "depth2rgb": (("box_iou", "box IoU ↑"), ("shape_accuracy", "shape accuracy ↑")),
    "semseg2rgb": (("box_iou", "box IoU ↑"), ("shape_accuracy", "shape accuracy ↑")),
    "caption2det2rgb": (("f1", "object F1 ↑"),),
}
# Ground-truth columns of the grid: (scene key, tile kind)
_TRUTH_COLUMNS = (("rgb", "rgb"), ("semseg", "semseg"), ("depth", "depth"), ("det", "boxes"), ("caption", "text"))
_KINDS = {"rgb": "rgb", "depth": "depth", "semseg": "semseg", "det": "boxes", "caption": "text"}
_GAP, _HEAD = 4, 18


def task_title(task: str) -> str:
    """``"caption2det2rgb"`` -> ``"caption -> det -> rgb"``."""
    return " -> ".join(task.split("2"))


@dataclass
class GridRow:
    """One scene of the PNG grid: the scene (ground truth) and, per task, its decoded generations
    (raw key -> rgb (H, W, 3) uint8, depth (H, W) metres, semseg (H, W) ids, boxes or text)."""

    scene: dict
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python numbers, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


@dataclass
class BenchmarkResult:
    """Scores and settings of one benchmark run.

    Attributes:
        tasks: the tasks run, in order.
        scores: task -> {"model": scores, "tokenizer_bound": scores} (see ``fourm.evaluation.dense``, ``detection`` and ``objects``).
        seed: world and sampling seed.
        num_samples: number of scenes.
        image_size: scene size in pixels.
        batch_size: scenes generated together.
        decoding: the decoding settings as a dict; ``decoding_text`` says them in words.
        wall_s: wall time of the run in seconds (rendering, generation and scoring).
        parser: the scene parser's own F1 (and precision, recall, size accuracy) on the ground-truth images.
        grid: the first scenes and their generations, for :meth:`grid_image`.
        task_io: task -> (conditions, generated modalities).
        info: anything else to record in the JSON (the CLI adds the model and tokenizer paths).
    """

    tasks: tuple[str, ...]
    scores: dict[str, dict[str, dict[str, Any]]]
    seed: int
    num_samples: int
    image_size: int
    batch_size: int
    decoding: dict[str, Any]
    decoding_text: str
    wall_s: float
    parser: dict[str, float]
    grid: list[GridRow] = field(default_factory=list)
    task_io: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The results as markdown: a header (scenes, seed, decoding, wall time, the parser's own
        accuracy) and one row per (task, metric) with the model's score and the tokenizer bound."""
        lines = [
            f"fourm eval: {self.num_samples} scenes, seed {self.seed}, {self.image_size} px, "
            f"batch {self.batch_size}, wall time {self.wall_s:.1f} s",
            f"decoding: {self.decoding_text}",
            f"scene parser on ground-truth images: object F1 {_fmt(self.parser.get('f1'))} "
            "(it scores every generated image)",
            "",
            "| task | metric | model | tokenizer bound |",
            "|---|---|---|---|",
        ]
        for task in self.tasks:
            for key, label in TABLE_METRICS[task]:
                model, bound = self.scores[task]["model"].get(key), self.scores[task]["tokenizer_bound"].get(key)
                lines.append(f"| {task_title(task)} | {label} | {_fmt(model)} | {_fmt(bound)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the grid, JSON-safe (NaN as null)."""
        tasks = {}
        for task in self.tasks:
            conds, gens = self.task_io.get(task, ((), ()))
            tasks[task] = {"title": task_title(task), "conditions": list(conds), "generated": list(gens),
                           "table_metrics": [k for k, _ in TABLE_METRICS[task]], **self.scores[task]}
        return _json_safe({
            "fourm_version": fourm.__version__, "seed": self.seed, "num_samples": self.num_samples,
            "image_size": self.image_size, "batch_size": self.batch_size, "decoding": self.decoding,
            "wall_s": round(self.wall_s, 3), "scene_parser_on_ground_truth": self.parser, "tasks": tasks, **self.info,
        })

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        save_json_atomic(self.to_dict(), path)

    def grid_image(self, tile: int = 128) -> Image.Image:
        """Per scene one row: the ground truth (rgb, semseg, depth, det, caption: also the
        conditions), then every task's generations. Generated boxes are drawn on the rgb of the
        same run when it made one (caption -> det -> rgb), else on the ground-truth rgb."""
        if not self.grid:
            raise ValueError("the result holds no scenes to draw (run_benchmark(..., grid_scenes=0))")
        columns: list[tuple[str, str | None, str]] = [(f"truth: {k}", None, k) for k, _ in _TRUTH_COLUMNS]
        for task in self.tasks:
            gens = self.grid[0].outputs.get(task, {})
            for key in gens:
                title = task_title(task) if key == list(gens)[-1] else " -> ".join(task_title(task).split(" -> ")[:-1])
                columns.append((title, task, key))
        f = font(11)
        width = len(columns) * (tile + _GAP) + _GAP
        sheet = Image.new("RGB", (width, _HEAD + len(self.grid) * (tile + _GAP) + _GAP), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for c, (title, _, _) in enumerate(columns):
            draw.text((_GAP + c * (tile + _GAP), 3), title, fill=(20, 20, 20), font=f)
        for r, row in enumerate(self.grid):
            for c, (_, task, key) in enumerate(columns):
                source = row.scene if task is None else row.outputs[task]
                background = source.get("rgb") if key == "det" else None
                if background is None and key == "det":
                    background = row.scene["rgb"]
                img = to_tile(_KINDS[key], source[key], tile, background)
                sheet.paste(img, (_GAP + c * (tile + _GAP), _HEAD + r * (tile + _GAP)))
        return sheet

    def save_grid(self, path: str | os.PathLike, tile: int = 128) -> None:
        """Write :meth:`grid_image` as PNG atomically."""
        save_png(self.grid_image(tile), path)
