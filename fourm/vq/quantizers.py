"""Quantizers for the image tokenizers, on top of vector-quantize-pytorch.

Two kinds, both taking and returning channel-first latent maps (B, D, h, w):

- ``vq``: the 4M quantizer. A cosine-similarity codebook (latents and codes are L2-normalised,
  the nearest code is the one with the largest cosine), updated by exponential moving averages
  (``decay``) rather than by gradients, with a commitment loss, a straight-through (or rotation
  trick) gradient to the encoder and replacement of dead codes: a code whose EMA cluster size
  falls below ``dead_code_threshold`` is replaced by a random latent of the current batch.
- ``fsq``: finite scalar quantization. Each latent is projected to ``len(levels)`` numbers, each
  bounded and rounded to one of ``levels[i]`` values; the code is the mixed-radix index. No
  codebook to learn, no auxiliary loss, every code reachable by construction.

Quantisation always runs in float32 with autocast disabled, whatever the surrounding precision,
because nearest-code search and rounding in bfloat16 flip codes. Dead-code replacement draws its
samples from torch's global RNG (inside the library); training checkpoints save that RNG state
so that resumed runs replay the same replacements.

``CodeUsage`` tracks the share of codes used and the perplexity over a sliding window of steps.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ, VectorQuantize


@dataclass(frozen=True)
class QuantizerConfig:
    """One quantizer.

    Args:
        kind: ``"vq"`` (cosine-similarity EMA codebook) or ``"fsq"``.
        latent_dim: channels of the latent map the encoder produces and the decoder reads.
        codebook_size: number of codes (``vq``; unset gives 1024). For ``fsq`` it is
            ``prod(levels)``; leave it unset or give that product.
        decay: EMA decay of the codebook statistics (``vq``).
        dead_code_threshold: a code whose EMA cluster size (about "uses per step") drops below
            this is replaced (``vq``; 0 disables). 4M uses
            ``batch * tokens_per_image / codebook_size / 32``.
        kmeans_init: initialise the codebook by k-means on the first batch (``vq``).
        commitment_weight: weight of the commitment loss ``|z - sg(q)|^2`` (``vq``).
        rotation_trick: pass gradients with the rotation trick instead of the plain
            straight-through estimator (``vq``).
        levels: quantisation levels per FSQ dimension (``fsq``), each >= 3.
    """

    kind: Literal["vq", "fsq"] = "vq"
    latent_dim: int = 32
    codebook_size: int | None = None
    decay: float = 0.99
    dead_code_threshold: float = 0.05
    kmeans_init: bool = False
    commitment_weight: float = 1.0
    rotation_trick: bool = False
    levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"quantizer.latent_dim={self.latent_dim}: must be >= 1")
        if self.kind == "vq":
            if self.codebook_size is None:
                object.__setattr__(self, "codebook_size", 1024)
            if self.codebook_size < 2:
                raise ValueError(f"quantizer.codebook_size={self.codebook_size}: kind 'vq' needs >= 2 codes")
            if self.levels:
                raise ValueError(f"quantizer.levels={list(self.levels)} is only for kind 'fsq'; remove it or set kind: fsq")
            if not 0.0 < self.decay < 1.0:
                raise ValueError(f"quantizer.decay={self.decay}: must lie in (0, 1)")
            if self.dead_code_threshold < 0:
                raise ValueError(f"quantizer.dead_code_threshold={self.dead_code_threshold}: must be >= 0")
        elif self.kind == "fsq":
            if not self.levels or min(self.levels) < 3:
                raise ValueError(f"quantizer.levels={list(self.levels)}: kind 'fsq' needs levels, each >= 3, e.g. [8, 5, 5, 5]")
            size = math.prod(self.levels)
            if self.codebook_size not in (None, size):
                raise ValueError(
                    f"quantizer.codebook_size={self.codebook_size} but prod(levels)={size}; "
                    "for kind 'fsq' leave codebook_size unset (null) or give the product"
                )
            object.__setattr__(self, "codebook_size", size)
        else:
            raise ValueError(f"quantizer.kind={self.kind!r}; allowed: 'vq', 'fsq'")


class QuantizerOutput(NamedTuple):
    """What a quantizer returns in ``forward``.

    Shapes:
        quantized: (B, D, h, w) float32, what the decoder reads (gradients reach the encoder).
        codes: (B, h, w) int64 in [0, codebook_size).
        loss: () float32 auxiliary loss (commitment for ``vq``, zero for ``fsq``).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor


class Quantizer(nn.Module):
    """Base class. ``forward`` may update codebook state in training mode; ``lookup`` never does."""

    codebook_size: int

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        raise NotImplementedError

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) int64 of latents (B, D, h, w), with no state change."""
        raise NotImplementedError

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, D, h, w) float32 of codes (B, h, w)."""
        raise NotImplementedError


