"""The training loop of every run (FourM and image tokenizers); it owns the ``accelerate.Accelerator``.

    trainer = Trainer(FourMTask(cfg), resume="auto")      # or TokenizerTask(cfg)
    summary = trainer.fit()

One optimizer step: ``optim.grad_accum`` micro-batches of the task's stream (gradients synchronised
on the last one only), global gradient-norm clipping, then a single host synchronisation that
reads two flags summed over all processes, "non-finite loss or gradient" and "stop requested
(SIGTERM / Ctrl-C)". A non-finite step is skipped (no update; data, schedule and step counter
move on) and counted; ``max_nonfinite_steps`` of them in a row save the step's micro-batches to
``out_dir/debug`` (safetensors) and raise :class:`NonFiniteLossError`. A stop request writes a
checkpoint at the end of the step and returns. Metric sums stay on the device between log lines;
logging reduces them across processes. The same synchronisation carries the data guard's verdict
(:mod:`fourm.training.data_guard`): data that are wholly or mostly dropped as invalid or unreadable
stop the run with :class:`~fourm.training.data_guard.InvalidDataError` instead of a NaN loss.

One run per ``out_dir``: the main process holds its lock (:class:`fourm.locking.FolderLock`) from
construction to :meth:`Trainer.close`; a second trainer on the folder raises ``FolderLockedError``.

Exact resume: the data of a step are a pure function of the stream's position, which the
checkpoint holds; torch's global generator is re-seeded from (seed, step, rank) before every step
(dropout, a diffusion decoder's noise, quantizer choices); optimizer, scheduler, RNG states, the
task's own state and the open logging interval are restored. Resuming from step s therefore
reproduces the uninterrupted run's weights and logged metrics bit for bit (same hardware, thread
count and number of processes). Checkpoints: :mod:`fourm.training.checkpoint`.

Several processes: ``accelerate launch --multi_gpu --num_processes 2 -m fourm.cli train CONFIG``
(``--multi_gpu`` is also the flag for several CPU processes; they use gloo). Every process reads
its own share of the data (the streams are not handed to accelerate, which would split them
again). FSDP (``distributed.strategy: fsdp``, FourM runs) needs CUDA and several processes;
checkpoints then gather full state dicts on the main process.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.config import ConfigError, from_dict, save_json_atomic, to_dict
from fourm.data.shard_reader import SKIP_REASONS
from fourm.locking import FolderLock
from fourm.training import checkpoint as ckpt
from fourm.training.data_guard import DataGuard, InvalidDataError
from fourm.training.distributed import build_accelerator
from fourm.training.metrics import JsonlWriter, LogInterval, MetricsLog, truncate_jsonl
from fourm.training.optim import build_optimizer, build_scheduler
from fourm.training.signals import StopSignals
from fourm.training.task import MicroBatch, RunContext, TaskLoss, TrainTask

logger = logging.getLogger(__name__)
STEP_SEED_TAG = 0x53544550


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row; the last step's batches were saved for debugging."""


