"""Training checkpoints of every run: one folder per step, written atomically, no pickle.

Layout of ``out_dir/checkpoints/step-00001000/``::

    meta.json               format name and version, step, world size, task (written last)
    train_config.json       the resolved run config
    model/                  the task's model folder (FourM.save_pretrained, ImageTokenizer.save_pretrained)
    optimizer.safetensors   optimizer state tensors (full, not sharded)
    optimizer.json          the rest of the optimizer state (parameter groups; which tensor is which)
    trainer_state.json      scheduler, data position, counters, per-process logging interval and
                            the non-tensor parts of every process's RNG states
    rng.safetensors         every process's RNG state tensors
    task_state.safetensors  tensors the task keeps between steps (e.g. codebook usage), when any

Tensors live in safetensors files and everything else in JSON: loading runs no code from the
files. The folder is assembled under a hidden temporary name and renamed into place, so a folder
with the final name is always complete: a crash while saving leaves the previous checkpoint as the
newest. :func:`latest_checkpoint` ignores temporary folders; :func:`prune_checkpoints` deletes all
but the ``keep_last`` newest. A checkpoint of another format version (version 1 pickled its
trainer state; tokenizer runs wrote ``step_XXXXXXX`` folders) is refused with a message naming it.

RNG states: Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA
device's generator, per process. (The trainer itself re-seeds torch's generator before every step
and the data are pure functions of their position; the global states are saved so that user code
and libraries resume exactly too.)
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fourm.config import ConfigError, save_json_atomic

FORMAT_NAME = "fourm.training.checkpoint"
FORMAT_VERSION = 2
CHECKPOINT_DIR = "checkpoints"
META_NAME = "meta.json"
MODEL_DIR = "model"
CONFIG_NAME = "train_config.json"
STATE_NAME = "trainer_state.json"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
RNG_NAME = "rng.safetensors"
TASK_STATE_NAME = "task_state.safetensors"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_LEGACY_RE = re.compile(r"^step_(\d{7})$")  # tokenizer runs before the single trainer


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _refuse_legacy(root: Path) -> None:
    legacy = sorted(p.name for p in root.iterdir() if _LEGACY_RE.match(p.name))
    if legacy:
        raise ValueError(f"{root} holds checkpoints of an older format ({', '.join(legacy[-2:])}: format version 1, "
                         f"pickled trainer state); this fourm reads {FORMAT_NAME!r} version {FORMAT_VERSION}. "
                         "Train again in a new out_dir (the folder's tokenizer/ or model/ still loads)")


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out_dir/checkpoints``, as (step, path), oldest first.

    Raises:
        ValueError: the folder holds checkpoints of the old tokenizer layout (``step_XXXXXXX``).
    """
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    _refuse_legacy(root)
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
        old = " (version 1 pickled its trainer state and cannot be read any more)" if meta.get("format_version") == 1 else ""
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r} version {meta.get('format_version')!r}"
                         f"{old}; this fourm reads {FORMAT_NAME!r} version {FORMAT_VERSION}. Train again in a new "
                         "out_dir (the folder's model/ still loads)")
    return meta


# ---- RNG ----------------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's global RNG states as (tensors, JSON-able values): python, numpy, torch, CUDA."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    values = {"python": [version, list(words), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, values


def set_rng_state(tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, words, gauss = values["python"]
    random.setstate((version, tuple(words), gauss))
    kind, pos, has_gauss, cached = values["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"].clone())  # a copy with its own storage
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.clone() for c in cuda])


# ---- optimizer state without pickle -------------------------------------------------------------

def optimizer_to_files(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors tensors and JSON (keys may be ints or names)."""
    tensors, entries = {}, []
    for i, (key, fields) in enumerate(state["state"].items()):
        plain = {}
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{i}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[name] = value
        entries.append({"key": key, "tensors": sorted(n for n, v in fields.items() if isinstance(v, torch.Tensor)),
                        "values": plain})
    return tensors, {"state": entries, "param_groups": list(state["param_groups"])}


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer state tensor its parameter's memory layout (safetensors stores
    contiguous tensors; a channels-last parameter's ``exp_avg`` must be channels-last again, or a
    fused kernel that walks both in memory order pairs the wrong elements)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def optimizer_from_files(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_files`."""
    state = {}
    for i, entry in enumerate(meta["state"]):
        state[entry["key"]] = {**entry["values"], **{n: tensors[f"{i}.{n}"] for n in entry["tensors"]}}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


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

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(self.tmp / name))
        _fsync_file(self.tmp / name)

    def save_json(self, name: str, obj: Any) -> None:
        save_json_atomic(obj, self.tmp / name)

    def commit(self, world_size: int, task: str) -> Path:
        """Write ``meta.json`` and move the folder into place (replacing a same-step checkpoint)."""
        self.save_json(META_NAME, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                   "step": self.step, "world_size": world_size, "task": task})
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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


# ---- reading ------------------------------------------------------------------------------------

def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(path) / STATE_NAME).read_text())


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer state dict of a checkpoint (tensors on the CPU)."""
    path = Path(path)
    return optimizer_from_files(load_file(str(path / OPTIMIZER_TENSORS)), json.loads((path / OPTIMIZER_JSON).read_text()))


def load_rng_tensors(path: str | os.PathLike, rank: int) -> dict[str, torch.Tensor]:
    """Process ``rank``'s RNG state tensors (see :func:`rng_state`)."""
    prefix = f"rank{rank}."
    return {k[len(prefix):]: v for k, v in load_file(str(Path(path) / RNG_NAME)).items() if k.startswith(prefix)}


def load_task_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The task's tensors (empty when it kept none)."""
    f = Path(path) / TASK_STATE_NAME
    return load_file(str(f)) if f.is_file() else {}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping stays a value)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict, may_change) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every dotted setting that differs and ``may_change(key)`` refuses."""
    a, b = flatten(saved), flatten(current)
    bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not may_change(k))
    return [f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in bad]


def check_resume_config(saved: dict, current: dict, may_change) -> None:
    """Raise if settings that shape the run differ from the checkpoint's.

    Args:
        saved, current: the checkpoint's and this run's resolved configs, as plain data (read
            the saved one through the config class first, so that fields added since read as
            their defaults).
        may_change: ``key -> bool``, the run config's ``may_change_on_resume``.
    """
    diffs = config_differences(saved, current, may_change)
    if diffs:
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's in {'; '.join(diffs[:5])}. "
                          "Resume with the same settings, or start a new out_dir")
