"""VQ-VAE image tokenizers for rgb, depth and semseg.

    tok = ImageTokenizer(TokenizerConfig(modality="rgb"))      # or ImageTokenizer.from_pretrained(dir)
    tokens = tok.encode(rgb)        # uint8 (B, 3, 64, 64)  -> int64 (B, 8, 8)
    rgb_hat = tok.decode(tokens)    # int64 (B, 8, 8)       -> uint8 (B, 3, 64, 64)

The pipeline is the reference's (section 5.1 of reference-4m.md): normalise -> encoder ->
projection to a small latent (32 channels) -> quantizer -> decoder -> de-normalise. Encoder and
decoder are small convolutional nets (``fourm.vq.convnets``: residual blocks with GroupNorm, one
stride-2 convolution per halving), chosen over a ViT because they are several times faster on a
CPU at 64 px and need no position embedding to work at other resolutions: ``downsample`` pixels
per token side, 8 by default (64 px -> 8 x 8), 16 for 224 px -> 14 x 14.

Normalisation is inside (see ``fourm.vq.normalize``): ``encode`` takes images as stored and
``decode`` returns them as stored. The semseg tokenizer embeds class ids with a learned table (as
the reference does) and its decoder outputs class logits.

``decoder.kind`` picks the decoder: ``conv`` (the default, described above) or ``diffusion`` (rgb
and depth: a conditional UNet denoiser sampled with DDIM, as 4M's DiVAE; see
``fourm.vq.diffusion``), whose ``decode(tokens, steps=..., generator=...)`` draws its starting
noise from an explicit generator (a fixed seed when none is given).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fourm.config import from_dict, save_json_atomic, to_dict
from fourm.vq.convnets import Decoder, Encoder, NetConfig
from fourm.vq.diffusion import DiffusionConfig, check_steps
from fourm.vq.normalize import IMAGE_MODALITIES, NormalizeConfig, as_tensor, build_normalizer
from fourm.vq.quantizers import QuantizerConfig, build_quantizer

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

DECODER_KINDS = ("conv", "diffusion")
DEFAULT_DECODE_SEED = 0  # seed of a diffusion decoder's starting noise when decode gets no generator


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder: a convolutional net (``kind: conv``) or a diffusion model (``kind: diffusion``).

    Args:
        kind: ``conv`` (default; the mirror of the encoder) or ``diffusion`` (rgb and depth).
        dim, dim_mult, depths: size of the conv decoder, as in ``NetConfig`` (unset: its
            defaults); not allowed with ``kind: diffusion``.
        diffusion: the diffusion decoder (``DiffusionConfig``; unset: its defaults); not allowed
            with ``kind: conv``.

    Configs written before ``kind`` existed (``{dim, dim_mult, depths}``) read as ``kind: conv``.
    """

    kind: Literal["conv", "diffusion"] = "conv"
    dim: int | None = None
    dim_mult: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    # ``dict``: a mapping is converted in __post_init__, so that a bad entry's own message reaches
    # the user (fourm.config reports a value that fails ``DiffusionConfig | None`` as "fits none of")
    diffusion: DiffusionConfig | dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            diffusion = from_dict(DiffusionConfig, self.diffusion, "tokenizer.decoder.diffusion")
            object.__setattr__(self, "diffusion", diffusion)
        conv_fields = {n: getattr(self, n) for n in ("dim", "dim_mult", "depths")}
        if self.kind == "conv":
            if self.diffusion is not None:
                raise ValueError("decoder.diffusion is set but decoder.kind is 'conv'; "
                                 "set decoder.kind: diffusion or remove decoder.diffusion")
            net = NetConfig(**{n: v for n, v in conv_fields.items() if v is not None})  # validates
            for n in conv_fields:
                object.__setattr__(self, n, getattr(net, n))
        elif self.kind == "diffusion":
            given = [n for n, v in conv_fields.items() if v is not None]
            if given:
                raise ValueError(f"decoder.{'/'.join(given)} size the conv decoder, but decoder.kind is 'diffusion'; "
                                 "remove them and size the UNet with decoder.diffusion.block_out_channels / "
                                 "layers_per_block")
            if self.diffusion is None:
                object.__setattr__(self, "diffusion", DiffusionConfig())
        else:
            raise ValueError(f"decoder.kind={self.kind!r}; allowed: {', '.join(map(repr, DECODER_KINDS))}")

    @property
    def net(self) -> NetConfig:
        """The conv decoder's ``NetConfig`` (``kind: conv`` only)."""
        if self.kind != "conv":
            raise ValueError(f"decoder.kind is {self.kind!r}; only a conv decoder has a NetConfig")
        return NetConfig(self.dim, tuple(self.dim_mult), tuple(self.depths))

    @classmethod
    def from_net(cls, net: NetConfig) -> "DecoderConfig":
        """The conv decoder of ``net``."""
        return cls(kind="conv", dim=net.dim, dim_mult=tuple(net.dim_mult), depths=tuple(net.depths))


