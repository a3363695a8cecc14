"""Training loop of the image tokenizers (``fourm tokenizer train CONFIG``).

    cfg = load_config(TokenizerTrainConfig, "configs/tokenizers/rgb_64.yaml", overrides=["steps=100"])
    summary = train_tokenizer(cfg)             # writes out_dir/tokenizer/ (save_pretrained format)
    summary = train_tokenizer(cfg, resume=True)   # continues from the last checkpoint in out_dir

Data are ShapesWorld scenes rendered on the fly (``data.source: generator``; scene ``i`` of world
``data.seed``; step ``s`` of process ``r`` of ``W`` reads scenes ``(s * W + r) * B ...``), random
crops of scikit-image's bundled photographs (``data.source: photos``, rgb only; crop ``i`` of
``data.seed``, indexed like the scenes; the photos in ``data.holdout`` are never cropped and are
the held-out set scored during training, see photos.py), or samples read from shards
(``data.source: shards``). Either way the batches of a step depend on the step only, so a resumed
run sees the data an uninterrupted run would have seen; with the RNG state in the checkpoint, it
computes the same weights.

One ``accelerate.Accelerator`` owns devices and processes: a plain call runs one process (CPU or
one GPU); ``accelerate launch -m fourm.cli tokenizer train CONFIG`` runs several on GPUs, and
``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m fourm.cli tokenizer train CONFIG`` several
on CPUs (gloo); each process has its own batch (``batch_size`` is per process) and the codebook
statistics are all-reduced.

Layout of ``out_dir``: ``train_config.json``, ``metrics.jsonl`` (one JSON line per log step),
``checkpoints/step_XXXXXXX/`` (tokenizer + optimizer + RNG state; written to a temporary folder
and renamed), ``tokenizer/`` (the final tokenizer).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.config import ConfigError, from_dict, save_json_atomic, to_dict
from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.evaluation.objects import parse_images
from fourm.evaluation.reconstruction import ReconstructionMetrics, decode_settings, decoder_for, render_batch
from fourm.vq.normalize import from_world
from fourm.vq.photos import (DEFAULT_HOLDOUT, PHOTOS, PhotoCrops, check_photo_names, held_out_tiles,
                             training_photos)
from fourm.vq.quantizers import CodeUsage
from fourm.vq.vqvae import WEIGHTS_NAME, ImageTokenizer, TokenizerConfig

CHECKPOINT_DIR = "checkpoints"
STATE_NAME = "train_state.json"


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from.

    Args:
        source: ``generator`` (render ShapesWorld scenes on the fly), ``shards`` (read them) or
            ``photos`` (random crops of scikit-image's photographs; rgb tokenizers only).
        seed: world seed of the training scenes (generator), or seed of the crops (photos).
        num_scenes: cycle through this many scenes instead of fresh ones each step (generator).
        shards: shard spec (folder, glob, brace range) for ``source: shards``.
        num_workers: DataLoader worker processes (0 renders in the training process).
        eval_seed: world seed of the held-out scenes scored during training (generator, shards).
        eval_samples: number of held-out scenes scored at each evaluation (generator, shards).
        holdout: photos never cropped for training; their tiles are the held-out set (photos).
        crop_scale: range of a crop's side in units of the tokenizer's image size, drawn
            log-uniformly; the crop is resized to the image size (photos).
    """

    source: Literal["generator", "shards", "photos"] = "generator"
    seed: int = 0
    num_scenes: int | None = None
    shards: str | None = None
    num_workers: int = 0
    eval_seed: int = 1_000_003
    eval_samples: int = 64
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT
    crop_scale: tuple[float, float] = (1.0, 3.0)

    def __post_init__(self) -> None:
        if self.source == "photos":
            if self.shards:
                raise ValueError("data.shards is set but data.source is 'photos'; "
                                 "set data.source: shards or drop data.shards")
            if self.num_scenes is not None:
                raise ValueError(f"data.num_scenes={self.num_scenes} is for data.source: generator; "
                                 "drop it with data.source: photos")
            object.__setattr__(self, "holdout", check_photo_names(self.holdout, "data.holdout"))
            if not training_photos(self.holdout):
                raise ValueError(f"data.holdout holds all {len(PHOTOS)} photos; leave some for training")
            lo, hi = self.crop_scale
            if not 0 < lo <= hi:
                raise ValueError(f"data.crop_scale={list(self.crop_scale)}: need 0 < low <= high, e.g. [1.0, 3.0]")
        if self.source == "shards" and not self.shards:
            raise ValueError("data.source is 'shards' but data.shards is empty; give a folder or glob of tar files")
        if self.source == "generator" and self.shards:
            raise ValueError("data.shards is set but data.source is 'generator'; set data.source: shards")
        if self.num_scenes is not None and self.num_scenes < 1:
            raise ValueError(f"data.num_scenes={self.num_scenes}: must be >= 1 (or null for fresh scenes)")
        if self.source != "photos" and self.eval_seed == self.seed:
            raise ValueError(f"data.eval_seed={self.eval_seed} equals data.seed; held-out scenes need another seed")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr``."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr={self.min_lr} must lie in [0, optim.lr={self.lr}]")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """A tokenizer training run (YAML: configs/tokenizers/*.yaml).

    Args:
        tokenizer: the tokenizer to train.
        data, optim: see ``DataConfig`` and ``OptimConfig``.
        steps: optimizer steps in total.
        batch_size: images per step and process.
        seed: seed of weight initialisation and of the quantizer's random choices.
        out_dir: run folder (checkpoints, metrics, final tokenizer).
        log_every: steps between metric lines in ``metrics.jsonl``.
        eval_every: steps between held-out evaluations (0: only at the end).
        checkpoint_every: steps between checkpoints (the last step always saves one).
        keep_checkpoints: how many recent checkpoints to keep.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (autocast; quantisation stays float32).
        usage_window: steps over which codebook usage and perplexity are measured.
        eval_parser: rgb on ShapesWorld scenes: also score the analytic scene parser's object F1
            on the held-out reconstructions at each evaluation (about 20 ms per scene on a CPU
            core; see ``fourm.evaluation.reconstruction``).
    """

    tokenizer: TokenizerConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    out_dir: str = "out/tokenizers/run"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    usage_window: int = 100
    eval_parser: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "usage_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.eval_every < 0:
            raise ValueError(f"eval_every={self.eval_every}: must be >= 0 (0 evaluates at the end only)")
        if self.data.source == "photos" and self.tokenizer.modality != "rgb":
            raise ValueError(f"data.source 'photos' gives rgb images only, but tokenizer.modality is "
                             f"{self.tokenizer.modality!r}; use data.source: generator or shards")
        if self.data.source == "photos" and self.tokenizer.needs_semseg:
            raise ValueError(f"tokenizer.loss.object_weight={self.tokenizer.loss.object_weight} needs semseg maps, "
                             "which data.source 'photos' does not have; use data.source: generator or shards, "
                             "or drop loss.object_weight")


