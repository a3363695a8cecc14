"""Processes and devices: the Accelerator of a run, FSDP and activation checkpointing.

* CPU (no CUDA): ``Accelerator(cpu=True)``; several processes talk over gloo. Launch them with
  ``accelerate launch --multi_gpu --num_processes N`` (the flag also selects multi-process CPU runs;
  ``--cpu`` would start a single process).
* CUDA: bf16 autocast unless ``precision: fp32``; DDP over NCCL, or FSDP with
  ``distributed.strategy: fsdp`` (each encoder/decoder block is one FSDP unit; ZeRO-2 by default as
  in the reference, ``use_orig_params`` so that the optimizer's parameter groups keep their names).
* Activation checkpointing (``distributed.activation_checkpointing``, FourM runs): every block is
  recomputed in the backward pass (non-reentrant); under FSDP accelerate applies it after
  wrapping. The wrapper leaves state-dict keys unchanged, so checkpoints load either way.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from fourm.config import ConfigError
from fourm.training.config import DistributedConfig


def build_accelerator(precision: str, dist: DistributedConfig, fsdp_blocks: tuple[str, ...] = (),
                      trackers: tuple[str, ...] = (), out_dir: str | Path | None = None):
    """The Accelerator of a run: CPU (gloo) without CUDA; with ``precision`` ``auto``, bf16 autocast
    on CUDA; FSDP if asked, wrapping the classes named in ``fsdp_blocks`` one by one; experiment
    ``trackers`` (``log_with``) writing local files under ``out_dir/trackers``.

    Raises:
        ConfigError: a tracker whose package is not installed (accelerate would drop it silently).
    """
    from accelerate import Accelerator
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    installed = {str(t) for t in get_available_trackers()}
    missing = [t for t in trackers if t not in installed]
    if missing:
        raise ConfigError(f"logging.trackers: {', '.join(map(repr, missing))} not installed (installed: "
                          f"{', '.join(sorted(installed)) or 'none'}); pip install {' '.join(missing)} (or "
                          "fourm[tracking] for tensorboard, wandb and mlflow), or remove it from logging.trackers")
    project = None if out_dir is None else ProjectConfiguration(project_dir=str(out_dir),
                                                                 logging_dir=str(Path(out_dir) / "trackers"))

    cuda = torch.cuda.is_available()
    bf16 = precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    plugin = None
    if dist.strategy == "fsdp":
        if not fsdp_blocks:
            raise ConfigError("distributed.strategy=fsdp is for FourM runs (their blocks are the wrap units); use "
                              "distributed.strategy=ddp")
        if not cuda:
            raise ConfigError("distributed.strategy=fsdp needs CUDA GPUs; use distributed.strategy=ddp on CPU")
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            sharding_strategy=dist.fsdp_sharding.upper(), auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=list(fsdp_blocks), use_orig_params=True,
            backward_prefetch="BACKWARD_PRE", state_dict_type="FULL_STATE_DICT",
            activation_checkpointing=dist.activation_checkpointing)
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no", fsdp_plugin=plugin,
                       kwargs_handlers=[DistributedDataParallelKwargs(
                           find_unused_parameters=dist.find_unused_parameters)],
                       log_with=list(trackers) or None, project_config=project)


def apply_activation_checkpointing(model: torch.nn.Module, blocks: tuple[type, ...]) -> None:
    """Recompute every module of the classes ``blocks`` in the backward pass (non-reentrant checkpointing)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply,
    )

    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, blocks))
