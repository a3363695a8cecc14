"""Training an image tokenizer (``fourm tokenizer train CONFIG``).

    cfg = load_config(TokenizerTrainConfig, "configs/tokenizers/rgb_64.yaml", overrides=["steps=100"])
    summary = train_tokenizer(cfg)                   # writes out_dir/tokenizer/ (ImageTokenizer.save_pretrained)
    summary = train_tokenizer(cfg, resume="auto")    # continues from out_dir's newest checkpoint

The task part of the single trainer (:mod:`fourm.training.trainer`): an
:class:`~fourm.vq.vqvae.ImageTokenizer` (initialised from ``seed``), images from
:mod:`fourm.data.image_sources` (ShapesWorld scenes rendered on the fly, raw shards or photo
crops; micro-batch ``m`` is a pure function of ``m``), the tokenizer's own loss (reconstruction +
commitment), codebook usage and perplexity over the last ``usage_window`` steps in every training
log line, and held-out reconstruction scores (:mod:`fourm.evaluation.reconstruction`) every
``val.every`` steps. Checkpoints, resume, precision, logging and several processes are the
trainer's, as for FourM: ``accelerate launch -m fourm.cli tokenizer train CONFIG`` on GPUs,
``accelerate launch --multi_gpu --num_processes N ...`` on CPUs (gloo); ``data.batch_size`` is per
process and the codebook statistics are all-reduced.

Layout of ``out_dir``: ``train_config.json``, ``metrics.jsonl``, ``checkpoints/step-XXXXXXXX/``
(:mod:`fourm.training.checkpoint`), ``tokenizer/`` (the final tokenizer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from fourm.config import ConfigError
from fourm.data.image_sources import ImageDataConfig, image_loader
from fourm.data.photos import held_out_tiles
from fourm.evaluation.objects import parse_images
from fourm.evaluation.reconstruction import ReconstructionMetrics, decode_settings, decoder_for, render_batch
from fourm.training.config import RunConfig
from fourm.training.optim import clean_name
from fourm.training.task import MicroBatch, TaskLoss, TrainTask
from fourm.training.trainer import TrainSummary, run
from fourm.vq.config import TokenizerConfig
from fourm.vq.quantizers import CodeUsage
from fourm.vq.vqvae import WEIGHTS_NAME, ImageTokenizer


@dataclass(frozen=True)
class HeldOutConfig:
    """Held-out reconstruction scores during training (``val``; ``val: null`` turns them off).

    Args:
        every: steps between evaluations (0: only at the end).
        seed: world seed of the held-out ShapesWorld scenes (data.source generator or shards).
        samples: number of held-out scenes.
        parser: rgb: also score the analytic scene parser's object F1 on the reconstructions
            (about 20 ms per scene on a CPU core; see ``fourm.evaluation.reconstruction``).

    With ``data.source: photos`` the held-out set is the tiles of the ``data.holdout`` photos.
    """

    every: int = 0
    seed: int = 1_000_003
    samples: int = 64
    parser: bool = True

    def __post_init__(self) -> None:
        if self.every < 0 or self.samples < 1:
            raise ValueError(f"val.every={self.every} must be >= 0 (0 evaluates at the end only) and val.samples="
                             f"{self.samples} >= 1")


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig(RunConfig):
    """A tokenizer training run (YAML: configs/tokenizers/*.yaml): the shared
    :class:`~fourm.training.config.RunConfig` fields and

    Args:
        tokenizer: the tokenizer to train.
        data: where the training images come from (:class:`~fourm.data.image_sources.ImageDataConfig`).
        val: held-out scores (:class:`HeldOutConfig`), or null.
        usage_window: steps over which codebook usage and perplexity are measured.
    """

    out_dir: str = "out/tokenizers/run"
    steps: int = 1000
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    tokenizer: TokenizerConfig
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    val: HeldOutConfig | None = field(default_factory=HeldOutConfig)
    usage_window: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.usage_window < 1:
            raise ConfigError(f"usage_window={self.usage_window}: must be >= 1")
        if self.distributed.strategy != "ddp" or self.distributed.activation_checkpointing:
            raise ConfigError("distributed.strategy=fsdp and distributed.activation_checkpointing are for FourM runs "
                              "(their blocks are the units); a tokenizer trains with strategy ddp, without them")
        t = self.tokenizer
        if self.data.source == "photos" and t.kind != "rgb":
            raise ConfigError(f"data.source 'photos' gives rgb images only, but tokenizer {t.modality!r} stores "
                              f"{t.kind}; use data.source: generator or shards")
        if self.data.source == "photos" and t.needs_objects:
            raise ConfigError(f"tokenizer.loss.object_weight={t.loss.object_weight} / tokenizer.loss.background="
                              f"{t.loss.background!r} need semseg maps, which data.source 'photos' does not have; "
                              "use data.source: generator or shards, or drop them")
        if self.data.source != "photos" and self.val is not None and self.val.seed == self.data.seed:
            raise ConfigError(f"val.seed={self.val.seed} equals data.seed; held-out scenes need another seed")

    def may_change_on_resume(self, key: str) -> bool:
        """The shared settings, held-out scoring, workers and where the shards are (they may move)."""
        return super().may_change_on_resume(key) or key.startswith(("val.", "data.num_workers", "data.shards"))


class ImageStream:
    """Micro-batches of images for one process (:func:`~fourm.data.image_sources.image_loader`),
    with the position ``{"next": m}``."""

    epoch = 0

    def __init__(self, config: TokenizerTrainConfig, rank: int, world_size: int) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        t = config.tokenizer
        self.field, self.with_objects = t.modality, t.needs_objects
        grid = (t.image_size // t.downsample) ** 2
        self.tokens_per_batch = config.data.batch_size * grid
        self.next_batch = 0
        self._loader = None
        self._it = None

    def next(self) -> MicroBatch:
        if self._it is None:
            d, t = self.config.data, self.config.tokenizer
            self._loader = image_loader(d, self.field, t.image_size, self.next_batch, self.rank, self.world_size,
                                        with_objects=self.with_objects)
            self._it = iter(self._loader)
        batch, m, b = next(self._it), self.next_batch, self.config.data.batch_size
        self.next_batch += 1
        keys = []
        if self.config.data.source != "shards":  # scene / crop indices
            lo = (m * self.world_size + self.rank) * b
            keys = [str(i) for i in range(lo, lo + b)]
        return MicroBatch(batch, keys, chunk=m, num_tokens=self.tokens_per_batch, num_samples=b)

    def state_dict(self) -> dict[str, int]:
        return {"next": self.next_batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.close()
        self.next_batch = int(state["next"])

    def skip_counts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        it = self._it
        self._it, self._loader = None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class TokenizerTask(TrainTask):
    """Training the image tokenizer of a :class:`TokenizerTrainConfig` run."""

    name = "tokenizer"
    model_dir = "tokenizer"
    config: TokenizerTrainConfig

    def __init__(self, config: TokenizerTrainConfig) -> None:
        super().__init__(config)
        self.usage: CodeUsage | None = None
        self._held_out: dict | None = None

    @property
    def metric_names(self) -> list[str]:
        return ["loss", "recon", "quant"]

    def build_model(self, resuming: bool) -> ImageTokenizer:
        with torch.random.fork_rng(devices=[]):  # the same initial weights on every process, from seed
            torch.manual_seed(self.config.seed)
            model = ImageTokenizer(self.config.tokenizer)
        self.usage = CodeUsage(model.codebook_size, window=self.config.usage_window)
        return model

    def no_decay(self, model: nn.Module) -> set[str]:
        """Norm scales, biases and the class embedding: decay on conv and linear weights only."""
        return {clean_name(n) for n, p in model.named_parameters() if p.ndim < 2 or "class_embed" in n}

    def build_data(self) -> ImageStream:
        return ImageStream(self.config, self.ctx.rank, self.ctx.world_size)

    def loss(self, model: nn.Module, batch: Any) -> TaskLoss:
        images, objects = batch if self.config.tokenizer.needs_objects else (batch, None)
        out = model(images, objects) if objects is not None else model(images)
        self.usage.update(self.ctx.accelerator.gather(out.codes))
        return TaskLoss(out.loss, {"loss": out.loss, "recon": out.recon_loss, "quant": out.quant_loss})

    def log_extras(self) -> dict[str, float]:
        return {"usage": self.usage.usage, "perplexity": self.usage.perplexity}

    @property
    def eval_every(self) -> int | None:
        return None if self.config.val is None else self.config.val.every

    def held_out(self) -> dict:
        """The held-out batch: scenes of ``val.seed``, or the held-out photos' tiles. rgb scenes
        with ``val.parser`` also carry their objects and the parse of the originals (computed once,
        the reference of every evaluation)."""
        if self._held_out is None:
            cfg, t = self.config, self.config.tokenizer
            if cfg.data.source == "photos":
                self._held_out = {t.modality: held_out_tiles(cfg.data.holdout, t.image_size)}
            else:
                parser = cfg.val.parser and t.kind == "rgb"
                batch = render_batch(cfg.val.seed, range(cfg.val.samples), t.image_size, objects=parser)
                if parser:
                    batch["parsed"] = parse_images(batch[t.modality])
                self._held_out = batch
        return self._held_out

    def evaluate(self, model: nn.Module) -> dict[str, Any] | None:
        """Held-out reconstruction scores (main process only; no collective)."""
        if not self.ctx.is_main:
            return None
        raw = self.ctx.accelerator.unwrap_model(model)
        return {"split": "val", **evaluate_batch(raw, self.held_out())}

    def save_model(self, model: nn.Module, path: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        return model.save_pretrained(path)

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        model.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)), strict=True)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"usage.{k}": v for k, v in self.usage.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.usage.load_state_dict({k.removeprefix("usage."): v for k, v in tensors.items() if k.startswith("usage.")})


@torch.no_grad()
def evaluate_batch(model: ImageTokenizer, batch: dict, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction scores of ``model`` on a held-out batch (``render_batch`` or photo tiles).

    rgb adds the scene parser's scores when the batch carries ``objects`` (``render_batch(...,
    objects=True)``), using its ``parsed`` originals when present. A diffusion decoder decodes
    with its configured DDIM steps from noise seeded with 0 (the same at every evaluation).
    """
    model.eval()
    m = model.modality
    acc = ReconstructionMetrics(m, model.codebook_size, kind=model.kind, parser=model.kind == "rgb" and "objects" in batch)
    decode = decoder_for(model, decode_settings(model))
    n = batch[m].shape[0]
    for lo in range(0, n, batch_size):
        part = {k: v[lo:lo + batch_size] for k, v in batch.items()}
        tokens = model.encode(part[m])
        acc.update(tokens, decode(tokens), part)
    return acc.result()


def train_tokenizer(config: TokenizerTrainConfig, resume: str | None = None, until_step: int | None = None,
                    progress: bool | None = None) -> TrainSummary:
    """Train the tokenizer run ``config`` (see :class:`~fourm.training.trainer.Trainer`)."""
    return run(TokenizerTask(config), resume=resume, until_step=until_step, progress=progress)