# --- data ---------------------------------------------------------------------------------------

class SceneDataset(Dataset):
    """ShapesWorld scene ``index`` (mod ``num_scenes``) of world ``seed``, one modality, stored
    format; with ``with_semseg`` a pair (image, semseg class ids) (for ``loss.object_weight``)."""

    def __init__(self, modality: str, seed: int, image_size: int, num_scenes: int | None = None,
                 with_semseg: bool = False) -> None:
        self.modality, self.seed, self.num_scenes, self.with_semseg = modality, seed, num_scenes, with_semseg
        self.world = WorldConfig(image_size=image_size)

    def __len__(self) -> int:
        return self.num_scenes or 2**62

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        i = index % self.num_scenes if self.num_scenes else index
        sample = render_scene(self.seed, i, self.world)
        image = from_world(sample, self.modality)
        return (image, from_world(sample, "semseg")) if self.with_semseg else image


class StepBatches:
    """Indices of the scenes of each step: step ``s`` of process ``r`` of ``W`` gets
    ``[(s * W + r) * B, (s * W + r + 1) * B)``, for steps ``start .. stop - 1``."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int, world_size: int) -> None:
        self.start, self.stop, self.b, self.rank, self.world = start, stop, batch_size, rank, world_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for s in range(self.start, self.stop):
            lo = (s * self.world + self.rank) * self.b
            yield list(range(lo, lo + self.b))


class ShardImages(IterableDataset):
    """One modality of the samples in shards (already in stored format), epoch after epoch.

    Each process reads its own share (``ShardDataset``'s rank / world_size), shuffled per epoch by
    ``seed``. ``skip`` positions of this process's stream are passed over (resume). With
    ``with_semseg`` each item is a pair (image, semseg class ids).
    """

    def __init__(self, shards: str, modality: str, seed: int, rank: int, world_size: int, skip: int = 0,
                 with_semseg: bool = False) -> None:
        super().__init__()
        self.shards, self.modality, self.seed = shards, modality, seed
        self.rank, self.world_size, self.skip, self.with_semseg = rank, world_size, skip, with_semseg

    def __iter__(self):
        from fourm.data.shards import ShardDataset

        fields = [self.modality, "semseg"] if self.with_semseg else [self.modality]
        ds = ShardDataset(self.shards, fields=fields, shuffle=True, seed=self.seed,
                          rank=self.rank, world_size=self.world_size)
        n = ds.num_samples()
        if n == 0:
            raise ValueError(f"no samples for rank {self.rank} in shards {self.shards!r}")
        epoch, start = divmod(self.skip, n)
        while True:
            ds.set_epoch(epoch, start)
            for sample in ds:
                image = from_world(sample, self.modality)
                yield (image, from_world(sample, "semseg")) if self.with_semseg else image
            epoch, start = epoch + 1, 0


def build_loader(cfg: TokenizerTrainConfig, start: int, rank: int, world_size: int):
    """Batches (B, ...) of stored-format images for steps ``start .. cfg.steps - 1`` of one process;
    pairs [images, semseg (B, H, W)] when the tokenizer's loss needs semseg (``loss.object_weight``)."""
    t, d = cfg.tokenizer, cfg.data
    if d.source in ("generator", "photos"):
        ds = (PhotoCrops(d.seed, t.image_size, d.holdout, d.crop_scale) if d.source == "photos"
              else SceneDataset(t.modality, d.seed, t.image_size, d.num_scenes, with_semseg=t.needs_semseg))
        sampler = StepBatches(start, cfg.steps, cfg.batch_size, rank, world_size)
        return DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers)
    ds = ShardImages(cfg.data.shards, t.modality, cfg.data.seed, rank, world_size, skip=start * cfg.batch_size,
                     with_semseg=t.needs_semseg)
    loader = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers)
    return itertools.islice(loader, cfg.steps - start)


