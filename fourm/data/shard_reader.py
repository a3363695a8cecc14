"""Streaming webdataset shards as a deterministic, resumable, fault-tolerant ``IterableDataset``.

Design
------
*One global stream.* Every reader (each rank, each DataLoader worker) walks the same sequence of
*slots*: the shards in order (sorted, or permuted by ``(seed, epoch)``), and inside each shard its
samples in stored order (or permuted by ``(seed, epoch, shard)``). A slot is one group of tar
members sharing a key, whether or not it turns out to be usable. Only tar headers are read for
this walk (member data is skipped with a seek), so it is cheap; data is read and decoded only by
the reader that owns the slot.

*Ownership.* Slot ``i`` belongs to rank ``i % world_size`` as that rank's local position
``j = i // world_size``. The rank skips its first ``start`` positions (mid-epoch resume) and deals
the rest to its DataLoader workers round-robin: worker ``(j - start) % num_workers`` (per-sample
mode) or, with ``batch_size=B``, worker ``((j - start) // B) % num_workers`` for whole chunks of
``B`` positions. DataLoader collects from its workers round-robin in the same way, so the order a
rank sees is the same for 0, 1, 2 ... workers: in per-sample mode with ``DataLoader(batch_size=None
or 1)``, in batch mode (the dataset yields lists) with ``DataLoader(batch_size=None,
collate_fn=...)``. (Per-sample mode under ``DataLoader(batch_size=B > 1)`` with several workers is
still disjoint and complete, but the order then depends on the number of workers.) Each sample
carries ``__index__ = j``; after consuming a sample, resuming with ``start = __index__ + 1`` (the
largest index of the last batch + 1) continues exactly there.

*Faults.* Header-level faults (unparsable member name, duplicate field, missing required field,
the last sample of a truncated or corrupt tar) and data-level faults (short read, failed decode)
make the owner skip the slot, so slot numbering, and hence every reader's share, never depends on
who noticed what. A tar that cannot be opened at all has no slots. Skips are counted by reason in
a small shared-memory tensor (one row per worker) that the main process reads as
``dataset.stats`` -- also after DataLoader workers, fork or spawn, have exited. Each reader also
logs the first few skips and a summary at the end of its stream. ``strict=True`` raises
:class:`CorruptSampleError` (naming shard, key and reason) at the first fault instead.
"""
from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fourm.data.shard_metadata import check_shard_folders
from fourm.data.shards import decode_member, list_shards
from fourm.errors import FourmError

logger = logging.getLogger(__name__)

SKIP_REASONS: tuple[str, ...] = ("unreadable", "truncated", "bad_member", "missing_field", "decode")
MAX_WORKERS = 64  # rows of the shared skip counter
MAX_EVENTS = 1000  # skip events kept in memory by a main-process iteration
LOGGED_EVENTS = 5  # skips logged one by one per stream before only the summary is logged
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)


class CorruptSampleError(FourmError, RuntimeError):
    """A sample or shard that cannot be used, raised in strict mode; ``hint`` says how to turn
    strict reading off where the user chose it (``set data.strict=false`` in a run config)."""

    def __init__(self, shard: str, key: str | None, reason: str, detail: str, hint: str = "pass strict=False") -> None:
        self.shard, self.key, self.reason, self.detail = shard, key, reason, detail
        where = f"shard {shard!r}" + (f", key {key!r}" if key is not None else "")
        super().__init__(f"{where}: {reason}: {detail} ({hint} to skip and count such samples)")


@dataclass(frozen=True)
class SkipEvent:
    """One skipped sample (``key`` None when a whole shard could not be read)."""

    shard: str
    key: str | None
    reason: str
    detail: str


@dataclass
class SkipStats:
    """Skipped samples by reason, plus the individual events seen in this process (capped)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    events: list[SkipEvent] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        parts = ", ".join(f"{r}: {n}" for r, n in self.counts.items() if n)
        return f"{self.total} skipped" + (f" ({parts})" if parts else "")


@dataclass
class _Group:
    """The members of one slot: suffix -> (data offset, size), and a header-level fault if any."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    fault: tuple[str, str] | None = None

    def fields(self) -> dict[str, str]:
        return {s.partition(".")[0]: s for s in self.members}


def _split_name(name: str) -> tuple[str, str | None]:
    # Same rule as webdataset: the key ends at the first dot of the last path component.
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not stem or not dot or not suffix:
        return name, None
    return (f"{head}/{stem}" if head else stem), suffix


