"""Webdataset shards: encoding samples to tar members, writing shards atomically, listing them.

A shard is a plain, uncompressed POSIX tar whose members are named ``<key>.<field>.<ext>`` and
grouped by key, as webdataset expects::

    000123.caption.txt  000123.depth.npy  000123.det.json  000123.rgb.png  000123.semseg.png

Writing is deterministic: members of a sample are sorted by suffix and carry fixed metadata
(mtime 0, uid/gid 0, empty user/group names, mode 0644), PNG and JSON use fixed settings, so the
same samples always give byte-identical tars (on one machine: PNG bytes depend on the zlib build).
Every file is written under a temporary name and renamed into place, so a crash never leaves a
half-written shard under its final name.

Reading lives in :mod:`fourm.data.shard_reader` (``ShardDataset``, ``SkipStats``), which imports
this module (never the other way round).
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from braceexpand import braceexpand
from PIL import Image

# The five ShapesWorld modalities (and the generator's object list) and the extension each is stored as.
NAMED_FIELDS: dict[str, str] = {
    "rgb": "png",
    "semseg": "png",
    "depth": "npy",
    "det": "json",
    "objects": "json",
    "caption": "txt",
}
TAR_MTIME = 0  # fixed member metadata so identical samples give identical bytes
PNG_COMPRESS_LEVEL = 6
_KEY_RE = re.compile(r"^[^./\\\s][^.\\\s]*$")  # no dot (webdataset splits the key at the first one)
_SUFFIX_RE = re.compile(r"^[^./\\\s]+(\.[^./\\\s]+)*$")


# --------------------------------------------------------------------------------------------
# Encoding and decoding single members
# --------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def encode_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8, NaN/inf rejected; numpy scalars allowed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
    ).encode("utf-8")


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W), (H, W, 1|3|4) or uint16 (H, W) array, fixed settings."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    ok = (arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))) or (
        arr.dtype == np.uint16 and arr.ndim == 2
    )
    if not ok:
        raise ValueError(
            f"cannot store array of shape {arr.shape} and dtype {arr.dtype} as PNG; "
            "allowed: uint8 (H, W), (H, W, 1|3|4) or uint16 (H, W)"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    """``np.save`` bytes of a C-contiguous copy (object arrays are rejected: only plain numbers are stored)."""
    if arr.dtype.hasobject:
        raise ValueError(f"cannot store an object array (dtype {arr.dtype}) as .npy; convert it to a numeric dtype")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))  # numeric dtypes only (checked above): no Python objects
    return buf.getvalue()


def _as_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch here
        return value.detach().cpu().numpy()
    return value


def _check_array(field: str, value: Any, ndim: int, dtype: type, channels: int | None = None) -> np.ndarray:
    value = _as_numpy(value)
    want = f"(H, W{', %d' % channels if channels else ''}) {np.dtype(dtype).name}"
    if not isinstance(value, np.ndarray):
        raise TypeError(f"field {field!r}: expected a numpy array {want}, got {type(value).__name__}")
    if value.dtype != dtype or value.ndim != ndim or (channels is not None and value.shape[-1] != channels):
        raise ValueError(
            f"field {field!r}: expected {want}, got shape {value.shape} dtype {value.dtype}"
            + (f"; convert with .astype(np.{np.dtype(dtype).name})" if value.dtype != dtype else "")
        )
    return value


def _encode_by_ext(field: str, ext: str, value: Any) -> bytes:
    value = _as_numpy(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)  # already encoded: stored as is, whatever the extension
    try:
        if ext == "png":
            if not isinstance(value, np.ndarray):
                raise TypeError(f"expected a numpy array, got {type(value).__name__}")
            return encode_png(value)
        if ext == "npy":
            return encode_npy(np.asarray(value))
        if ext == "json":
            return encode_json(value)
        if ext == "txt":
            if not isinstance(value, str):
                raise TypeError(f"expected str, got {type(value).__name__}")
            return value.encode("utf-8")
    except (TypeError, ValueError) as e:
        raise type(e)(f"field {field!r} (.{ext}): {e}") from None
    raise ValueError(
        f"field {field!r}: cannot encode {type(value).__name__} as .{ext}; allowed: png, npy, json, txt, or bytes"
    )


def _generic_ext(field: str, value: Any) -> str:
    value = _as_numpy(value)
    if isinstance(value, np.ndarray):
        return "npy"
    if isinstance(value, str):
        return "txt"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bin"
    if value is None or isinstance(value, (list, tuple, dict, bool, int, float, np.generic)):
        return "json"
    raise TypeError(
        f"field {field!r}: no storage rule for {type(value).__name__}; allowed: numpy array / tensor (.npy), "
        "str (.txt), bytes (.bin), list / dict / number (.json); or name the extension, e.g. 'field.png'"
    )


def encode_sample(sample: Mapping[str, Any]) -> dict[str, bytes]:
    """Encode one sample into tar member suffixes and bytes.

    Named fields (checked): ``rgb`` (H, W, 3) uint8 -> ``rgb.png``; ``semseg`` (H, W) uint8 ->
    ``semseg.png``; ``depth`` (H, W) float32 -> ``depth.npy``; ``det`` list of dicts ->
    ``det.json``; ``objects`` list or dict -> ``objects.json``; ``caption`` str -> ``caption.txt``.
    Any other field: numpy array or torch tensor (e.g. int16 token grids, token id lists as arrays)
    -> ``.npy``; str -> ``.txt``; bytes -> ``.bin`` (stored as is); list / tuple / dict / number /
    None -> ``.json``. A name with an extension (``"mask.png"``) picks the format explicitly.
    Keys starting with ``__`` (``__key__``, ``__shard__`` ...) are metadata and skipped.

    Args:
        sample: field name -> value.

    Returns:
        member suffix (``"rgb.png"``) -> bytes; the bytes are a pure function of the values.
    """
    out: dict[str, bytes] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        field, _, ext = name.partition(".")
        if ext:
            data = _encode_by_ext(field, ext.rsplit(".", 1)[-1].lower(), value)
        elif field == "rgb":
            ext, data = "png", encode_png(_check_array(field, value, 3, np.uint8, channels=3))
        elif field == "semseg":
            ext, data = "png", encode_png(_check_array(field, value, 2, np.uint8))
        elif field == "depth":
            ext, data = "npy", encode_npy(_check_array(field, value, 2, np.float32))
        elif field in ("det", "objects", "caption"):
            allowed = {"det": (list, tuple), "objects": (list, tuple, dict), "caption": (str,)}[field]
            if not isinstance(value, allowed):
                names = " or ".join(t.__name__ for t in allowed)
                raise TypeError(f"field {field!r}: expected {names}, got {type(value).__name__}")
            if field == "det" and not all(isinstance(box, dict) for box in value):
                got = sorted({type(b).__name__ for b in value})
                raise TypeError(f"field 'det': expected a list of dicts, got items of type {got}")
            ext = NAMED_FIELDS[field]
            data = _encode_by_ext(field, ext, value)
        else:
            ext = _generic_ext(field, value)
            data = _encode_by_ext(field, ext, value)
        suffix = f"{field}.{ext}"
        _check_suffix(suffix)
        if any(s.partition(".")[0] == field for s in out):
            raise ValueError(f"field {field!r} given twice (as {name!r} and an earlier entry)")
        out[suffix] = data
    return out


def decode_member(suffix: str, data: bytes) -> Any:
    """Decode one member's bytes by its extension (the inverse of :func:`encode_sample`).

    Args:
        suffix: member suffix (``"rgb.png"``) or bare extension (``"png"``).
        data: the member's bytes.

    Returns:
        png / jpg -> numpy array as stored (uint8 (H, W) or (H, W, C), uint16 (H, W));
        npy -> numpy array; json -> Python object; txt -> str; anything else -> the bytes unchanged.
    """
    ext = suffix.rsplit(".", 1)[-1].lower()
    if ext in ("png", "jpg", "jpeg"):
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now, so a damaged image fails here and not later
            return np.array(img)
    if ext == "npy":
        return np.load(io.BytesIO(data))  # numpy refuses object arrays by default: no code runs
    if ext == "json":
        return json.loads(data.decode("utf-8"))
    if ext == "txt":
        return data.decode("utf-8")
    return bytes(data)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def check_key(key: str) -> None:
    """Raise ValueError unless ``key`` is a plain sample key (no dot, whitespace, backslash, ``..``
    or leading ``/``), as webdataset and a tar member name need."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key.split("/"):
        raise ValueError(
            f"invalid sample key {key!r}: must be a non-empty string without dots, whitespace, backslashes "
            "or a leading '/', e.g. '000123' (webdataset splits member names at the first dot)"
        )


