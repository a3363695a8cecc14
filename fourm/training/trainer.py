"""The FourM training loop; it owns the ``accelerate.Accelerator``.

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["data.train.shapes.shards=tok/train"])
    summary = Trainer(cfg, resume="auto").fit()

One optimizer step: ``optim.grad_accum`` micro-batches (gradients synchronised on the last one
only), global gradient-norm clipping, then a single host synchronisation that reads two flags
summed over all processes, "non-finite loss or gradient" and "stop requested (SIGTERM / Ctrl-C)".
A non-finite step is skipped (no update; data, schedule and step counter move on) and counted;
``max_nonfinite_steps`` of them in a row save the step's micro-batches to ``out_dir/debug`` and
raise :class:`NonFiniteLossError`. A stop request writes a checkpoint at the end of the step and
returns. Loss sums stay on the device between log lines; logging reduces them across processes.

Exact resume: data order and masks are pure functions of (seed, epoch, sample) with the position
in the checkpoint; torch's global generator is re-seeded from (seed, step, rank) before every step
(dropout and any other sampling in the model); optimizer, scheduler, RNG states and the open
logging interval are restored. Resuming from step s therefore reproduces the uninterrupted run's
weights and logged losses bit for bit (same hardware, thread count and number of processes).

Several processes: ``accelerate launch --multi_gpu --num_processes 2 -m fourm.cli train CONFIG``
(``--multi_gpu`` is also the flag for several CPU processes; they use gloo). Every process reads
its own share of the data (``ShardDataset(rank, world_size)``; the DataLoaders are not handed to
accelerate, which would split them again). FSDP (``distributed.strategy: fsdp``) needs CUDA and
several processes; checkpoints then gather full state dicts on the main process.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.config import ConfigError, save_json_atomic, to_dict
from fourm.data.shard_reader import SKIP_REASONS
from fourm.masking import Batch, UnifiedMasking
from fourm.models import FourM, FourMOutput
from fourm.training import checkpoint as ckpt
from fourm.training.config import TrainConfig
from fourm.training.data import (
    MicroBatch,
    MixtureStream,
    SourceStream,
    empty_batch,
    modality_fields,
    validation_batches,
)
from fourm.training.distributed import apply_activation_checkpointing, build_accelerator
from fourm.training.metrics import JsonlWriter, MetricsLog, truncate_jsonl
from fourm.training.optim import build_optimizer, build_scheduler, no_decay_names

logger = logging.getLogger(__name__)
STEP_SEED_TAG = 0x53544550


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row; the last step's batches were saved for debugging."""


