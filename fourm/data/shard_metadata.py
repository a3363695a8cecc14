"""Whether a shard folder's ``metadata.json`` still describes the shards in it.

The writers of shard folders (``fourm data shapes``, ``fourm tokenize``) record every shard they
wrote under ``shard_files``: its size and the sha256 of its first :data:`HEAD_BYTES` bytes (the
first sample's tar headers and data; a stat and one small read per shard to check)::

    "shard_files": {"shard-00000.tar": {"bytes": 1234944, "head_sha256": "9f2c..."}, ...}

:func:`check_shard_folder` (run by :class:`~fourm.data.shard_reader.ShardDataset` for every
folder it is given) refuses with :class:`ShardMetadataError` a folder where

* a ``.tar`` is not listed, or a listed shard is missing (two writers mixed their shards, or a
  copy is incomplete);
* a shard's first bytes differ from those recorded, or it grew: a shard of another run (another
  seed, image size or tokenizer) under the same name.

A shard shorter than recorded whose first bytes match is a cut copy: the reader keeps its
fault tolerance there (the damaged tail is skipped and counted). Folders without metadata, and
metadata written before these records, are checked for the shard names they list, if any.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from fourm.errors import FourmError

METADATA_NAME = "metadata.json"
RECORDS_KEY = "shard_files"
HEAD_BYTES = 4096


class ShardMetadataError(FourmError, ValueError):
    """A shard folder whose metadata does not describe its shards."""


def head_sha256(path: str | os.PathLike, size: int = HEAD_BYTES) -> str:
    """Hex sha256 of the first ``size`` bytes of a file (all of it when shorter)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def describe_shards(paths: Iterable[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """The ``shard_files`` record of written shards: file name -> ``{"bytes", "head_sha256"}``."""
    return {Path(p).name: {"bytes": os.path.getsize(p), "head_sha256": head_sha256(p)} for p in sorted(map(str, paths))}


def _mismatch(folder: Path, problem: str) -> ShardMetadataError:
    return ShardMetadataError(
        f"shard folder {folder}: {problem}; its {METADATA_NAME} does not describe the shards in it (two writers in one "
        "folder, or files copied in). Write the data set again into an empty folder (fourm data shapes --overwrite, "
        "or fourm tokenize into a new --output)")


def check_shard_folder(folder: str | os.PathLike) -> None:
    """Raise if ``folder/metadata.json`` does not describe the ``.tar`` files in ``folder``.

    Raises:
        ShardMetadataError: an unlisted or missing shard, or a shard whose first bytes or size
            differ from the record (see the module docstring); unreadable metadata.
    """
    folder = Path(folder)
    meta_path = folder / METADATA_NAME
    if not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShardMetadataError(f"shard folder {folder}: {METADATA_NAME} is not readable JSON ({e}); restore it "
                                 "or write the data set again") from None
    if not isinstance(meta, dict):
        raise ShardMetadataError(f"shard folder {folder}: {METADATA_NAME} holds {type(meta).__name__}, not an object")
    records = meta.get(RECORDS_KEY)
    listed = sorted(records) if isinstance(records, dict) else meta.get("shards")
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        return  # metadata of a writer that lists no shards
    present = sorted(p.name for p in folder.glob("*.tar") if p.is_file())
    extra = [n for n in present if n not in set(listed)]
    missing = [n for n in listed if n not in set(present)]
    if extra:
        raise _mismatch(folder, f"{len(extra)} shard(s) not listed in {METADATA_NAME}, e.g. {extra[0]!r}")
    if missing:
        raise _mismatch(folder, f"{len(missing)} listed shard(s) missing, e.g. {missing[0]!r}")
    if not isinstance(records, dict):
        return
    for name, rec in records.items():
        path = folder / name
        size = path.stat().st_size
        want = rec.get("bytes") if isinstance(rec, dict) else None
        if not isinstance(want, int) or not isinstance(rec.get("head_sha256"), str):
            raise _mismatch(folder, f"the record of {name!r} lacks bytes or head_sha256")
        head = min(HEAD_BYTES, want)
        if size < head:  # cut inside its first bytes: nothing to compare; the reader skips the damage
            continue
        if head_sha256(path, head) != rec["head_sha256"]:
            raise _mismatch(folder, f"{name!r} is not the shard that was written under that name (its first bytes "
                                    "differ: another run's shard, e.g. of another seed or image size)")
        if size > want:
            raise _mismatch(folder, f"{name!r} has {size} bytes, {want} were written")


def check_shard_folders(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
    """:func:`check_shard_folder` for every folder among shard specs (globs, files and brace ranges
    pick shards on purpose and are not checked)."""
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    for spec in specs:
        if os.path.isdir(spec):
            check_shard_folder(spec)