def _check_suffix(suffix: str) -> None:
    if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
        raise ValueError(f"invalid member suffix {suffix!r}: expected '<field>.<ext>' such as 'rgb.png'")


def _tmp_path(path: Path) -> Path:
    # Hidden and not ending in .tar: a concurrent directory listing never picks it up as a shard.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _TarShardFile:
    """One shard being written: a tar on a temporary path, renamed on :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_path(path)
        self._file = open(self.tmp, "xb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._keys: set[str] = set()
        self.count = 0

    def add(self, key: str, members: Mapping[str, bytes]) -> None:
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {str(self.path)!r}")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        fields: dict[str, str] = {}
        for suffix, data in members.items():  # validate everything before writing anything
            _check_suffix(suffix)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"sample {key!r}, member {suffix!r}: expected bytes, got {type(data).__name__}; "
                    "encode the sample first with encode_sample()"
                )
            field = suffix.partition(".")[0]
            if field in fields:
                raise ValueError(f"sample {key!r}: field {field!r} given twice ({fields[field]!r}, {suffix!r})")
            fields[field] = suffix
        for suffix in sorted(members):
            data = bytes(members[suffix])
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self.count += 1

    def commit(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._tar.close()
        except Exception:  # noqa: BLE001 - the shard is being thrown away; the original error matters
            pass
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike, items: Iterable[tuple[str, Mapping[str, bytes]]]) -> int:
    """Write exactly one shard, atomically (for workers that each write shard k).

    Args:
        path: final tar path; written under a temporary name and renamed once complete.
        items: (key, members) pairs in the order they are stored; members as from :func:`encode_sample`.

    Returns:
        The number of samples written. If ``items`` raises, no file appears under ``path``.
    """
    shard = _TarShardFile(Path(path))
    try:
        for key, members in items:
            shard.add(key, members)
        shard.commit()
    except BaseException:
        shard.abort()
        raise
    return shard.count


class ShardWriter:
    """Write samples into consecutive shards ``{prefix}-{k:05d}.tar`` of ``shard_size`` samples.

    Use as a context manager; leaving the block commits the last (partial) shard, or, on an
    exception, discards it and keeps the shards already completed::

        with ShardWriter("data/train", shard_size=1000) as w:
            for i, sample in enumerate(samples):
                w.write(f"{i:06d}", encode_sample(sample))
        w.shards  # ['data/train/shard-00000.tar', ...]

    Args:
        out_dir: folder for the shards (created if missing).
        prefix: shard file name prefix.
        shard_size: samples per shard (>= 1).
        start_shard: number of the first shard, for writers that continue or split a set.
    """

    def __init__(
        self, out_dir: str | os.PathLike, prefix: str = "shard", shard_size: int = 1000, start_shard: int = 0
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if start_shard < 0:
            raise ValueError(f"start_shard must be >= 0, got {start_shard}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty file name without '/', got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.prefix, self.shard_size, self.next_shard = prefix, shard_size, start_shard
        self.shards: list[str] = []
        self.num_samples = 0
        self._current: _TarShardFile | None = None

    def shard_path(self, k: int) -> Path:
        """Path of shard number ``k``."""
        return self.out_dir / f"{self.prefix}-{k:05d}.tar"

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Append one sample (key, member suffix -> bytes); commits the shard when it is full."""
        if self._current is None:
            self._current = _TarShardFile(self.shard_path(self.next_shard))
        self._current.add(key, members)
        self.num_samples += 1
        if self._current.count >= self.shard_size:
            self._commit()

    def _commit(self) -> None:
        assert self._current is not None
        self.shards.append(str(self._current.commit()))
        self._current = None
        self.next_shard += 1

    def close(self) -> None:
        """Commit the last, partial shard (if any; a shard whose only writes were rejected is dropped)."""
        if self._current is not None and self._current.count == 0:
            self.abort()
        if self._current is not None:
            self._commit()

    def abort(self) -> None:
        """Discard the shard being written (its temporary file is removed)."""
        if self._current is not None:
            self._current.abort()
            self._current = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------
