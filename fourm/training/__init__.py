"""Training the FourM model on token shards (``fourm train``).

* :mod:`fourm.training.config` - :class:`TrainConfig` (YAML -> typed, strict) and :func:`load_train_config`.
* :mod:`fourm.training.trainer` - :class:`Trainer` (owns the accelerate Accelerator), :func:`train`.
* :mod:`fourm.training.data` - token-shard streams with masking in the workers, exact positions, mixtures.
* :mod:`fourm.training.optim` - AdamW parameter groups, warm-up + cosine schedule.
* :mod:`fourm.training.checkpoint` - atomic step checkpoints, keep-last-K, ``--resume auto``.
* :mod:`fourm.training.distributed` - the Accelerator, FSDP and activation checkpointing.
* :mod:`fourm.training.metrics` - ``metrics.jsonl`` and optional TensorBoard.
* :mod:`fourm.training.synthetic` - synthetic token shards for tests and benchmarks.

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["data.train.shapes.shards=data/tok"])
    summary = train(cfg, resume="auto")
"""
from fourm.training.config import TrainConfig, load_train_config
from fourm.training.trainer import NonFiniteLossError, Trainer, TrainSummary, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainSummary", "Trainer", "load_train_config", "train"]
