"""Synthetic token shards in the layout of ``fourm tokenize``, for tests, benchmarks and smoke runs.

    write_synthetic_token_shards("tmp/tok", cfg.registry(), num_samples=256, shard_size=64)

Each sample holds ``tok_rgb`` / ``tok_depth`` / ``tok_semseg`` int16 grids and ``tok_caption`` /
``tok_det`` int32 id lists (no [EOS]; ids above the sentinels), and ``rgb`` uint8 pixels when the
registry has that pixel modality, like real token shards (``fourm tokenize --keep rgb``). The other
modalities are functions of the rgb tokens (depth = rgb mod its vocabulary, and so on), so a model
can lower its loss by predicting across modalities, which makes smoke runs informative.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fourm.data.shards import ShardWriter, encode_sample, write_metadata
from fourm.masking import NUM_SENTINELS, SENTINEL_OFFSET
from fourm.modalities import ModalityRegistry

FIRST_WORD_ID = SENTINEL_OFFSET + NUM_SENTINELS  # ids below are [PAD], [UNK], [SOS], [EOS] and sentinels


def synthetic_sample(registry: ModalityRegistry, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample: shard field -> array, for every modality of ``registry`` (pixels: one colour per
    patch, a function of the same base as the image tokens)."""
    base = None
    out: dict[str, np.ndarray] = {}
    for spec in registry:
        if spec.kind == "image":
            rows, cols = spec.grid
            if base is None:
                base = rng.integers(0, 2**15, size=(rows, cols))
            out[spec.token_field] = (base % spec.vocab_size).astype(np.int16)
        elif spec.kind == "pixels":  # stored as ``fourm tokenize --keep rgb`` stores it: (H, W, C) uint8
            rows, cols = spec.grid
            if base is None:
                base = rng.integers(0, 2**15, size=(rows, cols))
            colours = np.stack([(base * (c + 1) * 37) % 256 for c in range(spec.in_channels)], axis=-1)
            patch = np.ones((spec.patch_size, spec.patch_size, 1), dtype=np.int64)
            out[spec.token_field] = np.kron(colours, patch).astype(np.uint8)  # one flat colour per patch
        elif spec.kind == "sequence":
            if spec.vocab_size <= FIRST_WORD_ID:
                raise ValueError(f"{spec.name}: vocab_size={spec.vocab_size} leaves no word ids above {FIRST_WORD_ID}")
            n = int(rng.integers(1, spec.max_length + 1))
            seed = base.ravel() if base is not None else rng.integers(0, 2**15, size=spec.max_length)
            ids = FIRST_WORD_ID + (np.resize(seed, n) * (3 + len(out))) % (spec.vocab_size - FIRST_WORD_ID)
            out[spec.token_field] = ids.astype(np.int32)
    return out


def write_synthetic_token_shards(out_dir: str | os.PathLike, registry: ModalityRegistry, num_samples: int,
                                 shard_size: int = 256, seed: int = 0) -> list[str]:
    """Write ``num_samples`` synthetic samples as token shards (keys ``000000`` ...) plus ``metadata.json``.

    Args:
        out_dir: folder for ``shard-XXXXX.tar``.
        registry: the modalities.
        num_samples: samples to write.
        shard_size: samples per shard.
        seed: seed of the token values.

    Returns:
        The shard paths.
    """
    rng = np.random.default_rng(seed)
    with ShardWriter(out_dir, shard_size=shard_size) as w:
        for i in range(num_samples):
            w.write(f"{i:06d}", encode_sample(synthetic_sample(registry, rng)))
    write_metadata(out_dir, {"kind": "token_shards", "source": "synthetic", "seed": seed,
                             "fields": {s.token_field: s.vocab_size if s.kind != "pixels" else "raw" for s in registry}})
    return [str(p) for p in w.shards]


def truncate_file(path: str | os.PathLike, keep_fraction: float) -> None:
    """Cut a file to ``keep_fraction`` of its bytes (simulates an interrupted copy)."""
    p = Path(path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep_fraction)])
