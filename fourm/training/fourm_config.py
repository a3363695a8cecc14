"""Typed configuration of a FourM training run (``fourm train CONFIG``).

One YAML file maps onto :class:`TrainConfig`, a :class:`fourm.training.config.RunConfig` (out_dir,
steps, seed, optim, checkpoint, logging, distributed ...) with the sections of masked modeling;
an unknown key anywhere raises :class:`fourm.config.ConfigError` naming its dotted path::

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["steps=20", "data.train.shapes.shards=tok/"])

Sections:

* ``modalities``: the model's modalities by name, each with the fields of
  :class:`fourm.modalities.ModalitySpec` (``{tok_rgb: {kind: image, vocab_size: 1024, grid: [8, 8]}}``);
  their order is the model's.
* ``model``: a named size from :data:`fourm.models.MODEL_SIZES` and/or explicit widths.
* ``masking``: :class:`fourm.masking.MaskingConfig` (token budgets, Dirichlet mixture).
* ``data``: training shard sets (a mixture, by name, with weights), batch size, workers.
* ``val``: optional validation shards and how often to score them.

Cross-field checks (a masked modality the model lacks, warm-up longer than the run ...) happen at
construction, with a message that names the setting to change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from fourm.config import ConfigError, apply_overrides, from_dict, load_yaml
from fourm.masking import MaskingConfig
from fourm.modalities import ModalityRegistry
from fourm.models import ATTENTION_BACKENDS, MODEL_SIZES, FourMConfig
from fourm.training.config import RunConfig


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: a named size (``tiny`` ... ``xlarge``) and/or explicit values that override it.

    Without ``size`` the four width/depth fields are required. ``attention`` picks the attention
    kernel, not the architecture: ``auto`` (xformers where it runs, else SDPA), ``sdpa`` or
    ``xformers`` (:mod:`fourm.models.attention_kernels`); it may change when a run resumes.
    """

    size: str | None = None
    dim: int | None = None
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    qk_norm: bool | None = None
    init_seed: int | None = None
    attention: str = "auto"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r}; allowed: {', '.join(ATTENTION_BACKENDS)}")
        if self.size is not None and self.size not in MODEL_SIZES:
            raise ValueError(f"size={self.size!r}; allowed: {', '.join(MODEL_SIZES)} (or leave it out)")
        if self.size is None:
            missing = [n for n in ("dim", "encoder_depth", "decoder_depth", "num_heads") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"without size, give {missing} explicitly")

    def fourm_config(self, registry: ModalityRegistry) -> FourMConfig:
        """The :class:`FourMConfig` for ``registry``."""
        explicit = {n: getattr(self, n) for n in ("dim", "encoder_depth", "decoder_depth", "num_heads",
                                                  "mlp_ratio", "qk_norm") if getattr(self, n) is not None}
        try:
            if self.size is not None:
                return FourMConfig.from_size(self.size, registry, **explicit)
            return FourMConfig(modalities=tuple(registry), **explicit)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None