# --- optimisation -------------------------------------------------------------------------------

def lr_at(step: int, cfg: TokenizerTrainConfig) -> float:
    """Learning rate of ``step``: linear warm-up, then cosine decay to ``min_lr`` at the last step."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(cfg.steps - o.warmup_steps, 1)
    t = min((step - o.warmup_steps) / span, 1.0)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * t))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on conv/linear weights only (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "class_embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


# --- checkpoints --------------------------------------------------------------------------------

def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder with the highest step in ``out_dir``, or None."""
    root = Path(out_dir) / CHECKPOINT_DIR
    found = sorted(root.glob("step_*")) if root.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(out_dir: Path, step: int, model: ImageTokenizer, optimizer: torch.optim.Optimizer,
                    rng_states: list[dict[str, torch.Tensor]], keep: int) -> Path:
    """Write checkpoint ``step`` (tokenizer, optimizer, RNG states) atomically; prune old ones."""
    root = out_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_states}, tmp / "optimizer.pt")
    save_json_atomic({"step": step}, tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU, and the current CUDA device when there is one)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"].clone())  # a copy with its own storage (see save)
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].clone(), device)


# --- the loop -----------------------------------------------------------------------------------

def train_tokenizer(cfg: TokenizerTrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train one image tokenizer.

    Args:
        cfg: the run config.
        resume: continue from the last checkpoint in ``cfg.out_dir`` (start afresh if there is none).
            Without it, an ``out_dir`` that already holds checkpoints is refused.
        progress: show a progress bar (main process only).
    Returns:
        {"tokenizer_dir", "steps", "start_step", "main_process", "wall_s", "last": last logged
        metrics, "eval": last evaluation (main process only)}.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    out_dir = Path(cfg.out_dir)
    main = accelerator.is_main_process
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds checkpoints ({ckpt.name}); pass --resume or choose another out_dir")
    if ckpt is not None:
        saved = json.loads((out_dir / "train_config.json").read_text())
        if from_dict(TokenizerConfig, saved.get("tokenizer")) != cfg.tokenizer:  # new fields read as defaults
            raise ConfigError(f"{out_dir}: the tokenizer config differs from the one it was trained with; "
                              "resume with the same tokenizer settings or use another out_dir")

    set_seed(cfg.seed + accelerator.process_index)
    model = ImageTokenizer(cfg.tokenizer).to(accelerator.device)
    optimizer = build_optimizer(model, cfg.optim)
    start = 0
    if ckpt is not None:
        model.load_state_dict(load_file(ckpt / WEIGHTS_NAME), strict=True)  # copied onto the device
        extra = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(extra["optimizer"])
        rngs = extra["rng"]
        if len(rngs) == accelerator.num_processes:  # same process count: replay exactly
            _set_rng_states(rngs[accelerator.process_index], accelerator.device)
        start = json.loads((ckpt / STATE_NAME).read_text())["step"]
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json_atomic(to_dict(cfg), out_dir / "train_config.json")
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    loader = build_loader(cfg, start, accelerator.process_index, accelerator.num_processes)
    usage = CodeUsage(raw.codebook_size, window=cfg.usage_window)
    held_out = _held_out(cfg) if main else None

    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.tokenizer.modality} tokenizer",
               unit="step", disable=not (progress and main))
    log_path = out_dir / "metrics.jsonl"
    last: dict = {}
    last_eval: dict = {}
    t0 = time.perf_counter()
    step = start
    model.train()
    for step, batch in enumerate(loader, start=start):
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        images, semseg = batch if cfg.tokenizer.needs_semseg else (batch, None)
        with accelerator.autocast():
            out = model(images, semseg) if semseg is not None else model(images)
        accelerator.backward(out.loss)
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        usage.update(accelerator.gather(out.codes))
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            loss = accelerator.reduce(out.loss.detach(), reduction="mean").item()
            recon = accelerator.reduce(out.recon_loss, reduction="mean").item()
            last = {"step": done, "loss": loss, "recon": recon, "usage": usage.usage,
                    "perplexity": usage.perplexity, "lr": lr, "elapsed_s": time.perf_counter() - t0}
            bar.set_postfix(loss=f"{loss:.4f}", usage=f"{usage.usage:.2f}", ppl=f"{usage.perplexity:.0f}")
            if main:
                with log_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
        if main and (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            last_eval = evaluate_batch(raw, held_out)
            last_eval["step"] = done
            with log_path.open("a") as f:
                f.write(json.dumps({"eval": last_eval}) + "\n")
            model.train()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            states = _rng_states(accelerator.device)
            gathered = {k: accelerator.gather(v.to(accelerator.device).unsqueeze(0)).cpu() for k, v in states.items()}
            # clone: a view into the gathered tensor (storage offset > 0) crashes torch.set_rng_state
            rngs = [{k: v[r].clone() for k, v in gathered.items()} for r in range(accelerator.num_processes)]
            if main:
                save_checkpoint(out_dir, done, raw, optimizer, rngs, cfg.keep_checkpoints)
            accelerator.wait_for_everyone()
        bar.update(1)
    bar.close()
    tok_dir = out_dir / "tokenizer"
    if main:
        raw.save_pretrained(tok_dir)
    accelerator.wait_for_everyone()
    return {"tokenizer_dir": str(tok_dir), "steps": cfg.steps, "start_step": start, "main_process": main,
            "wall_s": time.perf_counter() - t0, "last": last, "eval": last_eval}


def _held_out(cfg: TokenizerTrainConfig) -> dict:
    """The held-out batch scored during training: scenes of ``eval_seed``, or the held-out photos'
    tiles. rgb scenes with ``eval_parser`` also carry their objects and the parse of the originals
    (computed once here, the reference of every evaluation)."""
    if cfg.data.source == "photos":
        return {"rgb": held_out_tiles(cfg.data.holdout, cfg.tokenizer.image_size)}
    parser = cfg.eval_parser and cfg.tokenizer.modality == "rgb"
    batch = render_batch(cfg.data.eval_seed, range(cfg.data.eval_samples), cfg.tokenizer.image_size, objects=parser)
    if parser:
        batch["parsed"] = parse_images(batch["rgb"])
    return batch


@torch.no_grad()
def evaluate_batch(model: ImageTokenizer, batch: dict, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction metrics of ``model`` on a held-out batch of all modalities (see evaluate.py);
    rgb adds the scene parser's scores when the batch carries ``objects`` (``render_batch(...,
    objects=True)``), using its ``parsed`` originals when present. A diffusion decoder decodes
    with its configured DDIM steps from noise seeded with 0 (the same at every evaluation)."""
    model.eval()
    m = model.modality
    acc = ReconstructionMetrics(m, model.codebook_size, parser=m == "rgb" and "objects" in batch)
    decode = decoder_for(model, decode_settings(model))
    n = batch[m].shape[0]
    for lo in range(0, n, batch_size):
        part = {k: v[lo:lo + batch_size] for k, v in batch.items()}
        tokens = model.encode(part[m])
        acc.update(tokens, decode(tokens), part)
    return acc.result()
