"""Raw ShapesWorld shards -> token shards (``fourm tokenize``).

For each input shard ``IN/<name>.tar`` one output shard ``OUT/<name>.tar`` holds, under the same
sample keys (so raw and token shards zip by key, as in the reference's one-tar-set-per-modality
layout):

| member            | content                                                   |
|-------------------|-----------------------------------------------------------|
| ``tok_rgb.npy``   | int16 (h, w) token grid of the rgb tokenizer               |
| ``tok_depth.npy`` | int16 (h, w) token grid of the depth tokenizer             |
| ``tok_semseg.npy``| int16 (h, w) token grid of the semseg tokenizer            |
| ``tok_caption.npy`` | int32 (n,) caption token ids, no [EOS] (text tokenizer) |
| ``tok_det.npy``   | int32 (n,) box token ids, no [EOS] (text tokenizer)        |

for the tokenizers found in the tokenizer folder, plus, with ``keep``, raw fields copied as they are
(``keep=("rgb",)`` stores ``rgb.png``: the pixels of the input-only ``rgb`` modality). Images are encoded in batches. A shard whose
output already exists is skipped (outputs are written under a temporary name and renamed, so an
existing one is complete), which makes an interrupted run resumable. ``OUT/metadata.json`` records
the source, the source's metadata and each tokenizer's vocabulary and grid.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.data.shards import encode_sample, list_shards, read_metadata, write_metadata, write_shard
from fourm.vq.normalize import IMAGE_MODALITIES
from fourm.vq.vqvae import CONFIG_NAME, ImageTokenizer

SEQUENCE_FIELDS: tuple[str, ...] = ("caption", "det")
KEEPABLE: tuple[str, ...] = ("rgb", "depth", "semseg", "caption", "det")


def _kept(sample: Mapping, keep: tuple[str, ...]) -> dict:
    """The raw fields ``keep`` of a decoded sample, in the layout :func:`encode_sample` writes back."""
    out = {}
    for f in keep:
        v = sample[f]
        if f == "rgb":  # decoded (3, H, W) -> stored (H, W, 3)
            v = np.ascontiguousarray(np.asarray(v).transpose(1, 2, 0))
        elif f in ("depth", "semseg"):
            v = np.asarray(v)
        out[f] = v
    return out


def token_field(modality: str) -> str:
    """Name of the token member of ``modality``: ``tok_rgb``, ``tok_caption`` ..."""
    return f"tok_{modality}"


def _tokenizer_info(tokenizers: Mapping[str, torch.nn.Module], tokenizer_dir: Path | None) -> dict:
    info = {}
    for name, tok in tokenizers.items():
        if isinstance(tok, ImageTokenizer):
            entry = {"vocab_size": tok.codebook_size, "downsample": tok.config.downsample, "dtype": "int16"}
            if tokenizer_dir is not None and (tokenizer_dir / name / CONFIG_NAME).is_file():
                entry["config_sha256"] = hashlib.sha256((tokenizer_dir / name / CONFIG_NAME).read_bytes()).hexdigest()
        else:
            entry = {"vocab_size": int(tok.vocab_size), "dtype": "int32"}
        info[name] = entry
    return info


def _chunks(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for s in samples:
        chunk.append(s)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def tokenize_samples(samples: list[dict], tokenizers: Mapping[str, torch.nn.Module]) -> list[dict[str, np.ndarray]]:
    """Token arrays of a batch of decoded samples (as ``ShardDataset`` yields them).

    Args:
        samples: dicts with the raw fields (rgb (3, H, W) uint8, depth (H, W), semseg (H, W),
            caption str, det list of boxes) of the tokenizers given.
        tokenizers: {"rgb": ImageTokenizer, ..., "text": TextTokenizer}.
    Returns:
        One dict per sample: ``tok_<field>`` -> int16 (h, w) grid or int32 (n,) ids.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in samples]
    for m in IMAGE_MODALITIES:
        tok = tokenizers.get(m)
        if tok is None:
            continue
        batch = torch.stack([torch.as_tensor(s[m]) for s in samples])
        codes = tok.encode(batch).cpu()
        if tok.codebook_size > 2**15:
            raise ValueError(f"{m} tokenizer has {tok.codebook_size} codes; int16 token grids hold at most {2**15}")
        for o, c in zip(out, codes):
            o[token_field(m)] = c.numpy().astype(np.int16)
    text = tokenizers.get("text")
    if text is not None:
        from fourm.vq.boxes import boxes_to_ids

        for o, s in zip(out, samples):
            if "caption" in s:
                o[token_field("caption")] = np.asarray(text.encode(s["caption"]), dtype=np.int32)
            if "det" in s:
                o[token_field("det")] = np.asarray(boxes_to_ids(s["det"], text), dtype=np.int32)
    return out