@dataclass(frozen=True)
class LossConfig:
    """Reconstruction loss weights; unset means the modality's default.

    rgb and depth use ``l1`` (default 1) plus ``mse`` (default 0) on normalised values (depth:
    normalised log-depth); semseg uses ``cross_entropy`` (default 1) over classes.

    ``object_weight`` (rgb only; default 0 = off) weights the pixels of objects, and the one-pixel
    ring around them where the silhouette edge lies, ``1 + object_weight`` times a background
    pixel; each image's weights are then divided by their mean, so the loss keeps its scale. Objects
    cover about a tenth of a ShapesWorld image, so with plain per-pixel losses the sky and ground
    dominate and shapes blur into blobs. Training then needs the scenes' semseg maps (data.source
    generator or shards) to find the objects; see :func:`object_weight_map`.
    """

    l1: float | None = None
    mse: float | None = None
    cross_entropy: float | None = None
    object_weight: float | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    """An image tokenizer.

    Args:
        modality: ``rgb``, ``depth`` or ``semseg``.
        image_size: side of the training images in pixels (encode accepts any multiple of
            ``downsample``).
        downsample: pixels per token side; a power of two.
        encoder: the encoder net; needs ``log2(downsample)`` entries in ``dim_mult``.
        decoder: ``DecoderConfig``: a conv net like the encoder (the default; a ``NetConfig`` is
            accepted and read as one) or a diffusion decoder (rgb, depth).
        quantizer: see ``QuantizerConfig``.
        normalize: the fixed normalisation constants (depth range, number of classes).
        loss: reconstruction loss weights.
        class_embed_dim: channels of the class-id embedding (semseg only).
    """

    modality: str
    image_size: int = 64
    downsample: int = 8
    encoder: NetConfig = field(default_factory=NetConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    class_embed_dim: int = 16

    def __post_init__(self) -> None:
        if self.modality not in IMAGE_MODALITIES:
            raise ValueError(f"modality={self.modality!r}; known: {', '.join(IMAGE_MODALITIES)}")
        d = self.downsample
        if d < 2 or d & (d - 1):
            raise ValueError(f"downsample={d}: must be a power of two >= 2 (8 gives 8 x 8 tokens at 64 px)")
        stages = int(math.log2(d))
        if isinstance(self.decoder, NetConfig):
            object.__setattr__(self, "decoder", DecoderConfig.from_net(self.decoder))
        nets = [("encoder", self.encoder)] + ([("decoder", self.decoder)] if self.decoder.kind == "conv" else [])
        for name, net in nets:
            if len(net.dim_mult) != stages:
                raise ValueError(
                    f"{name}.dim_mult has {len(net.dim_mult)} entries but downsample={d} needs {stages} "
                    "(one per halving of the resolution)"
                )
        if self.image_size % d:
            raise ValueError(f"image_size={self.image_size} must be a multiple of downsample={d}")
        if self.decoder.kind == "diffusion":
            self._check_diffusion()
        if self.modality == "semseg":
            if self.loss.l1 is not None or self.loss.mse is not None:
                raise ValueError("loss.l1 / loss.mse do not apply to semseg (it uses loss.cross_entropy); remove them")
            if self.normalize.num_classes > 256:
                raise ValueError(f"normalize.num_classes={self.normalize.num_classes}: semseg is stored as uint8 (<= 256)")
        elif self.loss.cross_entropy is not None:
            raise ValueError(f"loss.cross_entropy applies to semseg only, not {self.modality}; use loss.l1 / loss.mse")
        ow = self.loss.object_weight
        if ow is not None:
            if self.modality != "rgb":
                raise ValueError(f"loss.object_weight={ow} applies to rgb only, not {self.modality}; remove it")
            if not (isinstance(ow, (int, float)) and math.isfinite(ow) and ow >= 0):
                raise ValueError(f"loss.object_weight={ow!r}: must be a finite number >= 0 (0 = off; e.g. 4)")

    def _check_diffusion(self) -> None:
        dc = self.decoder.diffusion
        if self.modality not in ("rgb", "depth"):
            raise ValueError(f"decoder.kind='diffusion' with modality={self.modality!r}: class ids are not a "
                             "diffusion target; allowed for rgb and depth (use decoder.kind: conv for semseg)")
        if 2 ** dc.halvings > self.downsample:
            raise ValueError(f"decoder.diffusion.block_out_channels={list(dc.block_out_channels)} halves the image "
                             f"{dc.halvings} times (by {2 ** dc.halvings}), which must divide downsample="
                             f"{self.downsample} so every token grid decodes; use at most "
                             f"{int(math.log2(self.downsample)) + 1} levels")
        if self.loss.l1 is not None or self.loss.mse is not None:
            raise ValueError("loss.l1 / loss.mse weight the conv decoder's reconstruction; the diffusion decoder "
                             "is trained with the denoising MSE (decoder.diffusion.prediction_type); remove them")

    @property
    def loss_weights(self) -> dict[str, float]:
        """Resolved reconstruction loss weights of this modality."""
        if self.modality == "semseg":
            return {"cross_entropy": 1.0 if self.loss.cross_entropy is None else self.loss.cross_entropy}
        return {"l1": 1.0 if self.loss.l1 is None else self.loss.l1, "mse": self.loss.mse or 0.0,
                "object_weight": float(self.loss.object_weight or 0.0)}

    @property
    def needs_semseg(self) -> bool:
        """Whether training needs the scenes' semseg maps (``loss.object_weight`` > 0)."""
        return self.modality == "rgb" and bool(self.loss.object_weight)


def object_weight_map(semseg: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights of ``loss.object_weight``, normalised to mean 1 per image.

    Args:
        semseg: (B, H, W) class ids (``SEMSEG_CLASSES``: 0 sky, 1 ground, >= 2 an object).
        object_weight: extra weight of object pixels and of the one-pixel ring around them.
    Returns:
        (B, 1, H, W) float32 weights: ``1 + object_weight`` on (dilated) objects, 1 elsewhere,
        divided by the image's mean.
    """
    if semseg.ndim != 3:
        raise ValueError(f"semseg must have shape (B, H, W), got {tuple(semseg.shape)}")
    obj = (semseg >= 2).float().unsqueeze(1)  # (B, 1, H, W)
    ring = F.max_pool2d(obj, kernel_size=3, stride=1, padding=1)  # objects grown by one pixel: their edges
    w = 1.0 + object_weight * ring
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


# --- the tokenizer ------------------------------------------------------------------------------

class TokenizerOutput(NamedTuple):
    """Result of a training forward pass.

    Shapes:
        loss: () total loss = reconstruction + quantizer loss.
        recon_loss: () reconstruction loss (diffusion decoder: the denoising MSE).
        quant_loss: () quantizer loss (commitment).
        codes: (B, h, w) int64.
        output: (B, C_out, H, W) raw network output (normalised values or class logits; for a
            diffusion decoder, the UNet's prediction of its prediction_type target).
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    quant_loss: torch.Tensor
    codes: torch.Tensor
    output: torch.Tensor


class ImageTokenizer(nn.Module):
    """Encoder, quantizer and decoder for one image modality, with normalisation inside.

    Stored formats (``encode`` input and ``decode`` output; one image without B also works):
    rgb uint8 (B, 3, H, W); depth float32 metres (B, H, W); semseg integer class ids (B, H, W)
    (decoded as uint8). Tokens are int64 (B, H / downsample, W / downsample).
    """

    def __init__(self, config: TokenizerConfig, sync_codebook: bool | None = None) -> None:
        """Args:
            config: the tokenizer config.
            sync_codebook: all-reduce codebook statistics across processes while training
                (default: when torch.distributed is initialised).
        """
        super().__init__()
        self.config = config
        self.normalizer = build_normalizer(config.modality, config.normalize)
        qc = config.quantizer
        if config.modality == "semseg":
            self.class_embed = nn.Embedding(config.normalize.num_classes, config.class_embed_dim)
            in_channels = config.class_embed_dim
        else:
            self.class_embed = None
            in_channels = self.normalizer.in_channels
        self.encoder = Encoder(in_channels, qc.latent_dim, config.encoder)
        self.quantizer = build_quantizer(qc, sync_codebook=sync_codebook)
        out_channels = self.normalizer.out_channels
        if config.decoder.kind == "diffusion":
            from fourm.vq.diffusion import DiffusionDecoder

            self.decoder = DiffusionDecoder(qc.latent_dim, out_channels, config.decoder.diffusion, config.image_size)
        else:
            self.decoder = Decoder(qc.latent_dim, out_channels, config.decoder.net)
        # channels-last convolutions run about 1.5x faster on CPUs (oneDNN) and suit GPU autocast
        self.to(memory_format=torch.channels_last)

    # properties ---------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def codebook_size(self) -> int:
        """Number of token ids (the vocabulary size of this modality)."""
        return self.quantizer.codebook_size

    @property
    def is_diffusion(self) -> bool:
        """Whether the decoder is a diffusion model (``decoder.kind: diffusion``)."""
        return self.config.decoder.kind == "diffusion"

    @property
    def decode_steps(self) -> int | None:
        """Default DDIM steps of ``decode`` (diffusion decoder), None for the one-pass conv decoder."""
        return self.config.decoder.diffusion.num_inference_steps if self.is_diffusion else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an image of (height, width) pixels."""
        d = self.config.downsample
        if height % d or width % d:
            raise ValueError(
                f"{self.modality} image of {height} x {width} px: both sides must be multiples of downsample={d}"
            )
        return height // d, width // d

    # the steps ----------------------------------------------------------------------------------
    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> float encoder input (B, C, H, W); class ids are embedded."""
        if self.class_embed is not None:
            return self.class_embed(x).permute(0, 3, 1, 2)  # (B, H, W) -> (B, E, H, W), channels-last in memory
        return x.contiguous(memory_format=torch.channels_last)

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> latents (B, D, h, w)."""
        return self.encoder(self.prepare_input(x))

    def forward_decoder(self, z: torch.Tensor, steps: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Quantized latents (B, D, h, w) -> network output (B, C_out, H, W) (H = h * downsample).

        The conv decoder makes one pass (``steps`` must be None, ``generator`` is unused); the
        diffusion decoder runs ``steps`` DDIM steps (default ``decode_steps``) from noise drawn
        by ``generator`` (default: seeded with ``DEFAULT_DECODE_SEED``) and returns normalised
        images.
        """
        if not self.is_diffusion:
            if steps is not None:
                raise ValueError(f"steps={steps} applies to a diffusion decoder; this {self.modality} tokenizer's "
                                 "decoder.kind is 'conv' (one pass): leave steps unset")
            return self.decoder(z)
        steps = self.decode_steps if steps is None else steps
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_DECODE_SEED)
        size = (z.shape[-2] * self.config.downsample, z.shape[-1] * self.config.downsample)
        return self.decoder.sample(z, size, steps, generator)

    def forward_loss(self, output: torch.Tensor, target: torch.Tensor,
                     pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction loss of the network output (B, C_out, H, W) against the normalised
        input (B, C, H, W) (rgb, depth) or the class ids (B, H, W) (semseg); ``pixel_weights``
        (B, 1, H, W) of mean 1 (:func:`object_weight_map`) weight the per-pixel l1 / mse terms."""
        w = self.config.loss_weights
        out = output.float()
        if self.modality == "semseg":
            return w["cross_entropy"] * F.cross_entropy(out, target)
        if pixel_weights is None:
            loss = w["l1"] * F.l1_loss(out, target)
            if w["mse"]:
                loss = loss + w["mse"] * F.mse_loss(out, target)
            return loss
        diff = out - target  # (B, C, H, W)
        loss = w["l1"] * (diff.abs() * pixel_weights).mean()
        if w["mse"]:
            loss = loss + w["mse"] * (diff.square() * pixel_weights).mean()
        return loss

    def forward(self, images: torch.Tensor, semseg: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> TokenizerOutput:
        """Training pass on a stored-format batch (see the class docstring).

        Args:
            images: the stored-format batch.
            semseg: (B, H, W) class ids of the same scenes; required exactly when
                ``loss.object_weight`` > 0 (rgb), where it locates the objects.
            generator: noise and timesteps of the diffusion decoder's loss, on the tokenizer's
                device (None: torch's global RNG, which the trainer seeds and checkpoints);
                unused by the conv decoder.
        """
        if self.config.needs_semseg and semseg is None:
            raise ValueError(f"loss.object_weight={self.config.loss.object_weight} needs the scenes' semseg maps: "
                             "call forward(images, semseg=...)")
        if semseg is not None and not self.config.needs_semseg:
            raise ValueError("semseg was given but loss.object_weight is not set (> 0); it would be unused")
        x, _ = self.normalizer.check(images)
        self._check_size(x)
        x = self.normalizer.to_model(x.to(self.device))
        weights = None
        if semseg is not None:
            if tuple(semseg.shape) != (x.shape[0], *x.shape[-2:]):
                raise ValueError(f"semseg has shape {tuple(semseg.shape)}; expected {(x.shape[0], *x.shape[-2:])} "
                                 "(one map per image, same size)")
            weights = object_weight_map(semseg.to(self.device), self.config.loss_weights["object_weight"])
        z = self.forward_encoder(x)  # (B, D, h, w)
        q = self.quantizer(z)
        if self.is_diffusion:  # denoising loss at a random timestep; output is the UNet's prediction
            recon, output = self.decoder(x, q.quantized, weights, generator)
        else:
            output = self.forward_decoder(q.quantized)  # (B, C_out, H, W)
            recon = self.forward_loss(output, x, weights)  # x is the target: normalised values or class ids
        return TokenizerOutput(recon + q.loss, recon.detach(), q.loss.detach(), q.codes, output)

    # public API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images as stored -> tokens.

        Args:
            images: rgb uint8 (B, 3, H, W); depth float metres (B, H, W); semseg integer ids
                (B, H, W); or one image without B. H and W multiples of ``downsample``.
        Returns:
            int64 tokens (B, H / downsample, W / downsample) (no B for a single image), on the
            tokenizer's device.
        """
        x, single = self.normalizer.check(images)
        self._check_size(x)
        x = self.normalizer.to_model(x.to(self.device))
        codes = self.quantizer.lookup(self.forward_encoder(x))  # (B, h, w)
        return codes[0] if single else codes

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor | np.ndarray, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens -> images as stored.

        Args:
            tokens: int (B, h, w), or (h, w) for one image.
            steps: DDIM steps of a diffusion decoder (default ``decode_steps``); must be unset
                for the conv decoder.
            generator: draws a diffusion decoder's starting noise (any device; default: a CPU
                generator seeded with ``DEFAULT_DECODE_SEED``, so repeated calls agree); unused
                by the conv decoder, which is deterministic.
        Returns:
            rgb uint8 (B, 3, H, W), depth float32 metres (B, H, W), semseg uint8 class ids
            (B, H, W), with H = h * downsample; no B for a (h, w) grid.
        """
        t = as_tensor(tokens, "tokens")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got {t.dtype}")
        single = t.ndim == 2
        if single:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(f"tokens must have shape (B, h, w) or (h, w), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.codebook_size):
            raise ValueError(
                f"{self.modality} tokens must lie in [0, {self.codebook_size - 1}], got [{int(t.min())}, {int(t.max())}]"
            )
        if steps is not None and self.is_diffusion:
            check_steps(steps, self.config.decoder.diffusion.num_train_timesteps)
        z = self.quantizer.embed(t.to(self.device).long())  # (B, D, h, w)
        out = self.normalizer.from_model(self.forward_decoder(z, steps, generator))
        return out[0] if single else out

    def reconstruct(self, images: torch.Tensor | np.ndarray, steps: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """``decode(encode(images), steps, generator)``."""
        return self.decode(self.encode(images), steps, generator)

    def _check_size(self, x: torch.Tensor) -> None:
        self.token_grid(x.shape[-2], x.shape[-1])

    # save / load --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (format version, config, weights hash).

        Each file is written atomically; the config is written last and names the weights'
        sha256, so a torn save is detected at load time.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{WEIGHTS_NAME}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": "pt"})
            digest = _sha256(tmp)
            os.replace(tmp, d / WEIGHTS_NAME)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        meta = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "config": to_dict(self.config),
            "weights_sha256": digest,
        }
        save_json_atomic(meta, d / CONFIG_NAME)
        return d

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "ImageTokenizer":
        """Load a tokenizer written by ``save_pretrained``; strict about version, keys and hash.

        Returns the tokenizer in eval mode, with codebook syncing across processes off.
        """
        d = Path(directory)
        meta_path, weights_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found; expected a folder written by ImageTokenizer.save_pretrained")
        meta = json.loads(meta_path.read_text())
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION})")
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{meta_path}: holds a {meta.get('class')!r}, not an {cls.__name__}")
        if meta.get("weights_sha256") not in (None, _sha256(weights_path)):
            raise ValueError(f"{weights_path} does not match the hash in {meta_path}; the save was interrupted")
        config = from_dict(TokenizerConfig, meta["config"])
        model = cls(config, sync_codebook=False)
        model.load_state_dict(load_file(weights_path), strict=True)
        return model.to(map_location).eval()


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tokenizers(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Load every tokenizer in ``directory``: subfolders ``rgb/``, ``depth/``, ``semseg/`` (image
    tokenizers) and ``text/`` (``fourm.vq.text.TextTokenizer``, shared by caption and det).

    Returns:
        {"rgb": ImageTokenizer, ..., "text": TextTokenizer} for the subfolders present.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"tokenizer folder {root} does not exist")
    out: dict[str, nn.Module] = {}
    for name in IMAGE_MODALITIES:
        sub = root / name
        if (sub / CONFIG_NAME).is_file():
            tok = ImageTokenizer.from_pretrained(sub, map_location=map_location)
            if tok.modality != name:
                raise ValueError(f"{sub} holds a {tok.modality!r} tokenizer; move it to {root / tok.modality}")
            out[name] = tok
    if (root / "text").is_dir():
        from fourm.vq.text import TextTokenizer  # the text tokenizer is optional here

        out["text"] = TextTokenizer.from_pretrained(root / "text")
    if not out:
        raise FileNotFoundError(
            f"no tokenizer found in {root}; expected subfolders {', '.join(IMAGE_MODALITIES)} or text"
        )
    return out
