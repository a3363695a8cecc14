"""Training: one trainer for FourM (``fourm train``) and the image tokenizers (``fourm tokenizer train``).

* :mod:`fourm.training.trainer` - :class:`Trainer`: the loop (owns the accelerate Accelerator),
  gradient accumulation and clipping, non-finite steps, signals, logging, exact resume.
* :mod:`fourm.training.task` - :class:`~fourm.training.task.TrainTask`, what a kind of training
  brings: model, data stream, loss and metrics, evaluation, model folder.
* :mod:`fourm.training.fourm_task` - masked modeling of a FourM on token shards; its config is in
  :mod:`fourm.training.fourm_config` (:class:`TrainConfig`, :func:`load_train_config`), its
  token-shard streams in :mod:`fourm.training.data`.
* :mod:`fourm.training.tokenizer_task` - an image tokenizer on scenes, shards or photos
  (:class:`~fourm.training.tokenizer_task.TokenizerTrainConfig`).
* :mod:`fourm.training.config` - what every run shares: :class:`RunConfig`, optimizer,
  checkpoint, logging and distributed settings.
* :mod:`fourm.training.optim` - AdamW parameter groups, warm-up + cosine schedule.
* :mod:`fourm.training.checkpoint` - atomic, hashed step checkpoints of tensors and JSON, keep-last-K, ``--resume auto``.
* :mod:`fourm.training.data_guard` - stops a run whose data are all or mostly dropped as invalid.
* :mod:`fourm.training.distributed` - the Accelerator, FSDP and activation checkpointing.
* :mod:`fourm.training.metrics` - ``metrics.jsonl``, optional TensorBoard, the logging interval;
  :mod:`fourm.training.curve` plots it.
* :mod:`fourm.training.signals` - SIGTERM / Ctrl-C: a checkpoint at the end of the step.
* :mod:`fourm.training.synthetic` - synthetic token shards for tests and benchmarks.

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["data.train.shapes.shards=data/tok"])
    summary = train(cfg, resume="auto")
"""
from fourm.training.config import RunConfig
from fourm.training.fourm_config import TrainConfig, load_train_config
from fourm.training.fourm_task import FourMTask, train
from fourm.training.tokenizer_task import TokenizerTask, TokenizerTrainConfig, train_tokenizer
from fourm.training.trainer import NonFiniteLossError, Trainer, TrainSummary

__all__ = ["FourMTask", "NonFiniteLossError", "RunConfig", "TokenizerTask", "TokenizerTrainConfig", "TrainConfig",
           "TrainSummary", "Trainer", "load_train_config", "train", "train_tokenizer"]
