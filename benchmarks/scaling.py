"""Scaling figure: caption -> rgb object F1 and tok_rgb validation loss against samples seen.

    .venv/bin/python benchmarks/scaling.py out/fm/run_a out/fm/run_b --tokenizers tokenizers/shapes64 \
        --out docs/scaling.png --json docs/scaling.json

Every complete checkpoint of every training run given (``fourm train`` out_dirs) is one point:
samples seen = step x batch size x gradient accumulation x processes (from the run's
``train_config.json``); caption -> rgb object F1 from ``fourm eval``'s benchmark on
``--num-samples`` held-out scenes of ``--seed`` (the benchmark's decoding); the tok_rgb validation
loss is the run's own, logged at that step in ``metrics.jsonl``. A checkpoint at the end of its
run's schedule (learning rate annealed) is drawn filled, one in the middle of a schedule hollow:
mid-schedule points run at a higher learning rate than a run of that length would end with, so
they understate what that budget buys. Keep checkpoints with ``checkpoint.keep_last`` large
enough for the points you want.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fourm.evaluation.benchmark import run_benchmark  # noqa: E402
from fourm.generation.commands import load_model  # noqa: E402
from fourm.training.checkpoint import list_checkpoints  # noqa: E402
from fourm.training.curve import read_metrics  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402


def samples_per_step(run: Path) -> int:
    """Samples per optimizer step: batch size x accumulation x processes (``run_info.json``)."""
    cfg = json.loads((run / "train_config.json").read_text())
    info = run / "run_info.json"
    world = int(json.loads(info.read_text()).get("num_processes", 1)) if info.is_file() else 1
    return int(cfg["data"]["batch_size"]) * int(cfg["optim"].get("grad_accum", 1)) * world


def val_loss_at(run: Path, step: int, modality: str) -> float | None:
    """The run's logged validation loss of ``modality`` at ``step`` (the last validation at or before it)."""
    vals = [r for r in read_metrics(run / "metrics.jsonl").val if r.get("step", math.inf) <= step]
    return vals[-1].get(f"loss/{modality}") if vals else None


def points(run: Path, tokenizers: dict, args: argparse.Namespace) -> list[dict]:
    cfg = json.loads((run / "train_config.json").read_text())
    per_step, last = samples_per_step(run), int(cfg["steps"])
    out = []
    for step, path in list_checkpoints(run):
        model = load_model(path)
        t0 = time.perf_counter()
        res = run_benchmark(model, tokenizers, seed=args.seed, num_samples=args.num_samples,
                            tasks=("caption2rgb",), grid_scenes=0, progress=False)
        f1 = res.scores["caption2rgb"]["model"]["f1"]
        p = {"run": str(run), "step": step, "samples_seen": step * per_step, "end_of_schedule": step == last,
             "caption2rgb_f1": f1, "val_loss_tok_rgb": val_loss_at(run, step, "tok_rgb"),
             "eval_s": time.perf_counter() - t0}
        print(f"  {run.name:<28} step {step:>6} samples {p['samples_seen']:>8} F1 {f1:.3f} "
              f"val tok_rgb {p['val_loss_tok_rgb'] if p['val_loss_tok_rgb'] is None else round(p['val_loss_tok_rgb'], 3)}")
        out.append(p)
    return out


def draw(pts: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    runs = sorted({p["run"] for p in pts})
    for i, run in enumerate(runs):
        mine = sorted((p for p in pts if p["run"] == run), key=lambda p: p["samples_seen"])
        colour = f"C{i}"
        for ax, key in zip(axes, ("caption2rgb_f1", "val_loss_tok_rgb")):
            xs = [p["samples_seen"] for p in mine if p[key] is not None]
            ys = [p[key] for p in mine if p[key] is not None]
            ax.plot(xs, ys, "-", color=colour, alpha=0.5, label=Path(run).name)
            for p in mine:
                if p[key] is not None:
                    ax.plot(p["samples_seen"], p[key], "o", color=colour,
                            markerfacecolor=colour if p["end_of_schedule"] else "white")
    for ax, label in zip(axes, ("caption -> rgb object F1", "tok_rgb validation loss (nats)")):
        ax.set_xscale("log")
        ax.set_xlabel("samples seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="fourm train out_dirs")
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/scaling.png"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizers = load_tokenizers(args.tokenizers)
    pts = [pt for run in args.runs for pt in points(run, tokenizers, args)]
    if not pts:
        raise SystemExit(f"error: no complete checkpoint under {', '.join(str(r) for r in args.runs)}")
    draw(pts, args.out, f"{args.num_samples} held-out scenes of seed {args.seed}; filled: end of schedule")
    print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "num_samples": args.num_samples, "points": pts}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
