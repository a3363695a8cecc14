"""Training checkpoints of every run: one folder per step, written atomically, tensors and JSON only.

Layout of ``out_dir/checkpoints/step-00001000/``::

    meta.json               format name and version, step, world size, task, and the size and
                            sha256 of every other file (written last)
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
with the final name is complete when written; :func:`verify_checkpoint` checks that it still is
(every file present with its recorded size and sha256; a checkpoint written before the hashes is
read in full instead). ``--resume auto`` (:func:`find_resumable`) takes the newest intact
checkpoint and warns about each newer one it skips, naming it and why; an explicit ``--resume
PATH`` that is incomplete or corrupt raises :class:`CheckpointError`. :func:`prune_checkpoints`
deletes all but the ``keep_last`` newest, and leftovers: temporary folders, folders without
``meta.json``. A checkpoint of another format version (version 1 held its trainer state as a
Python object file; tokenizer runs wrote ``step_XXXXXXX`` folders) is refused with
:class:`CheckpointFormatError`, naming the version: such files are never opened.

RNG states: Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA
device's generator, per process. (The trainer itself re-seeds torch's generator before every step
and the data are pure functions of their position; the global states are saved so that user code
and libraries resume exactly too.)
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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fourm.atomic import file_sha256
from fourm.config import ConfigError, save_json_atomic
from fourm.errors import FourmError

logger = logging.getLogger(__name__)

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
REQUIRED = (META_NAME, CONFIG_NAME, STATE_NAME, OPTIMIZER_TENSORS, OPTIMIZER_JSON, RNG_NAME)
_V1 = "format version 1, whose trainer state was a Python object file that is never loaded"


class CheckpointError(FourmError, ValueError):
    """A checkpoint folder that is incomplete or corrupt (the message names the folder, file and why)."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint of another format version (never skipped by ``--resume auto``: the run is another's)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _refuse_legacy(root: Path) -> None:
    legacy = sorted(p.name for p in root.iterdir() if _LEGACY_RE.match(p.name))
    if legacy:
        raise CheckpointFormatError(
            f"{root} holds checkpoints of an older format ({', '.join(legacy[-2:])}: {_V1}); this fourm reads "
            f"{FORMAT_NAME!r} version {FORMAT_VERSION}. Train again in a new out_dir (the folder's tokenizer/ or "
            "model/ still loads)")


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


def find_resumable(out_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of ``out_dir`` (None: none) and the newer ones passed over.

    Every ``step-XXXXXXXX`` folder counts, newest first, complete or not; each that fails
    :func:`verify_checkpoint` is passed over with the reason.

    Returns:
        (checkpoint or None, [(skipped folder, why), ...]).

    Raises:
        CheckpointFormatError: a checkpoint of another format version (not skipped: say what to do).
    """
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None, []
    _refuse_legacy(root)
    folders = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()),
                     reverse=True)
    skipped: list[tuple[Path, str]] = []
    for _, p in folders:
        try:
            verify_checkpoint(p)
            return p, skipped
        except CheckpointFormatError:
            raise
        except CheckpointError as e:
            skipped.append((p, e.args[0].removeprefix(f"{p}: ")))
    return None, skipped


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """``None`` -> fresh run; ``"auto"`` -> the newest intact checkpoint of ``out_dir`` (or fresh);
    else a checkpoint folder, verified.

    ``"auto"`` logs one warning per newer checkpoint it skips, naming it and why.

    Returns:
        (the checkpoint to resume from or None, the skipped folders).

    Raises:
        FileNotFoundError: an explicit path that holds no checkpoint.
        CheckpointError: an explicit checkpoint that is incomplete or corrupt; any checkpoint of
            another format version (:class:`CheckpointFormatError`).
    """
    if resume is None:
        return None, []
    if resume == "auto":
        path, skipped = find_resumable(out_dir)
        for p, why in skipped:
            logger.warning("--resume auto: skipping checkpoint %s: %s", p, why)
        if skipped:
            logger.warning("--resume auto: %s",
                           f"resuming from {path}" if path else "no intact checkpoint: starting fresh")
        return path, [p for p, _ in skipped]
    p = Path(resume)
    if not (p / META_NAME).is_file() and not (p.is_dir() and _STEP_RE.match(p.name)):
        example = Path(out_dir) / CHECKPOINT_DIR / checkpoint_name(1000)
        raise FileNotFoundError(f"--resume {resume!r}: no checkpoint there (missing {META_NAME}); "
                                f"give a folder like {example} or 'auto'")
    try:
        verify_checkpoint(p)
    except CheckpointFormatError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"--resume {resume!r}: {e.args[0].removeprefix(f'{p}: ')}; resume from another "
                              "checkpoint or with --resume auto, which takes the newest intact one") from None
    return p, []


def _read_json(path: Path) -> Any:
    """A checkpoint's JSON file; an unreadable one raises :class:`CheckpointError` naming it."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: incomplete ({path.name} is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        what = "empty" if path.is_file() and path.stat().st_size == 0 else f"not valid JSON ({e})"
        raise CheckpointError(f"{path.parent}: corrupt ({path.name} is {what})") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; an unreadable one raises :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: incomplete ({path.name} is missing)") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path.parent}: corrupt ({path.name} is not a readable safetensors file: {e})") from None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta.json``, with its format checked.

    Raises:
        CheckpointError: missing or unreadable; CheckpointFormatError: another format version.
    """
    meta = _read_json(Path(path) / META_NAME)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt ({META_NAME} holds {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        old = f" ({_V1})" if meta.get("format_version") == 1 else ""
        raise CheckpointFormatError(
            f"{path}: checkpoint format {meta.get('format')!r} version {meta.get('format_version')!r}{old}; this fourm "
            f"reads {FORMAT_NAME!r} version {FORMAT_VERSION}. Train again in a new out_dir (the folder's model/ "
            "still loads)")
    return meta


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` but ``meta.json``."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != META_NAME}


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check that a checkpoint folder is complete and intact; returns its meta.

    With recorded hashes every listed file must exist with its size and sha256; a checkpoint
    written before them is read in full instead (every JSON parsed, every tensor file loaded).

    Raises:
        CheckpointError: incomplete or corrupt (names the file and why);
        CheckpointFormatError: another format version.
    """
    path = Path(path)
    if not (path / META_NAME).is_file():
        raise CheckpointError(f"{path}: incomplete (no {META_NAME}: the save did not finish)")
    meta = read_meta(path)
    missing = [n for n in REQUIRED if not (path / n).is_file()] + ([] if (path / MODEL_DIR).is_dir() else [MODEL_DIR])
    if missing:
        raise CheckpointError(f"{path}: incomplete ({', '.join(missing)} missing)")
    records = meta.get("files")
    if records is None:  # written before the hashes: parse and load everything
        for p in sorted(path.rglob("*")):
            if p.suffix == ".json":
                _read_json(p)
            elif p.suffix == ".safetensors":
                _load_tensors(p)
        return meta
    if not isinstance(records, dict):
        raise CheckpointError(f"{path}: corrupt ({META_NAME} 'files' is not an object)")
    for rel, rec in sorted(records.items()):
        f = path / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(rec, dict):
            raise CheckpointError(f"{path}: corrupt ({META_NAME} lists {rel!r}, not a file of the folder)")
        if not f.is_file():
            raise CheckpointError(f"{path}: incomplete ({rel} is missing)")
        size, written = f.stat().st_size, rec.get("bytes")
        if size != written:
            cut = ": truncated" if isinstance(written, int) and size < written else ""
            raise CheckpointError(f"{path}: corrupt ({rel} has {size} bytes, {written} were written{cut})")
        if file_sha256(f) != rec.get("sha256"):
            raise CheckpointError(f"{path}: corrupt ({rel} does not match its sha256 in {META_NAME}: changed on disk)")
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


