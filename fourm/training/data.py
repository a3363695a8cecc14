"""Token-shard loading for training: masking in the workers, exact positions, mixtures.

A :class:`SourceStream` reads one set of token shards with :class:`fourm.data.ShardDataset` in
batch mode: position ``j`` of this rank's stream is global slot ``j * world_size + rank``, and
micro-batch (chunk) ``c`` of an epoch holds positions ``[c * B, (c + 1) * B)``. Masking runs in the
DataLoader workers (:class:`SampleMasker`) with a generator drawn from ``(seed, source, epoch,
global slot)`` only, so the masks, like the order, do not depend on the number of workers or
processes. The stream yields exactly ``chunks_per_epoch`` micro-batches per epoch on every rank
(the same number everywhere, so collective operations never hang): the tail that does not fill a
chunk on every rank is dropped, and a chunk whose samples were all corrupt comes back as an empty
micro-batch (``batch is None``) that the trainer runs with zero weight. Its position
``(epoch, next_chunk)`` is all a checkpoint needs to resume mid-epoch.

A :class:`MixtureStream` draws the source of micro-batch ``k`` from the weights as a pure function
of ``(seed, k)``; each source keeps its own epochs. Micro-batches are therefore homogeneous (one
source each); a source may mask fewer modalities than another.

Samples whose tokens do not fit the model (a grid of the wrong size, an id outside the
vocabulary, a float or bool grid) are dropped and counted as ``invalid`` (``strict`` raises
:class:`InvalidSampleError` instead), like the shard reader's corrupt samples, which it counts by
reason in ``ShardDataset.stats``; :mod:`fourm.training.data_guard` stops a run whose data are
mostly or wholly dropped.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from fourm.config import ConfigError
from fourm.data.shard_reader import ShardDataset
from fourm.errors import FourmError
from fourm.masking import Batch, UnifiedMasking, collate_masked, generator_for
from fourm.modalities import ModalityRegistry, ModalitySpec, pixels_to_float
from fourm.training.task import MicroBatch

logger = logging.getLogger(__name__)
MIXTURE_TAG = 0x6D6978  # separates the mixture's draws from other uses of the seed
STRICT_HINT = "set data.strict=false"  # how a run turns strict reading off, named in its errors


class InvalidSampleError(FourmError, ValueError):
    """A sample that does not fit the model, in strict mode (``data.strict=true``)."""


def modality_fields(registry: ModalityRegistry, names: Sequence[str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Shard field per modality in ``names``: the spec's ``token_field``, unless ``overrides`` names another."""
    return {n: overrides.get(n, registry[n].token_field) for n in names}


