"""FourM training-step and eval-forward speed on CPU, with the released 4M-7 modalities.

    .venv/bin/python benchmarks/model_step.py                 # both settings, 2 threads
    .venv/bin/python benchmarks/model_step.py --setting a --repeats 15 --profile
    .venv/bin/python benchmarks/model_step.py --reference-style   # + the reference's algorithm, same run

Settings (batch 8, 128 input + 128 target tokens per sample, 4M-7 vocabularies):
  (a) dim 96, 3 + 3 layers, 3 heads;  (b) dim 768, 2 + 2 layers, 12 heads.
A training step is forward + backward + AdamW step (+ zero_grad). Prints the median over
``--repeats`` steps (the machine is shared: use the median of several runs), tokens/s, and where
the time goes: embedding+selection, encoder, decoder, heads+loss, backward, optimizer; with
``--profile`` also torch.profiler's top ops.

The 4M reference (apple/ml-4m) measured on this machine in the same settings: (a) about 280 ms per
training step, 175 ms forward+backward; (b) about 3.8 s and 1.7 s. Since the cores are shared and
timings move with the load, ``--reference-style`` also times the reference's algorithm
(benchmarks/reference_style.py, same weights, same loss, default AdamW) interleaved with fourm in
the same run, which gives a ratio that the load affects far less.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fourm.modalities import ml4m_modalities
from fourm.compat.ml4m import add_reference_tables, reference_mod_losses
from fourm.models import DecoderState, FourM, FourMConfig

sys.path.insert(0, str(Path(__file__).parent))
from reference_style import explicit_attention, reference_style_loss  # noqa: E402

SETTINGS = {
    "a": dict(dim=96, encoder_depth=3, decoder_depth=3, num_heads=3),
    "b": dict(dim=768, encoder_depth=2, decoder_depth=2, num_heads=12),
}
REFERENCE_MS = {"a": (280.0, 175.0), "b": (3800.0, 1700.0)}  # (train step, fwd+bwd)


def make_batch(reg, batch_size: int, n_in: int, n_tgt: int, seed: int = 0) -> dict:
    """A 4M-style batch: per sample, Dirichlet(1) splits of the input budget across modalities and
    of the target budget across decoder modalities; image inputs/targets disjoint; sequences in the reference layout (inputs at the
    start, target at ``num_tokens``), a target of n positions using n - 1 decoder slots."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    specs = list(reg)
    decoder = [i for i, s in enumerate(specs) if s.decoder]
    batch = {}
    per = {s.name: ([], [], []) for s in specs}
    for _ in range(batch_size):
        w_in = rng.dirichlet(np.ones(len(specs)))
        w_tgt = np.zeros(len(specs))
        w_tgt[decoder] = rng.dirichlet(np.ones(len(decoder)))  # targets only where there is a decoder
        for i, s in enumerate(specs):
            if s.kind == "pixels":
                L = s.num_tokens
                k_in, k_tgt = min(int(w_in[i] * n_in), L), 0
            elif s.kind == "image":
                L = s.num_tokens
                k_in = min(int(w_in[i] * n_in), L)
                k_tgt = min(int(w_tgt[i] * n_tgt), L - k_in)
            else:
                L = 2 * s.num_tokens
                k_in = min(int(w_in[i] * n_in), s.num_tokens)
                k_tgt = min(int(w_tgt[i] * n_tgt) + 1, s.num_tokens)  # n positions -> n - 1 slots
            if s.kind == "sequence":
                pos = torch.arange(L)
                is_in, is_tgt = pos < k_in, (pos >= s.num_tokens) & (pos < s.num_tokens + k_tgt)
                tokens = torch.randint(4, s.vocab_size, (L,), generator=g) * (is_in | is_tgt)
            else:
                rank = torch.randperm(L, generator=g)
                is_in, is_tgt = rank < k_in, (rank >= k_in) & (rank < k_in + k_tgt)
                tokens = (torch.randn(s.in_channels, *s.image_size, generator=g) if s.kind == "pixels"
                          else torch.randint(0, s.vocab_size, (L,), generator=g))
            for lst, t in zip(per[s.name], (tokens, is_in, is_tgt)):
                lst.append(t)
    for name, (tok, is_in, is_tgt) in per.items():
        batch[name] = {"tokens": torch.stack(tok), "is_input": torch.stack(is_in), "is_target": torch.stack(is_tgt)}
    return batch


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def _ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def breakdown(model: FourM, batch: dict, n: int, m: int, opt: torch.optim.Optimizer, repeats: int) -> dict[str, float]:
    """Median ms of each stage of a training step, timed separately."""
    times: dict[str, list[float]] = {k: [] for k in ("select+embed", "encoder", "decoder", "heads+loss", "backward", "optimizer")}
    for _ in range(repeats):
        t = [time.perf_counter()]
        sel = model.select_encoder_tokens(batch, n)
        tokens, emb = model.embed_encoder(batch, sel)
        dsel = model.select_decoder_tokens(batch, m)
        x, demb, targets = model.embed_decoder(batch, dsel)
        t.append(time.perf_counter())
        out = model.run_encoder(tokens + emb, sel.is_valid)
        context = model.decoder_proj_context(out) + emb
        t.append(time.perf_counter())
        hidden = model.run_decoder(x + demb, context, model.decoder_self_mask(dsel), sel.is_valid)
        t.append(time.perf_counter())
        loss = model.forward_loss(DecoderState(demb, x + demb, hidden, targets, dsel)).loss
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        for key, a, b in zip(times, t[:-1], t[1:]):
            times[key].append(1000 * (b - a))
    return {k: statistics.median(v) for k, v in times.items()}