# ---- optimizer state as tensors and JSON --------------------------------------------------------

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
        """Write ``meta.json`` (with every file's size and sha256) and move the folder into place
        (replacing a same-step checkpoint)."""
        self.save_json(META_NAME, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "step": self.step,
                                   "world_size": world_size, "task": task, "files": file_records(self.tmp)})
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


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int, also: Sequence[Path] = ()) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints, and leftovers: temporary folders of an
    interrupted save, step folders without ``meta.json``, and ``also`` (e.g. the corrupt
    checkpoints a resume skipped). Returns what was deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: must be >= 1")
    root = Path(out_dir) / CHECKPOINT_DIR
    removed = [p for p in also if p.is_dir() and p.parent == root]
    found = [(s, p) for s, p in list_checkpoints(out_dir) if p not in removed]
    removed += [p for _, p in found[:-keep_last]]
    if root.is_dir():  # leftovers of a crash while saving (this process's own are renamed by now)
        removed += [p for p in root.iterdir() if p.is_dir() and (
            p.name.startswith(".step-") or (_STEP_RE.match(p.name) and not (p / META_NAME).is_file()))]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


# ---- reading ------------------------------------------------------------------------------------

def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint."""
    state = _read_json(Path(path) / STATE_NAME)
    if not isinstance(state, dict) or not {"config", "counters", "ranks"} <= set(state):
        raise CheckpointError(f"{path}: corrupt ({STATE_NAME} lacks config, counters or ranks)")
    return state


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer state dict of a checkpoint (tensors on the CPU)."""
    path = Path(path)
    tensors, meta = _load_tensors(path / OPTIMIZER_TENSORS), _read_json(path / OPTIMIZER_JSON)
    try:
        return optimizer_from_files(tensors, meta)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt ({OPTIMIZER_JSON} and {OPTIMIZER_TENSORS} disagree: {e!r})") from None


def load_rng_tensors(path: str | os.PathLike, rank: int) -> dict[str, torch.Tensor]:
    """Process ``rank``'s RNG state tensors (see :func:`rng_state`)."""
    prefix = f"rank{rank}."
    return {k[len(prefix):]: v for k, v in _load_tensors(Path(path) / RNG_NAME).items() if k.startswith(prefix)}


def load_task_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The task's tensors (empty when it kept none)."""
    f = Path(path) / TASK_STATE_NAME
    return _load_tensors(f) if f.is_file() else {}


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
