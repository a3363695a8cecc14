"""FourM on CUDA: parity with CPU, a bf16 training loop, the attention backends, and step times.

    python benchmarks/model_gpu_check.py            # needs a CUDA device

Prints the largest CPU-vs-CUDA difference of the loss and logits (float32, TF32 off), whether
bf16-autocast training stays finite and lowers the loss, whether the ``auto`` / ``xformers``
attention backends match SDPA (they fall back to SDPA without xformers), and ms per training
step for the settings of benchmarks/model_step.py on the GPU.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_step import SETTINGS, make_batch  # noqa: E402

from fourm.modalities import ml4m_modalities  # noqa: E402
from fourm.models import FourM, FourMConfig, xformers_available  # noqa: E402

SMALL_VOCAB = {"tok_rgb@224": 512, "tok_depth@224": 256, "tok_normal@224": 256, "tok_semseg@224": 128,
               "tok_clip@224": 256, "caption": 256, "det": 256}


def to(batch: dict, device: str) -> dict:
    return {m: {k: t.to(device) for k, t in d.items()} for m, d in batch.items()}


def parity() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reg = ml4m_modalities("4m7", SMALL_VOCAB)
    model = FourM(FourMConfig(modalities=reg, dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)).eval()
    batch = make_batch(reg, 4, 128, 128, seed=3)
    with torch.no_grad():
        cpu = model(batch, 128, 128, return_logits=True)
        model.cuda()
        gpu = model(to(batch, "cuda"), 128, 128, return_logits=True)
        model.set_attention_backend("auto")
        auto = model(to(batch, "cuda"), 128, 128, return_logits=True)
        model.set_attention_backend("sdpa")
    worst = max((cpu.logits[k] - gpu.logits[k].cpu()).abs().max().item() for k in cpu.logits)
    print(f"parity: loss cpu {cpu.loss.item():.6f} cuda {gpu.loss.item():.6f} diff {abs(cpu.loss.item() - gpu.loss.item()):.2e}; "
          f"largest logit diff {worst:.2e}")
    worst_auto = max((auto.logits[k] - gpu.logits[k]).abs().max().item() for k in gpu.logits)
    print(f"attention backend 'auto' (xformers installed: {xformers_available()}): largest logit diff to sdpa {worst_auto:.2e}")


def bf16_training() -> None:
    reg = ml4m_modalities("4m7", SMALL_VOCAB)
    model = FourM(FourMConfig(modalities=reg, dim=128, encoder_depth=2, decoder_depth=2, num_heads=4)).cuda()
    batch = to(make_batch(reg, 8, 128, 128, seed=4), "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, fused=True)
    losses = []
    for _ in range(60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch, 128, 128).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    print(f"bf16 autocast training: loss {losses[0]:.3f} -> {losses[-1]:.3f} in 60 steps; parameters finite: {finite}")


def timing(setting: str, autocast: bool) -> None:
    reg = ml4m_modalities("4m7")
    model = FourM(FourMConfig(modalities=reg, **SETTINGS[setting])).cuda()
    batch = to(make_batch(reg, 8, 128, 128), "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch, 128, 128).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    print(f"cuda setting ({setting}) {'bf16 autocast' if autocast else 'float32'}: train step {statistics.median(times):.1f} ms "
          f"(min {min(times):.1f})")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    parity()
    bf16_training()
    for setting in ("a", "b"):
        for autocast in (False, True):
            timing(setting, autocast)


if __name__ == "__main__":
    main()