class SampleMasker:
    """Token-shard sample -> masked sample; runs inside DataLoader workers as the dataset transform.

    Args:
        masking: the masking of this source.
        fields: modality -> shard field.
        seed: the run's seed.
        source: index of the source in the mixture (so that two sources never share masks).
        rank, world_size: to turn the rank's position into the global slot.
        strict: raise on an invalid sample instead of dropping it.

    :meth:`bind` attaches the dataset whose epoch keys the masks.
    """

    def __init__(self, masking: UnifiedMasking, fields: Mapping[str, str], seed: int, source: int,
                 rank: int, world_size: int, strict: bool) -> None:
        self.masking, self.fields = masking, dict(fields)
        self.seed, self.source, self.rank, self.world_size, self.strict = seed, source, rank, world_size, strict
        self.dataset: ShardDataset | None = None

    def bind(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def raw_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The masking input of one decoded shard sample (pixels uint8 -> float in [-1, 1])."""
        out: dict[str, Any] = {}
        for name, spec in self.masking.specs.items():
            value = sample[self.fields[name]]
            if spec.kind == "pixels":
                value = pixels_to_float(value).float()  # (C, H, W) uint8 -> [-1, 1]
            out[name] = value
        return out

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        j = int(sample["__index__"])
        epoch = self.dataset.epoch if self.dataset is not None else 0
        slot = j * self.world_size + self.rank
        item: dict[str, Any] = {"key": sample["__key__"], "index": j, "masked": None, "error": ""}
        try:
            g = generator_for(self.seed, self.source, epoch, slot)
            item["masked"] = self.masking.mask_sample(self.raw_sample(sample), g)
        except (ValueError, KeyError, TypeError) as e:
            where = f"sample {sample['__key__']!r} of {os.path.basename(sample['__shard__'])!r}"
            if self.strict:
                raise InvalidSampleError(f"invalid {where} in {sample['__shard__']!r}: {e} ({STRICT_HINT} to skip "
                                         "and count such samples)") from e
            logger.warning("dropping invalid sample %r of %r: %s", sample["__key__"], sample["__shard__"], e)
            item["error"] = f"{where}: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
        return item


class CollateMicroBatch:
    """DataLoader ``collate_fn`` for the lists of masked samples that a batch-mode ShardDataset yields."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __call__(self, items: list[dict[str, Any]]) -> MicroBatch:
        good = [it for it in items if it["masked"] is not None]
        batch = collate_masked([it["masked"] for it in good]) if good else None
        tokens = 0
        if batch is not None:
            tokens = int(sum(int(d["is_input"].sum()) + int(d["is_target"].sum()) for d in batch.values()))
        errors = [it["error"] for it in items if it["masked"] is None and it.get("error")]
        return MicroBatch(batch, [it["key"] for it in good], items[0]["index"] // self.batch_size,
                          tokens, len(items) - len(good), invalid_detail=errors[0] if errors else "")


def empty_batch(specs: Mapping[str, ModalitySpec]) -> Batch:
    """A batch of one sample with no input and no target (stands in for an empty micro-batch)."""
    out: Batch = {}
    for name, spec in specs.items():
        if spec.kind == "pixels":
            tokens = torch.zeros(1, spec.in_channels, *spec.image_size)
            L = spec.num_tokens
        else:
            L = spec.num_tokens if spec.kind == "image" else 2 * spec.num_tokens
            tokens = torch.zeros(1, L, dtype=torch.long)
        out[name] = {"tokens": tokens, "is_input": torch.zeros(1, L, dtype=torch.bool),
                     "is_target": torch.zeros(1, L, dtype=torch.bool)}
    return out


def check_vocab_against_metadata(shards: str | Sequence[str], specs: Mapping[str, ModalitySpec],
                                 fields: Mapping[str, str], where: str) -> None:
    """Compare the vocabularies in a token shard folder's ``metadata.json`` with the model's.

    Token ids of a field written with a larger vocabulary than the model's would be out of range:
    that raises, naming the setting to change. Missing metadata (or a non-folder spec) is not checked.
    """
    from fourm.data.shards import read_metadata

    folders = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    for folder in folders:
        if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "metadata.json")):
            continue
        meta = read_metadata(folder)
        tokenizers = meta.get("tokenizers") or {}
        for name, field_name in fields.items():
            vocab = (meta.get("fields") or {}).get(field_name)
            if isinstance(vocab, str):  # a sequence: the vocabulary of the tokenizer it names ("raw": none)
                vocab = (tokenizers.get(vocab) or {}).get("vocab_size")
            spec = specs[name]
            if not isinstance(vocab, int) or spec.vocab_size is None:
                continue
            setting = f"modalities.{name}.vocab_size"
            if vocab > spec.vocab_size:
                raise ConfigError(f"{where}: {folder}/metadata.json gives {field_name!r} a vocabulary of {vocab}, the "
                                 f"model's {name!r} has {spec.vocab_size}; set {setting}={vocab}")
            if vocab < spec.vocab_size:
                logger.warning("%s: %s has vocabulary %d in %s/metadata.json, the model %d (%s)",
                               where, field_name, vocab, folder, spec.vocab_size, setting)


def count_slots(shards: str | Sequence[str]) -> int:
    """Slots (samples, corrupt ones included) of a shard set, from the tar headers only."""
    return ShardDataset(shards).num_samples()


