"""``load_tokenizers``: every tokenizer of a folder, by name.

    toks = load_tokenizers("tokenizers/shapes64")    # {"depth": ImageTokenizer, "rgb": ..., "semseg": ..., "text": TextTokenizer}
    toks = load_tokenizers("org/shapes64-tokenizers", revision="v1")   # the same folder as a Hub repo
    toks[spec.tokenizer].encode(...)                  # a modality finds its tokenizer by ModalitySpec.tokenizer

A tokenizer set is a folder with one subfolder per tokenizer, named after it: an image tokenizer
(``ImageTokenizer.save_pretrained``; the folder name is its ``modality``, which is also the raw
field it reads) or a text tokenizer (``TextTokenizer.save_pretrained``; ``text`` serves caption
and det). A new modality brings its own subfolder (``normal/``); nothing here lists names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fourm.hub import resolve_pretrained
from fourm.vq.text import TOKENIZER_TYPE, TextTokenizer
from fourm.vq.vqvae import CONFIG_NAME, ImageTokenizer


def tokenizer_type(folder: str | os.PathLike) -> str | None:
    """``"image"``, ``"text"`` or None (not a tokenizer folder), from the folder's ``config.json``."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("class") == ImageTokenizer.__name__:
        return "image"
    if meta.get("tokenizer_type") == TOKENIZER_TYPE:
        return "text"
    raise ValueError(f"{path} is neither an image tokenizer ({ImageTokenizer.__name__}.save_pretrained) nor a text "
                     f"tokenizer (tokenizer_type {TOKENIZER_TYPE!r})")


def load_tokenizers(path_or_repo_id: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    token: str | bool | None = None, local_files_only: bool = False,
                    force_download: bool = False) -> dict[str, Any]:
    """Load every tokenizer in a folder (or a Hub repo laid out as one), one per subfolder with a
    ``config.json``.

    Args:
        path_or_repo_id: the tokenizer set: a folder, or a Hub repo id (``owner/name``; see :mod:`fourm.hub`).
        map_location: device of the image tokenizers.
        revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
            :func:`fourm.hub.resolve_pretrained`.
    Returns:
        ``{folder name: ImageTokenizer | TextTokenizer}``, sorted by name.
    Raises:
        FileNotFoundError: neither a folder nor a loadable repo, or it holds no tokenizer.
        ValueError: an image tokenizer sits in a folder not named after its modality (``rgb``) or a
            variant of it (``rgb_gen``: a second rgb tokenizer, which a modality spec names with
            ``tokenizer: rgb_gen`` and ``raw_field: rgb``).
    """
    root = resolve_pretrained(path_or_repo_id, what="a tokenizer folder (one subfolder per tokenizer: rgb/, text/ ...)",
                              revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                              force_download=force_download)
    out: dict[str, Any] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        kind = tokenizer_type(sub)
        if kind == "image":
            tok = ImageTokenizer.from_pretrained(sub, map_location=map_location)
            if sub.name != tok.modality and not sub.name.startswith(f"{tok.modality}_"):
                raise ValueError(f"{sub} holds a {tok.modality!r} tokenizer; move it to {root / tok.modality} (or to "
                                 f"a variant folder {tok.modality}_<name>, e.g. {tok.modality}_gen)")
            out[sub.name] = tok
        elif kind == "text":
            out[sub.name] = TextTokenizer.from_pretrained(sub)
    if not out:
        raise FileNotFoundError(f"no tokenizer found in {root}; expected subfolders with a config.json written by "
                                "ImageTokenizer.save_pretrained (rgb/, depth/, ...) or TextTokenizer.save_pretrained (text/)")
    return out
