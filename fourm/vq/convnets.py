"""Convolutional encoder and decoder of the image tokenizers (``decoder.kind: conv``).

Residual blocks with GroupNorm, one stride-2 convolution per halving of the resolution on the way
down and nearest-neighbour upsampling plus a convolution on the way up. Chosen over a ViT because
they are several times faster on a CPU at 64 px and need no position embedding to work at other
resolutions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """A convolutional encoder or decoder.

    Args:
        dim: channels at full resolution.
        dim_mult: channel multiplier of each resolution stage, full resolution first; one entry
            per halving, so ``len(dim_mult) == log2(downsample)``.
        depths: residual blocks of each stage (same length as ``dim_mult``); 0 at full
            resolution saves most of the compute.
        local: encoder only. ``True``: each token sees its own patch and nothing else (the
            pixels of a patch are folded into channels, then ``max(1, sum(depths))`` residual blocks of
            1x1 convolutions with a per-position norm run at ``dim * dim_mult[-1] * 4`` channels),
            so a code is a function of its patch alone: two patches that look the same get the
            same code whatever surrounds them, which makes codes predictable from their
            neighbours (issue #15). ``False`` (default): 3x3 convolutions and GroupNorm, whose
            codes also depend on the neighbouring patches and on the whole image's statistics.
    """

    dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4)
    depths: tuple[int, ...] = (0, 1, 1)
    local: bool = False

    def __post_init__(self) -> None:
        if self.dim < 1 or not self.dim_mult or min(self.dim_mult) < 1:
            raise ValueError(f"dim={self.dim}, dim_mult={list(self.dim_mult)}: need positive values")
        if len(self.depths) != len(self.dim_mult) or min(self.depths) < 0:
            raise ValueError(
                f"depths={list(self.depths)}: need one count >= 0 per stage of dim_mult={list(self.dim_mult)}"
            )

    @property
    def channels(self) -> list[int]:
        return [self.dim * m for m in self.dim_mult]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3, twice, plus a (projected) skip connection."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(dim_in), nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(dim_out), nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of a (B, C, h, w) map: nothing is shared
    between positions (unlike GroupNorm, whose statistics span the whole image)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PointBlock(nn.Module):
    """norm -> 1x1 conv -> SiLU -> 1x1 conv, plus the skip connection: a per-position MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelNorm(dim)
        self.fc1, self.fc2 = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class PatchEncoder(nn.Module):
    """(B, C, H, W) -> (B, latent_dim, H / 2^S, W / 2^S), each output position computed from its
    own 2^S x 2^S patch only (``NetConfig.local``)."""

    def __init__(self, in_channels: int, latent_dim: int, config: NetConfig) -> None:
        super().__init__()
        self.patch = 2 ** len(config.dim_mult)
        width = config.channels[-1] * 4
        self.embed = nn.Conv2d(in_channels * self.patch ** 2, width, 1)
        self.blocks = nn.Sequential(*[PointBlock(width) for _ in range(max(1, sum(config.depths)))])
        self.norm_out = ChannelNorm(width)
        self.proj = nn.Conv2d(width, latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(F.pixel_unshuffle(x, self.patch))  # (B, width, h, w): one position per patch
        return self.proj(F.silu(self.norm_out(self.blocks(h))))  # (B, latent_dim, h, w)


def build_encoder(in_channels: int, latent_dim: int, config: NetConfig) -> nn.Module:
    """The encoder ``config`` describes: ``PatchEncoder`` when ``config.local``, else ``Encoder``."""
    return (PatchEncoder if config.local else Encoder)(in_channels, latent_dim, config)


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, latent_dim, H / 2^S, W / 2^S) with S = len(dim_mult)."""

    def __init__(self, in_channels: int, latent_dim: int, config: NetConfig) -> None:
        super().__init__()
        ch = config.channels
        self.stem = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        stages = []
        for i, c in enumerate(ch):
            c_next = ch[min(i + 1, len(ch) - 1)]
            blocks = [ResBlock(c, c) for _ in range(config.depths[i])]
            stages.append(nn.Sequential(*blocks, nn.Conv2d(c, c_next, 3, stride=2, padding=1)))
        self.stages = nn.Sequential(*stages)
        self.mid = ResBlock(ch[-1], ch[-1])
        self.norm_out = _norm(ch[-1])
        self.proj = nn.Conv2d(ch[-1], latent_dim, 1)  # the reference's quant_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.stages(self.stem(x)))  # (B, C_last, h, w)
        return self.proj(F.silu(self.norm_out(h)))  # (B, latent_dim, h, w)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (no checkerboard artefacts, unlike a transposed conv)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """(B, latent_dim, h, w) -> (B, out_channels, h * 2^S, w * 2^S), mirroring ``Encoder``."""

    def __init__(self, latent_dim: int, out_channels: int, config: NetConfig) -> None:
        super().__init__()
        ch = config.channels
        self.proj = nn.Conv2d(latent_dim, ch[-1], 3, padding=1)  # the reference's post_quant_proj
        self.mid = ResBlock(ch[-1], ch[-1])
        stages = []
        for i in reversed(range(len(ch))):
            c_prev = ch[min(i + 1, len(ch) - 1)]
            blocks = [ResBlock(ch[i], ch[i]) for _ in range(config.depths[i])]
            stages.append(nn.Sequential(Upsample(c_prev, ch[i]), *blocks))
        self.stages = nn.Sequential(*stages)
        self.norm_out = _norm(ch[0])
        self.head = nn.Conv2d(ch[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.mid(self.proj(z)))  # (B, C_0, H, W)
        return self.head(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
