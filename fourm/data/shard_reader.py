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

What comes from webdataset, and what is ours
--------------------------------------------
* Sample grouping is webdataset's ``tariterators.group_by_keys`` with its key rule
  (``base_plus_ext``: the key ends at the first dot of the last path component), so a shard groups
  here exactly as ``webdataset.WebDataset`` groups it. Its duplicate-member error is turned into a
  ``bad_member`` fault of that sample.
* Dealing chunks of positions to DataLoader workers is webdataset's ``shardlists.split_by_worker``
  (every ``num_workers``-th item of a stream, from torch's worker info), applied to the stream of
  chunks instead of to the shard list.
* Ours, and why: (1) the tar *index* (``_scan_plain`` and its ``tarfile`` fallback): webdataset's
  ``tar_file_iterator`` streams every member's bytes through ``tarfile``, so each rank would read
  the whole data set to decode ``1 / world_size`` of it, a permuted order inside a shard would mean
  buffering the shard, and ``tarfile``'s stream mode ends quietly when a tar is cut right after a
  member, so the cut sample would pass as complete; the index reads headers only, seeks to the
  members a reader owns, and knows whether the archive ended cleanly. (2) The rank split:
  ``split_by_node`` takes the rank from ``RANK``/``WORLD_SIZE`` or ``torch.distributed`` at
  iteration time, while this dataset is told its ``rank`` (the trainer's process index; tests
  simulate ranks in one process); it is the same ``islice``. (3) Mid-epoch resume (``start``),
  the per-sample split of slots (not of whole shards, which would make the shares depend on shard
  sizes and the order on the number of workers) and the skip counters.
"""
from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field
from itertools import groupby, islice
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import split_by_worker
from webdataset.tariterators import base_plus_ext, group_by_keys

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


_BAD_NAME = "\0bad"  # group_by_keys suffix of a member whose name has no "<key>.<suffix>" form


def _member_key(name: str) -> tuple[str, str]:
    """(key, suffix) by webdataset's rule; a name it cannot split becomes a sample of its own,
    marked with the suffix ``_BAD_NAME``."""
    key, suffix = base_plus_ext(name)
    return (name, _BAD_NAME) if key is None or not suffix else (key, suffix)


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


def _groups(members: Iterable[tuple[str, int, int]]) -> list[_Group]:
    """Group index entries into samples with webdataset's ``group_by_keys`` and mark header-level
    faults: a member name without key and suffix, a field stored twice."""
    duplicates: set[str] = set()
    last: list[str] = [""]

    def entries() -> Iterator[dict[str, Any]]:
        for name, offset, size in members:
            last[0] = name
            yield {"fname": name, "data": (offset, size), "__url__": ""}

    def on_error(exn: Exception) -> bool:
        if isinstance(exn, ValueError) and "duplicate file name" in str(exn):
            duplicates.add(_member_key(last[0])[0])  # group_by_keys drops the member and goes on
            return True
        raise exn

    out = []
    for sample in group_by_keys(entries(), keys=_member_key, lcase=False, handler=on_error):
        g = _Group(sample.pop("__key__"))
        sample.pop("__url__")
        seen: set[str] = set()
        for suffix, location in sample.items():
            field_name = suffix.partition(".")[0]
            if suffix == _BAD_NAME:
                g.fault = g.fault or ("bad_member", f"member name {g.key!r} is not '<key>.<field>.<ext>'")
            elif field_name in seen or g.key in duplicates:
                g.fault = g.fault or ("bad_member", f"field {field_name!r} stored twice")
            else:
                seen.add(field_name)
                g.members[suffix] = location
        duplicates.discard(g.key)
        out.append(g)
    return out


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
    intact = []
    for name, offset, n in members:
        intact.append((name, offset, n))
        if offset + n > size:  # this member's data is cut: its sample becomes the truncated tail
            clean_end = False
            break
    groups = _groups(intact)
    if not clean_end and groups:
        groups[-1].fault = ("truncated", "the tar ends or breaks inside or right after this sample")
    return groups


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _ShardFile:
    """The shard a reader reads member data from; slots come shard by shard, so one open file."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.f: BinaryIO | None = None

    def open(self, path: str) -> BinaryIO:
        if path != self.path or self.f is None:
            self.close()
            self.f, self.path = open(path, "rb"), path
        return self.f

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        self.f = self.path = None


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

    def _slots(self, on_unreadable: Callable[[str, str], None]) -> Iterator[tuple[str, _Group]]:
        """The global stream: (shard, group) per slot. A shard that cannot be read has no slots; it
        is reported to ``on_unreadable(shard, error)``."""
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = self._rng(0).permutation(len(self.shards))
        for s in order.tolist():
            path = self.shards[s]
            try:
                f = open(path, "rb")
            except OSError as e:
                on_unreadable(path, f"cannot open: {e}")
                continue
            with f:
                try:
                    groups = index_shard(f)
                except (tarfile.ReadError, OSError) as e:
                    on_unreadable(path, f"not a readable tar: {e}")
                    continue
            if self.shuffle:
                groups = [groups[k] for k in self._rng(1, s).permutation(len(groups)).tolist()]
            for g in groups:
                yield path, g

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
        skipped: dict[str, int] = {}

        def skip(path: str, key: str | None, reason: str, detail: str) -> None:
            self._skip(path, key, reason, detail, worker, sum(skipped.values()))
            skipped[reason] = skipped.get(reason, 0) + 1

        def unreadable(path: str, error: str) -> None:  # one reader of the job counts a shard without slots
            if self.strict or (self.rank == 0 and worker == 0):
                skip(path, None, "unreadable", error)

        start, size = self.start, self.batch_size or 1
        mine = islice(self._slots(unreadable), self.rank, None, self.world_size)  # slots rank, rank + W, ...
        positions = islice(enumerate(mine), start, None)  # (j, (shard, group)) with j >= start
        chunks = (list(c) for _, c in groupby(positions, key=lambda item: (item[0] - start) // size))
        shard = _ShardFile()
        try:
            for chunk in split_by_worker(chunks):  # chunk k goes to worker k % num_workers
                for j, (path, g) in chunk:
                    out = self._load(path, shard.open(path), g, j)
                    if isinstance(out, tuple):
                        skip(path, g.key, *out)
                        continue
                    yield j, (self.transform(out) if self.transform is not None else out)
        finally:
            shard.close()
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