class CosineVQ(Quantizer):
    """Cosine-similarity codebook with EMA updates and dead-code replacement (as 4M)."""

    def __init__(self, config: QuantizerConfig, sync_codebook: bool | None = None) -> None:
        super().__init__()
        self.codebook_size = int(config.codebook_size)
        self.vq = VectorQuantize(
            sync_codebook=sync_codebook,
            dim=config.latent_dim,
            codebook_size=self.codebook_size,
            use_cosine_sim=True,
            decay=config.decay,
            threshold_ema_dead_code=config.dead_code_threshold,
            kmeans_init=config.kmeans_init,
            commitment_weight=config.commitment_weight,
            rotation_trick=config.rotation_trick,
            accept_image_fmap=True,
        )

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) unit-norm codes."""
        return self.vq.codebook

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized, codes, loss = self.vq(z.float())  # (B, D, h, w), (B, h, w), ()
        return QuantizerOutput(quantized, codes.long(), loss.float())

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = F.normalize(z.float().permute(0, 2, 3, 1), dim=-1, eps=1e-6)  # (B, h, w, D)
            sim = flat @ self.codebook.float().t()  # (B, h, w, K)
            return sim.argmax(dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self.codebook.float()[codes].permute(0, 3, 1, 2)  # (B, D, h, w)


class FSQQuantizer(Quantizer):
    """Finite scalar quantization with learned projections in and out of ``len(levels)`` dims."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.codebook_size = int(config.codebook_size)
        self.fsq = FSQ(levels=list(config.levels), dim=config.latent_dim)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized, codes = self.fsq(z.float())  # (B, D, h, w), (B, h, w)
        return QuantizerOutput(quantized, codes.long(), z.new_zeros((), dtype=torch.float32))

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward(z).codes

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self.fsq.indices_to_codes(codes).float()  # (B, D, h, w)


def build_quantizer(config: QuantizerConfig, sync_codebook: bool | None = None) -> Quantizer:
    """The quantizer described by ``config``.

    Args:
        config: the quantizer config.
        sync_codebook: all-reduce codebook statistics across processes in training (``vq``);
            ``None`` means "when torch.distributed is initialised". Off for inference.
    """
    return CosineVQ(config, sync_codebook) if config.kind == "vq" else FSQQuantizer(config)


class CodeUsage:
    """Share of codes used and perplexity over the last ``window`` updates.

    Args:
        codebook_size: number of codes.
        window: how many batches of codes to remember.
    """

    def __init__(self, codebook_size: int, window: int = 100) -> None:
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        self.codebook_size = int(codebook_size)
        self.window = int(window)
        self._recent: collections.deque[torch.Tensor] = collections.deque()
        self._counts = torch.zeros(self.codebook_size, dtype=torch.float64)

    def update(self, codes: torch.Tensor) -> None:
        """Add one batch of codes (any shape, values in [0, codebook_size))."""
        counts = torch.bincount(codes.detach().flatten().cpu().long(), minlength=self.codebook_size).double()
        if counts.numel() != self.codebook_size:
            raise ValueError(f"codes exceed the codebook: max {int(codes.max())} >= {self.codebook_size}")
        self._recent.append(counts)
        self._counts += counts
        if len(self._recent) > self.window:
            self._counts -= self._recent.popleft()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The window's histograms, (n, codebook_size) float64 (for exact resume of the logged figures)."""
        recent = list(self._recent)
        return {"recent": torch.stack(recent) if recent else torch.zeros(0, self.codebook_size, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        recent = state["recent"].double()
        if recent.ndim != 2 or recent.shape[1] != self.codebook_size or recent.shape[0] > self.window:
            raise ValueError(f"code usage state of shape {tuple(recent.shape)} does not fit a codebook of "
                             f"{self.codebook_size} and a window of {self.window}")
        self._recent = collections.deque(recent.unbind(0))
        self._counts = torch.zeros(self.codebook_size, dtype=torch.float64)
        for counts in self._recent:  # whole counts: float64 sums are exact whatever the order
            self._counts += counts

    @property
    def usage(self) -> float:
        """Share of codes seen at least once in the window, in [0, 1]."""
        return float((self._counts > 0.5).double().mean())

    @property
    def perplexity(self) -> float:
        """exp(entropy) of the code histogram over the window; between 1 and codebook_size."""
        total = float(self._counts.sum())
        if total == 0:
            return 0.0
        p = self._counts[self._counts > 0] / total
        return float(torch.exp(-(p * p.log()).sum()))
