"""AdamW with weight-decay groups, and the warm-up + cosine learning-rate schedule, for every run.

    groups = param_groups(model, weight_decay=0.05, no_decay=task.no_decay(model))
    opt = build_optimizer(model, OptimConfig(lr=1e-3), no_decay)
    sched = build_scheduler(opt, OptimConfig(...), total_steps=1000)   # LambdaLR, step once per update

Which parameters get no weight decay is the task's choice (``TrainTask.no_decay``: for FourM norms,
biases, modality vectors and the mask token; for tokenizers norms, biases and the class
embedding), given as parameter names without wrapper segments (:func:`clean_name`). Parameters
shared under several names (a modality vector used by a modality's encoder and decoder embedding)
appear once.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fourm.training.config import OptimConfig

# Name segments that wrappers insert (DDP, FSDP, activation checkpointing, torch.compile).
WRAPPER_SEGMENTS: tuple[str, ...] = ("module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def clean_name(name: str) -> str:
    """A parameter name without wrapper segments: the name in the bare model's state dict."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def param_groups(model: nn.Module, weight_decay: float, no_decay: set[str]) -> list[dict]:
    """Two AdamW parameter groups: ``decay`` and ``no_decay`` (see the module docstring).

    Args:
        model: the model, bare or wrapped (DDP, FSDP with ``use_orig_params``, checkpoint wrappers).
        weight_decay: decay of the ``decay`` group.
        no_decay: names (of the bare model) of the parameters without decay; read them before
            FSDP wrapping, which flattens shapes.

    Returns:
        ``[{"params", "weight_decay", "name": "decay"}, {... "name": "no_decay"}]``; trainable
        parameters only, each once, in ``named_parameters`` order (deterministic).
    """
    decay, keep = [], []
    for name, p in model.named_parameters():  # named_parameters already skips shared duplicates
        if p.requires_grad:
            (keep if clean_name(name) in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": keep, "weight_decay": 0.0, "name": "no_decay"},
    ]


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW can take these parameters (all floating, all on CUDA or all on CPU)."""
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cuda", "cpu"} and all(
        p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, config: OptimConfig, no_decay: set[str]) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; fused when ``config.fused`` is true, or null and supported."""
    groups = param_groups(model, config.weight_decay, no_decay)
    params = [p for g in groups for p in g["params"]]
    fused = fused_supported(params) if config.fused is None else config.fused
    if fused and not fused_supported(params):
        raise ValueError("optim.fused=true but the parameters are not all floating tensors on one CUDA or CPU "
                         "device; set optim.fused to null (auto) or false")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                             weight_decay=config.weight_decay, fused=bool(fused))


class WarmupCosine:
    """Multiplier of the peak learning rate at optimizer step ``s`` (a pure function of ``s``).

    Linear warm-up ``(s + 1) / warmup_steps`` for ``s < warmup_steps``; then either constant 1 or a
    half cosine from 1 down to ``min_ratio`` at ``s = total_steps - 1``.

    Args:
        total_steps: steps of the run.
        warmup_steps: warm-up length.
        min_ratio: ``min_lr / lr``.
        schedule: ``"cosine"`` or ``"constant"``.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float, schedule: str = "cosine") -> None:
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule={schedule!r}; allowed: 'cosine', 'constant'")
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps or not 0 <= min_ratio <= 1:
            raise ValueError(f"need total_steps >= 1, 0 <= warmup_steps <= total_steps and min_ratio in [0, 1]; got "
                             f"{total_steps}, {warmup_steps}, {min_ratio}")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_ratio, self.schedule = min_ratio, schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`WarmupCosine`; call ``step()`` once per optimizer step (also skipped ones)."""
    fn = WarmupCosine(total_steps, config.warmup_steps, config.min_lr / config.lr, config.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
