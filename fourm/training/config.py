"""The settings every training run shares: the loop, the optimizer, checkpoints, logging, processes.

:class:`RunConfig` is the base of both run configs, :class:`fourm.training.fourm_task.TrainConfig`
(``fourm train``) and :class:`fourm.training.tokenizer_task.TokenizerTrainConfig` (``fourm
tokenizer train``); each adds only what its task needs (modalities, masking and token shards;
a tokenizer and its images). In YAML the shared fields sit at the top level::

    out_dir: out/run
    steps: 1000
    seed: 0
    precision: auto                   # auto | fp32 | bf16
    optim: {lr: 1.0e-3, warmup_steps: 100, ...}
    checkpoint: {every: 500, keep_last: 3}
    logging: {every: 10, progress: true, trackers: [tensorboard]}   # any of accelerate's trackers

An unknown key anywhere raises :class:`fourm.config.ConfigError` naming its dotted path; bad
combinations (warm-up longer than the run ...) are rejected at construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fourm.config import ConfigError

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (or a constant rate after warm-up).

    Args:
        lr: peak learning rate. min_lr: the cosine's end value.
        warmup_steps: linear warm-up from ~0 to ``lr``.
        schedule: ``cosine`` (to ``min_lr`` at the last step) or ``constant``.
        weight_decay: applied to the parameters the task decays (FourM: matrices, never norms,
            biases, modality vectors, mask token, nor embedding tables unless
            ``decay_embeddings``; tokenizers: conv and linear weights).
        betas, eps: AdamW.
        fused: fused AdamW kernel; ``null`` = where supported (all parameters on CUDA or CPU).
        decay_embeddings: give token embedding tables weight decay (the reference does; FourM only).
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
            raise ValueError(f"grad_clip={self.grad_clip}: must be > 0 or null (no clipping)")


@dataclass(frozen=True)
class DistributedConfig:
    """How several processes share the model (under ``accelerate launch``).

    Args:
        strategy: ``ddp`` (replicated weights; CPU with gloo or GPUs with NCCL) or ``fsdp``
            (sharded weights and optimizer state, GPUs only; FourM runs, whose blocks are the
            wrap units).
        fsdp_sharding: ``shard_grad_op`` (ZeRO-2, as the reference) or ``full_shard`` (ZeRO-3).
        activation_checkpointing: recompute each encoder/decoder block in the backward pass
            (less memory, ~30% more compute); FourM runs, with either strategy.
        find_unused_parameters: DDP option; needed because a batch can lack a modality's targets.
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp_sharding: Literal["shard_grad_op", "full_shard"] = "shard_grad_op"
    activation_checkpointing: bool = False
    find_unused_parameters: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints under ``out_dir/checkpoints/step-XXXXXXXX`` (see :mod:`fourm.training.checkpoint`).

    Args:
        every: steps between checkpoints (the last step and a stop by signal always write one).
        keep_last: how many of the newest checkpoints to keep (older ones are deleted).
    """

    every: int = 500
    keep_last: int = 3

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError(f"every={self.every} and keep_last={self.keep_last} must be >= 1")


def tracker_names() -> tuple[str, ...]:
    """The experiment trackers ``accelerate`` knows (``tensorboard``, ``wandb``, ``mlflow``, ``aim``, ...)."""
    from accelerate.utils import LoggerType

    return tuple(t.value for t in LoggerType if t.value != "all")


@dataclass(frozen=True)
class LoggingConfig:
    """Metrics: ``out_dir/metrics.jsonl`` always, and the same numbers to experiment trackers.

    Args:
        every: steps between lines in ``metrics.jsonl`` (and progress-bar updates of the loss).
        progress: tqdm bar on the main process.
        trackers: experiment trackers that also receive every line, through
            ``accelerate.Accelerator(log_with=...)``: ``tensorboard``, ``wandb``, ``mlflow``, ``aim``,
            ... (:func:`tracker_names`; each needs its package, ``pip install fourm[tracking]`` has
            the first three). Local files go to ``out_dir/trackers``.
        project: the trackers' project / run name (default: the ``out_dir`` folder's name).
        tensorboard: the spelling before ``trackers``; ``true`` adds ``tensorboard`` to them.
        sample_keys: log the sample keys of every micro-batch to ``out_dir/samples/rank<r>.jsonl``.
    """

    every: int = 10
    progress: bool = True
    trackers: tuple[str, ...] = ()
    project: str | None = None
    tensorboard: bool = False
    sample_keys: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every={self.every}: must be >= 1")
        if isinstance(self.trackers, str):
            raise ValueError(f"trackers={self.trackers!r}: give a list, e.g. [{self.trackers}]")
        names = tuple(self.trackers) + (("tensorboard",) if self.tensorboard and "tensorboard" not in self.trackers
                                        else ())
        known = tracker_names()
        for name in names:
            if name not in known:
                raise ValueError(f"trackers: {name!r} is not an accelerate tracker; known: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError(f"trackers={list(names)} names a tracker twice")
        object.__setattr__(self, "trackers", names)


@dataclass(frozen=True)
class DataCheckConfig:
    """When the trainer gives up on data that do not fit the model (:mod:`fourm.training.data_guard`).

    Args:
        window: micro-batches per process: the run stops with ``InvalidDataError`` when none of
            the last ``window`` held a valid sample (a shorter run: when it ends without one).
        max_invalid_fraction: the run stops when more than this share of the samples read so far
            was invalid (dropped: a token grid or sequence that does not fit the model), checked
            from the ``window``-th micro-batch on; 1.0 turns this check off.
    """

    window: int = 20
    max_invalid_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window={self.window}: must be >= 1 (micro-batches)")
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise ValueError(f"max_invalid_fraction={self.max_invalid_fraction}: must lie in [0, 1] (1 = no limit)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every training run has (the fields of :class:`fourm.training.trainer.Trainer`); a
    run config adds a ``data`` section with ``batch_size`` (per process and micro-batch).

    Args:
        out_dir: run folder: ``train_config.json``, ``metrics.jsonl``, ``checkpoints/`` and the
            trained model.
        steps: optimizer steps of the whole run (the schedule's length).
        seed: seed of data order, initialisation and per-step randomness.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        max_nonfinite_steps: abort after this many non-finite steps in a row (the batch is saved
            to ``out_dir/debug``); each one alone is skipped and counted.
        threads: torch intra-op threads per process (``null``: torch's default).
        optim, checkpoint, logging, distributed, data_check: the sections above.
    """

    out_dir: str
    steps: int
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_nonfinite_steps: int = 5
    threads: int | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    data_check: DataCheckConfig = field(default_factory=DataCheckConfig)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: must be >= 1")
        if self.optim.warmup_steps > self.steps:
            raise ConfigError(f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}")
        if self.seed < 0 or self.max_nonfinite_steps < 1:
            raise ConfigError(f"seed={self.seed} must be >= 0 and max_nonfinite_steps={self.max_nonfinite_steps} >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}: must be >= 1 or null")

    def may_change_on_resume(self, key: str) -> bool:
        """Whether the dotted setting ``key`` may differ between a run and the checkpoint it resumes
        (where it writes, how it logs and checkpoints, threads); a run config adds its own."""
        return key.startswith(RESUME_MAY_CHANGE)


# Settings of every run that may differ from the checkpoint's on resume (prefixes of dotted keys).
RESUME_MAY_CHANGE: tuple[str, ...] = ("out_dir", "logging.", "checkpoint.", "threads", "max_nonfinite_steps",
                                      "data_check.")