@dataclass
class TrainSummary:
    """What :meth:`Trainer.fit` did. ``stopped_by``: None (finished), "until_step", "SIGTERM" or
    "SIGINT"; ``last``: the last training log line; ``val``: the last evaluation record;
    ``model_dir``: the trained model's folder (written when the run finished)."""

    start_step: int
    step: int
    stopped_by: str | None
    nonfinite_steps: int
    skipped_samples: int
    invalid_samples: int
    last: dict | None
    val: dict | None
    checkpoint: str | None
    wall_s: float
    model_dir: str | None = None
    is_main: bool = True


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as trackers take hyperparameters: dotted keys, scalar values (lists as text)."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    value = config if isinstance(config, (int, float, str, bool)) or config is None else str(config)
    return {prefix[:-1]: "null" if value is None else value}


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's global generator for one step of one process."""
    return int(np.random.SeedSequence([seed, STEP_SEED_TAG, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a (nested) batch to ``device`` (non-blocking from pinned memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def flat_tensors(obj: Any, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a nested batch under dotted keys (``micro0.tok_rgb.tokens``), for safetensors."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().cpu().contiguous()}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(flat_tensors(v, f"{prefix}.{k}"))
    return out


class Trainer:
    """Train ``task.config``'s run.

    Args:
        task: a :class:`~fourm.training.task.TrainTask` (``FourMTask(cfg)``, ``TokenizerTask(cfg)``).
        resume: None (fresh run; an existing checkpoint in out_dir is an error), ``"auto"`` (the
            newest intact checkpoint of ``out_dir`` if any; newer incomplete or corrupt ones are
            skipped with a warning and deleted at the next save) or a checkpoint folder (an
            incomplete or corrupt one raises ``CheckpointError``).
        progress: override ``config.logging.progress``.
    """

    def __init__(self, task: TrainTask, resume: str | None = None, progress: bool | None = None) -> None:
        self.task, self.config = task, task.config
        cfg = self.config
        self.out_dir = Path(cfg.out_dir)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.accelerator = acc = build_accelerator(cfg.precision, cfg.distributed, task.fsdp_blocks,
                                                   cfg.logging.trackers, self.out_dir)
        self.rank, self.world_size, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        # one run per out_dir: the main process holds its lock from here to close()
        self._lock = FolderLock(self.out_dir, f"fourm {task.name} training", "out_dir") if self.is_main else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._build(resume, progress)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _build(self, resume: str | None, progress: bool | None) -> None:
        task, cfg, acc = self.task, self.config, self.accelerator
        self.fsdp = acc.distributed_type.name == "FSDP"
        if cfg.distributed.strategy == "fsdp" and not self.fsdp:
            logger.warning("distributed.strategy=fsdp with a single process: training unsharded")
        self.progress = cfg.logging.progress if progress is None else progress
        task.setup(RunContext(acc, self.rank, self.world_size, self.is_main))
        self.resume_from, self.skipped_checkpoints = ckpt.resolve_resume(resume, self.out_dir)
        if resume is None and ckpt.latest_checkpoint(self.out_dir) is not None:
            raise FileExistsError(f"{self.out_dir} already holds checkpoints; pass --resume auto to continue that "
                                  "run, or choose another out_dir")
        state = self._read_checkpoint() if self.resume_from is not None else None

        model = task.build_model(resuming=state is not None)
        if state is not None:
            task.load_weights(model, self.resume_from / ckpt.MODEL_DIR)
        no_decay = task.no_decay(model)  # shapes are only known before FSDP
        self.model = acc.prepare(task.prepare_model(model))
        self.optimizer = build_optimizer(self.model, cfg.optim, no_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.metric_names = list(task.metric_names)
        self.data = task.build_data()

        self.step = 0
        self.nonfinite_steps = self.nonfinite_in_a_row = 0
        self.tokens_seen = 0
        self.wall_before = 0.0  # training wall time of earlier runs of this out_dir (from the checkpoint)
        self._fit_t0: float | None = None
        self.base_skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.base_invalid = 0
        self.guard = DataGuard(cfg.data_check, self.rank)
        self._target: int | None = None  # the step fit() runs to (the data guard's last step)
        self.interval = LogInterval(len(self.metric_names), acc.device)
        if state is not None:
            self._load_state(state)
        self.start_step = self.step
        self._signals = StopSignals()
        self._last_val: dict | None = None
        self.metrics: MetricsLog | None = None
        self.sample_log: JsonlWriter | None = None

    # ------------------------------------------------------------------ resume
    def _read_checkpoint(self) -> dict:
        meta = ckpt.read_meta(self.resume_from)
        if meta.get("task") != self.task.name:
            raise ConfigError(f"{self.resume_from} is a {meta.get('task')!r} checkpoint; this run trains "
                              f"{self.task.name!r}")
        if meta["world_size"] != self.world_size:
            raise ConfigError(f"{self.resume_from} was written by {meta['world_size']} processes, this run has "
                              f"{self.world_size}; exact resume needs the same number of processes")
        state = ckpt.load_trainer_state(self.resume_from)
        saved = to_dict(from_dict(type(self.config), state["config"]))  # fields added since read as defaults
        ckpt.check_resume_config(saved, to_dict(self.config), self.config.may_change_on_resume)
        return state

    def _load_state(self, state: dict) -> None:
        optim_sd = ckpt.load_optimizer_state(self.resume_from)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(optim_sd)
        ckpt.match_param_layout(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.task.load_state_tensors(ckpt.load_task_state(self.resume_from))
        c = state["counters"]
        self.step, self.tokens_seen = c["step"], c["tokens_seen"]
        self.wall_before = float(c.get("wall_s", 0.0))
        self.nonfinite_steps, self.nonfinite_in_a_row = c["nonfinite_steps"], c["nonfinite_in_a_row"]
        self.base_skipped, self.base_invalid = dict(c["skipped"]), c["invalid"]
        mine = state["ranks"][self.rank]
        ckpt.set_rng_state(ckpt.load_rng_tensors(self.resume_from, self.rank), mine["rng"])
        self.interval.load(mine["interval"])

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Any) -> TaskLoss:
        """The task's loss on one micro-batch (patch it to inspect or inject faults)."""
        return self.task.loss(self.model, batch)

    def train_step(self) -> bool:
        """One optimizer step; returns whether a stop was requested (on any process)."""
        acc, cfg, dev = self.accelerator, self.config, self.accelerator.device
        torch.manual_seed(step_seed(cfg.seed, self.step, self.rank))
        self.model.train()
        accum = cfg.optim.grad_accum
        objective = torch.zeros((), device=dev)
        sums = torch.zeros(len(self.metric_names), device=dev)
        counts = [0] * len(self.metric_names)
        micro, tokens, samples, invalid, kept = 0, 0, 0, 0, []
        for i in range(accum):
            mb = self.data.next()
            kept.append(mb)
            self.guard.update(mb)
            if self.sample_log is not None:
                self.sample_log.write({"step": self.step + 1, "micro": i, "source": mb.source, "epoch": mb.epoch,
                                       "chunk": mb.chunk, "keys": mb.keys})
            real = mb.batch is not None
            batch = to_device(mb.batch if real else self.task.empty_batch(mb.source), dev)
            sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(self.model)
            with sync:
                with acc.autocast():
                    out = self.compute_loss(batch)
                acc.backward(out.objective * ((1.0 if real else 0.0) / accum))
            invalid += mb.invalid
            if real:
                objective += out.objective.detach().float()
                for j, name in enumerate(self.metric_names):
                    if name in out.metrics:
                        sums[j] += out.metrics[name].detach().float()
                        counts[j] += 1
                micro, tokens, samples = micro + 1, tokens + mb.num_tokens, samples + mb.samples
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        grad_norm = torch.as_tensor(acc.clip_grad_norm_(self.model.parameters(), clip), device=dev).float()
        data_problem = self.guard.problem(final=self._target is not None and self.step + 1 >= self._target)
        flags = torch.stack([(~torch.isfinite(objective) | ~torch.isfinite(grad_norm)).float(),
                             torch.tensor(float(self._signals.signum is not None), device=dev),
                             torch.tensor(float(data_problem is not None), device=dev)])
        if self.world_size > 1:
            flags = acc.reduce(flags, "sum")
        bad, stop, data_bad = (v > 0 for v in flags.tolist())  # the step's one host synchronisation
        if data_bad:
            self.optimizer.zero_grad(set_to_none=True)
            raise InvalidDataError(f"step {self.step + 1}: "
                                   + (data_problem or "another process stopped on its data (see its error)"))
        if bad:
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            logger.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                           self.step + 1, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                path = self._save_debug(kept, objective, grad_norm)
                raise NonFiniteLossError(f"{self.nonfinite_in_a_row} non-finite steps in a row (max_nonfinite_steps="
                                         f"{cfg.max_nonfinite_steps}) at step {self.step + 1}; batches saved to {path}")
        else:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
            iv = self.interval
            iv.sums += sums
            iv.counts = [a + b for a, b in zip(iv.counts, counts)]
            iv.grad_norm += grad_norm
            iv.micro, iv.steps = iv.micro + micro, iv.steps + 1
        self.interval.tokens += tokens
        self.interval.samples += samples
        self.interval.invalid += invalid
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return stop

    def _save_debug(self, kept: list[MicroBatch], objective: torch.Tensor, grad_norm: torch.Tensor) -> Path:
        """The step's micro-batches as safetensors, their keys and sources as JSON."""
        path = self.out_dir / "debug" / f"nonfinite-step-{self.step + 1:08d}-rank{self.rank}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(kept):
            if mb.batch is not None:
                tensors.update(flat_tensors(mb.batch, f"micro{i}"))
        save_file(tensors, str(path.with_suffix(".safetensors")))
        save_json_atomic({"step": self.step + 1, "rank": self.rank, "objective_sum": objective.item(),
                          "grad_norm": grad_norm.item(), "keys": [mb.keys for mb in kept],
                          "sources": [mb.source for mb in kept]}, path.with_suffix(".json"))
        return path.with_suffix(".safetensors")

    # ------------------------------------------------------------------ logging
    def _reduce(self, values: list[torch.Tensor | float]) -> list[float]:
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.accelerator.device) for v in values])
        if self.world_size > 1:
            t = self.accelerator.reduce(t, "sum")
        return t.tolist()

    def wall_s(self) -> float:
        """Seconds spent in :meth:`fit` for this run so far, summed over resumes."""
        now = 0.0 if self._fit_t0 is None else time.perf_counter() - self._fit_t0
        return self.wall_before + now

    def skipped_samples(self) -> dict[str, int]:
        """Corrupt samples skipped so far by reason, all processes (collective)."""
        local = self.data.skip_counts()
        total = self._reduce([float(local.get(r, 0)) for r in SKIP_REASONS])
        return {r: int(n) + self.base_skipped.get(r, 0) for r, n in zip(SKIP_REASONS, total)}

    def _log_train(self) -> dict:
        iv, n = self.interval, len(self.metric_names)
        vals = self._reduce([float(iv.micro), float(iv.tokens), float(iv.samples), float(iv.invalid),
                             *iv.sums.double(), *map(float, iv.counts)])
        micro, tokens, samples, invalid = vals[:4]
        sums, counts = vals[4:4 + n], vals[4 + n:]
        skipped = self.skipped_samples()
        self.tokens_seen += int(tokens)
        self.base_invalid += int(invalid)
        dt = max(time.perf_counter() - iv.t0, 1e-9)
        means = {m: s / c for m, s, c in zip(self.metric_names, sums, counts) if c}
        rec = {"step": self.step, "split": "train", "epoch": self.data.epoch,
               "loss": means.pop("loss", float("nan")), **means, **self.task.log_extras(),
               "lr": self.scheduler.get_last_lr()[0], "grad_norm": iv.grad_norm.item() / max(iv.steps, 1),
               "tokens_per_s": tokens / dt, "samples_per_s": samples / dt, "tokens_seen": self.tokens_seen,
               "nonfinite_steps": self.nonfinite_steps, "skipped_samples": sum(skipped.values()),
               "invalid_samples": self.base_invalid, "wall_s": round(self.wall_s(), 2)}
        if self.metrics is not None:
            self.metrics.write(rec)
        iv.reset()
        return rec

    def validate(self) -> dict | None:
        """The task's evaluation (collective); the record is logged on the main process."""
        rec = self.task.evaluate(self.model)
        self.model.train()
        if rec is not None:
            rec = {"step": self.step, **rec}
            if self.metrics is not None:
                self.metrics.write(rec)
            self._last_val = rec
        return rec

    # ------------------------------------------------------------------ checkpoints
    def _full_state_dicts(self) -> tuple[dict | None, dict | None]:
        """(model, optimizer) full state dicts on the main process (None elsewhere); collective under FSDP."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            model_sd = self.accelerator.get_state_dict(self.model)
            optim_sd = get_optimizer_state_dict(self.model, self.optimizer,
                                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return (model_sd, optim_sd) if self.is_main else (None, None)
        if not self.is_main:
            return None, None
        return None, self.optimizer.state_dict()

    def save_model(self, path: str | Path, model_sd: dict | None = None) -> Path:
        """Write the model in the task's format (main process; pass the FSDP full state dict)."""
        return self.task.save_model(self.accelerator.unwrap_model(self.model), path, model_sd)

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/checkpoints/step-N`` atomically and prune old ones (collective).

        Returns:
            The checkpoint folder on the main process, None on the others.
        """
        from accelerate.utils import gather_object

        rng_tensors, rng_values = ckpt.rng_state()
        mine = {"rng": rng_values, "interval": self.interval.state(), "rng_tensors": rng_tensors}
        ranks = gather_object([mine]) if self.world_size > 1 else [mine]
        skipped = self.skipped_samples()
        model_sd, optim_sd = self._full_state_dicts()
        path = None
        if self.is_main:
            cfg = to_dict(self.config)
            writer = ckpt.CheckpointWriter(self.out_dir, self.step)
            try:
                self.save_model(writer.tmp / ckpt.MODEL_DIR, model_sd)
                optim_tensors, optim_json = ckpt.optimizer_to_files(optim_sd)
                writer.save_tensors(ckpt.OPTIMIZER_TENSORS, optim_tensors)
                writer.save_json(ckpt.OPTIMIZER_JSON, optim_json)
                writer.save_tensors(ckpt.RNG_NAME, {f"rank{r}.{k}": v for r, rank in enumerate(ranks)
                                                    for k, v in rank["rng_tensors"].items()})
                task_state = self.task.state_tensors()
                if task_state:
                    writer.save_tensors(ckpt.TASK_STATE_NAME, task_state)
                writer.save_json(ckpt.STATE_NAME, {
                    "config": cfg, "scheduler": self.scheduler.state_dict(), "data": self.data.state_dict(),
                    "ranks": [{"rng": r["rng"], "interval": r["interval"]} for r in ranks],
                    "counters": {"step": self.step, "tokens_seen": self.tokens_seen, "wall_s": self.wall_s(),
                                 "nonfinite_steps": self.nonfinite_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                                 "skipped": skipped, "invalid": self.base_invalid}})
                writer.save_json(ckpt.CONFIG_NAME, cfg)
                path = writer.commit(self.world_size, self.task.name)
            except BaseException:
                writer.abort()
                raise
            ckpt.prune_checkpoints(self.out_dir, self.config.checkpoint.keep_last,
                                   also=[p for p in self.skipped_checkpoints if p != path])
            self.skipped_checkpoints = []
        self.accelerator.wait_for_everyone()
        return path

    def run_info(self) -> dict:
        """How this run executes: processes, device, precision, sizes (written to ``out_dir/run_info.json``)."""
        import accelerate

        acc = self.accelerator
        return {"task": self.task.name, "distributed_type": acc.distributed_type.name,
                "num_processes": self.world_size, "device": str(acc.device), "mixed_precision": acc.mixed_precision,
                "parameters": sum(p.numel() for p in acc.unwrap_model(self.model).parameters()),
                "fused_adamw": bool(self.optimizer.defaults.get("fused")),
                "activation_checkpointing": self.config.distributed.activation_checkpointing,
                "global_batch": self.config.data.batch_size * self.world_size * self.config.optim.grad_accum,
                "trackers": list(self.config.logging.trackers),
                "torch": torch.__version__, "accelerate": accelerate.__version__,
                "torch_threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ the loop
    def _open_logs(self) -> None:
        self.metrics = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json_atomic(to_dict(self.config), self.out_dir / ckpt.CONFIG_NAME)
            save_json_atomic(self.run_info(), self.out_dir / "run_info.json")
            truncate_jsonl(self.out_dir / "metrics.jsonl", self.step)
            self.metrics = MetricsLog(self.out_dir, self._start_trackers())
        self.sample_log = None
        if self.config.logging.sample_keys:
            path = self.out_dir / "samples" / f"rank{self.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            truncate_jsonl(path, self.step)
            self.sample_log = JsonlWriter(path)
        self.accelerator.wait_for_everyone()

    def _start_trackers(self) -> Any:
        """Start the run's experiment trackers once (main process); returns ``Accelerator.log`` or None."""
        acc, cfg = self.accelerator, self.config
        if not cfg.logging.trackers:
            return None
        if not acc.trackers:
            project = cfg.logging.project or self.out_dir.resolve().name
            acc.init_trackers(project, config=flat_config(to_dict(cfg)))
        return acc.log

    def fit(self, until_step: int | None = None) -> TrainSummary:
        """Train to ``config.steps`` (or stop early at ``until_step`` with a checkpoint).

        Returns:
            A :class:`TrainSummary`. At the end of the run the model is also written to
            ``out_dir/<task.model_dir>``.
        """
        cfg, t_start = self.config, time.perf_counter()
        self._fit_t0 = t_start
        target = cfg.steps if until_step is None else min(int(until_step), cfg.steps)
        self._target = target
        self._open_logs()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.task.name}", unit="step",
                   dynamic_ncols=True, disable=not (self.progress and self.is_main))
        stopped_by, last, saved_at, path, model_dir = None, None, -1, None, None
        every = self.task.eval_every
        self._signals.install()
        try:
            while self.step < target:
                stop = self.train_step()
                bar.update(1)
                end = stop or self.step == target
                if self.step % cfg.logging.every == 0 or end:
                    last = self._log_train()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if every is not None and ((every and self.step % every == 0) or self.step == cfg.steps):
                    self.validate()
                if self.step % cfg.checkpoint.every == 0 or end:
                    path = self.save_checkpoint()
                    saved_at = self.step
                if stop:
                    stopped_by = signal.Signals(self._signals.signum).name if self._signals.signum else "SIGTERM"
                    break
            if stopped_by is None and self.step < cfg.steps:
                stopped_by = "until_step"
                if saved_at != self.step:
                    path = self.save_checkpoint()
            if stopped_by is None:  # the finished model, for from_pretrained
                model_sd = self._full_state_dicts()[0] if self.fsdp else None
                model_dir = str(self.out_dir / self.task.model_dir)
                if self.is_main:
                    self.save_model(model_dir, model_sd)
        finally:
            self.wall_before, self._fit_t0 = self.wall_s(), None
            self._signals.restore()
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.sample_log is not None:
                self.sample_log.close()
        self.accelerator.wait_for_everyone()
        return TrainSummary(self.start_step, self.step, stopped_by, self.nonfinite_steps,
                            sum(self.skipped_samples().values()), self.base_invalid, last, self._last_val,
                            None if path is None else str(path), time.perf_counter() - t_start, model_dir,
                            self.is_main)

    def close(self) -> None:
        """Stop data workers (also done when the process exits), finish the experiment trackers and
        give back the lock on out_dir."""
        try:
            self.data.close()
            self.task.close()
            for tracker in self.accelerator.trackers:  # not end_training(): it would also end the process group
                tracker.finish()
            self.accelerator.trackers.clear()
        finally:
            if self._lock is not None:
                self._lock.release()


def run(task: TrainTask, resume: str | None = None, until_step: int | None = None,
        progress: bool | None = None) -> TrainSummary:
    """Build a :class:`Trainer` for ``task``, run :meth:`Trainer.fit` and stop the data workers."""
    trainer = Trainer(task, resume=resume, progress=progress)
    try:
        return trainer.fit(until_step)
    finally:
        trainer.close()