# Metadata and listing
# --------------------------------------------------------------------------------------------


def write_metadata(out_dir: str | os.PathLike, meta: Mapping[str, Any], name: str = "metadata.json") -> Path:
    """Write ``meta`` as pretty, key-sorted JSON beside the shards, atomically; returns the path."""
    text = json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    return atomic_write_bytes(Path(out_dir) / name, (text + "\n").encode("utf-8"))


def read_metadata(path: str | os.PathLike, name: str = "metadata.json") -> dict[str, Any]:
    """Read the metadata JSON of a shard folder (or the JSON file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise FileNotFoundError(f"no shard metadata at {str(p)!r}; expected {name!r} beside the shards")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def list_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve shard specs to a sorted, duplicate-free list of tar paths.

    Args:
        shards: a tar path, a folder (all ``*.tar`` inside), a glob (``data/*.tar``), a brace range
            (``data/shard-{00000..00009}.tar``), or a list of any of these.

    Returns:
        Sorted normalised paths. The dataset order therefore does not depend on the order given.

    Raises:
        FileNotFoundError: a named file, folder or brace item does not exist, or a glob matches nothing.
    """
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not specs:
        raise ValueError("no shards given; pass a tar path, folder, glob, brace range or a list of them")
    found: set[str] = set()
    for spec in specs:
        for pattern in braceexpand(os.fspath(spec)):
            if os.path.isdir(pattern):
                matches = glob.glob(os.path.join(glob.escape(pattern), "*.tar"))
            elif glob.has_magic(pattern):
                matches = glob.glob(pattern)
            else:
                matches = [pattern] if os.path.isfile(pattern) else []
            if not matches:
                raise FileNotFoundError(f"no shard found for {pattern!r} (from {os.fspath(spec)!r})")
            found.update(os.path.normpath(m) for m in matches)
    return sorted(found)


def iter_tar_names(path: str | os.PathLike) -> Iterator[str]:
    """Member names of a tar in stored order (for inspection and tests)."""
    with tarfile.open(path, mode="r:") as tf:
        for m in tf:
            yield m.name
