"""Training-step time of fourm's current loss path against its previous one, in one process.

    .venv/bin/python benchmarks/model_step_ab.py --setting a --threads 2 --repeats 20
    .venv/bin/python benchmarks/model_step_ab.py --setting b --threads 2 --repeats 6 --profile

Two twins with the same weights and batch (benchmarks/model_step.py's settings) take turns, so
that load from other processes hits both alike:
  previous: logits of every modality materialised, then ``F.cross_entropy`` (what
            ``return_logits=True`` still does), table gradients zeroed in full every step;
  current:  the fused head + cross-entropy (fourm.models.head_loss), table gradients clearing only
            the rows written the step before.
Prints both medians, their ratio, the median of per-pair ratios, the loss and parameter
differences after the steps (same maths: float rounding only), and with ``--profile`` the op
shares of the current path (torch.profiler, self CPU time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import fourm.models.embeddings as emb
from fourm.modalities import ml4m_modalities
from fourm.models import FourM, FourMConfig

sys.path.insert(0, str(Path(__file__).parent))
from model_step import SETTINGS, make_batch  # noqa: E402

_ZEROS = emb.GradStore.zeros


def _full_zeros(self: emb.GradStore, like: torch.Tensor) -> torch.Tensor:
    self._rows = None  # forget the written rows: zero everything, as before
    return _ZEROS(self, like)


def _shares(prof) -> str:
    groups: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        name = ev.key
        key = ("matmul" if name in ("aten::mm", "aten::addmm", "aten::bmm") else
               "attention" if "scaled_dot_product" in name else
               "adamw" if "adamw" in name else
               "exp/log-softmax" if name in ("aten::exp_", "aten::_log_softmax", "aten::_log_softmax_backward_data")
               else "fill/zero" if name in ("aten::fill_", "aten::zero_") else "other")
        groups[key] += ev.self_cpu_time_total
    total = sum(groups.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(groups.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="a")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reg = ml4m_modalities("4m7")
    cfg = FourMConfig(modalities=reg, **SETTINGS[args.setting])
    models = {"previous": FourM(cfg), "current": FourM(cfg)}  # same seed: same weights
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05, fused=True) for k, m in models.items()}
    batch = make_batch(reg, 8, 128, 128)
    losses = {}

    def step(which: str) -> None:
        model, opt = models[which], opts[which]
        emb.GradStore.zeros = _full_zeros if which == "previous" else _ZEROS
        try:
            loss = model(batch, 128, 128, return_logits=which == "previous").loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            emb.GradStore.zeros = _ZEROS
        losses[which] = loss.item()

    for _ in range(args.warmup):
        step("previous")
        step("current")
    times: dict[str, list[float]] = {"previous": [], "current": []}
    for r in range(args.repeats):
        for which in (("previous", "current") if r % 2 == 0 else ("current", "previous")):
            t0 = time.perf_counter()
            step(which)
            times[which].append(1000 * (time.perf_counter() - t0))
    prev, cur = (statistics.median(times[k]) for k in ("previous", "current"))
    pairs = statistics.median(a / b for a, b in zip(times["previous"], times["current"]))
    pdiff = max((a - b).abs().max().item() for a, b in zip(models["previous"].parameters(), models["current"].parameters()))
    print(f"setting ({args.setting}) {SETTINGS[args.setting]}, {args.threads} threads, {args.repeats} pairs")
    print(f"previous {prev:.1f} ms, current {cur:.1f} ms: {prev / cur:.2f}x (median of pair ratios {pairs:.2f}x)")
    print(f"after {args.warmup + args.repeats} steps each: loss difference {abs(losses['previous'] - losses['current']):.1e}, "
          f"largest parameter difference {pdiff:.1e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for which in ("previous", "current"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step(which)
            print(f"op shares, {which}: {_shares(prof)}")


if __name__ == "__main__":
    main()