class SourceStream:
    """Exactly ``chunks_per_epoch`` micro-batches per epoch of one shard set, on one rank.

    Args:
        shards: the shard set.
        masking: its masking.
        fields: modality -> shard field.
        batch_size: samples per micro-batch.
        seed, source: seed of order and masks; the source's index.
        rank, world_size: this process and the number of processes.
        num_workers, prefetch_factor: DataLoader settings (masking runs in the workers).
        shuffle, strict: see :class:`fourm.data.ShardDataset`.
        pin_memory: pin batches for faster copies to a GPU.
        name: label for error messages.
    """

    def __init__(self, shards: str | Sequence[str], masking: UnifiedMasking, fields: Mapping[str, str],
                 batch_size: int, seed: int, source: int, rank: int, world_size: int, num_workers: int = 0,
                 prefetch_factor: int = 2, shuffle: bool = True, strict: bool = False, pin_memory: bool = False,
                 name: str = "data") -> None:
        self.batch_size, self.num_workers, self.source = batch_size, num_workers, source
        check_vocab_against_metadata(shards, masking.specs, fields, name)
        self.masker = SampleMasker(masking, fields, seed, source, rank, world_size, strict)
        try:
            self.dataset = ShardDataset(shards, fields=sorted(set(fields.values())), shuffle=shuffle, seed=seed,
                                        rank=rank, world_size=world_size, strict=strict, batch_size=batch_size,
                                        transform=self.masker, strict_hint=STRICT_HINT)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{name}.shards: {e}") from None
        self.masker.bind(self.dataset)
        total = ShardDataset(self.dataset.shards).num_samples()
        self.chunks_per_epoch = (total // world_size) // batch_size
        if total == 0:
            raise ConfigError(f"{name}: no readable sample in {len(self.dataset.shards)} shard(s) "
                              f"({', '.join(self.dataset.shards[:3])}{' ...' if len(self.dataset.shards) > 3 else ''}): "
                              "empty or not tar files; give the folder of token shards that fourm tokenize wrote")
        if self.chunks_per_epoch < 1:
            raise ConfigError(f"{name}: {total} samples in {len(self.dataset.shards)} shards are fewer than one "
                              f"micro-batch per process ({batch_size} x {world_size} processes); lower "
                              "data.batch_size or add data")
        extra = dict(persistent_workers=True, prefetch_factor=prefetch_factor) if num_workers > 0 else {}
        # its own generator: starting an iterator draws a seed, which must not come from the global
        # generator that the trainer seeds per step (masks and order come from generator_for)
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(seed),
                                 collate_fn=CollateMicroBatch(batch_size), pin_memory=pin_memory, **extra)
        self.epoch, self.next_chunk = 0, 0
        self._it: Iterator[MicroBatch] | None = None
        self._buffer: dict[int, MicroBatch] = {}
        self._last_seen: dict[int, int] = {}
        self._exhausted = False

    # ---- position -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Where the next micro-batch comes from: ``{"epoch", "next_chunk"}``."""
        return {"epoch": self.epoch, "next_chunk": self.next_chunk}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, chunk = int(state["epoch"]), int(state["next_chunk"])
        if epoch < 0 or not 0 <= chunk <= self.chunks_per_epoch:
            raise ConfigError(f"data position epoch={epoch}, next_chunk={chunk} is outside this data "
                              f"({self.chunks_per_epoch} micro-batches per epoch); was the data or batch size changed?")
        self.epoch, self.next_chunk = epoch, chunk
        self._reset()

    def _reset(self) -> None:
        self._it, self._buffer, self._last_seen, self._exhausted = None, {}, {}, False

    # ---- iteration ----------------------------------------------------------------------------
    def _pull(self) -> None:
        """Receive one micro-batch from the loader into the buffer (or note the end of the epoch)."""
        try:
            mb = next(self._it)
        except StopIteration:
            self._exhausted = True
            return
        rel = mb.chunk - self._start_chunk
        self._last_seen[rel % max(1, self.num_workers)] = rel
        self._buffer[mb.chunk] = mb

    def _missing(self, chunk: int) -> bool:
        # Worker w yields the chunks with relative number = w (mod workers), in increasing order,
        # and skips chunks whose samples were all corrupt: a later one from the same worker
        # proves that this one will never come.
        rel = chunk - self._start_chunk
        return self._exhausted or self._last_seen.get(rel % max(1, self.num_workers), -1) > rel

    def next(self) -> MicroBatch:
        """The next micro-batch; crosses into the next epoch after ``chunks_per_epoch``."""
        if self.next_chunk >= self.chunks_per_epoch:
            self.epoch, self.next_chunk = self.epoch + 1, 0
            self._reset()
        if self._it is None:
            self._start_chunk = self.next_chunk
            self.dataset.set_epoch(self.epoch, self.next_chunk * self.batch_size)
            self._it = iter(self.loader)
        c = self.next_chunk
        while c not in self._buffer and not self._missing(c):
            self._pull()
        mb = self._buffer.pop(c, None) or MicroBatch(None, [], c)
        mb.source, mb.epoch = self.source, self.epoch
        self.next_chunk += 1
        return mb

    def close(self) -> None:
        """Stop the workers."""
        self._reset()
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


@dataclass
class MixtureStream:
    """Micro-batches from several :class:`SourceStream`, the source of micro-batch ``k`` drawn by
    weight as a pure function of ``(seed, k)``."""

    sources: list[SourceStream]
    weights: list[float]
    seed: int
    k: int = 0
    probs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.weights) or not self.sources:
            raise ValueError(f"{len(self.sources)} sources but {len(self.weights)} weights")
        w = np.asarray(self.weights, dtype=np.float64)
        self.probs = w / w.sum()

    def choose(self, k: int) -> int:
        """Source index of micro-batch ``k``."""
        if len(self.sources) == 1:
            return 0
        u = np.random.default_rng([self.seed, MIXTURE_TAG, k]).random()
        return int(min(np.searchsorted(np.cumsum(self.probs), u, side="right"), len(self.sources) - 1))

    def next(self) -> MicroBatch:
        mb = self.sources[self.choose(self.k)].next()
        self.k += 1
        return mb

    @property
    def epoch(self) -> int:
        """Epoch of the first source (for logs)."""
        return self.sources[0].epoch

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["sources"]) != len(self.sources):
            raise ConfigError(f"checkpoint has {len(state['sources'])} data sources, the config {len(self.sources)}; "
                              "resume with the same data.train")
        self.k = int(state["k"])
        for s, st in zip(self.sources, state["sources"]):
            s.load_state_dict(st)

    def skip_counts(self) -> dict[str, int]:
        """Corrupt samples skipped by the shard readers of this process, by reason (all sources)."""
        total: dict[str, int] = {}
        for s in self.sources:
            for reason, n in s.dataset.stats.counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def close(self) -> None:
        for s in self.sources:
            s.close()


def validation_batches(stream: SourceStream, max_batches: int) -> Iterator[MicroBatch]:
    """The first ``min(max_batches, chunks_per_epoch)`` micro-batches of epoch 0 (fixed masks)."""
    stream.load_state_dict({"epoch": 0, "next_chunk": 0})
    for _ in range(min(max_batches, stream.chunks_per_epoch)):
        yield stream.next()
    stream._reset()
