"""Scaling figure: caption -> rgb object F1 and tok_rgb validation loss against samples seen.

    .venv/bin/python benchmarks/scaling.py out/fm/run_a out/fm/run_b --tokenizers tokenizers/shapes64 \
        --out docs/scaling.png --json docs/scaling.json

Every complete checkpoint of every training run given (``fourm train`` out_dirs) is one point:
samples seen = step x batch size x gradient accumulation x processes (from the run's
``train_config.json``), plus, for a run that starts ``init_from`` another run's exported model
(``<run>/model``), the samples of that run; caption -> rgb object F1 from ``fourm eval``'s
benchmark on ``--num-samples`` held-out scenes of each of ``--seeds`` (the benchmark's decoding;
the mean is drawn); the tok_rgb validation loss is the run's own, logged at that step in
``metrics.jsonl`` (runs with different masking mixtures are scored on different masks: compare
along a recipe); the hidden-token cross-entropy of tok_rgb given 90% of its grid is
benchmarks/token_infill.py's, on the same masks for every point. Dashed lines: the issue's targets
(F1 0.50, hidden-token cross-entropy 2.5 nats) and the tokenizer's parser bound. A checkpoint at the end of its
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

import sys  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_infill import infill_cross_entropy  # noqa: E402  (the sibling benchmark)

from fourm.evaluation.benchmark import run_benchmark  # noqa: E402
from fourm.evaluation.reconstruction import render_batch  # noqa: E402
from fourm.evaluation.token_stats import object_token_mask  # noqa: E402
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


def samples_before(run: Path) -> int:
    """Samples seen by the runs this one starts from: ``init_from`` = an earlier run's ``<out_dir>/model``."""
    init = json.loads((run / "train_config.json").read_text()).get("init_from")
    if not init:
        return 0
    parent = Path(init).parent
    if not (parent / "train_config.json").is_file():  # a model from elsewhere: its samples are unknown
        print(f"  note: {run.name} starts from {init}, not a fourm train out_dir: its samples are not counted")
        return 0
    cfg = json.loads((parent / "train_config.json").read_text())
    return int(cfg["steps"]) * samples_per_step(parent) + samples_before(parent)


def val_loss_at(run: Path, step: int, modality: str) -> float | None:
    """The run's logged validation loss of ``modality`` at ``step`` (the last validation at or before it)."""
    vals = [r for r in read_metrics(run / "metrics.jsonl").val if r.get("step", math.inf) <= step]
    return vals[-1].get(f"loss/{modality}") if vals else None


_INFILL_SCENES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # tokenizer -> (codes, is_object)


def hidden_tok_rgb(model, tokenizers: dict, args: argparse.Namespace) -> float:
    """token_infill's cross-entropy of the hidden tok_rgb tokens given 90% of the grid (mask seed 0).
    The held-out scenes are rendered and encoded once per tokenizer, not once per checkpoint."""
    spec = model.specs["tok_rgb"]
    if spec.tokenizer not in _INFILL_SCENES:
        tok = tokenizers[spec.tokenizer]
        batch = render_batch(args.seeds[0], range(args.infill_samples), tok.config.image_size)
        codes = tok.encode(batch[spec.raw_field])
        _INFILL_SCENES[spec.tokenizer] = codes, object_token_mask(batch["semseg"], tuple(codes.shape[1:]))
    tokens, is_object = _INFILL_SCENES[spec.tokenizer]
    return infill_cross_entropy(model, "tok_rgb", tokens, is_object, 0.9, torch.Generator().manual_seed(0))["all"]


def points(run: Path, tokenizers: dict, args: argparse.Namespace) -> list[dict]:
    cfg = json.loads((run / "train_config.json").read_text())
    per_step, last, before = samples_per_step(run), int(cfg["steps"]), samples_before(run)
    out = []
    for step, path in list_checkpoints(run):
        model = load_model(path)
        t0 = time.perf_counter()
        scores = [run_benchmark(model, tokenizers, seed=seed, num_samples=args.num_samples, tasks=("caption2rgb",),
                                grid_scenes=0, progress=False).scores["caption2rgb"] for seed in args.seeds]
        f1s = [s["model"]["f1"] for s in scores]
        p = {"run": str(run), "step": step, "samples_seen": before + step * per_step, "end_of_schedule": step == last,
             "caption2rgb_f1": sum(f1s) / len(f1s), "caption2rgb_f1_per_seed": f1s,
             "caption2rgb_bound": sum(s["tokenizer_bound"]["f1"] for s in scores) / len(scores),
             "val_loss_tok_rgb": val_loss_at(run, step, "tok_rgb"),
             "hidden_tok_rgb_given_90": hidden_tok_rgb(model, tokenizers, args),
             "eval_s": time.perf_counter() - t0}
        val = p["val_loss_tok_rgb"]
        print(f"  {run.name:<28} step {step:>6} samples {p['samples_seen']:>8} F1 {p['caption2rgb_f1']:.3f} "
              f"val tok_rgb {val if val is None else round(val, 3)} hidden tok_rgb (90%) "
              f"{p['hidden_tok_rgb_given_90']:.3f}")
        out.append(p)
    return out


def draw(pts: list[dict], path: Path, title: str, bound: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("caption2rgb_f1", "val_loss_tok_rgb", "hidden_tok_rgb_given_90")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    runs = sorted({p["run"] for p in pts})
    for i, run in enumerate(runs):
        mine = sorted((p for p in pts if p["run"] == run), key=lambda p: p["samples_seen"])
        colour = f"C{i}"
        for ax, key in zip(axes, keys):
            xs = [p["samples_seen"] for p in mine if p[key] is not None]
            ys = [p[key] for p in mine if p[key] is not None]
            ax.plot(xs, ys, "-", color=colour, alpha=0.5, label=Path(run).name)
            for p in mine:
                if p[key] is not None:
                    ax.plot(p["samples_seen"], p[key], "o", color=colour,
                            markerfacecolor=colour if p["end_of_schedule"] else "white")
    if bound is not None:
        axes[0].axhline(bound, color="grey", ls=":", lw=1, label=f"tokenizer bound {bound:.2f}")
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.5, color="k", ls="--", lw=1, label="target 0.50")
    axes[2].axhline(2.5, color="k", ls="--", lw=1, label="target 2.5")
    axes[2].legend(fontsize=7)
    for ax, label in zip(axes, ("caption -> rgb object F1", "tok_rgb validation loss (nats)",
                                "hidden tok_rgb CE, 90% given (nats)")):
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
    p.add_argument("--seeds", default="1000", help="comma-separated world seeds of the held-out scenes")
    p.add_argument("--num-samples", type=int, default=64, help="scenes per seed for caption -> rgb")
    p.add_argument("--infill-samples", type=int, default=256, help="scenes (first seed) for the hidden-token figure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/scaling.png"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    try:
        args.seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: allowed: comma-separated integers")
    torch.set_num_threads(args.threads)
    tokenizers = load_tokenizers(args.tokenizers)
    pts = [pt for run in args.runs for pt in points(run, tokenizers, args)]
    if not pts:
        raise SystemExit(f"error: no complete checkpoint under {', '.join(str(r) for r in args.runs)}")
    bound = pts[-1]["caption2rgb_bound"]  # the same scenes for every point
    seeds = ", ".join(str(s) for s in args.seeds)
    draw(pts, args.out, f"caption -> rgb: {args.num_samples} held-out scenes of seed(s) {seeds} (mean); "
         "filled: end of schedule, hollow: mid-schedule", bound)
    print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "num_samples": args.num_samples,
                                         "infill_samples": args.infill_samples, "bound": bound, "points": pts}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
