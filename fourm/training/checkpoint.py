"""Training checkpoints: one folder per step, written atomically, the newest K kept.

Layout of ``out_dir/checkpoints/step-00001000/``::

    meta.json          format name and version, step, world size (written last)
    train_config.json  the resolved TrainConfig
    model/             FourM.save_pretrained: config.json + model.safetensors
    optimizer.pt       optimizer state dict (full, not sharded)
    trainer_state.pt   scheduler, data position, counters, RNG states of every process

The folder is assembled under a hidden temporary name and renamed into place, so a folder with the
final name is always complete: a crash while saving leaves the previous checkpoint as the newest.
``latest_checkpoint`` ignores temporary folders, and :func:`prune_checkpoints` deletes all but the
``keep_last`` newest. :func:`load_initial_weights` starts a run's model from a saved model folder
(``init_from``), checking that the architecture matches.

RNG states: Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA
device's generator, per process. (The trainer itself draws only from seeded, stateless
generators; the global ones are saved so that user code and libraries resume exactly too.)
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fourm.config import ConfigError, save_json_atomic
from fourm.models import FourM

logger = logging.getLogger(__name__)

FORMAT_NAME = "fourm.training.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
META_NAME = "meta.json"
MODEL_DIR = "model"
OPTIMIZER_NAME = "optimizer.pt"
STATE_NAME = "trainer_state.pt"
CONFIG_NAME = "train_config.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")
# Settings that may differ between a run and the checkpoint it resumes from (prefixes of dotted keys).
RESUME_MAY_CHANGE = ("out_dir", "logging.", "checkpoint.", "val.", "data.num_workers", "data.prefetch_factor",
                     "threads", "max_nonfinite_steps")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out_dir/checkpoints``, as (step, path), oldest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / META_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """``None`` -> fresh run; ``"auto"`` -> the newest checkpoint of ``out_dir`` (or fresh); else a path.

    Raises:
        FileNotFoundError: an explicit path that is not a complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    p = Path(resume)
    if not (p / META_NAME).is_file():
        example = Path(out_dir) / CHECKPOINT_DIR / checkpoint_name(1000)
        raise FileNotFoundError(f"--resume {resume!r}: no checkpoint there (missing {META_NAME}); "
                                f"give a folder like {example} or 'auto'")
    return p


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta.json``, with its format checked."""
    meta = json.loads((Path(path) / META_NAME).read_text())
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                         f"this fourm reads {FORMAT_NAME!r} version {FORMAT_VERSION}")
    return meta


# ---- RNG ----------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """The global RNG states of this process (python, numpy, torch CPU, all CUDA devices)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- writing ------------------------------------------------------------------------------------

@dataclass
class CheckpointWriter:
    """Assembles one checkpoint folder under a temporary name; :meth:`commit` renames it.

    Only the main process writes. ``path`` is the final folder, ``tmp`` the one being filled.
    """

    out_dir: Path
    step: int

    def __post_init__(self) -> None:
        root = Path(self.out_dir) / CHECKPOINT_DIR
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / checkpoint_name(self.step)
        self.tmp = root / f".{checkpoint_name(self.step)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self.tmp.mkdir()

    def save_torch(self, name: str, obj: Any) -> None:
        with open(self.tmp / name, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    def save_json(self, name: str, obj: Any) -> None:
        save_json_atomic(obj, self.tmp / name)

    def commit(self, world_size: int) -> Path:
        """Write ``meta.json`` and move the folder into place (replacing a same-step checkpoint)."""
        self.save_json(META_NAME, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                   "step": self.step, "world_size": world_size})
        old = None
        if self.path.exists():  # e.g. the same step saved again after a resume: swap, then delete
            old = self.path.with_name(f".{self.path.name}.old.{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints and stale temporary folders; returns what was deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: must be >= 1")
    found = list_checkpoints(out_dir)
    removed = [p for _, p in found[:-keep_last]]
    root = Path(out_dir) / CHECKPOINT_DIR
    if root.is_dir():  # leftovers of a crash while saving (this process's own are renamed by now)
        removed += [p for p in root.iterdir() if p.name.startswith(".step-") and p.is_dir()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint (RNG states hold numpy arrays and tuples: not weights-only)."""
    return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=False)


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(path) / OPTIMIZER_NAME, map_location="cpu", weights_only=True)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def _architecture(config: dict) -> dict:
    """A FourMConfig dict with its modality list keyed by name, so that a diff names the field."""
    return {**config, "modalities": {m["name"]: m for m in config.get("modalities", [])}}


def check_resume_config(saved: dict, current: dict) -> None:
    """Raise if settings that shape the run differ from the checkpoint's (shard paths may move)."""
    a, b = _flatten(saved), _flatten(current)
    bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                 and not k.startswith(RESUME_MAY_CHANGE) and not (k.startswith("data.train.") and ".shards" in k))
    if bad:
        diffs = "; ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in bad[:5])
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's in {diffs}. Resume with the "
                          "same settings, or start a new out_dir")


def load_initial_weights(model: FourM, path: str) -> None:
    """Start ``model`` from the weights of the model folder ``path`` (``init_from``).

    Raises:
        FileNotFoundError: ``path`` is not a model folder.
        ConfigError: its architecture differs from ``model``'s (the differing fields are named).
    """
    folder = Path(path)
    files = [folder / "config.json", folder / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"init_from={path!r}: not a model folder (FourM.save_pretrained), missing {missing}")
    saved = FourM.from_pretrained(folder)
    ours, theirs = _architecture(model.config.to_dict()), _architecture(saved.config.to_dict())
    here, there = list(ours["modalities"]), list(theirs["modalities"])
    diff = [f"modality {n!r} there, not here" for n in sorted(set(there) - set(here))]
    diff += [f"modality {n!r} here, not there" for n in sorted(set(here) - set(there))]
    if not diff and here != there:
        diff.append(f"modality order: {there} there, {here} here")
    shared = set(here) & set(there)  # a modality on one side only is named above, not field by field
    for cfg in (ours, theirs):
        cfg["modalities"] = {n: m for n, m in cfg["modalities"].items() if n in shared}
    a, b = _flatten(theirs), _flatten(ours)
    diff += [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"init_from={path!r}: architecture differs from this run's model: " + "; ".join(diff))
    model.load_state_dict_checked(saved.state_dict())
    logger.info("initialised from %s", folder)
