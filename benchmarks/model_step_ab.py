"""Training-step time with the reused CPU memory on and off (``FourM.set_cpu_memory_reuse``), in one process.

    .venv/bin/python benchmarks/model_step_ab.py --setting a --threads 2 --repeats 20
    .venv/bin/python benchmarks/model_step_ab.py --setting b --threads 2 --repeats 6 --profile

Two twins with the same weights and batch (benchmarks/model_step.py's settings) take turns, so
that load from other processes hits both alike:
  off: plain PyTorch, fresh vocabulary-table gradients and logits every step
       (``reuse_cpu_memory: false`` in a training config);
  on:  fourm.models.cpu_memory: table and head gradients in memory kept from step to step (only
       the rows written the step before cleared), the fused head + cross-entropy (the default).
Prints both medians, their ratio, the median of per-pair ratios, the loss and parameter
differences after the steps (same maths: float rounding only), and with ``--profile`` the op
shares of each (torch.profiler, self CPU time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from fourm.modalities import ml4m_modalities
from fourm.models import FourM, FourMConfig

sys.path.insert(0, str(Path(__file__).parent))
from model_step import SETTINGS, make_batch  # noqa: E402

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
    models = {"off": FourM(cfg), "on": FourM(cfg)}  # same seed: same weights
    models["off"].set_cpu_memory_reuse(False)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05, fused=True) for k, m in models.items()}
    batch = make_batch(reg, 8, 128, 128)
    losses = {}

    def step(which: str) -> None:
        model, opt = models[which], opts[which]
        loss = model(batch, 128, 128).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[which] = loss.item()

    for _ in range(args.warmup):
        step("off")
        step("on")
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.repeats):
        for which in (("off", "on") if r % 2 == 0 else ("on", "off")):
            t0 = time.perf_counter()
            step(which)
            times[which].append(1000 * (time.perf_counter() - t0))
    prev, cur = (statistics.median(times[k]) for k in ("off", "on"))
    pairs = statistics.median(a / b for a, b in zip(times["off"], times["on"]))
    pdiff = max((a - b).abs().max().item() for a, b in zip(models["off"].parameters(), models["on"].parameters()))
    print(f"setting ({args.setting}) {SETTINGS[args.setting]}, {args.threads} threads, {args.repeats} pairs")
    print(f"reuse off {prev:.1f} ms, on {cur:.1f} ms: {prev / cur:.2f}x (median of pair ratios {pairs:.2f}x)")
    print(f"after {args.warmup + args.repeats} steps each: loss difference {abs(losses['off'] - losses['on']):.1e}, "
          f"largest parameter difference {pdiff:.1e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for which in ("off", "on"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step(which)
            print(f"op shares, {which}: {_shares(prof)}")


if __name__ == "__main__":
    main()