def _scan_plain(f: BinaryIO) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of an intact archive of plain ustar files, or None for anything else.

    About ten times faster than ``tarfile`` (which parses every header field in Python); it covers
    what :class:`~fourm.data.shards.ShardWriter` writes. Anything unusual (PAX or GNU extension
    headers, directories, non-ASCII names, a bad checksum, truncation) returns None and the
    caller falls back to ``tarfile``, so both paths agree by construction.
    """
    out: list[tuple[str, int, int]] = []
    pos = 0
    size = os.fstat(f.fileno()).st_size
    while True:
        f.seek(pos)
        buf = f.read(_BLOCK)
        if len(buf) < _BLOCK:
            return None
        if buf == _ZERO_BLOCK:
            return out
        # POSIX magic only: GNU headers reuse the prefix field for other data.
        if buf[257:265] != b"ustar\x0000" or buf[156:157] not in (b"0", b"\0") or max(buf[:100]) > 127:
            return None
        try:
            n = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            chk = int(buf[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
        except ValueError:
            return None
        if chk != sum(buf) - sum(buf[148:156]) + 256 or pos + _BLOCK + n > size:
            return None
        name = buf[:100].split(b"\0", 1)[0].decode("ascii")
        if not name or name.endswith("/"):
            return None
        prefix = buf[345:500].split(b"\0", 1)[0]
        if prefix:
            if max(prefix) > 127:
                return None
            name = f"{prefix.decode('ascii')}/{name}"
        out.append((name, pos + _BLOCK, n))
        pos += _BLOCK + -(-n // _BLOCK) * _BLOCK


def _scan_tarfile(f: BinaryIO) -> tuple[list[tuple[str, int, int]], bool]:
    """Regular members (name, data offset, size) via ``tarfile`` and whether the archive ends cleanly.

    The last member may be cut (its data runs past the end of the file). Raises
    ``tarfile.ReadError`` when not even the first header is readable.
    """
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    tf = tarfile.open(fileobj=f, mode="r:")
    out: list[tuple[str, int, int]] = []
    try:
        while (m := tf.next()) is not None:
            if m.isreg():
                out.append((m.name, m.offset_data, m.size))
                if m.offset_data + m.size > size:
                    return out, False
        f.seek(tf.offset)
        return out, f.read(_BLOCK) == _ZERO_BLOCK
    except (tarfile.TarError, OSError):
        return out, False  # damage after the first header: what was read stands


def index_shard(f: BinaryIO) -> list[_Group]:
    """Read the tar headers of an open shard and group members by key (no member data is read).

    Raises:
        tarfile.ReadError: the file is not a readable tar at all (empty, garbage at the start).

    Returns:
        The groups in stored order. If the archive does not end with an end-of-archive block (it
        was cut short or is corrupt further on), the last group is marked ``truncated``: it may
        have lost members, and everything after the damage is unknowable.
    """
    members = _scan_plain(f)
    clean_end = members is not None
    if members is None:
        members, clean_end = _scan_tarfile(f)
    size = os.fstat(f.fileno()).st_size
    groups: list[_Group] = []
    seen: set[str] = set()  # fields of the current group
    for name, offset, n in members:
        key, suffix = _split_name(name)
        if not groups or groups[-1].key != key:
            groups.append(_Group(key))
            seen = set()
        g = groups[-1]
        if offset + n > size:
            break  # this member's data is cut: its group becomes the truncated tail
        field_name = suffix.partition(".")[0] if suffix is not None else None
        if field_name is None:
            g.fault = g.fault or ("bad_member", f"member name {name!r} is not '<key>.<field>.<ext>'")
        elif field_name in seen:
            g.fault = g.fault or ("bad_member", f"field {field_name!r} stored twice")
        else:
            seen.add(field_name)
            g.members[suffix] = (offset, n)
    if not clean_end and groups:
        groups[-1].fault = ("truncated", "the tar ends or breaks inside or right after this sample")
    return groups


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _to_tensor(value: Any, ext: str) -> Any:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        return value
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    t = torch.from_numpy(np.ascontiguousarray(value))
    if ext in ("png", "jpg", "jpeg") and t.ndim == 3:
        t = t.permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)
    return t


class ShardDataset(IterableDataset):
    """Samples from webdataset shards, in a fixed order per ``(seed, epoch)``; see the module docstring.

    Each yielded sample is a dict ``{"__key__": str, "__shard__": str, "__index__": int, field:
    value}``. With ``decode`` and ``to_tensor``: png images become uint8 tensors, (C, H, W) for
    colour (rgb: (3, H, W)) and (H, W) for single-channel maps (semseg stays uint8 to keep worker
    memory and IPC small; call ``.long()`` for a loss); npy arrays become tensors of their stored
    dtype and shape (depth: (H, W) float32, token grids: int16); json and txt stay Python objects.

    Args:
        shards: anything :func:`~fourm.data.shards.list_shards` accepts.
        fields: required fields (``["rgb", "depth"]``); a sample missing one is skipped. When given,
            only these fields (and ``optional``) are read; ``None`` reads every field, none required.
        optional: fields read when present, not required.
        decode: decode members by extension; ``False`` yields raw bytes.
        to_tensor: turn decoded arrays into torch tensors as above.
        shuffle: permute shard order and the samples within each shard by ``(seed, epoch)``.
        seed: shuffle seed.
        epoch: epoch for the permutation; change it with :meth:`set_epoch`.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes sharing the data.
        strict: raise :class:`CorruptSampleError` at the first fault instead of skipping it.
        start: skip the first ``start`` positions of this rank's stream (resume; see ``__index__``).
        batch_size: if set, yield lists of up to ``batch_size`` samples, one per chunk of
            consecutive positions (short where samples were skipped; empty chunks are not yielded).
        transform: applied to each sample dict in the reader (e.g. masking in DataLoader workers).
        strict_hint: how the user turns ``strict`` off, named in :class:`CorruptSampleError`.

    Raises:
        ShardMetadataError: a folder's ``metadata.json`` does not describe the shards in it
            (:func:`~fourm.data.shard_metadata.check_shard_folders`).
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        fields: Sequence[str] | None = None,
        decode: bool = True,
        to_tensor: bool = True,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        strict: bool = False,
        start: int = 0,
        batch_size: int | None = None,
        optional: Sequence[str] = (),
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        strict_hint: str = "pass strict=False",
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
        if seed < 0 or epoch < 0 or start < 0:
            raise ValueError(f"seed, epoch and start must be >= 0, got seed={seed}, epoch={epoch}, start={start}")
        if isinstance(fields, str) or isinstance(optional, str):
            raise TypeError(f"fields and optional take a list of names, got {fields!r} / {optional!r}")
        for name in [*(fields or ()), *optional]:
            if not name or "." in name or name.startswith("__"):
                raise ValueError(
                    f"invalid field name {name!r}: use the name without extension, e.g. 'rgb', not 'rgb.png'"
                )
        self.shards = list_shards(shards)
        check_shard_folders(shards)
        self.strict_hint = strict_hint
        self.fields = tuple(fields) if fields is not None else None
        self.optional = tuple(optional)
        # Fields to read: required + optional; None = all (also when neither is given or fields is empty).
        self._wanted = set(self.fields or ()) | set(self.optional) or None
        self.decode, self.to_tensor, self.shuffle, self.seed = decode, to_tensor, shuffle, seed
        self.rank, self.world_size, self.strict, self.batch_size = rank, world_size, strict, batch_size
        self.transform = transform
        # Shared memory, so that set_epoch reaches persistent workers and worker skip counts reach
        # the main process (DataLoader sends tensors to spawned workers through shared memory).
        self._state = torch.tensor([epoch, start], dtype=torch.int64).share_memory_()
        self._counts = torch.zeros(MAX_WORKERS, len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self._events: list[SkipEvent] = []

    # ---- state --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    @property
    def start(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch`` and the resume position for the next iteration."""
        if epoch < 0 or start < 0:
            raise ValueError(f"epoch and start must be >= 0, got {epoch}, {start}")
        self._state[0], self._state[1] = epoch, start

    @property
    def stats(self) -> SkipStats:
        """Skips since construction or :meth:`reset_stats`, over all readers of this process."""
        totals = self._counts.sum(0).tolist()
        return SkipStats(dict(zip(SKIP_REASONS, (int(n) for n in totals))), list(self._events))

    def reset_stats(self) -> None:
        self._counts.zero_()
        self._events.clear()

    def num_samples(self) -> int:
        """Positions in this rank's stream (slots, before skipping faulty ones); reads all tar headers."""
        total = 0
        for path in self.shards:
            try:
                with open(path, "rb") as f:
                    total += len(index_shard(f))
            except (OSError, tarfile.ReadError):
                pass
        return len(range(self.rank, total, self.world_size))

    # ---- iteration ----------------------------------------------------------------------------

    def _rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *tags])

    def _slots(self) -> Iterator[tuple[str, BinaryIO | None, _Group | None, str]]:
        """The global stream: (shard, open file, group, "") per slot, or (shard, None, None, error)."""
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = self._rng(0).permutation(len(self.shards))
        for s in order.tolist():
            path = self.shards[s]
            try:
                f = open(path, "rb")
            except OSError as e:
                yield path, None, None, f"cannot open: {e}"
                continue
            with f:
                try:
                    groups = index_shard(f)
                except (tarfile.ReadError, OSError) as e:
                    yield path, None, None, f"not a readable tar: {e}"
                    continue
                if self.shuffle:
                    groups = [groups[k] for k in self._rng(1, s).permutation(len(groups)).tolist()]
                for g in groups:
                    yield path, f, g, ""

    def _load(self, path: str, f: BinaryIO, g: _Group, index: int) -> dict[str, Any] | tuple[str, str]:
        """The sample of one owned slot, or (reason, detail) if it must be skipped."""
        if g.fault is not None:
            return g.fault
        present = g.fields()
        missing = [name for name in self.fields or () if name not in present]
        if missing:
            return "missing_field", f"missing required field(s) {missing}; present: {sorted(present)}"
        sample: dict[str, Any] = {"__key__": g.key, "__shard__": path, "__index__": index}
        for name, suffix in sorted(present.items()):
            if self._wanted is not None and name not in self._wanted:
                continue
            offset, size = g.members[suffix]
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                return "truncated", f"member {suffix!r} has {len(data)} of {size} bytes"
            if self.decode:
                try:
                    value = decode_member(suffix, data)
                except Exception as e:  # noqa: BLE001 - any decoder error is a damaged member
                    return "decode", f"member {suffix!r}: {type(e).__name__}: {e}"
                sample[name] = _to_tensor(value, suffix.rsplit(".", 1)[-1].lower()) if self.to_tensor else value
            else:
                sample[name] = data
        return sample

    def _skip(self, path: str, key: str | None, reason: str, detail: str, row: int, n_logged: int) -> None:
        if self.strict:
            raise CorruptSampleError(path, key, reason, detail, self.strict_hint)
        if row < MAX_WORKERS:
            self._counts[row, SKIP_REASONS.index(reason)] += 1
        if get_worker_info() is None and len(self._events) < MAX_EVENTS:
            self._events.append(SkipEvent(path, key, reason, detail))
        log = logger.warning if n_logged < LOGGED_EVENTS else logger.debug
        log("skipping %s in shard %r: %s: %s", f"sample {key!r}" if key else "shard", path, reason, detail)

    def _samples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position in this rank's stream, sample) for the samples this reader owns."""
        worker, num_workers = _worker()
        if num_workers > MAX_WORKERS:
            logger.warning("workers >= %d log their skips but do not count them in .stats", MAX_WORKERS)
        start, chunk = self.start, self.batch_size or 1
        skipped: dict[str, int] = {}
        try:
            i = 0
            for path, f, g, error in self._slots():
                if g is None:  # an unreadable shard has no slots; one reader in the job counts it
                    if self.strict or (self.rank == 0 and worker == 0):
                        self._skip(path, None, "unreadable", error, worker, sum(skipped.values()))
                        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                    continue
                slot = i
                i += 1
                if slot % self.world_size != self.rank:
                    continue
                j = slot // self.world_size
                if j < start or ((j - start) // chunk) % num_workers != worker:
                    continue
                out = self._load(path, f, g, j)
                if isinstance(out, tuple):
                    self._skip(path, g.key, *out, worker, sum(skipped.values()))
                    skipped[out[0]] = skipped.get(out[0], 0) + 1
                    continue
                yield j, (self.transform(out) if self.transform is not None else out)
        finally:
            if skipped:
                logger.warning(
                    "rank %d worker %d/%d skipped %d samples: %s",
                    self.rank, worker, num_workers, sum(skipped.values()), skipped,
                )

    def __iter__(self) -> Iterator[Any]:
        if self.batch_size is None:
            for _, sample in self._samples():
                yield sample
            return
        batch: list[dict[str, Any]] = []
        current = -1
        start, b = self.start, self.batch_size
        for j, sample in self._samples():
            c = (j - start) // b
            if c != current and batch:
                yield batch
                batch = []
            current = c
            batch.append(sample)
        if batch:
            yield batch