@dataclass
class TrainSummary:
    """What :meth:`Trainer.fit` did. ``stopped_by``: None (finished), "until_step", "SIGTERM" or "SIGINT"."""

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
    is_main: bool = True


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's global generator for one step of one process."""
    return int(np.random.SeedSequence([seed, STEP_SEED_TAG, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _StopSignals:
    """Turns SIGTERM / SIGINT into a flag read at the end of each step (a second Ctrl-C interrupts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a masked batch to ``device`` (non-blocking from pinned memory)."""
    return {m: {k: v.to(device, non_blocking=True) for k, v in d.items()} for m, d in batch.items()}


class _Interval:
    """Sums of one logging interval, per process (device tensors; reduced when a line is written)."""

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names, self.device = names, device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.mod = torch.zeros(len(self.names), device=self.device)
        self.mod_count = [0] * len(self.names)
        self.grad_norm = torch.zeros((), device=self.device)
        self.micro = self.steps = self.tokens = self.samples = self.invalid = 0
        self.t0 = time.perf_counter()

    def state(self) -> dict:
        return {"loss": self.loss.item(), "mod": self.mod.tolist(), "mod_count": list(self.mod_count),
                "grad_norm": self.grad_norm.item(), "micro": self.micro, "steps": self.steps,
                "tokens": self.tokens, "samples": self.samples, "invalid": self.invalid}

    def load(self, s: dict) -> None:
        self.loss = torch.tensor(s["loss"], device=self.device)
        self.mod = torch.tensor(s["mod"], device=self.device)
        self.grad_norm = torch.tensor(s["grad_norm"], device=self.device)
        self.mod_count = list(s["mod_count"])
        self.micro, self.steps, self.tokens = s["micro"], s["steps"], s["tokens"]
        self.samples, self.invalid = s["samples"], s["invalid"]


class Trainer:
    """Train a FourM on token shards as ``config`` says.

    Args:
        config: the run.
        resume: None (fresh run; an existing checkpoint in out_dir is an error), ``"auto"`` (the
            newest checkpoint of ``out_dir`` if any) or a checkpoint folder.
        progress: override ``config.logging.progress``.
    """

    def __init__(self, config: TrainConfig, resume: str | None = None, progress: bool | None = None) -> None:
        self.config = cfg = config
        self.out_dir = Path(cfg.out_dir)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.accelerator = acc = build_accelerator(cfg)
        self.rank, self.world_size, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.fsdp = acc.distributed_type.name == "FSDP"
        if cfg.distributed.strategy == "fsdp" and not self.fsdp:
            logger.warning("distributed.strategy=fsdp with a single process: training unsharded")
        self.progress = cfg.logging.progress if progress is None else progress
        self.registry = cfg.modalities.registry()
        self.resume_from = ckpt.resolve_resume(resume, self.out_dir)
        if resume is None and ckpt.latest_checkpoint(self.out_dir) is not None:
            raise FileExistsError(f"{self.out_dir} already holds checkpoints; pass --resume auto to continue that "
                                  "run, or choose another out_dir")
        state = self._read_checkpoint() if self.resume_from is not None else None

        model = FourM(cfg.model.fourm_config(self.registry),
                      seed=cfg.seed if cfg.model.init_seed is None else cfg.model.init_seed)
        if self.resume_from is not None:
            model.load_state_dict_checked(load_file(str(self.resume_from / ckpt.MODEL_DIR / "model.safetensors")))
        elif cfg.init_from is not None:
            ckpt.load_initial_weights(model, cfg.init_from)
        no_decay = no_decay_names(model, cfg.optim.decay_embeddings)  # shapes are only known before FSDP
        if cfg.distributed.activation_checkpointing and not self.fsdp:
            apply_activation_checkpointing(model)
        self.model = acc.prepare(model)
        self.optimizer = build_optimizer(self.model, cfg.optim, no_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.target_names = [s.name for s in self.registry if s.decoder]
        self.num_encoder_tokens, self.num_decoder_tokens = cfg.num_encoder_tokens, cfg.num_decoder_tokens
        self._build_data()

        self.step = 0
        self.nonfinite_steps = self.nonfinite_in_a_row = 0
        self.tokens_seen = 0
        self.wall_before = 0.0  # training wall time of earlier runs of this out_dir (from the checkpoint)
        self._fit_t0: float | None = None
        self.base_skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.base_invalid = 0
        self.interval = _Interval(self.target_names, acc.device)
        if state is not None:
            self._load_state(state)
        self.start_step = self.step
        self._signals = _StopSignals()
        self._last_val: dict | None = None
        self.metrics: MetricsLog | None = None
        self.sample_log: JsonlWriter | None = None

    # ------------------------------------------------------------------ set-up
    def _build_data(self) -> None:
        cfg, data = self.config, self.config.data
        pin = self.accelerator.device.type == "cuda"
        sources, weights, self.empty = [], [], []
        for i, name in enumerate(data.source_names()):
            src = data.train[name]
            masking = UnifiedMasking(src.masking or cfg.masking, self.registry)
            fields = modality_fields(self.registry, masking.config.modalities, src.fields)
            sources.append(SourceStream(
                src.shards, masking, fields, data.batch_size, cfg.seed, i, self.rank, self.world_size,
                data.num_workers, data.prefetch_factor, data.shuffle, data.strict, pin, f"data.train.{name}"))
            weights.append(src.weight)
            self.empty.append(empty_batch(masking.specs))
        self.data = MixtureStream(sources, weights, cfg.seed)
        self.val_stream = None
        if cfg.val is not None:
            masking = UnifiedMasking(cfg.masking, self.registry)
            fields = modality_fields(self.registry, masking.config.modalities, cfg.val.fields)
            self.val_stream = SourceStream(
                cfg.val.shards, masking, fields, cfg.val.batch_size or data.batch_size, cfg.val.seed, 0, self.rank,
                self.world_size, min(1, data.num_workers), 2, False, data.strict, pin, "val")
            self.val_empty = empty_batch(masking.specs)

    def _read_checkpoint(self) -> dict:
        meta = ckpt.read_meta(self.resume_from)
        if meta["world_size"] != self.world_size:
            raise ConfigError(f"{self.resume_from} was written by {meta['world_size']} processes, this run has "
                             f"{self.world_size}; exact resume needs the same number of processes")
        state = ckpt.load_trainer_state(self.resume_from)
        ckpt.check_resume_config(state["config"], to_dict(self.config))
        return state

    def _load_state(self, state: dict) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, ckpt.load_optimizer_state(self.resume_from),
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(ckpt.load_optimizer_state(self.resume_from))
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        c = state["counters"]
        self.step, self.tokens_seen = c["step"], c["tokens_seen"]
        self.wall_before = float(c.get("wall_s", 0.0))
        self.nonfinite_steps, self.nonfinite_in_a_row = c["nonfinite_steps"], c["nonfinite_in_a_row"]
        self.base_skipped, self.base_invalid = dict(c["skipped"]), c["invalid"]
        mine = state["ranks"][self.rank]
        ckpt.set_rng_state(mine["rng"])
        self.interval.load(mine["interval"])

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch) -> FourMOutput:
        """The model's loss on one micro-batch (override or patch to inspect or inject faults)."""
        return self.model(batch, self.num_encoder_tokens, self.num_decoder_tokens)

    def objective(self, out: FourMOutput) -> torch.Tensor:
        """What training minimises: ``out.loss`` (the mean over modalities) or, with
        ``loss_weights``, the weighted mean of the modality losses."""
        weights = self.config.loss_weights
        if not weights or not out.mod_losses:
            return out.loss
        w = [float(weights.get(name, 1.0)) for name in out.mod_losses]
        return sum(wi * value for wi, value in zip(w, out.mod_losses.values())) / sum(w)

    def train_step(self) -> bool:
        """One optimizer step; returns whether a stop was requested (on any process)."""
        acc, cfg, dev = self.accelerator, self.config, self.accelerator.device
        torch.manual_seed(step_seed(cfg.seed, self.step, self.rank))
        self.model.train()
        accum = cfg.optim.grad_accum
        loss = torch.zeros((), device=dev)
        mod = torch.zeros(len(self.target_names), device=dev)
        mod_count = [0] * len(self.target_names)
        micro, tokens, samples, invalid, kept = 0, 0, 0, 0, []
        for i in range(accum):
            mb = self.data.next()
            kept.append(mb)
            if self.sample_log is not None:
                self.sample_log.write({"step": self.step + 1, "micro": i, "source": mb.source, "epoch": mb.epoch,
                                       "chunk": mb.chunk, "keys": mb.keys})
            real = mb.batch is not None
            batch = to_device(mb.batch if real else self.empty[mb.source], dev)
            sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(self.model)
            with sync:
                out = self.compute_loss(batch)
                acc.backward(self.objective(out) * ((1.0 if real else 0.0) / accum))
            invalid += mb.invalid
            if real:
                loss += out.loss.detach().float()
                for name, value in out.mod_losses.items():
                    j = self.target_names.index(name)
                    mod[j] += value.detach().float()
                    mod_count[j] += 1
                micro, tokens, samples = micro + 1, tokens + mb.num_tokens, samples + len(mb.keys)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
        grad_norm = torch.as_tensor(grad_norm, device=dev).float()
        flags = torch.stack([(~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float(),
                             torch.tensor(float(self._signals.signum is not None), device=dev)])
        if self.world_size > 1:
            flags = acc.reduce(flags, "sum")
        bad, stop = (v > 0 for v in flags.tolist())  # the step's one host synchronisation
        if bad:
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            logger.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                           self.step + 1, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                path = self._save_debug(kept, loss, grad_norm)
                raise NonFiniteLossError(f"{self.nonfinite_in_a_row} non-finite steps in a row (max_nonfinite_steps="
                                         f"{cfg.max_nonfinite_steps}) at step {self.step + 1}; batches saved to {path}")
        else:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
            iv = self.interval
            iv.loss += loss
            iv.mod += mod
            iv.mod_count = [a + b for a, b in zip(iv.mod_count, mod_count)]
            iv.grad_norm += grad_norm
            iv.micro, iv.steps = iv.micro + micro, iv.steps + 1
        self.interval.tokens += tokens
        self.interval.samples += samples
        self.interval.invalid += invalid
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return stop

    def _save_debug(self, kept: list[MicroBatch], loss: torch.Tensor, grad_norm: torch.Tensor) -> Path:
        path = self.out_dir / "debug" / f"nonfinite-step-{self.step + 1:08d}-rank{self.rank}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": self.step + 1, "rank": self.rank, "loss_sum": loss.item(), "grad_norm": grad_norm.item(),
                    "batches": [mb.batch for mb in kept], "keys": [mb.keys for mb in kept],
                    "sources": [mb.source for mb in kept]}, path)
        return path

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
        total = self._reduce([float(local[r]) for r in SKIP_REASONS])
        return {r: int(n) + self.base_skipped.get(r, 0) for r, n in zip(SKIP_REASONS, total)}

    def _log_train(self) -> dict:
        iv, n = self.interval, len(self.target_names)
        vals = self._reduce([iv.loss, float(iv.micro), float(iv.tokens), float(iv.samples), float(iv.invalid),
                             *iv.mod.double(), *map(float, iv.mod_count)])
        loss, micro, tokens, samples, invalid = vals[:5]
        mod, mod_count = vals[5:5 + n], vals[5 + n:]
        skipped = self.skipped_samples()
        self.tokens_seen += int(tokens)
        self.base_invalid += int(invalid)
        dt = max(time.perf_counter() - iv.t0, 1e-9)
        rec = {"step": self.step, "split": "train", "epoch": self.data.epoch,
               "loss": loss / micro if micro else float("nan"),
               **{f"loss/{m}": s / c for m, s, c in zip(self.target_names, mod, mod_count) if c},
               "lr": self.scheduler.get_last_lr()[0], "grad_norm": iv.grad_norm.item() / max(iv.steps, 1),
               "tokens_per_s": tokens / dt, "samples_per_s": samples / dt, "tokens_seen": self.tokens_seen,
               "nonfinite_steps": self.nonfinite_steps, "skipped_samples": sum(skipped.values()),
               "invalid_samples": self.base_invalid, "wall_s": round(self.wall_s(), 2)}
        if self.metrics is not None:
            self.metrics.write(rec)
        iv.reset()
        return rec

    @torch.no_grad()
    def validate(self) -> dict | None:
        """Validation loss per modality on ``val`` (fixed masks); None without a val set (collective)."""
        if self.val_stream is None:
            return None
        self.model.eval()
        dev, n = self.accelerator.device, len(self.target_names)
        loss, micro = torch.zeros((), device=dev), 0
        mod, mod_count = torch.zeros(n, device=dev), [0] * n
        for mb in validation_batches(self.val_stream, self.config.val.max_batches):
            out = self.compute_loss(to_device(mb.batch if mb.batch is not None else self.val_empty, dev))
            if mb.batch is None:
                continue
            loss += out.loss.float()
            micro += 1
            for name, value in out.mod_losses.items():
                j = self.target_names.index(name)
                mod[j] += value.float()
                mod_count[j] += 1
        self.model.train()
        vals = self._reduce([loss, float(micro), *mod.double(), *map(float, mod_count)])
        rec = {"step": self.step, "split": "val", "loss": vals[0] / vals[1] if vals[1] else float("nan"),
               **{f"loss/{m}": s / c for m, s, c in zip(self.target_names, vals[2:2 + n], vals[2 + n:]) if c},
               "batches": int(vals[1])}
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
        """Write the model in ``FourM.save_pretrained`` format (main process; pass the FSDP full state dict)."""
        if model_sd is None:
            return self.accelerator.unwrap_model(self.model).save_pretrained(path)
        with torch.device("meta"):
            model = FourM(self.accelerator.unwrap_model(self.model).config)
        model_sd = dict(model_sd)
        aliases: dict[int, list[str]] = {}  # a gathered state dict may name a shared tensor once
        for key, t in model.state_dict(keep_vars=True).items():
            aliases.setdefault(id(t), []).append(key)
        for keys in aliases.values():
            present = [k for k in keys if k in model_sd]
            for k in keys:
                if present and k not in model_sd:
                    model_sd[k] = model_sd[present[0]]
        model.load_state_dict_checked(model_sd, assign=True)
        return model.save_pretrained(path)

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/checkpoints/step-N`` atomically and prune old ones (collective).

        Returns:
            The checkpoint folder on the main process, None on the others.
        """
        from accelerate.utils import gather_object

        mine = {"rng": ckpt.rng_state(), "interval": self.interval.state()}
        ranks = gather_object([mine]) if self.world_size > 1 else [mine]
        skipped = self.skipped_samples()
        model_sd, optim_sd = self._full_state_dicts()
        path = None
        if self.is_main:
            cfg = to_dict(self.config)
            writer = ckpt.CheckpointWriter(self.out_dir, self.step)
            try:
                self.save_model(writer.tmp / ckpt.MODEL_DIR, model_sd)
                writer.save_torch(ckpt.OPTIMIZER_NAME, optim_sd)
                writer.save_torch(ckpt.STATE_NAME, {
                    "format": ckpt.FORMAT_NAME, "format_version": ckpt.FORMAT_VERSION, "config": cfg,
                    "scheduler": self.scheduler.state_dict(), "data": self.data.state_dict(), "ranks": ranks,
                    "counters": {"step": self.step, "tokens_seen": self.tokens_seen, "wall_s": self.wall_s(),
                                 "nonfinite_steps": self.nonfinite_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                                 "skipped": skipped, "invalid": self.base_invalid}})
                writer.save_json(ckpt.CONFIG_NAME, cfg)
                path = writer.commit(self.world_size)
            except BaseException:
                writer.abort()
                raise
            ckpt.prune_checkpoints(self.out_dir, self.config.checkpoint.keep_last)
        self.accelerator.wait_for_everyone()
        return path

    def run_info(self) -> dict:
        """How this run executes: processes, device, precision, sizes (written to ``out_dir/run_info.json``)."""
        import accelerate

        acc = self.accelerator
        return {"distributed_type": acc.distributed_type.name, "num_processes": self.world_size,
                "device": str(acc.device), "mixed_precision": acc.mixed_precision,
                "parameters": sum(p.numel() for p in acc.unwrap_model(self.model).parameters()),
                "fused_adamw": bool(self.optimizer.defaults.get("fused")),
                "activation_checkpointing": self.config.distributed.activation_checkpointing,
                "global_batch": self.config.data.batch_size * self.world_size * self.config.optim.grad_accum,
                "torch": torch.__version__, "accelerate": accelerate.__version__,
                "torch_threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ the loop
    def _open_logs(self) -> None:
        self.metrics = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json_atomic(to_dict(self.config), self.out_dir / "train_config.json")
            save_json_atomic(self.run_info(), self.out_dir / "run_info.json")
            truncate_jsonl(self.out_dir / "metrics.jsonl", self.step)
            self.metrics = MetricsLog(self.out_dir, self.config.logging.tensorboard)
        self.sample_log = None
        if self.config.logging.sample_keys:
            path = self.out_dir / "samples" / f"rank{self.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            truncate_jsonl(path, self.step)
            self.sample_log = JsonlWriter(path)
        self.accelerator.wait_for_everyone()

    def fit(self, until_step: int | None = None) -> TrainSummary:
        """Train to ``config.steps`` (or stop early at ``until_step`` with a checkpoint).

        Returns:
            A :class:`TrainSummary`. At the end of the run the model is also written to
            ``out_dir/model`` (``FourM.from_pretrained`` reads it).
        """
        cfg, t_start = self.config, time.perf_counter()
        self._fit_t0 = t_start
        target = cfg.steps if until_step is None else min(int(until_step), cfg.steps)
        self._open_logs()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main))
        stopped_by, last, saved_at, path = None, None, -1, None
        self._signals.install()
        try:
            while self.step < target:
                stop = self.train_step()
                bar.update(1)
                end = stop or self.step == target
                if self.step % cfg.logging.every == 0 or end:
                    last = self._log_train()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                val_every = cfg.val.every if cfg.val is not None else 0
                if cfg.val is not None and ((val_every and self.step % val_every == 0) or self.step == cfg.steps):
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
            if stopped_by is None:  # the finished model, for FourM.from_pretrained
                model_sd = self._full_state_dicts()[0] if self.fsdp else None
                if self.is_main:
                    self.save_model(self.out_dir / "model", model_sd)
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
                            None if path is None else str(path), time.perf_counter() - t_start, self.is_main)

    def close(self) -> None:
        """Stop data workers (also done when the process exits)."""
        self.data.close()
        if self.val_stream is not None:
            self.val_stream.close()


def train(config: TrainConfig, resume: str | None = None, until_step: int | None = None,
          progress: bool | None = None) -> TrainSummary:
    """Build a :class:`Trainer`, run :meth:`Trainer.fit` and stop the data workers."""
    trainer = Trainer(config, resume=resume, progress=progress)
    try:
        return trainer.fit(until_step)
    finally:
        trainer.close()
