"""Training a FourM: masked multimodal modeling on token shards (``fourm train``).

    cfg = load_train_config("configs/fm/shapes_tiny.yaml", ["data.train.shapes.shards=tok/train"])
    summary = train(cfg, resume="auto")          # Trainer(FourMTask(cfg), resume="auto").fit()

The task part of the single trainer (:mod:`fourm.training.trainer`): the model (a fresh
:class:`~fourm.models.FourM`, or ``init_from`` a saved one), masked token-shard streams
(:mod:`fourm.training.data`), the objective (the model's mean cross-entropy over modalities, or the
``loss_weights`` mean), the validation loss on held-out shards with fixed masks, and
``out_dir/model`` (``FourM.save_pretrained``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fourm.config import ConfigError
from fourm.masking import Batch, UnifiedMasking
from fourm.models import Block, DecoderBlock, FourM, FourMOutput
from fourm.training.checkpoint import flatten
from fourm.training.data import MixtureStream, SourceStream, empty_batch, modality_fields, validation_batches
from fourm.training.distributed import apply_activation_checkpointing
from fourm.training.fourm_config import TrainConfig
from fourm.training.optim import clean_name
from fourm.training.task import TaskLoss, TrainTask
from fourm.training.trainer import TrainSummary, run

logger = logging.getLogger(__name__)
NO_DECAY_NAMES: tuple[str, ...] = ("mod_emb", "mask_token")


def no_decay_names(model: nn.Module, decay_embeddings: bool = True) -> set[str]:
    """Names (wrapper segments removed) of the FourM parameters that get no weight decay.

    Parameters with fewer than two dimensions (norm scales, biases), modality vectors (``mod_emb``)
    and the mask token (as the reference's ``no_weight_decay``), and token embedding tables unless
    ``decay_embeddings`` (the reference decays them). Call it on the bare model: FSDP replaces
    parameters by flat 1-D shards.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = set()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim < 2 or leaf in NO_DECAY_NAMES or leaf == "bias" or (
                not decay_embeddings and id(p) in embedding_params):
            out.add(clean_name(name))
    return out


def _architecture(config: dict) -> dict:
    """A FourMConfig dict with its modality list keyed by name, so that a diff names the field."""
    return {**config, "modalities": {m["name"]: m for m in config.get("modalities", [])}}


def load_initial_weights(model: FourM, path: str) -> None:
    """Start ``model`` from the weights of the model folder ``path`` (``init_from``).

    Raises:
        FileNotFoundError: ``path`` is not a model folder.
        ConfigError: its architecture differs from ``model``'s (the differing fields are named).
    """
    folder = Path(path)
    files = [folder / "config.json", folder / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"init_from={path!r}: not a model folder (FourM.save_pretrained), missing {missing}")
    saved = FourM.from_pretrained(folder)
    ours, theirs = _architecture(model.config.to_dict()), _architecture(saved.config.to_dict())
    here, there = list(ours["modalities"]), list(theirs["modalities"])
    diff = [f"modality {n!r} there, not here" for n in sorted(set(there) - set(here))]
    diff += [f"modality {n!r} here, not there" for n in sorted(set(here) - set(there))]
    if not diff and here != there:
        diff.append(f"modality order: {there} there, {here} here")
    shared = set(here) & set(there)  # a modality on one side only is named above, not field by field
    for cfg in (ours, theirs):
        cfg["modalities"] = {n: m for n, m in cfg["modalities"].items() if n in shared}
    a, b = flatten(theirs), flatten(ours)
    diff += [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"init_from={path!r}: architecture differs from this run's model: " + "; ".join(diff))
    model.load_state_dict_checked(saved.state_dict())
    logger.info("initialised from %s", folder)


class FourMTask(TrainTask):
    """Masked multimodal modeling of a :class:`~fourm.training.fourm_config.TrainConfig` run."""

    name = "fourm"
    model_dir = "model"
    fsdp_blocks = ("Block", "DecoderBlock")
    config: TrainConfig

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.registry = config.registry()
        self.target_names = [s.name for s in self.registry if s.decoder]
        self.num_encoder_tokens, self.num_decoder_tokens = config.num_encoder_tokens, config.num_decoder_tokens
        self.empty: list[Batch] = []
        self.val_stream: SourceStream | None = None

    @property
    def metric_names(self) -> list[str]:
        return ["loss"] + [f"loss/{m}" for m in self.target_names]

    # ------------------------------------------------------------------ model
    def build_model(self, resuming: bool) -> FourM:
        cfg = self.config
        model = FourM(cfg.model.fourm_config(self.registry), seed=cfg.seed if cfg.model.init_seed is None
                      else cfg.model.init_seed)
        if cfg.init_from is not None and not resuming:
            load_initial_weights(model, cfg.init_from)
        model.set_cpu_memory_reuse(cfg.reuse_cpu_memory)
        # Outside a run (no context yet: a script or test building the model) the model is on the CPU.
        device = self.ctx.device if self.ctx is not None else torch.device("cpu")
        chosen = model.set_attention_backend(cfg.model.attention, device)
        logger.info("attention: %s (model.attention=%s, device %s)", chosen, cfg.model.attention, device)
        return model

    def no_decay(self, model: nn.Module) -> set[str]:
        return no_decay_names(model, self.config.optim.decay_embeddings)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        fsdp = self.ctx.accelerator.distributed_type.name == "FSDP"  # FSDP checkpoints through its plugin
        if self.config.distributed.activation_checkpointing and not fsdp:
            apply_activation_checkpointing(model, (Block, DecoderBlock))
        return model

    def save_model(self, model: nn.Module, path: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        if state_dict is None:
            return model.save_pretrained(path)
        with torch.device("meta"):
            fresh = FourM(model.config)
        state_dict = dict(state_dict)
        aliases: dict[int, list[str]] = {}  # a gathered state dict may name a shared tensor once
        for key, t in fresh.state_dict(keep_vars=True).items():
            aliases.setdefault(id(t), []).append(key)
        for keys in aliases.values():
            present = [k for k in keys if k in state_dict]
            for k in keys:
                if present and k not in state_dict:
                    state_dict[k] = state_dict[present[0]]
        fresh.load_state_dict_checked(state_dict, assign=True)
        return fresh.save_pretrained(path)

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        model.load_state_dict_checked(FourM.from_pretrained(path).state_dict())

    # ------------------------------------------------------------------ data
    def build_data(self) -> MixtureStream:
        cfg, data, ctx = self.config, self.config.data, self.ctx
        pin = ctx.device.type == "cuda"
        sources, weights, self.empty = [], [], []
        for i, name in enumerate(data.source_names()):
            src = data.train[name]
            masking = UnifiedMasking(src.masking or cfg.masking, self.registry)
            fields = modality_fields(self.registry, masking.config.modalities, src.fields)
            sources.append(SourceStream(
                src.shards, masking, fields, data.batch_size, cfg.seed, i, ctx.rank, ctx.world_size,
                data.num_workers, data.prefetch_factor, data.shuffle, data.strict, pin, f"data.train.{name}"))
            weights.append(src.weight)
            self.empty.append(empty_batch(masking.specs))
        if cfg.val is not None:
            masking = UnifiedMasking(cfg.masking, self.registry)
            fields = modality_fields(self.registry, masking.config.modalities, cfg.val.fields)
            self.val_stream = SourceStream(
                cfg.val.shards, masking, fields, cfg.val.batch_size or data.batch_size, cfg.val.seed, 0, ctx.rank,
                ctx.world_size, min(1, data.num_workers), 2, False, data.strict, pin, "val")
            self.val_empty = empty_batch(masking.specs)
        return MixtureStream(sources, weights, cfg.seed)

    def empty_batch(self, source: int) -> Batch:
        return self.empty[source]

    # ------------------------------------------------------------------ loss
    def forward(self, model: nn.Module, batch: Batch) -> FourMOutput:
        """The model's output (mean and per-modality losses) on one micro-batch."""
        return model(batch, self.num_encoder_tokens, self.num_decoder_tokens)

    def objective(self, out: FourMOutput) -> torch.Tensor:
        """What training minimises: ``out.loss`` (the mean over modalities) or, with
        ``loss_weights``, the weighted mean of the modality losses."""
        weights = self.config.loss_weights
        if not weights or not out.mod_losses:
            return out.loss
        w = [float(weights.get(name, 1.0)) for name in out.mod_losses]
        return sum(wi * value for wi, value in zip(w, out.mod_losses.values())) / sum(w)

    def loss(self, model: nn.Module, batch: Batch) -> TaskLoss:
        out = self.forward(model, batch)
        metrics = {"loss": out.loss, **{f"loss/{m}": v for m, v in out.mod_losses.items()}}
        return TaskLoss(self.objective(out), metrics)

    # ------------------------------------------------------------------ validation
    @property
    def eval_every(self) -> int | None:
        return None if self.config.val is None else self.config.val.every

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any] | None:
        """Validation loss per modality on ``val`` (fixed masks; collective)."""
        if self.val_stream is None:
            return None
        model.eval()
        acc, n = self.ctx.accelerator, len(self.target_names)
        dev = acc.device
        loss, micro = torch.zeros((), device=dev), 0
        mod, mod_count = torch.zeros(n, device=dev), [0] * n
        for mb in validation_batches(self.val_stream, self.config.val.max_batches):
            batch = mb.batch if mb.batch is not None else self.val_empty
            out = self.forward(model, {m: {k: v.to(dev) for k, v in d.items()} for m, d in batch.items()})
            if mb.batch is None:
                continue
            loss += out.loss.float()
            micro += 1
            for name, value in out.mod_losses.items():
                j = self.target_names.index(name)
                mod[j] += value.float()
                mod_count[j] += 1
        vals = torch.stack([loss.double(), torch.tensor(float(micro), dtype=torch.float64, device=dev),
                            *mod.double(), *torch.tensor(mod_count, dtype=torch.float64, device=dev)])
        if self.ctx.world_size > 1:
            vals = acc.reduce(vals, "sum")
        vals = vals.tolist()
        return {"split": "val", "loss": vals[0] / vals[1] if vals[1] else float("nan"),
                **{f"loss/{m}": s / c for m, s, c in zip(self.target_names, vals[2:2 + n], vals[2 + n:]) if c},
                "batches": int(vals[1])}

    def close(self) -> None:
        if self.val_stream is not None:
            self.val_stream.close()


def train(config: TrainConfig, resume: str | None = None, until_step: int | None = None,
          progress: bool | None = None) -> TrainSummary:
    """Train the FourM run ``config`` (see :class:`~fourm.training.trainer.Trainer`)."""
    return run(FourMTask(config), resume=resume, until_step=until_step, progress=progress)
