"""Where training metrics go: a JSON-lines file, the run's experiment trackers (accelerate's: TensorBoard,
W&B, MLflow ...), per-rank sample-key logs, and the sums of the open logging interval
(:class:`LogInterval`, kept in checkpoints).

``metrics.jsonl`` holds one object per line: training lines ``{"step", "split": "train", "loss",
"loss/<modality>", "lr", "grad_norm", "tokens_per_s", ...}`` and validation lines ``{"step",
"split": "val", "loss", "loss/<modality>"}``. When a run resumes from step ``s``, lines of steps
after ``s`` (written by the interrupted run after its last checkpoint) are dropped first, so the
file always describes one consistent run.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from fourm.atomic import atomic_write_text


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> int:
    """Keep only the lines of ``path`` whose ``step`` is <= ``max_step`` (atomic rewrite); returns lines dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    keep, dropped = [], 0
    for line in p.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            dropped += 1  # a line cut by a crash
            continue
        if step <= max_step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(p, "".join(line + "\n" for line in keep))
    return dropped


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the line valid
    return value


class JsonlWriter:
    """Append JSON objects as lines, flushed after each line."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def tracker_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record as trackers take them: ``"<split>/<name>"``."""
    split = record.get("split", "train")
    return {f"{split}/{k}": v for k, v in record.items()
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsLog:
    """``metrics.jsonl`` and the same numbers to the run's trackers (main process only).

    Args:
        out_dir: the run folder.
        log: ``Accelerator.log`` when the run has trackers (``logging.trackers``), else None.
    """

    def __init__(self, out_dir: str | os.PathLike, log: Callable[..., None] | None = None) -> None:
        self.jsonl = JsonlWriter(Path(out_dir) / "metrics.jsonl")
        self.log = log

    def write(self, record: Mapping[str, Any]) -> None:
        self.jsonl.write(record)
        if self.log is not None:
            self.log(tracker_values(record), step=int(record["step"]))

    def close(self) -> None:
        self.jsonl.close()


class LogInterval:
    """Sums of one logging interval, per process (device tensors; reduced when a line is written)."""

    def __init__(self, num_metrics: int, device: torch.device) -> None:
        self.n, self.device = num_metrics, device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.n, device=self.device)
        self.counts = [0] * self.n
        self.grad_norm = torch.zeros((), device=self.device)
        self.micro = self.steps = self.tokens = self.samples = self.invalid = 0
        self.t0 = time.perf_counter()

    def state(self) -> dict:
        return {"sums": self.sums.tolist(), "counts": list(self.counts), "grad_norm": self.grad_norm.item(),
                "micro": self.micro, "steps": self.steps, "tokens": self.tokens, "samples": self.samples,
                "invalid": self.invalid}

    def load(self, s: dict) -> None:
        self.sums = torch.tensor(s["sums"], dtype=torch.float32, device=self.device)
        self.grad_norm = torch.tensor(s["grad_norm"], dtype=torch.float32, device=self.device)
        self.counts = list(s["counts"])
        self.micro, self.steps, self.tokens = s["micro"], s["steps"], s["tokens"]
        self.samples, self.invalid = s["samples"], s["invalid"]
