"""Raw shards -> token shards (``fourm tokenize``): the data set tokenised once, before training.

For each input shard ``IN/<name>.tar`` one output shard ``OUT/<name>.tar`` holds, under the same
sample keys (so raw and token shards zip by key, as in the reference's one-tar-set-per-modality
layout), one member per modality: the raw field ``spec.raw_field`` encoded by the tokenizer
``spec.tokenizer`` and stored as ``spec.token_field`` (:class:`fourm.modalities.ModalitySpec`).
With the ShapesWorld tokenizer set and no specs given:

| raw field | tokenizer | member              | content                                        |
|-----------|-----------|---------------------|------------------------------------------------|
| rgb       | rgb       | ``tok_rgb.npy``     | int16 (h, w) token grid                        |
| depth     | depth     | ``tok_depth.npy``   | int16 (h, w) token grid                        |
| semseg    | semseg    | ``tok_semseg.npy``  | int16 (h, w) token grid                        |
| caption   | text      | ``tok_caption.npy`` | int32 (n,) ids, no [EOS] (a text)              |
| det       | text      | ``tok_det.npy``     | int32 (n,) ids, no [EOS] (boxes, as in boxes.py)|

Without specs every image tokenizer of the set tokenises the raw field of its name (a ``normal/``
tokenizer reads ``normal`` and writes ``tok_normal``) and the text tokenizer the ``text_fields``
(a string is encoded as text, a list of boxes as boxes). With ``keep``, raw fields are copied as
they are (``keep=("rgb",)`` stores ``rgb.png``: the pixels of the input-only ``rgb`` modality).
Images are encoded in batches. A shard whose output already exists is skipped (outputs are written
under a temporary name and renamed, so an existing one is complete), which makes an interrupted
run resumable. ``OUT/metadata.json``, written last, records the source, the source's metadata,
each tokenizer's vocabulary and grid, the shards written (:mod:`fourm.data.shard_metadata`) and
the samples skipped.

A sample that cannot be tokenised is skipped and counted by reason (:class:`SampleChecker`): a
key that is no plain name (``../x``, ``/abs``), an image the tokenizer refuses (a grey PNG for
rgb, NaN depth, a semseg id outside its classes, a float or bool map), an image of another size
than the data set's (the source metadata's ``config.image_size``, else the first sample's), a
caption or box list that does not encode (malformed ``det``). Unreadable members are skipped
and counted by the shard reader. With ``strict=True`` (``fourm tokenize --strict``) the first bad
sample raises :class:`BadSampleError` and its shard is not written. The output folder is locked
(:class:`fourm.locking.FolderLock`) while the job runs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.data.shard_metadata import RECORDS_KEY, describe_shards
from fourm.data.shard_reader import ShardDataset
from fourm.data.shards import (NAMED_FIELDS, check_key, encode_sample, iter_tar_names, list_shards, read_metadata,
                               write_metadata, write_shard)
from fourm.errors import FourmError
from fourm.locking import FolderLock
from fourm.modalities import TEXT_TOKENIZER, ModalitySpec, token_field_for
from fourm.vq.boxes import boxes_to_ids
from fourm.vq.vqvae import CONFIG_NAME, ImageTokenizer

logger = logging.getLogger(__name__)
TEXT_FIELDS: tuple[str, ...] = ("caption", "det")  # ShapesWorld's text fields: a caption and its boxes
BAD_REASONS: tuple[str, ...] = ("bad_key", "bad_image", "image_size", "bad_sequence")
MAX_EXAMPLES = 5  # bad samples named in the report, per job


class BadSampleError(FourmError, ValueError):
    """A raw sample that cannot be tokenised, under ``strict`` (``fourm tokenize --strict``)."""


class TokenField(NamedTuple):
    """One token member to write: ``raw_field`` encoded by ``tokenizer``, stored as ``token_field``."""

    kind: str  # "image" (a token grid) or "sequence" (token ids)
    raw_field: str
    tokenizer: str
    token_field: str

    @classmethod
    def of(cls, spec: ModalitySpec) -> "TokenField":
        """The member of a modality, as its spec names it."""
        return cls(spec.kind, spec.raw_field, spec.tokenizer, spec.token_field)


def plan_fields(tokenizers: Mapping[str, Any], specs: Sequence[ModalitySpec] | None = None,
                text_fields: Sequence[str] = TEXT_FIELDS) -> list[TokenField]:
    """What to write: one :class:`TokenField` per token member.

    Args:
        tokenizers: ``load_tokenizers`` output.
        specs: the modalities to tokenise (e.g. a training config's); their tokenizers must be
            in ``tokenizers``; pixel modalities are left out (copy them with ``keep``). None:
            every image tokenizer on the raw field of its modality (``rgb_gen/`` reads ``rgb``)
            and the ``text`` tokenizer on ``text_fields``, named by
            :func:`fourm.modalities.token_field_for`.
        text_fields: raw text fields (used without ``specs``).
    """
    if specs is not None:
        plan = [TokenField.of(s) for s in specs if s.kind in ("image", "sequence")]
        missing = sorted({f.tokenizer for f in plan if f.tokenizer not in tokenizers})
        if missing:
            raise ValueError(f"no tokenizer {missing[0]!r} for the modalities given; the tokenizer set has: "
                             f"{', '.join(tokenizers)}")
        return plan
    plan = [TokenField("image", tok.modality, name, token_field_for(name))  # rgb_gen/ reads rgb, writes tok_rgb_gen
            for name, tok in tokenizers.items() if isinstance(tok, ImageTokenizer)]
    if TEXT_TOKENIZER in tokenizers:
        plan += [TokenField("sequence", f, TEXT_TOKENIZER, token_field_for(f)) for f in text_fields]
    return plan


def _kept(sample: Mapping, keep: Sequence[str]) -> dict:
    """The raw fields ``keep`` of a decoded sample, in the layout :func:`encode_sample` writes back."""
    out = {}
    for f in keep:
        v = sample[f]
        if isinstance(v, torch.Tensor):
            v = v.numpy()
            if NAMED_FIELDS.get(f) == "png" and v.ndim == 3:  # decoded (C, H, W) -> stored (H, W, C)
                v = np.ascontiguousarray(v.transpose(1, 2, 0))
        out[f] = v
    return out


def _tokenizer_info(tokenizers: Mapping[str, Any], tokenizer_dir: Path | None) -> dict:
    info = {}
    for name, tok in tokenizers.items():
        if isinstance(tok, ImageTokenizer):
            entry = {"vocab_size": tok.codebook_size, "downsample": tok.config.downsample, "dtype": "int16"}
            if tokenizer_dir is not None and (tokenizer_dir / name / CONFIG_NAME).is_file():
                entry["config_sha256"] = hashlib.sha256((tokenizer_dir / name / CONFIG_NAME).read_bytes()).hexdigest()
        else:
            entry = {"vocab_size": int(tok.vocab_size), "dtype": "int32"}
        info[name] = entry
    return info


class SampleChecker:
    """Decides whether a decoded raw sample can be tokenised; counts the ones that cannot.

    Args:
        tokenizers, plan: what :func:`tokenize_samples` will run.
        image_sizes: raw image field -> (height, width) every image must have; a field not
            given takes the size of its first good image.
        strict: raise :class:`BadSampleError` at the first bad sample instead of counting it.
    """

    def __init__(self, tokenizers: Mapping[str, Any], plan: Sequence[TokenField],
                 image_sizes: Mapping[str, tuple[int, int]] | None = None, strict: bool = False) -> None:
        self.tokenizers, self.plan, self.strict = tokenizers, list(plan), strict
        self.sizes = dict(image_sizes or {})
        self.counts = dict.fromkeys(BAD_REASONS, 0)
        self.examples: list[str] = []

    def problem(self, sample: Mapping[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) when ``sample`` cannot be tokenised, else None."""
        try:
            check_key(sample["__key__"])
        except ValueError as e:
            return "bad_key", str(e).split(":")[0]
        for spec in self.plan:
            tok, value = self.tokenizers[spec.tokenizer], sample.get(spec.raw_field)
            if spec.kind == "image":
                try:
                    x, single = tok.normalizer.check(value)
                    if not single:
                        raise ValueError(f"{spec.raw_field} holds a batch of {x.shape[0]} images, not one image")
                    size = (int(x.shape[-2]), int(x.shape[-1]))
                    tok.token_grid(*size)
                except (ValueError, TypeError) as e:
                    return "bad_image", str(e)  # the tokenizer names the field
                want = self.sizes.setdefault(spec.raw_field, size)
                if size != want:
                    return "image_size", (f"{spec.raw_field} is {size[0]} x {size[1]} px, the data set's images are "
                                          f"{want[0]} x {want[1]}")
            elif value is not None:
                try:
                    _encode_sequence(tok, value)
                except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
                    return "bad_sequence", f"{spec.raw_field}: {type(e).__name__}: {e}"
        return None

    def keep(self, sample: Mapping[str, Any]) -> bool:
        """Whether to tokenise ``sample``; a bad one is counted (or raises under ``strict``)."""
        found = self.problem(sample)
        if found is None:
            return True
        reason, detail = found
        where = f"sample {sample['__key__']!r} of {sample['__shard__']!r}"
        if self.strict:
            raise BadSampleError(f"{where}: {reason}: {detail} (drop --strict to skip and count such samples)")
        self.counts[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}: {detail}")
        logger.warning("skipping %s: %s: %s", where, reason, detail)
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _encode_sequence(tok: Any, value: Any) -> list[int]:
    """A caption's or a box list's ids; anything else raises TypeError."""
    if isinstance(value, str):
        return tok.encode(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(b, Mapping) for b in value):
        raise TypeError(f"expected a text or a list of boxes (objects), got {type(value).__name__}")
    return boxes_to_ids(value, tok)


def _source_image_sizes(meta: Mapping[str, Any] | None, plan: Sequence[TokenField]) -> dict[str, tuple[int, int]]:
    """Image sizes a ShapesWorld source's metadata states (``config.image_size``), per image field."""
    size = ((meta or {}).get("config") or {}).get("image_size") if isinstance(meta, Mapping) else None
    if not isinstance(size, int) or isinstance(size, bool):
        return {}
    return {f.raw_field: (size, size) for f in plan if f.kind == "image"}


def _chunks(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for s in samples:
        chunk.append(s)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def tokenize_samples(samples: list[dict], tokenizers: Mapping[str, Any],
                     plan: Sequence[TokenField]) -> list[dict[str, np.ndarray]]:
    """Token arrays of a batch of decoded samples (as ``ShardDataset`` yields them).

    Args:
        samples: dicts with the raw fields of ``plan`` (images as stored; texts; box lists).
        tokenizers: ``load_tokenizers`` output.
        plan: :func:`plan_fields` output.
    Returns:
        One dict per sample: token field -> int16 (h, w) grid or int32 (n,) ids. A sample without
        a sequence's raw field gets no member for it.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in samples]
    for spec in plan:
        tok = tokenizers[spec.tokenizer]
        if spec.kind == "image":
            codes = tok.encode(torch.stack([torch.as_tensor(s[spec.raw_field]) for s in samples])).cpu()
            if tok.codebook_size > 2**15:
                raise ValueError(f"{spec.tokenizer} tokenizer has {tok.codebook_size} codes; int16 token grids hold "
                                 f"at most {2**15}")
            for o, c in zip(out, codes):
                o[spec.token_field] = c.numpy().astype(np.int16)
            continue
        for o, s in zip(out, samples):
            value = s.get(spec.raw_field)
            if value is None:
                continue
            o[spec.token_field] = np.asarray(_encode_sequence(tok, value), dtype=np.int32)
    return out


def raw_fields(shard: str | os.PathLike) -> list[str]:
    """The fields of a shard's first sample, in stored order (read from the tar headers).

    Raises:
        ValueError: the shard is not a readable tar file.
    """
    fields, key = [], None
    try:
        names = list(iter_tar_names(shard))
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"input shard {shard} is not a readable tar file ({e}); give raw shards (fourm data "
                         "shapes writes them)") from None
    for name in names:
        k, _, rest = name.partition(".")
        if key is not None and k != key:
            break
        key = k
        fields.append(rest.partition(".")[0])
    return fields


def tokenize_shards(
    input_shards: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizers: Mapping[str, Any],
    batch_size: int = 64,
    tokenizer_dir: str | os.PathLike | None = None,
    progress: bool = True,
    keep: Sequence[str] = (),
    specs: Sequence[ModalitySpec] | None = None,
    text_fields: Sequence[str] = TEXT_FIELDS,
    strict: bool = False,
) -> dict:
    """Write one token shard per input shard (skipping those already written).

    Args:
        input_shards: shard spec (folder, glob, brace range) of raw shards.
        output_dir: folder of the token shards (same file names as the inputs).
        tokenizers: ``load_tokenizers`` output (``{"rgb": ImageTokenizer, ..., "text": TextTokenizer}``).
        batch_size: images per encoder call.
        tokenizer_dir: where the tokenizers were loaded from (recorded in the metadata).
        progress: show a progress bar over shards.
        keep: raw fields copied unchanged into the token shards (``rgb`` for a model with rgb pixel input).
        specs, text_fields: what to tokenise (:func:`plan_fields`).
        strict: raise :class:`BadSampleError` at the first bad sample (no shard is left half
            written) instead of skipping and counting it.
    Returns:
        {"written": [paths], "skipped": [paths already present], "samples": samples written,
        "bad_samples": {reason: count}, "unreadable": samples the reader skipped, "examples": a
        few bad samples and why}.

    Raises:
        FolderLockedError: another job writes to ``output_dir``.
    """
    if not tokenizers:
        raise ValueError("no tokenizers given")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    plan = plan_fields(tokenizers, specs, text_fields)
    keep = tuple(keep)
    paths = list_shards(input_shards)
    available = raw_fields(paths[0])
    bad = [f for f in keep if f not in available]
    if bad:
        raise ValueError(f"keep={list(keep)}: {bad[0]!r} is not a raw field; allowed: {', '.join(available)}")
    out_dir = Path(output_dir)
    for p in paths:
        if Path(p).resolve().parent == out_dir.resolve():
            raise ValueError(f"output folder {out_dir} holds the input shard {p}; choose another output folder")
    with FolderLock(out_dir, "fourm tokenize", "--output"):
        return _tokenize_locked(paths, out_dir, tokenizers, plan, keep, batch_size, tokenizer_dir, progress, strict)


def _tokenize_locked(paths: list[str], out_dir: Path, tokenizers: Mapping[str, Any], plan: list[TokenField],
                     keep: tuple[str, ...], batch_size: int, tokenizer_dir: str | os.PathLike | None, progress: bool,
                     strict: bool) -> dict:
    """The body of :func:`tokenize_shards`, with ``out_dir`` locked."""
    images = [s.raw_field for s in plan if s.kind == "image"]
    texts = [s.raw_field for s in plan if s.kind == "sequence"]
    read = list(dict.fromkeys(images + [f for f in keep if f not in texts]))
    optional = list(dict.fromkeys(texts + [f for f in keep if f in texts]))
    src_dir = Path(paths[0]).parent
    src_meta = read_metadata(src_dir) if (src_dir / "metadata.json").is_file() else None
    checker = SampleChecker(tokenizers, plan, _source_image_sizes(src_meta, plan), strict)
    written, skipped, n_samples, unreadable = [], [], 0, 0
    bar = tqdm(paths, desc="tokenize", unit="shard", disable=not progress)
    for path in bar:
        target = out_dir / Path(path).name
        if target.exists():
            skipped.append(str(target))
            continue
        ds = ShardDataset(path, fields=read, optional=optional, strict=strict, strict_hint="drop --strict")

        def items() -> Iterator[tuple[str, dict[str, bytes]]]:
            good = (s for s in ds if checker.keep(s))
            for chunk in _chunks(good, batch_size):
                for sample, toks in zip(chunk, tokenize_samples(chunk, tokenizers, plan)):
                    yield sample["__key__"], encode_sample(toks | _kept(sample, keep))

        n_samples += write_shard(target, items())  # atomic: a bad sample under strict leaves no file
        unreadable += ds.stats.total
        written.append(str(target))
        bar.set_postfix(samples=n_samples, bad=checker.total + unreadable)
    bar.close()
    shards = sorted(str(out_dir / Path(p).name) for p in paths)
    write_metadata(out_dir, {
        "kind": "token_shards",
        "source": str(src_dir),
        "source_metadata": src_meta,
        "tokenizer_dir": None if tokenizer_dir is None else str(tokenizer_dir),
        "tokenizers": _tokenizer_info(tokenizers, None if tokenizer_dir is None else Path(tokenizer_dir)),
        # an image's vocabulary, or the name of the text tokenizer whose vocabulary a sequence has
        "fields": {s.token_field: tokenizers[s.tokenizer].codebook_size if s.kind == "image" else s.tokenizer
                   for s in plan} | {f: "raw" for f in keep},
        "bad_samples": dict(checker.counts), "unreadable_samples": unreadable,  # of this job (not of skipped shards)
        RECORDS_KEY: describe_shards(shards),
    })
    return {"written": written, "skipped": skipped, "samples": n_samples, "bad_samples": dict(checker.counts),
            "unreadable": unreadable, "examples": list(checker.examples)}


def read_token_metadata(directory: str | os.PathLike) -> dict:
    """The metadata of a token shard folder (raises if the folder does not hold token shards)."""
    meta = read_metadata(directory)
    if meta.get("kind") != "token_shards":
        raise ValueError(f"{directory} does not hold token shards (metadata kind {meta.get('kind')!r})")
    return meta
