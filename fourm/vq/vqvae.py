"""VQ-VAE image tokenizers (rgb, depth, semseg, or any image modality stored like one of them).

    tok = ImageTokenizer(TokenizerConfig(modality="rgb"))      # or ImageTokenizer.from_pretrained(dir)
    tokens = tok.encode(rgb)        # uint8 (B, 3, 64, 64)  -> int64 (B, 8, 8)
    rgb_hat = tok.decode(tokens)    # int64 (B, 8, 8)       -> uint8 (B, 3, 64, 64)

The pipeline is the 4M reference's (ml-4m/fourm/vq/vqvae.py): normalise -> encoder ->
projection to a small latent (32 channels) -> quantizer -> decoder -> de-normalise. Encoder and
decoder are small convolutional nets (``fourm.vq.convnets``: residual blocks with GroupNorm, one
stride-2 convolution per halving), chosen over a ViT because they are several times faster on a
CPU at 64 px and need no position embedding to work at other resolutions: ``downsample`` pixels
per token side, 8 by default (64 px -> 8 x 8), 16 for 224 px -> 14 x 14.

Normalisation is inside (see ``fourm.vq.normalize``): ``encode`` takes images as stored and
``decode`` returns them as stored; ``config.kind`` (rgb, depth or semseg) says how they are stored.
A semseg-kind tokenizer embeds class ids with a learned table (as the reference does) and its
decoder outputs class logits. The config lives in ``fourm.vq.config``, the losses in
``fourm.vq.losses``; ``fourm.vq.loading.load_tokenizers`` loads a folder of tokenizers.

``decoder.kind`` picks the decoder: ``conv`` (the default, described above) or ``diffusion`` (rgb
and depth: a conditional UNet denoiser sampled with DDIM, as 4M's DiVAE; see
``fourm.vq.diffusion``), whose ``decode(tokens, steps=..., generator=...)`` draws its starting
noise from an explicit generator (a fixed seed when none is given).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fourm.atomic import file_sha256
from fourm.config import from_dict, save_json_atomic, to_dict
from fourm.hub import CardInfo, PushToHubMixin, resolve_pretrained, write_model_card
from fourm.vq.config import TokenizerConfig
from fourm.vq.convnets import Decoder, build_encoder
from fourm.vq.diffusion import check_steps
from fourm.vq.losses import latent_invariance, object_weight_map, reconstruction_loss, row_mean_background
from fourm.vq.normalize import as_tensor, build_normalizer
from fourm.vq.quantizers import build_quantizer

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_DECODE_SEED = 0  # seed of a diffusion decoder's starting noise when decode gets no generator


class TokenizerOutput(NamedTuple):
    """Result of a training forward pass.

    Shapes:
        loss: () total loss = reconstruction + quantizer loss (+ ``loss.invariance`` term).
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


