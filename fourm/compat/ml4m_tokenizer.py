"""The 4M reference's image tokenizers (VQ-VAE and DiVAE) as fourm tokenizers, loaded exactly.

    tok = load_reference_tokenizer("path/to/4M_tokenizers_rgb_16k_224-448")    # or the repo id
    tokens = tok.encode(photo)           # uint8 (B, 3, 224, 224) -> int64 (B, 14, 14)
    rgb = tok.decode(tokens, steps=25)   # -> uint8 (B, 3, 224, 224); DiVAE: 25 diffusion steps
    toks = load_reference_tokenizers("path/to/tokenizers")    # {"rgb": ..., "depth": ..., "semseg": ...}

The interface is that of fourm's own ``ImageTokenizer`` (``encode`` from images as stored,
``decode`` back to them, ``is_diffusion``, ``codebook_size``, ``device``), so the sampler and
``fourm generate`` use either. The reference's normalisation is inside (the mix-up that its users
report most, issue #22 there): rgb / normals as uint8 (B, 3, H, W) -> [-1, 1]; depth as float
(B, H, W) in any unit (metres) or the reference's stored uint16 values -> robust standardisation
(10 % trimmed at each end); semseg class ids (B, H, W) in the tokenizer's convention (0 =
unlabelled, k = COCO class k - 1: the stored uint8 label + 1, 255 -> 0); feature maps (CLIP
etc.) as float (B, C, h, w), unchanged.

What decode returns: rgb / normals uint8 (B, 3, H, W); semseg uint8 class ids (B, H, W) (int64
past 256 classes); features float (B, C, h, w); **depth float32 (B, H, W) in the tokenizer's
standardised units** (zero mean and unit variance over the middle 80 % of pixels), not metres:
the reference's depth tokens carry relative depth only.

Modules keep the reference's state-dict names (``encoder.*``, ``quant_proj``, ``quantize._codebook.embed``,
``post_quant_proj``, ``decoder.*``, ``cls_emb``); loading checks every key both ways and
the shapes, and sizes come from the config (``fourm.compat.ml4m_tokenizer_config``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from fourm.compat.ml4m_schedule import DiffusionSampler, ScheduleConfig
from fourm.compat.ml4m_tokenizer_config import FEATURE_MODALITIES, TokenizerSpec, parse_config, read_config
from fourm.compat.ml4m_unet import PatchedUNet
from fourm.compat.ml4m_vit import ViTDecoder, ViTEncoder
from fourm.hub import resolve_pretrained

DEFAULT_DECODE_STEPS = 25  # the reference's decode_dict default for rgb, depth and normals
DEFAULT_DECODE_SEED = 0  # starting noise of decode() without a generator (reproducible, no global RNG)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]  # (index, t, model_output, sample)


class CosineCodebook(nn.Module):
    """The codebook buffers: ``embed`` (K, L) rows (not unit vectors), ``cluster_size`` and
    ``initted`` (training bookkeeping: loaded, and ``initted`` checked)."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))