def tokenize_shards(
    input_shards: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizers: Mapping[str, torch.nn.Module],
    batch_size: int = 64,
    tokenizer_dir: str | os.PathLike | None = None,
    progress: bool = True,
    keep: tuple[str, ...] | list[str] = (),
) -> dict:
    """Write one token shard per input shard (skipping those already written).

    Args:
        input_shards: shard spec (folder, glob, brace range) of raw ShapesWorld shards.
        output_dir: folder of the token shards (same file names as the inputs).
        tokenizers: {"rgb": ImageTokenizer, ..., "text": TextTokenizer}; one output field each
            (the text tokenizer gives ``tok_caption`` and ``tok_det``).
        batch_size: images per encoder call.
        tokenizer_dir: where the tokenizers were loaded from (recorded in the metadata).
        progress: show a progress bar over shards.
        keep: raw fields copied unchanged into the token shards (``rgb`` for a model with rgb pixel input).
    Returns:
        {"written": [paths], "skipped": [paths already present], "samples": samples written}.
    """
    from fourm.data.shards import ShardDataset

    if not tokenizers:
        raise ValueError("no tokenizers given")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    keep = tuple(keep)
    bad = [f for f in keep if f not in KEEPABLE]
    if bad:
        raise ValueError(f"keep={list(keep)}: {bad[0]!r} is not a raw field; allowed: {', '.join(KEEPABLE)}")
    paths = list_shards(input_shards)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if Path(p).resolve().parent == out_dir.resolve():
            raise ValueError(f"output folder {out_dir} holds the input shard {p}; choose another output folder")
    fields = [m for m in IMAGE_MODALITIES if m in tokenizers]
    read = list(dict.fromkeys(fields + [f for f in keep if f not in SEQUENCE_FIELDS]))
    optional = list(dict.fromkeys((list(SEQUENCE_FIELDS) if "text" in tokenizers else [])
                                  + [f for f in keep if f in SEQUENCE_FIELDS]))
    src_meta = None
    src_dir = Path(paths[0]).parent
    if (src_dir / "metadata.json").is_file():
        src_meta = read_metadata(src_dir)
    write_metadata(out_dir, {
        "kind": "token_shards",
        "source": str(src_dir),
        "source_metadata": src_meta,
        "tokenizer_dir": None if tokenizer_dir is None else str(tokenizer_dir),
        "tokenizers": _tokenizer_info(tokenizers, None if tokenizer_dir is None else Path(tokenizer_dir)),
        "fields": {token_field(m): tokenizers[m].codebook_size for m in fields}
        | ({token_field(f): "text" for f in SEQUENCE_FIELDS} if "text" in tokenizers else {})
        | {f: "raw" for f in keep},
    })
    written, skipped, n_samples = [], [], 0
    bar = tqdm(paths, desc="tokenize", unit="shard", disable=not progress)
    for path in bar:
        target = out_dir / Path(path).name
        if target.exists():
            skipped.append(str(target))
            continue
        ds = ShardDataset(path, fields=read, optional=optional)

        def items() -> Iterator[tuple[str, dict[str, bytes]]]:
            for chunk in _chunks(iter(ds), batch_size):
                for sample, toks in zip(chunk, tokenize_samples(chunk, tokenizers)):
                    yield sample["__key__"], encode_sample(toks | _kept(sample, keep))

        n_samples += write_shard(target, items())
        written.append(str(target))
        bar.set_postfix(samples=n_samples)
    bar.close()
    return {"written": written, "skipped": skipped, "samples": n_samples}


def read_token_metadata(directory: str | os.PathLike) -> dict:
    """The metadata of a token shard folder (raises if the folder does not hold token shards)."""
    meta = read_metadata(directory)
    if meta.get("kind") != "token_shards":
        raise ValueError(f"{directory} does not hold token shards (metadata kind {meta.get('kind')!r})")
    return meta