class ImageTokenizer(nn.Module, PushToHubMixin):
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
        self.normalizer = build_normalizer(config.kind, config.normalize, config.modality)
        qc = config.quantizer
        if config.kind == "semseg":
            self.class_embed = nn.Embedding(config.normalize.num_classes, config.class_embed_dim)
            in_channels = config.class_embed_dim
        else:
            self.class_embed = None
            in_channels = self.normalizer.in_channels
        self.encoder = build_encoder(in_channels, qc.latent_dim, config.encoder)
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
        """Its name: the folder in a tokenizer set and the raw field it reads."""
        return self.config.modality

    @property
    def kind(self) -> str:
        """How its images are stored: ``rgb``, ``depth`` or ``semseg``."""
        return self.config.kind

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
        return reconstruction_loss(output, target, self.kind, self.config.loss_weights, pixel_weights)

    def forward(self, images: torch.Tensor, objects: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> TokenizerOutput:
        """Training pass on a stored-format batch (see the class docstring).

        Args:
            images: the stored-format batch.
            objects: (B, H, W) bool, the object pixels of the same images; required exactly when
                ``loss.object_weight`` > 0 (rgb), which weighs them (:func:`object_weight_map`), or
                ``loss.background`` is not ``image`` (:func:`row_mean_background`).
            generator: noise and timesteps of the diffusion decoder's loss, on the tokenizer's
                device (None: torch's global RNG, which the trainer seeds and checkpoints);
                unused by the conv decoder.
        """
        loss_cfg = self.config.loss
        if self.config.needs_objects and objects is None:
            raise ValueError(f"loss.object_weight={loss_cfg.object_weight} / loss.background={loss_cfg.background!r} "
                             "need the images' object pixels: call forward(images, objects=...)")
        if objects is not None and not self.config.needs_objects:
            raise ValueError("objects were given but neither loss.object_weight (> 0) nor loss.background (not "
                             "image) is set; they would be unused")
        x, _ = self.normalizer.check(images)
        self._check_size(x)
        x = self.normalizer.to_model(x.to(self.device))
        weights, target = None, x  # target: normalised values or class ids
        if objects is not None:
            if tuple(objects.shape) != (x.shape[0], *x.shape[-2:]):
                raise ValueError(f"objects has shape {tuple(objects.shape)}; expected {(x.shape[0], *x.shape[-2:])} "
                                 "(one mask per image, same size)")
            objects = objects.to(self.device)
            weights = object_weight_map(objects, self.config.loss_weights["object_weight"])
            if loss_cfg.background == "row_mean":
                target = row_mean_background(x, objects)  # (B, C, H, W), plain background
        z = self.forward_encoder(x)  # (B, D, h, w)
        q = self.quantizer(z)
        if self.is_diffusion:  # denoising loss at a random timestep; output is the UNet's prediction
            recon, output = self.decoder(x, q.quantized, weights, generator)
        else:
            output = self.forward_decoder(q.quantized)  # (B, C_out, H, W)
            recon = self.forward_loss(output, target, weights)
        loss = recon + q.loss
        if loss_cfg.invariance:
            with torch.no_grad():
                z_plain = self.forward_encoder(target)  # the same images with a plain background
            loss = loss + loss_cfg.invariance * latent_invariance(z, z_plain)
        return TokenizerOutput(loss, recon.detach(), q.loss.detach(), q.codes, output)

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
    def model_card(self) -> CardInfo:
        """The default model card of :meth:`save_pretrained` and ``push_to_hub``."""
        c = self.config
        summary = (f"A fourm image tokenizer for `{c.modality}` images (stored as {c.kind}): {c.image_size} px "
                   f"training images, {c.downsample} x {c.downsample} pixels per token, {self.codebook_size} codes, "
                   f"{c.decoder.kind} decoder.\n\n```python\nfrom fourm.vq.vqvae import ImageTokenizer\n"
                   "tok = ImageTokenizer.from_pretrained(\"<this repo or folder>\")\n"
                   "tokens = tok.encode(images); images = tok.decode(tokens)\n```")
        return CardInfo(title=f"fourm ImageTokenizer: {c.modality}", summary=summary,
                        pipeline_tag="image-feature-extraction", tags=("4m", "vq-vae", "image-tokenizer", c.modality))

    def save_pretrained(self, directory: str | os.PathLike, *, card: CardInfo | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (format version, config, weights hash),
        and a model card ``README.md`` (default :meth:`model_card`, only if the folder has none;
        a ``card`` given here replaces it).

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
            digest = file_sha256(tmp)
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
        write_model_card(d, card or self.model_card(), overwrite=card is not None)
        return d

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        token: str | bool | None = None, local_files_only: bool = False,
                        force_download: bool = False) -> "ImageTokenizer":
        """Load a tokenizer written by ``save_pretrained`` (a folder, or a Hub repo id holding one);
        strict about version, keys and hash.

        Args:
            path_or_repo_id: a folder, or a Hub repo id (``owner/name``; see :mod:`fourm.hub`).
            map_location: the tokenizer's device.
            revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
                :func:`fourm.hub.resolve_pretrained`.

        Returns the tokenizer in eval mode, with codebook syncing across processes off.
        """
        d = resolve_pretrained(path_or_repo_id, what="a folder written by ImageTokenizer.save_pretrained",
                               revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=local_files_only, force_download=force_download,
                               allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*.md"])
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
        if meta.get("weights_sha256") not in (None, file_sha256(weights_path)):
            raise ValueError(f"{weights_path} does not match the hash in {meta_path}; the save was interrupted")
        config = from_dict(TokenizerConfig, meta["config"])
        model = cls(config, sync_codebook=False)
        model.load_state_dict(load_file(weights_path), strict=True)
        return model.to(map_location).eval()
