"""Time UnifiedMasking.mask_batch (ms per batch) on ShapesWorld and 4M-7 sized modalities.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/masking_speed.py
"""
from __future__ import annotations

import argparse
import time

import torch

from fourm.masking import MaskingConfig, UnifiedMasking, all_to_all_component, rgb_to_all_component
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.modalities import ml4m_modalities


def samples_for(reg, batch_size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in reg:
        if spec.kind == "pixels":
            out[spec.name] = torch.randn(batch_size, spec.in_channels, *spec.image_size, generator=g)
        elif spec.kind == "image":
            out[spec.name] = torch.randint(0, spec.vocab_size, (batch_size, spec.num_tokens), generator=g)
        else:
            lengths = torch.randint(1, spec.max_length + 1, (batch_size,), generator=g).tolist()
            out[spec.name] = [torch.randint(204, spec.vocab_size, (n,), generator=g).tolist() for n in lengths]
    return out


def bench(name: str, reg, n_tokens: int, batch_size: int, repeats: int) -> None:
    pixels = [s.name for s in reg if s.kind == "pixels"]
    tokens = [s.name for s in reg if s.kind != "pixels"]
    comps = (all_to_all_component(tokens, 0.5), rgb_to_all_component(pixels[0], tokens))
    masking = UnifiedMasking(MaskingConfig(tuple(reg.names()), comps, n_tokens, n_tokens), reg)
    samples = samples_for(reg, batch_size, 0)
    masking(samples, 0)  # warm-up
    t0 = time.perf_counter()
    for seed in range(repeats):
        masking(samples, seed)
    ms = (time.perf_counter() - t0) / repeats * 1e3
    print(f"{name:12s} B={batch_size:3d} tokens {n_tokens}+{n_tokens}: {ms:7.2f} ms/batch, {ms / batch_size * 1e3:6.1f} us/sample")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench("shapesworld", shapes_world_modalities(), 128, args.batch_size, args.repeats)
    bench("4m7", ml4m_modalities("4m7"), 128, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