class CosineQuantizer(nn.Module):
    """Nearest code by cosine similarity; the quantized vector is the *raw* codebook row."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self._codebook = CosineCodebook(codebook_size, dim)

    @property
    def codebook_size(self) -> int:
        return self._codebook.embed.shape[0]

    def similarity(self, latent: Tensor) -> Tensor:
        """Cosine similarities (B, h, w, K) of latents (B, L, h, w) to every code."""
        z = F.normalize(latent.permute(0, 2, 3, 1).float(), dim=-1)  # (B, h, w, L)
        return z @ F.normalize(self._codebook.embed.float(), dim=-1).T

    def lookup(self, latent: Tensor) -> Tensor:
        """Token ids (B, h, w) of latents (B, L, h, w)."""
        return self.similarity(latent).argmax(dim=-1)

    def embed(self, tokens: Tensor) -> Tensor:
        """Codebook rows (B, L, h, w) of tokens (B, h, w)."""
        return F.embedding(tokens, self._codebook.embed).permute(0, 3, 1, 2)


def standardize_depth(depth: Tensor) -> Tensor:
    """The reference's robust depth standardisation, per image: (B, H, W) -> (B, 1, H, W).

    ``(d - mean(kept)) / sqrt(var(kept) + 1e-6)`` with ``kept`` the sorted values between the
    10 % and 90 % positions (unbiased variance), in float32.
    """
    out = []
    for d in depth.float():
        s = torch.sort(d.reshape(-1))[0]
        n = s.shape[0]
        kept = s[int(0.1 * n): int(0.9 * n)]
        out.append((d - kept.mean()) / torch.sqrt(kept.var() + 1e-6))
    return torch.stack(out)[:, None]


class ReferenceTokenizer(nn.Module):
    """A reference VQ-VAE or DiVAE (see the module docstring); build with ``spec``, then load."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__()
        self.spec = spec
        in_ch = spec.n_channels
        self.cls_emb = nn.Embedding(spec.n_labels, spec.n_channels) if spec.n_labels is not None else None
        self.encoder = ViTEncoder(spec.encoder, in_ch, spec.patch_size, spec.encoder_grid, spec.patch_proj, spec.post_mlp)
        self.quant_proj = nn.Conv2d(spec.encoder.dim, spec.latent_dim, 1)
        self.quantize = CosineQuantizer(spec.codebook_size, spec.latent_dim)
        if spec.is_diffusion:
            self.post_quant_proj = None
            self.decoder = PatchedUNet(spec.unet, in_ch, spec.latent_dim, spec.image_size)
        else:
            out_ch = spec.n_labels if spec.n_labels is not None else spec.n_channels
            self.post_quant_proj = nn.Conv2d(spec.latent_dim, spec.decoder.dim, 1)
            self.decoder = ViTDecoder(spec.decoder, out_ch, spec.patch_size_dec, spec.decoder_grid, spec.patch_proj,
                                      spec.post_mlp, spec.out_conv)

    # ------------------------------------------------------------------ properties (fourm's tokenizer API)
    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def codebook_size(self) -> int:
        return self.spec.codebook_size

    @property
    def is_diffusion(self) -> bool:
        return self.spec.is_diffusion

    @property
    def decode_steps(self) -> int | None:
        """Default diffusion steps of ``decode`` (None for a one-pass VQ-VAE decoder)."""
        return DEFAULT_DECODE_STEPS if self.is_diffusion else None

    @property
    def device(self) -> torch.device:
        return self.quantize._codebook.embed.device

    @property
    def downsample(self) -> int:
        """Pixels (or feature positions) per token side."""
        return self.spec.patch_size if self.spec.patch_proj else 1

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an input of (height, width)."""
        d = self.downsample
        if height % d or width % d:
            raise ValueError(f"{self.modality} input of {height} x {width}: both sides must be multiples of {d}")
        return height // d, width // d

    # ------------------------------------------------------------------ the reference's steps (model convention)
    def prepare_input(self, x: Tensor) -> Tensor:
        """Model-convention input -> encoder input (semseg ids embedded: (B, H, W) -> (B, C, H, W))."""
        if self.spec.undo_std:  # ImageNet-standardised -> [-1, 1]
            mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
            std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
            x = 2.0 * (x * std + mean) - 1.0
        if self.cls_emb is not None:
            return self.cls_emb(x).permute(0, 3, 1, 2)
        return x

    def encode_latent(self, x: Tensor) -> Tensor:
        """Model-convention input -> pre-quantisation latents (B, latent_dim, h, w)."""
        return self.quant_proj(self.encoder(self.prepare_input(x)))

    def tokenize(self, x: Tensor) -> Tensor:
        """Model-convention input (what the reference's ``tokenize`` takes) -> tokens (B, h, w)."""
        return self.quantize.lookup(self.encode_latent(x))

    @torch.no_grad()
    def decode_quant(self, quant: Tensor, steps: int | None = None, generator: torch.Generator | None = None,
                     sampler: str | None = None, spacing: str | None = None, image_size: tuple[int, int] | None = None,
                     noise: Tensor | None = None, callback: StepCallback | None = None,
                     schedule: ScheduleConfig | None = None) -> Tensor:
        """Quantized latents (B, L, h, w) -> model-convention output.

        VQ-VAE: one pass (the diffusion arguments must be unset). DiVAE: ``steps`` (default 25)
        steps of ``sampler`` (``ddim`` deterministic, ``ddpm`` stochastic; default: the one the
        checkpoint names, the reference's default) from ``noise`` or ``randn`` drawn by
        ``generator`` (default: seeded with ``DEFAULT_DECODE_SEED``), at ``image_size``
        (default: token grid x patch size). ``callback(i, t, model_output, sample)`` sees each step;
        ``schedule`` replaces the checkpoint's noise schedule (e.g. a DDIM config with other flags).
        """
        if not self.is_diffusion:
            given = [n for n, v in (("steps", steps), ("sampler", sampler), ("spacing", spacing), ("noise", noise),
                                    ("schedule", schedule)) if v is not None]
            if given:
                raise ValueError(f"{'/'.join(given)} apply to a diffusion decoder; this {self.modality} tokenizer is a "
                                 "VQ-VAE (one pass): leave them unset")
            return self.decoder(self.post_quant_proj(quant))
        chain = DiffusionSampler(schedule or self.spec.schedule, DEFAULT_DECODE_STEPS if steps is None else steps,
                                 sampler or self.spec.sampler, spacing)
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_DECODE_SEED)
        if image_size is None:
            image_size = (quant.shape[-2] * self.spec.patch_size, quant.shape[-1] * self.spec.patch_size)
        shape = (quant.shape[0], self.spec.n_channels, *image_size)
        if noise is None:  # drawn where the generator lives, as the reference's pipeline does
            noise = torch.randn(shape, generator=generator, device=generator.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {shape}")
        x = noise.to(quant.device, torch.float32)
        for i, t in enumerate(chain.timesteps.tolist()):
            out = self.decoder(x, torch.tensor(t, device=x.device), quant).float()
            x = chain.step(out, t, x, generator)
            if callback is not None:
                callback(i, torch.tensor(t), out, x)
        return x

    # ------------------------------------------------------------------ stored formats (fourm's tokenizer API)
    def to_model(self, images: Tensor | np.ndarray) -> Tensor:
        """Images as stored (see the module docstring) -> the model convention, batched."""
        x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        m = self.modality
        if m in FEATURE_MODALITIES:
            if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != self.spec.n_channels:
                raise ValueError(f"{m} features must be float (B, {self.spec.n_channels}, h, w), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            return x.float()
        if m == "semseg":
            if x.is_floating_point() or x.dim() != 3:
                raise ValueError(f"semseg must be integer class ids (B, H, W), got {x.dtype} {tuple(x.shape)}")
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.spec.n_labels:
                raise ValueError(f"semseg ids must lie in [0, {self.spec.n_labels - 1}] (0 = unlabelled, k = COCO class "
                                 f"k-1; stored uint8 labels: use (label + 1) % 256), got [{lo}, {hi}]")
            return x.long()
        if m == "depth":
            if x.dim() != 3:
                raise ValueError(f"depth must be (B, H, W) (metres, or the reference's uint16 values), got "
                                 f"{tuple(x.shape)}")
            d = x.float() if x.is_floating_point() else (x.double() / 65535.0).float()  # the reference's /(2**16-1)
            return standardize_depth(d)
        if x.dtype != torch.uint8:
            raise TypeError(f"{m} must be uint8 as stored (0..255), got {x.dtype}")
        if m == "edge" and x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] != self.spec.n_channels:
            raise ValueError(f"{m} must have shape (B, {self.spec.n_channels}, H, W), got {tuple(x.shape)}")
        x = (x.float() / 255.0 - 0.5) / 0.5  # TF.to_tensor then normalize(0.5, 0.5): [-1, 1]
        if self.spec.undo_std:
            mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
            x = ((x * 0.5 + 0.5) - mean) / torch.tensor(IMAGENET_STD)[:, None, None]
        return x

    def from_model(self, y: Tensor) -> Tensor:
        """Model-convention output -> stored format (depth: standardised, see the module docstring)."""
        m = self.modality
        if m in FEATURE_MODALITIES:
            return y
        if m == "semseg":
            ids = y.argmax(dim=1)  # (B, H, W)
            return ids.to(torch.uint8) if self.spec.n_labels <= 256 else ids
        if m == "depth":
            return y[:, 0].float()
        out = ((y.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return out[:, 0] if m == "edge" and out.shape[1] == 1 else out

    @torch.no_grad()
    def encode(self, images: Tensor | np.ndarray) -> Tensor:
        """Images as stored -> int64 tokens (B, h, w) on the tokenizer's device."""
        return self.tokenize(self.to_model(images).to(self.device))

    @torch.no_grad()
    def decode(self, tokens: Tensor | np.ndarray, steps: int | None = None, generator: torch.Generator | None = None,
               sampler: str | None = None) -> Tensor:
        """Tokens (B, h, w) or (h, w) -> images as stored (no B for a (h, w) grid).

        ``steps``, ``generator`` and ``sampler`` (``ddim`` / ``ddpm``) apply to a DiVAE; see
        ``decode_quant``.
        """
        t = torch.as_tensor(np.asarray(tokens) if isinstance(tokens, np.ndarray) else tokens)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"tokens must be integers, got {t.dtype}")
        single = t.dim() == 2
        t = t[None] if single else t
        if t.dim() != 3:
            raise ValueError(f"tokens must have shape (B, h, w) or (h, w), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.codebook_size):
            raise ValueError(f"{self.modality} tokens must lie in [0, {self.codebook_size - 1}], got "
                             f"[{int(t.min())}, {int(t.max())}]")
        quant = self.quantize.embed(t.to(self.device).long())
        out = self.from_model(self.decode_quant(quant, steps, generator, sampler))
        return out[0] if single else out

    def reconstruct(self, images: Tensor | np.ndarray, steps: int | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """``decode(encode(images))``."""
        return self.decode(self.encode(images), steps, generator)


# ---------------------------------------------------------------------------------------- loading
def build_reference_tokenizer(spec: TokenizerSpec, device: str | torch.device = "meta") -> ReferenceTokenizer:
    """An (uninitialised on ``meta``) tokenizer of ``spec``."""
    with torch.device(device):
        return ReferenceTokenizer(spec)


def load_reference_tokenizer(path: str | Path, modality: str | None = None, device: str | torch.device = "cpu", *,
                             revision: str | None = None, cache_dir: str | Path | None = None,
                             token: str | bool | None = None, local_files_only: bool = False,
                             force_download: bool = False) -> ReferenceTokenizer:
    """Load a reference tokenizer folder (or Hub repo id) strictly: every key of
    ``model.safetensors`` used, every parameter and buffer of the model filled, shapes equal.

    Args:
        path: folder with ``config.json`` and ``model.safetensors``, or a Hub repo id such as
            ``EPFL-VILAB/4M_tokenizers_rgb_16k_224-448`` (only those two files are fetched).
        modality: rgb, depth, normal, semseg, edge, clip, dinov2 or imagebind (default: from
            the config or the folder name).
        device: where the tokenizer lives.
        revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
            :func:`fourm.hub.resolve_pretrained`.
    Returns:
        The tokenizer in eval mode.
    """
    folder = resolve_pretrained(path, what="a reference tokenizer folder (config.json + model.safetensors)",
                                revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                force_download=force_download, allow_patterns=["config.json", "model.safetensors"])
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; a reference tokenizer folder holds config.json and model.safetensors")
    name = str(path) if not Path(path).is_dir() else folder.name
    spec = parse_config(read_config(folder), modality, name)
    model = build_reference_tokenizer(spec)
    state = load_file(str(weights), device=str(device))
    mine = model.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    if missing or extra:
        raise ValueError(f"{weights}: does not match its config ({spec.kind}, {spec.modality}): missing keys "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in mine.items() if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"{weights}: shapes differ from the config's model: {'; '.join(bad[:5])}")
    model.load_state_dict(state, strict=True, assign=True)
    if not bool(model.quantize._codebook.initted.all()):
        raise ValueError(f"{weights}: quantize._codebook.initted is 0, the codebook was never initialised")
    return model.eval()


def load_reference_tokenizers(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, ReferenceTokenizer]:
    """Every reference tokenizer in the subfolders of ``directory`` (those holding
    ``model.safetensors``), keyed by modality (from each folder's name or config)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"tokenizer folder {root} does not exist")
    out: dict[str, ReferenceTokenizer] = {}
    for sub in sorted(p for p in root.iterdir() if (p / "model.safetensors").is_file()):
        tok = load_reference_tokenizer(sub, device=device)
        if tok.modality in out:
            raise ValueError(f"{root}: two {tok.modality} tokenizers ({sub.name} and another); keep one per modality")
        out[tok.modality] = tok
    if not out:
        raise FileNotFoundError(f"no reference tokenizer in {root}: expected subfolders with config.json and "
                                "model.safetensors (e.g. 4M_tokenizers_rgb_16k_224-448/)")
    return out
