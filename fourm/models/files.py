"""The files of a saved FourM: ``config.json`` (format name, version, architecture) and
``model.safetensors``, written atomically and read strictly. ``FourM.save_pretrained`` and
``FourM.from_pretrained`` (which also take Hub repo ids, :mod:`fourm.hub`) are built on them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fourm.atomic import atomic_write
from fourm.models.config import FourMConfig

FORMAT_NAME = "fourm.FourM"
FORMAT_VERSION = 2
# Version 1 files also hold a token table per image target (``decoder_embeddings.<name>.token_emb``)
# that the forward never read: the reference has one. read_files drops those tables.
READS_VERSIONS = (1, 2)


def unalias_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy of ``state`` where tensors sharing memory are cloned (safetensors refuses aliases)."""
    out, seen = {}, set()
    for key, t in state.items():
        t = t.detach()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone().contiguous() if ptr in seen else t.contiguous()
        if ptr is not None:
            seen.add(ptr)
    return out


def write_files(path: str | os.PathLike, config: FourMConfig, state: Mapping[str, Tensor],
                dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` (floating-point tensors in ``dtype`` if given) and then
    ``config.json`` into the folder ``path``, each atomically; returns the folder."""
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype}; allowed: a floating-point dtype (e.g. torch.float16) or None")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    tensors = unalias_state_dict(state)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta))
    cfg = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))
    return path


def read_files(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FourMConfig, dict[str, Tensor]]:
    """The architecture and the float32 weights of a folder written by :func:`write_files` (version
    1 files lose their unused image-target token tables).

    Raises:
        FileNotFoundError: no ``config.json``.
        ValueError: another format or a version this code does not read.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a folder written by FourM.save_pretrained")
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("format") != FORMAT_NAME or cfg.get("format_version") not in READS_VERSIONS:
        raise ValueError(f"{path / 'config.json'}: format {cfg.get('format')!r} version {cfg.get('format_version')!r}; "
                         f"expected {FORMAT_NAME!r} version {' or '.join(map(str, READS_VERSIONS))} "
                         "(reference checkpoints: fourm.compat.ml4m)")
    config = FourMConfig.from_dict(cfg["config"])
    state = load_file(str(path / "model.safetensors"), device=str(device))
    if cfg["format_version"] == 1:  # the unused token tables of image targets (see READS_VERSIONS)
        unused = {f"decoder_embeddings.{m.name}.token_emb.weight" for m in config.modalities
                  if m.kind == "image" and m.decoder}
        state = {k: v for k, v in state.items() if k not in unused}
    # weights stored in half precision (save_pretrained(dtype=...)) compute in float32
    return config, {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}
