"""A local Hugging Face Hub cache, laid out as ``huggingface_hub`` lays it out, for offline tests.

    <cache>/models--<owner>--<name>/blobs/<sha256>                  file contents
    <cache>/models--<owner>--<name>/snapshots/<commit>/<path>       relative symlinks to the blobs
    <cache>/models--<owner>--<name>/refs/<branch or tag>            the commit it points at

``huggingface_hub.scan_cache_dir`` reads it back (``test_hub.py`` checks that), and
``snapshot_download(..., local_files_only=True)`` or ``HF_HUB_OFFLINE=1`` serve it without a network.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def publish(cache: Path, repo_id: str, folder: Path, ref: str = "main") -> str:
    """Put every file under ``folder`` into ``cache`` as one commit of ``repo_id``, point ``ref`` at
    it, and return the commit hash (40 hex digits, derived from the contents)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode())
    for p in files:
        digest.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    commit = digest.hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for p in files:
        data = p.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return commit
