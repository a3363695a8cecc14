"""Typed configuration of a FourM training run (``fourm train CONFIG``).

One YAML file maps onto :class:`TrainConfig`; every section is a small frozen dataclass and an
unknown key anywhere raises :class:`fourm.config.ConfigError` naming its dotted path::

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["steps=20", "data.train.shapes.shards=tok/"])

Sections:

* ``modalities``: the ShapesWorld modality set (vocabularies, grid, sequence lengths) and your own.
* ``model``: a named size from :data:`fourm.models.MODEL_SIZES` and/or explicit widths.
* ``masking``: :class:`fourm.masking.MaskingConfig` (token budgets, Dirichlet mixture).
* ``data``: training shard sets (a mixture, by name, with weights), batch size, workers.
* ``val``: optional validation shards and how often to score them.
* ``optim``: AdamW, warm-up + cosine schedule, gradient clipping.
* ``distributed``, ``checkpoint``, ``logging``: the rest of the run.

Cross-field checks (a masked modality the model lacks, warm-up longer than the run ...) happen at
construction, with a message that names the setting to change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Sequence

from fourm.config import ConfigError, apply_overrides, from_dict, load_yaml
from fourm.masking import MaskingConfig
from fourm.modalities import ModalityRegistry, ModalitySpec, shapes_world_modalities
from fourm.models import MODEL_SIZES, FourMConfig

DEFAULT_MODALITIES: tuple[str, ...] = ("tok_rgb", "tok_depth", "tok_semseg", "caption", "det")


@dataclass(frozen=True)
class ModalitiesConfig:
    """The model's modalities: :func:`fourm.modalities.shapes_world_modalities` and a subset.

    Args:
        image_size, downsample: image side in pixels and pixels per token side (8 x 8 grids at 64/8).
        image_vocab: codebook size per image modality (``tok_rgb``, ``tok_depth``, ``tok_semseg``).
        text_vocab: WordPiece vocabulary shared by ``caption`` and ``det``.
        caption_length, det_length: longest sequences in tokens (without [EOS]).
        names: which modalities the model has, in model order (default: the five token modalities;
            ``rgb`` is the input-only pixel modality).
        extra: your own modalities, as :class:`fourm.modalities.ModalitySpec` fields, registered
            beside the ShapesWorld ones (list each in ``names`` too)::

                extra:
                  - {name: tok_normal, kind: image, vocab_size: 512, grid: [8, 8]}
                  - {name: tags, kind: sequence, vocab_size: 4312, max_length: 16}

            Token shards then need a field per extra modality (``tok_normal``, ``tok_tags``: see
            :func:`fourm.training.data.default_field`, or set ``data.train.<set>.fields``).
    """

    image_size: int = 64
    downsample: int = 8
    image_vocab: dict[str, int] = field(default_factory=dict)
    text_vocab: int = 4096
    caption_length: int = 64
    det_length: int = 64
    names: tuple[str, ...] = DEFAULT_MODALITIES
    extra: tuple[ModalitySpec, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, spec in enumerate(self.extra):
            if spec.name in seen:
                raise ConfigError(f"modalities.extra[{i}]: {spec.name!r} is defined twice")
            seen.add(spec.name)
            if spec.name not in self.names:
                raise ConfigError(f"modalities.extra[{i}] defines {spec.name!r} but modalities.names does not list it "
                                  f"({', '.join(self.names)}); add it to names to give the model this modality")

    def registry(self) -> ModalityRegistry:
        """The registry of ``names``, in that order."""
        reg = shapes_world_modalities(
            image_size=self.image_size, downsample=self.downsample, image_vocab=self.image_vocab or None,
            text_vocab=self.text_vocab, caption_length=self.caption_length, det_length=self.det_length)
        for i, spec in enumerate(self.extra):
            if spec.name in reg:
                raise ConfigError(f"modalities.extra[{i}]: {spec.name!r} is already a ShapesWorld modality; "
                                  "choose another name (or configure the built-in one through the other fields)")
            reg.register(spec)
        unknown = [n for n in self.names if n not in reg]
        if unknown:
            raise ConfigError(f"modalities.names: unknown modality {unknown[0]!r}; known: {', '.join(reg.names())}")
        return reg.subset(self.names)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: a named size (``tiny`` ... ``xlarge``) and/or explicit values that override it.

    Without ``size`` the four width/depth fields are required.
    """

    size: str | None = None
    dim: int | None = None
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    qk_norm: bool | None = None
    init_seed: int | None = None

    def __post_init__(self) -> None:
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
        fields: shard field per modality when it is not the default (``tok_rgb`` -> ``tok_rgb``,
            ``caption`` -> ``tok_caption``, pixels ``rgb`` -> ``rgb``).
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


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (or a constant rate after warm-up).

    Args:
        lr: peak learning rate. min_lr: the cosine's end value.
        warmup_steps: linear warm-up from ~0 to ``lr``.
        schedule: ``cosine`` (to ``min_lr`` at the last step) or ``constant``.
        weight_decay: applied to matrices; never to norms, biases, modality vectors, mask token
            (and embedding tables unless ``decay_embeddings``).
        betas, eps: AdamW.
        fused: fused AdamW kernel; ``null`` = where supported (all parameters on CUDA or CPU).
        decay_embeddings: give token embedding tables weight decay (the reference does).
        grad_clip: clip the global gradient norm to this (``null``: no clipping; the norm is still
            computed and logged).
        grad_accum: micro-batches per optimizer step.
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused: bool | None = None
    decay_embeddings: bool = True
    grad_clip: float | None = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"lr={self.lr} must be > 0 and min_lr={self.min_lr} in [0, lr]")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_accum < 1:
            raise ValueError(f"warmup_steps={self.warmup_steps} and weight_decay={self.weight_decay} "
                             f"must be >= 0, grad_accum={self.grad_accum} >= 1")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas}: each must lie in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip}: must be > 0 or null")


