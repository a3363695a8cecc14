"""The typed configuration of an image tokenizer: its nets, decoder, quantizer, normalisation and loss.

    cfg = TokenizerConfig(modality="rgb")                                   # rgb, depth, semseg
    cfg = TokenizerConfig(modality="normal", normalize=NormalizeConfig(kind="depth"))   # a new one

Bad combinations (a diffusion decoder for class ids, an rgb-only loss on depth ...) are rejected at
construction with a message that names the setting to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from fourm.config import from_dict
from fourm.vq.convnets import NetConfig
from fourm.vq.diffusion import DiffusionConfig
from fourm.vq.normalize import IMAGE_KINDS, NormalizeConfig
from fourm.vq.quantizers import QuantizerConfig

DECODER_KINDS = ("conv", "diffusion")
BACKGROUND_TARGETS = ("image", "row_mean")  # loss.background: what the decoder draws where there is no object



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
    dominate and shapes blur into blobs. Training then needs to know the object pixels (from the
    scenes' semseg maps: data.source generator or shards); see
    :func:`fourm.vq.losses.object_weight_map`.

    ``background`` (rgb only) is what the decoder is asked to draw where there is no object:
    ``image`` (default) the pixels as they are; ``row_mean`` each pixel row's mean background
    colour (:func:`fourm.vq.losses.row_mean_background`), which drops ground texture and keeps the
    sky gradient and the horizon. ``invariance`` (with ``row_mean``; default 0 = off) adds
    ``invariance * (1 - cos)`` between each latent and the (stop-gradient) latent of the same image
    with that plain background, so that texture does not pick the code. ``row_mean`` made codes
    more predictable for a FourM at a small cost in PSNR; ``invariance`` bought little more for a
    large loss of object detail (experiments/tokenizer_proxies/README.md). Both need the object
    pixels, like ``object_weight``.
    """

    l1: float | None = None
    mse: float | None = None
    cross_entropy: float | None = None
    object_weight: float | None = None
    background: str = "image"
    invariance: float | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    """An image tokenizer.

    Args:
        modality: the name of what it tokenizes: its folder in a tokenizer set and the raw field
            it reads (``rgb``, ``depth``, ``semseg``, or a new one such as ``normal``).
        image_size: side of the training images in pixels (encode accepts any multiple of
            ``downsample``).
        downsample: pixels per token side; a power of two.
        encoder: the encoder net; needs ``log2(downsample)`` entries in ``dim_mult``.
        decoder: ``DecoderConfig``: a conv net like the encoder (the default; a ``NetConfig`` is
            accepted and read as one) or a diffusion decoder (rgb, depth).
        quantizer: see ``QuantizerConfig``.
        normalize: how the images are stored (``normalize.kind``; default: ``modality``, for
            ``rgb``, ``depth`` and ``semseg``) and the fixed normalisation constants (depth range,
            number of classes).
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
        if not isinstance(self.modality, str) or not self.modality or "/" in self.modality or "." in self.modality:
            raise ValueError(f"modality={self.modality!r}: must be a name without '/' or '.' (e.g. rgb, normal)")
        if self.normalize.kind is None and self.modality not in IMAGE_KINDS:
            raise ValueError(f"modality={self.modality!r} is not one of {', '.join(IMAGE_KINDS)}; say how its images "
                             "are stored with normalize.kind (rgb, depth or semseg)")
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
        if self.kind == "semseg":
            if self.loss.l1 is not None or self.loss.mse is not None:
                raise ValueError("loss.l1 / loss.mse do not apply to semseg (it uses loss.cross_entropy); remove them")
            if self.normalize.num_classes > 256:
                raise ValueError(f"normalize.num_classes={self.normalize.num_classes}: semseg is stored as uint8 (<= 256)")
        elif self.loss.cross_entropy is not None:
            raise ValueError(f"loss.cross_entropy applies to semseg only, not {self.modality}; use loss.l1 / loss.mse")
        ow = self.loss.object_weight
        if ow is not None:
            if self.kind != "rgb":
                stored = f" (stored as {self.kind})" if self.kind != self.modality else ""
                raise ValueError(f"loss.object_weight={ow} applies to rgb only, not {self.modality}{stored}; remove it")
            if not (isinstance(ow, (int, float)) and math.isfinite(ow) and ow >= 0):
                raise ValueError(f"loss.object_weight={ow!r}: must be a finite number >= 0 (0 = off; e.g. 4)")
        self._check_background()

    def _check_background(self) -> None:
        bg, inv = self.loss.background, self.loss.invariance
        if bg not in BACKGROUND_TARGETS:
            raise ValueError(f"loss.background={bg!r}: must be one of {', '.join(BACKGROUND_TARGETS)}")
        if bg != "image" and self.kind != "rgb":
            raise ValueError(f"loss.background={bg!r} applies to rgb only, not {self.modality}; remove it")
        if bg != "image" and self.normalize.flat:
            raise ValueError(f"loss.background={bg!r} with normalize.flat: the flat image already has a row-mean "
                             "background; remove loss.background")
        if bg != "image" and self.decoder.kind == "diffusion":
            raise ValueError(f"loss.background={bg!r} needs the conv decoder (decoder.kind: conv), whose target it "
                             "replaces; the diffusion decoder denoises the image itself")
        if inv is not None:
            if not (isinstance(inv, (int, float)) and math.isfinite(inv) and inv >= 0):
                raise ValueError(f"loss.invariance={inv!r}: must be a finite number >= 0 (0 = off; e.g. 30)")
            if inv and bg == "image":
                raise ValueError(f"loss.invariance={inv} pulls latents toward those of the image with a plain "
                                 "background: set loss.background: row_mean too")

    def _check_diffusion(self) -> None:
        dc = self.decoder.diffusion
        if self.kind not in ("rgb", "depth"):
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
    def kind(self) -> str:
        """How the images are stored: ``normalize.kind``, else the modality's name."""
        return self.normalize.kind or self.modality

    @property
    def loss_weights(self) -> dict[str, float]:
        """Resolved reconstruction loss weights of this modality."""
        if self.kind == "semseg":
            return {"cross_entropy": 1.0 if self.loss.cross_entropy is None else self.loss.cross_entropy}
        return {"l1": 1.0 if self.loss.l1 is None else self.loss.l1, "mse": self.loss.mse or 0.0,
                "object_weight": float(self.loss.object_weight or 0.0)}

    @property
    def needs_objects(self) -> bool:
        """Whether training needs the object pixels of each image (``loss.object_weight`` > 0, or
        a ``loss.background`` other than ``image``)."""
        return self.kind == "rgb" and (bool(self.loss.object_weight) or self.loss.background != "image")