@dataclass(frozen=True)
class SourceConfig:
    """One set of token shards (as written by ``fourm tokenize``).

    Args:
        shards: folder, glob, brace range or list of them.
        weight: relative share of micro-batches drawn from this set (mixtures).
        fields: shard field per modality when it is not the modality's ``token_field``
            (``tok_rgb`` -> ``tok_rgb``, ``caption`` -> ``tok_caption``, pixels ``rgb`` -> ``rgb``).
        masking: masking for this set (e.g. fewer modalities); default: the run's ``masking``.
    """

    shards: str | list[str]
    weight: float = 1.0
    fields: dict[str, str] = field(default_factory=dict)
    masking: MaskingConfig | None = None

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("shards is empty; give a folder, glob or list of token shard files")
        if not self.weight >= 0:
            raise ValueError(f"weight={self.weight}: must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Args:
        train: shard sets by name; each micro-batch comes from one set, drawn by weight as a pure
            function of (seed, micro-batch number). Names fix the order (sorted).
        batch_size: samples per micro-batch and process (global batch = batch_size x processes x
            optim.grad_accum).
        num_workers: DataLoader workers per shard set (masking runs there); 0 = in the main process.
        prefetch_factor: micro-batches each worker prepares ahead.
        shuffle: permute shards and samples per (seed, epoch).
        strict: raise at the first corrupt or invalid sample instead of skipping and counting it.
    """

    train: dict[str, SourceConfig]
    batch_size: int = 32
    num_workers: int = 2
    prefetch_factor: int = 2
    shuffle: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("train is empty; name at least one shard set, e.g. data.train.shapes.shards=DIR")
        if sum(s.weight for s in self.train.values()) <= 0:
            raise ValueError("train: all weights are 0; give one set a weight > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0 and prefetch_factor="
                             f"{self.prefetch_factor} >= 1")

    def source_names(self) -> list[str]:
        return sorted(self.train)


@dataclass(frozen=True)
class ValConfig:
    """Periodic validation loss on held-out shards, with fixed masks (seeded by ``seed``).

    Args:
        shards: validation token shards.
        every: steps between validations (0: only at the end of the run).
        max_batches: micro-batches per process scored each time (fewer if the set is smaller).
        batch_size: samples per micro-batch (default: data.batch_size).
        seed: seed of the validation masks.
        fields: as in :class:`SourceConfig`.
    """

    shards: str | list[str]
    every: int = 0
    max_batches: int = 16
    batch_size: int | None = None
    seed: int = 1
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_batches < 1:
            raise ValueError(f"every={self.every} must be >= 0 and max_batches={self.max_batches} >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """A FourM training run: the shared :class:`~fourm.training.config.RunConfig` fields and

    Args:
        modalities: the model's modalities, name -> :class:`~fourm.modalities.ModalitySpec` fields,
            in model order; each one's ``token_field`` is what the token shards must hold.
        model: the architecture (default: size ``tiny``).
        masking: the masking of every shard set that has none of its own.
        data: the training shard sets.
        val: validation shards (optional).
        init_from: a model folder (``FourM.save_pretrained``, e.g. an earlier run's ``out_dir/model``)
            whose weights start this run instead of a random initialisation (fine-tuning, a second
            stage); its architecture must equal ``model``. Optimizer, schedule and data start fresh.
            Ignored on resume (the checkpoint holds the weights).
        loss_weights: per target modality, its weight in the training objective, the weighted mean
            of the modalities' losses present in a micro-batch (missing ones weigh 1, so ``{}`` is
            the model's plain mean over modalities). Logged and validation losses stay unweighted.
        reuse_cpu_memory: keep the memory of vocabulary-sized gradients and logits from step to
            step on CPU (:mod:`fourm.models.cpu_memory`: faster, same results; no effect on GPU).

    The run writes ``out_dir/model`` (``FourM.save_pretrained``) at its end.
    """

    modalities: dict[str, Any]  # name -> spec fields; checked by registry(), which names the bad entry
    masking: MaskingConfig
    data: DataConfig
    model: ModelConfig = field(default_factory=lambda: ModelConfig(size="tiny"))
    val: ValConfig | None = None
    init_from: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    reuse_cpu_memory: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        registry = self.registry()  # checks every spec
        names, listed = set(registry.names()), ", ".join(registry.names())
        for name, w in self.loss_weights.items():
            if name not in names:
                raise ConfigError(f"loss_weights: {name!r} is not a model modality; modalities: {listed}")
            if not registry[name].decoder:
                raise ConfigError(f"loss_weights: {name!r} is input-only and has no loss")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise ConfigError(f"loss_weights.{name}={w!r}: must be a number > 0")
        checks = [("masking", self.masking)] + [
            (f"data.train.{n}.masking", s.masking) for n, s in self.data.train.items() if s.masking is not None]
        for total in ("num_input_tokens", "num_target_tokens"):  # the model's encoder and decoder slots
            if max(getattr(m, total) for _, m in checks) < 1:
                raise ConfigError(f"masking.{total}={getattr(self.masking, total)}: a FourM run needs at least one "
                                  f"{total.split('_')[1]} token per sample; use an integer >= 1")
        for where, m in checks:
            unknown = [x for x in m.modalities if x not in names]
            if unknown:
                raise ConfigError(f"{where}.modalities: {unknown[0]!r} is not a model modality; modalities: {listed}")
        for where, fields_ in [(f"data.train.{n}.fields", s.fields) for n, s in self.data.train.items()] + (
                [("val.fields", self.val.fields)] if self.val is not None else []):
            unknown = [x for x in fields_ if x not in names]
            if unknown:
                raise ConfigError(f"{where}: {unknown[0]!r} is not a model modality; modalities: {listed}")

    def registry(self) -> ModalityRegistry:
        """The model's modalities, in ``modalities`` order."""
        try:
            return ModalityRegistry.from_mapping(self.modalities)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def may_change_on_resume(self, key: str) -> bool:
        """Whether the dotted setting ``key`` may differ from the checkpoint's on resume: the
        shared ones, validation, workers and where the shards are (they may move)."""
        return (super().may_change_on_resume(key)
                or key.startswith(("val.", "data.num_workers", "data.prefetch_factor", "reuse_cpu_memory",
                                   "model.attention"))
                or (key.startswith("data.train.") and ".shards" in key))

    @property
    def num_encoder_tokens(self) -> int:
        """Encoder slots per sample: the largest input budget of any masking in the run."""
        return max(m.num_input_tokens for m in self.maskings())

    @property
    def num_decoder_tokens(self) -> int:
        """Decoder slots per sample: the largest target budget of any masking in the run."""
        return max(m.num_target_tokens for m in self.maskings())

    def maskings(self) -> list[MaskingConfig]:
        """The masking of each training set (sorted by name)."""
        return [self.data.train[n].masking or self.masking for n in self.data.source_names()]


def load_train_config(path: str | os.PathLike | None, overrides: Sequence[str] = (),
                      base: dict | None = None) -> TrainConfig:
    """Read a YAML run config, apply ``dotted.key=value`` overrides and build a :class:`TrainConfig`.

    Args:
        path: YAML file (or None to start from ``base``).
        overrides: e.g. ``["steps=100", "data.train.shapes.shards=data/tok"]``.
        base: plain data to start from instead of a file (e.g. a checkpoint's resolved config).

    Returns:
        The validated config. Raises :class:`ConfigError` naming the bad field.
    """
    data = load_yaml(path) if path is not None else dict(base or {})
    return from_dict(TrainConfig, apply_overrides(data, list(overrides)), "TrainConfig")
