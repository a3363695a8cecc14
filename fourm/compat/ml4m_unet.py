"""The 4M reference's DiVAE denoiser: a patched UNet conditioned by concatenation, key for key.

The reference decodes rgb, depth and normal tokens with a diffusion model (``unet_patched`` =
``PatchedUNetCondCat``, a guided-diffusion-style UNet; section 5.1 of reference-4m.md). Module
names follow its state dict (``decoder.input_blocks.4.0.in_layers.2.weight``,
``decoder.middle_block.1.qkv.weight``, ``decoder.time_embed.0.weight``, ...) so that released
weights load strictly; the code is fourm's own.

    unet = PatchedUNet(UNetSpec(), in_channels=3, cond_channels=32)      # the released layout
    x0_hat = unet(x_t, t, quant)     # (B, 3, 224, 224), (B,) or (), (B, 32, 14, 14) -> (B, 3, 224, 224)

Data flow (the fixture README's conventions 5 and 6):

1. patchify the noisy image ``(B, C, H, W) -> (B, C * p * p, H / p, W / p)``, channels slowest;
2. upsample the quantized latents to that grid with **nearest** interpolation and concatenate
   them after the patches;
3. UNet: a time embedding ``Linear-SiLU-Linear`` of the ``[cos, sin]`` sinusoid; residual blocks
   that add the (SiLU, Linear) embedding between their two 3x3 convolutions; single-head
   attention blocks (q and k each scaled by ``ch^-1/4``) at the listed downsampling rates and
   in the middle; GroupNorm(32 groups, eps 1e-5) in float32; stride-2 convolutions down,
   nearest x2 + 3x3 convolution up; skip connections concatenated on the way up;
4. un-patchify the output the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

GROUPS = 32  # the reference's normalization(): GroupNorm(32, channels), whatever the width


@dataclass(frozen=True)
class UNetSpec:
    """The denoiser layout (defaults: the released ``unet_patched`` preset).

    Args:
        patch_size: pixels per UNet position side.
        model_channels: width of the first level; the time embedding is 4x this.
        channel_mult: width multiplier per level (one downsampling between levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: downsampling rates (1, 2, 4, ...) whose levels get attention.
        num_heads: attention heads (ignored when ``num_head_channels`` is set).
        num_head_channels: channels per head; -1 to use ``num_heads``.
        use_new_attention_order: split q/k/v before heads (True) or heads first (the reference's
            released "legacy" order).
        use_scale_shift_norm: FiLM-style time conditioning instead of adding the embedding.
        conv_resample: learned convolutions for down/upsampling (else average pool / plain
            nearest upsampling).
    """

    patch_size: int = 4
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (4, 8)
    num_heads: int = 1
    num_head_channels: int = -1
    use_new_attention_order: bool = False
    use_scale_shift_norm: bool = False
    conv_resample: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if self.patch_size < 1 or self.model_channels < 1 or self.num_res_blocks < 1 or not self.channel_mult:
            raise ValueError(f"UNet layout {self}: patch_size, model_channels, num_res_blocks must be >= 1 and "
                             "channel_mult non-empty")
        widths = [self.model_channels * m for m in self.channel_mult]
        bad = [w for w in widths if w % GROUPS]
        if bad:
            raise ValueError(f"UNet widths {widths} (model_channels x channel_mult): GroupNorm has {GROUPS} groups, "
                             f"so every width must be a multiple of {GROUPS}; {bad} is not")

    @property
    def downsample(self) -> int:
        """How many times smaller the lowest UNet level is than the patch grid."""
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (B, half)
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 (as the reference), result in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-(dropout)-conv, + skip (1x1 conv if widths differ)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        # index 2 is the reference's dropout (0 at inference): kept so the conv's key stays out_layers.3
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B or 1, C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions: GN, qkv (1x1 Conv1d), attention, proj_out, residual."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool) -> None:
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"UNet attention: num_head_channels={num_head_channels} must divide {channels}")
            num_heads = channels // num_head_channels
        self.num_heads, self.new_order = num_heads, new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, T)
        nh, ch = self.num_heads, C // self.num_heads
        if self.new_order:  # q | k | v, each split into heads
            q, k, v = (t.reshape(B, nh, ch, -1) for t in qkv.chunk(3, dim=1))
        else:  # legacy: heads first, each holding its own q | k | v
            q, k, v = qkv.reshape(B, nh, 3 * ch, -1).split(ch, dim=2)  # (B, nh, ch, T) each
        # softmax((q s)^T (k s)) with s = ch^-1/4 is SDPA's default ch^-1/2 scale
        a = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))  # (B, nh, T, ch)
        h = self.proj_out(a.transpose(2, 3).reshape(B, C, H * W))
        return (flat + h).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 convolution (or 2x2 average pooling)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest x2, then a 3x3 convolution (unless disabled)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Stage(nn.ModuleList):
    """Layers run in order; residual blocks also get the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class PatchedUNet(nn.Module):
    """The reference's ``PatchedUNetCondCat``: denoiser of images (B, C, H, W).

    Args:
        spec: the layout.
        in_channels: image channels C (the output has as many).
        cond_channels: channels of the quantized latents (the tokenizer's latent_dim).
        sample_size: default image side (the reference's ``image_size``; informational).
    """

    def __init__(self, spec: UNetSpec, in_channels: int, cond_channels: int, sample_size: int = 224) -> None:
        super().__init__()
        self.spec, self.in_channels, self.sample_size = spec, in_channels, sample_size
        p, mc = spec.patch_size, spec.model_channels
        emb_ch = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_ch, cout, spec.use_scale_shift_norm)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, spec.num_heads, spec.num_head_channels, spec.use_new_attention_order)

        ch = spec.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(in_channels * p * p + cond_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in spec.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level != len(spec.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(ch, spec.conv_resample)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage([res(ch, ch), attn(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(spec.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                if ds in spec.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == spec.num_res_blocks:
                    layers.append(Upsample(ch, spec.conv_resample))
                    ds //= 2
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels * p * p, 3, padding=1))

    def time_embedding(self, t: Tensor) -> Tensor:
        """Timesteps (B,) or () -> the time embedding (B or 1, 4 * model_channels)."""
        t = t.reshape(-1)
        return self.time_embed(timestep_embedding(t, self.spec.model_channels).to(self.out[2].weight.dtype))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Prediction (B, C, H, W) for noisy images x_t at timesteps t ((B,) or ()) given the
        quantized latents cond (B, L, h, w). H and W must be multiples of
        ``patch_size * spec.downsample``."""
        B, C, H, W = x_t.shape
        p = self.spec.patch_size
        step = p * self.spec.downsample
        if H % step or W % step:
            raise ValueError(f"DiVAE decoder: image size {H} x {W} must be a multiple of {step} (patch_size {p} x "
                             f"{self.spec.downsample} UNet downsamplings); choose another image size")
        rows, cols = H // p, W // p
        h = rearrange(x_t, "b c (rows p1) (cols p2) -> b (c p1 p2) rows cols", p1=p, p2=p)
        cond = F.interpolate(cond.to(h.dtype), size=(rows, cols), mode="nearest")  # (B, L, rows, cols)
        h = torch.cat([h, cond], dim=1)
        emb = self.time_embedding(torch.as_tensor(t, device=x_t.device))
        hs = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.out(h)  # (B, C * p * p, rows, cols)
        return rearrange(h, "b (c p1 p2) rows cols -> b c (rows p1) (cols p2)", c=C, p1=p)
