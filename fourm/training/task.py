"""What a kind of training tells the trainer: batches in, a loss and metrics out.

The :class:`~fourm.training.trainer.Trainer` owns everything runs have in common: processes and
devices (accelerate), the optimizer and schedule, gradient accumulation and clipping, skipped
non-finite steps, SIGTERM / Ctrl-C, logging, checkpoints and exact resume. A :class:`TrainTask`
brings the rest:

| method                 | FourM (:mod:`~fourm.training.fourm_task`) | image tokenizer (:mod:`~fourm.training.tokenizer_task`) |
|------------------------|------------------------------------------|-------------------------------------------------------|
| ``build_model``        | ``FourM(config)`` (or ``init_from``)     | ``ImageTokenizer(config)``                            |
| ``no_decay``           | norms, biases, modality vectors ...      | norms, biases, class embedding                        |
| ``build_data``         | masked token-shard mixture               | scenes, photo crops or shard images                   |
| ``loss``               | masked-modeling cross-entropy            | reconstruction + commitment (+ codebook usage)        |
| ``evaluate``           | validation loss on held-out shards       | reconstruction scores on held-out images              |
| ``save_model``         | ``out_dir/model``                        | ``out_dir/tokenizer``                                 |

A data stream yields :class:`MicroBatch` objects and has a JSON position (``state_dict``), which
the checkpoint stores: the data of step ``s`` must be a pure function of that position and the
config. The trainer seeds torch's global generator from ``(seed, step, rank)`` before every step,
so any randomness inside ``loss`` (dropout, a diffusion decoder's noise, dead-code replacement)
repeats on resume.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
from torch import nn

from fourm.training.config import RunConfig


@dataclass
class MicroBatch:
    """One micro-batch of one process.

    ``batch`` is what the task's ``loss`` reads, or None for an empty micro-batch (every sample
    corrupt or invalid; the trainer runs the task's ``empty_batch`` with zero weight so that the
    processes stay in step). ``keys`` are the samples' keys (for ``logging.sample_keys``),
    ``num_samples`` their number, ``num_tokens`` the tokens the step learns from, ``invalid`` the
    samples dropped as invalid and ``invalid_detail`` one of them and why; ``source``, ``epoch``
    and ``chunk`` say where it came from.
    """

    batch: Any | None
    keys: list[str] = field(default_factory=list)
    chunk: int = 0
    num_tokens: int = 0
    invalid: int = 0
    source: int = 0
    epoch: int = 0
    num_samples: int | None = None
    invalid_detail: str = ""

    @property
    def samples(self) -> int:
        return len(self.keys) if self.num_samples is None else self.num_samples

    def pin_memory(self) -> "MicroBatch":
        def pin(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.pin_memory()
            if isinstance(x, Mapping):
                return {k: pin(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(pin(v) for v in x)
            return x

        self.batch = pin(self.batch)
        return self


@dataclass
class TaskLoss:
    """A micro-batch's loss: ``objective`` is minimised; each of ``metrics`` (scalars, names from
    the task's ``metric_names``; a missing one is not counted) is averaged over the micro-batches
    of a logging interval."""

    objective: torch.Tensor
    metrics: dict[str, torch.Tensor]


class DataStream(Protocol):
    """Micro-batches of one process, with a position that resumes exactly."""

    epoch: int

    def next(self) -> MicroBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def skip_counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@dataclass
class RunContext:
    """Where a task runs: the accelerator and this process's place among the processes."""

    accelerator: Any
    rank: int
    world_size: int
    is_main: bool

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


class TrainTask(ABC):
    """One kind of training (see the module docstring). ``config`` is its run config."""

    name: str = ""  # in checkpoint metadata
    model_dir: str = "model"  # the trained model's folder in out_dir
    fsdp_blocks: tuple[str, ...] = ()  # class names FSDP wraps one by one; empty: no FSDP

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.ctx: RunContext | None = None

    def setup(self, ctx: RunContext) -> None:
        """Called once by the trainer, before anything else."""
        self.ctx = ctx

    @property
    @abstractmethod
    def metric_names(self) -> list[str]:
        """Names of the per-micro-batch metrics, in a fixed order (the logged ``loss`` first)."""

    @abstractmethod
    def build_model(self, resuming: bool) -> nn.Module:
        """The model at the start of the run (when ``resuming``, the checkpoint's weights follow)."""

    @abstractmethod
    def no_decay(self, model: nn.Module) -> set[str]:
        """Names of the parameters without weight decay (read on the bare model)."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Last changes before the model is handed to accelerate (e.g. activation checkpointing)."""
        return model

    @abstractmethod
    def build_data(self) -> DataStream:
        """This process's training stream."""

    def empty_batch(self, source: int) -> Any:
        """A batch that stands in for an empty micro-batch of ``source`` (run with zero weight)."""
        raise NotImplementedError(f"{type(self).__name__} yields no empty micro-batches")

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> TaskLoss:
        """The loss of one micro-batch (on the device). Called by every process equally often."""

    @property
    def eval_every(self) -> int | None:
        """Steps between evaluations (0: at the end only); None: no evaluation."""
        return None

    def evaluate(self, model: nn.Module) -> dict[str, Any] | None:
        """A record for ``metrics.jsonl`` (with ``split``) on the main process; collective."""
        return None

    def log_extras(self) -> dict[str, float]:
        """More values for the training log line (e.g. codebook usage)."""
        return {}

    @abstractmethod
    def save_model(self, model: nn.Module, path: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write the (unwrapped) model to folder ``path``; ``state_dict``: a gathered full one (FSDP)."""

    @abstractmethod
    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        """Load a folder written by :meth:`save_model` into ``model`` strictly."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the task keeps between steps, for the checkpoint (main process's)."""
        return {}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors`."""

    def close(self) -> None:
        """Stop what the task started besides the training stream (e.g. validation workers)."""