@dataclass(frozen=True)
class DistributedConfig:
    """How several processes share the model (under ``accelerate launch``).

    Args:
        strategy: ``ddp`` (replicated weights; CPU with gloo or GPUs with NCCL) or ``fsdp``
            (sharded weights and optimizer state, GPUs only; blocks are the wrap units).
        fsdp_sharding: ``shard_grad_op`` (ZeRO-2, as the reference) or ``full_shard`` (ZeRO-3).
        activation_checkpointing: recompute each encoder/decoder block in the backward pass
            (less memory, ~30% more compute); works with either strategy.
        find_unused_parameters: DDP option; needed because a batch can lack a modality's targets.
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp_sharding: Literal["shard_grad_op", "full_shard"] = "shard_grad_op"
    activation_checkpointing: bool = False
    find_unused_parameters: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints under ``out_dir/checkpoints/step-XXXXXXXX``.

    Args:
        every: steps between checkpoints (the last step and a stop by signal always write one).
        keep_last: how many of the newest checkpoints to keep (older ones are deleted).
    """

    every: int = 500
    keep_last: int = 3

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError(f"every={self.every} and keep_last={self.keep_last} must be >= 1")


@dataclass(frozen=True)
class LoggingConfig:
    """Metrics.

    Args:
        every: steps between lines in ``metrics.jsonl`` (and progress-bar updates of the loss).
        progress: tqdm bar on the main process.
        tensorboard: also write TensorBoard events to ``out_dir/tensorboard`` (needs the
            ``tensorboard`` package).
        sample_keys: log the sample keys of every micro-batch to ``out_dir/samples/rank<r>.jsonl``.
    """

    every: int = 10
    progress: bool = True
    tensorboard: bool = False
    sample_keys: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every={self.every}: must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """A FourM training run.

    Args:
        out_dir: run folder: ``train_config.json``, ``metrics.jsonl``, ``checkpoints/``, ``model/``.
        steps: optimizer steps of the whole run (the schedule's length).
        seed: seed of data order, masks, initialisation and per-step randomness.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        max_nonfinite_steps: abort after this many non-finite steps in a row (the batch is saved
            to ``out_dir/debug``); each one alone is skipped and counted.
        threads: torch intra-op threads per process (``null``: torch's default).
        init_from: a model folder (``FourM.save_pretrained``, e.g. an earlier run's ``out_dir/model``)
            whose weights start this run instead of a random initialisation (fine-tuning, a second
            stage); its architecture must equal ``model``. Optimizer, schedule and data start fresh.
            Ignored on resume (the checkpoint holds the weights).
        loss_weights: per target modality, its weight in the training objective, the weighted mean
            of the modalities' losses present in a micro-batch (missing ones weigh 1, so ``{}`` is
            the model's plain mean over modalities). Logged and validation losses stay unweighted.
    """

    out_dir: str
    steps: int
    masking: MaskingConfig
    data: DataConfig
    modalities: ModalitiesConfig = field(default_factory=ModalitiesConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(size="tiny"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    val: ValConfig | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_nonfinite_steps: int = 5
    threads: int | None = None
    init_from: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: must be >= 1")
        if self.optim.warmup_steps > self.steps:
            raise ConfigError(f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}")
        if self.seed < 0 or self.max_nonfinite_steps < 1:
            raise ConfigError(f"seed={self.seed} must be >= 0 and max_nonfinite_steps={self.max_nonfinite_steps} >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}: must be >= 1 or null")
        names = set(self.modalities.names)
        registry = self.modalities.registry() if self.loss_weights else None
        for name, w in self.loss_weights.items():
            if name not in names:
                raise ConfigError(f"loss_weights: {name!r} is not a model modality; modalities.names: "
                                  f"{', '.join(self.modalities.names)}")
            if not registry[name].decoder:
                raise ConfigError(f"loss_weights: {name!r} is input-only and has no loss")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise ConfigError(f"loss_weights.{name}={w!r}: must be a number > 0")
        checks = [("masking", self.masking)] + [
            (f"data.train.{n}.masking", s.masking) for n, s in self.data.train.items() if s.masking is not None]
        for where, m in checks:
            unknown = [x for x in m.modalities if x not in names]
            if unknown:
                raise ConfigError(f"{where}.modalities: {unknown[0]!r} is not a model modality; "
                                  f"modalities.names: {', '.join(self.modalities.names)}")
        for where, fields_ in [(f"data.train.{n}.fields", s.fields) for n, s in self.data.train.items()] + (
                [("val.fields", self.val.fields)] if self.val is not None else []):
            unknown = [x for x in fields_ if x not in names]
            if unknown:
                raise ConfigError(f"{where}: {unknown[0]!r} is not a model modality; "
                                  f"modalities.names: {', '.join(self.modalities.names)}")

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
