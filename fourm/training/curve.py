"""Training curves: read a run's ``metrics.jsonl`` and draw its losses per modality as a PNG.

    fourm curve out/fm/shapes_bundled --out docs/shapes_bundled_curve.png
    summary = read_metrics("out/fm/shapes_bundled/metrics.jsonl")   # for scripts

The left panel is the training loss of every target modality (and the total) against the step; the
right panel the validation loss at each validation. The title states the steps, the wall time
(summed over resumes) and the mean training throughput.

matplotlib is needed for the PNG only (``pip install matplotlib``; it is in the ``notebooks`` extra).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fourm.atomic import atomic_write


@dataclass
class MetricsSummary:
    """The records of one run. ``train`` and ``val``: the JSON records of each split, in order."""

    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        """Target modalities that have a loss in any record, in first-seen order."""
        names: dict[str, None] = {}
        for rec in self.train + self.val:
            for key in rec:
                if key.startswith("loss/"):
                    names.setdefault(key[5:], None)
        return list(names)

    def final(self) -> dict:
        """Last step, wall time, mean tokens/s, final train and val losses per modality."""
        last_train = self.train[-1] if self.train else {}
        last_val = self.val[-1] if self.val else {}
        wall = last_train.get("wall_s")
        tokens = last_train.get("tokens_seen")
        return {
            "step": last_train.get("step"),
            "wall_s": wall,
            "tokens_seen": tokens,
            "mean_tokens_per_s": tokens / wall if wall and tokens else None,
            "train_loss": {k[5:]: v for k, v in last_train.items() if k.startswith("loss/")},
            "val_step": last_val.get("step"),
            "val_loss": {k[5:]: v for k, v in last_val.items() if k.startswith("loss/")},
            "val_loss_total": last_val.get("loss"),
        }


def read_metrics(path: str | os.PathLike) -> MetricsSummary:
    """Read ``metrics.jsonl`` (or a run folder holding it).

    A resumed run repeats the steps after its checkpoint: for each split the last record of a step
    wins, so the curve is that of the steps the final weights went through.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist (a training run's out_dir holds metrics.jsonl)")
    by_split: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON record ({e.msg})") from None
        split = rec.get("split")
        if split in by_split and isinstance(rec.get("step"), int):
            by_split[split][rec["step"]] = rec
    return MetricsSummary(train=[by_split["train"][s] for s in sorted(by_split["train"])],
                          val=[by_split["val"][s] for s in sorted(by_split["val"])])


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` records (NaN-free input)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curve(metrics: MetricsSummary, out: str | os.PathLike, title: str | None = None, smooth: int = 4) -> Path:
    """Write the two-panel loss plot of ``metrics`` to ``out`` (PNG, atomically).

    Args:
        metrics: from :func:`read_metrics`.
        out: the PNG path.
        title: first line of the title (default: none).
        smooth: trailing-mean window over training records (1 = raw).
    """
    if not metrics.train:
        raise ValueError("no training records to plot (metrics.jsonl has no split=train lines)")
    if smooth < 1:
        raise ValueError(f"smooth={smooth}; allowed: an integer >= 1")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or 'fourm[notebooks]')") from e

    fin = metrics.final()
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    steps = [r["step"] for r in metrics.train]
    for name in ["", *metrics.modalities]:
        key = f"loss/{name}" if name else "loss"
        pts = [(s, r[key]) for s, r in zip(steps, metrics.train) if key in r and math.isfinite(r[key])]
        if pts:
            xs, ys = zip(*pts)
            ax_t.plot(xs, _smooth(list(ys), smooth), label=name or "total", lw=2.2 if not name else 1.3,
                      color="black" if not name else None)
        vpts = [(r["step"], r[key]) for r in metrics.val if key in r and math.isfinite(r[key])]
        if vpts:
            xs, ys = zip(*vpts)
            ax_v.plot(xs, ys, marker="o", label=name or "total", lw=2.2 if not name else 1.3,
                      color="black" if not name else None)
    ax_t.set(xlabel="step", ylabel="cross-entropy (nats)", title="training loss")
    ax_v.set(xlabel="step", title="validation loss")
    if not metrics.val:
        ax_v.text(0.5, 0.5, "no validation records", ha="center", va="center", transform=ax_v.transAxes)
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    parts = [f"{fin['step']} steps"]
    if fin["wall_s"]:
        parts.append(f"{fin['wall_s'] / 60:.0f} min")
    if fin["mean_tokens_per_s"]:
        parts.append(f"{fin['mean_tokens_per_s']:.0f} tokens/s")
    fig.suptitle(" | ".join(([title] if title else []) + parts), fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out