def _interleaved(fns: list, repeats: int) -> list[list[float]]:
    """ms per call of each function, alternating between them so that load hits all alike."""
    out = [[] for _ in fns]
    for _ in range(repeats):
        for times, fn in zip(out, fns):
            times.append(_ms(fn, 1)[0])
    return out


def _line(label: str, times: list[float], tokens: int, extra: str = "") -> str:
    med = statistics.median(times)
    return (f"{label:22s} {med:8.1f} ms  (min {min(times):.1f}, max {max(times):.1f})  "
            f"{tokens / med * 1000:9.0f} tokens/s{extra}")


def step_gflop(model: FourM, batch: dict, n: int, m: int) -> float:
    """Floating-point operations (GFLOP) of one forward + backward, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(batch, n, m).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def gemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Throughput of a square float32 matmul on the current threads: the machine's compute yardstick."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def run(setting: str, args) -> None:
    reg = ml4m_modalities("4m7")
    model = FourM(FourMConfig(modalities=reg, **SETTINGS[setting]))
    model.set_cpu_memory_reuse(not args.no_grad_reuse)
    batch = make_batch(reg, args.batch_size, args.input_tokens, args.target_tokens)
    n, m = args.input_tokens, args.target_tokens
    params = [p for p in model.parameters() if p.requires_grad]
    opt_kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[args.optimizer]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, **opt_kw)

    def train_step():
        loss = model(batch, n, m).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def fwd_bwd():
        model(batch, n, m).loss.backward()
        model.zero_grad(set_to_none=True)

    def eval_fwd():
        with torch.no_grad():
            model(batch, n, m)

    steps, fbs, evs = [train_step], [fwd_bwd], [eval_fwd]
    if args.reference_style:  # the reference's algorithm on a twin with the same weights
        twin = add_reference_tables(FourM(FourMConfig(modalities=reg, **SETTINGS[setting])))  # + unused image tables
        twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.05)  # defaults, as the reference

        def ref_loss():
            with explicit_attention():
                return reference_style_loss(twin, batch, n, m)

        def ref_step():
            loss = ref_loss()
            loss.backward()
            twin_opt.step()
            twin_opt.zero_grad(set_to_none=True)

        def ref_fwd_bwd():
            ref_loss().backward()
            twin.zero_grad(set_to_none=True)

        def ref_eval():
            with torch.no_grad():
                ref_loss()

        with torch.no_grad():
            mine = torch.stack(list(reference_mod_losses(model(batch, n, m, return_logits=True)).values())).mean()
            diff = abs(mine.item() - ref_loss().item())  # the reference counts modalities without targets as 0
        steps, fbs, evs = steps + [ref_step], fbs + [ref_fwd_bwd], evs + [ref_eval]

    load_before = _load()
    n_params = sum(p.numel() for p in params)
    vocab = sum(p.numel() for name, p in model.named_parameters() if "token_emb" in name or "to_logits" in name)
    print(f"\n== setting ({setting}) {SETTINGS[setting]}; {n_params / 1e6:.1f}M params "
          f"({vocab / 1e6:.1f}M in vocabulary tables), batch {args.batch_size}, {n} input / {m} target tokens, "
          f"{torch.get_num_threads()} threads, AdamW {args.optimizer}, gradient memory "
          f"{'fresh' if args.no_grad_reuse else 'reused'}")
    if args.reference_style:
        print(f"reference-style twin: same weights, loss differs from fourm's by {diff:.1e}")
    for _ in range(args.warmup):
        for fn in steps:
            fn()
    step = _interleaved(steps, args.repeats)
    fb = _interleaved(fbs, args.repeats)
    model.eval()
    ev = _interleaved(evs, args.repeats)
    model.train()
    ref_step_ms, ref_fb_ms = REFERENCE_MS[setting]
    tokens = args.batch_size * (n + m)
    med = statistics.median
    print(_line("train step", step[0], tokens, f"  ml-4m measured ~{ref_step_ms:.0f} ms -> {ref_step_ms / med(step[0]):.2f}x"))
    print(_line("fwd+bwd", fb[0], tokens, f"  ml-4m measured ~{ref_fb_ms:.0f} ms -> {ref_fb_ms / med(fb[0]):.2f}x"))
    print(_line("eval forward", ev[0], tokens))
    if args.reference_style:
        for label, mine, ref in (("train step", step[0], step[1]), ("fwd+bwd", fb[0], fb[1]), ("eval forward", ev[0], ev[1])):
            print(_line(f"ref-style {label}", ref, tokens, f"  -> fourm {med(ref) / med(mine):.2f}x faster (same run)"))
    gflop = step_gflop(model, batch, n, m)
    print(f"work: {gflop:.1f} GFLOP per fwd+bwd (torch.utils.flop_counter) -> {gflop / med(fb[0]) * 1e3:.0f} GFLOP/s "
          f"achieved; this machine's {torch.get_num_threads()}-thread 2048^3 float32 matmul now: {gemm_gflops():.0f} GFLOP/s "
          f"(compare machines by this, not by ms)")
    parts = breakdown(model, batch, n, m, opt, max(3, args.repeats // 2))
    print(f"load average (1 min) before {load_before}, after {_load()}: other processes share the cores")
    total = sum(parts.values())
    print("breakdown (median ms): " + ", ".join(f"{k} {v:.1f} ({100 * v / total:.0f}%)" for k, v in parts.items()))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=["a", "b", "both"], default="both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--target-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--optimizer", choices=["fused", "foreach", "loop"], default="fused")
    p.add_argument("--no-grad-reuse", action="store_true",
                   help="allocate fresh vocabulary-table gradients every step (FourM.set_cpu_memory_reuse(False))")
    p.add_argument("--reference-style", action="store_true",
                   help="also time the reference's algorithm (benchmarks/reference_style.py) in the same run")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-rows", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for s in (["a", "b"] if args.setting == "both" else [args.setting]):
        run(s, args)


if __name__ == "__main__":
    main()
