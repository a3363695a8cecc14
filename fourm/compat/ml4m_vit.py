"""The ViT encoder and decoder of the 4M reference's image tokenizers, key for key.

The reference's VQ-VAE and DiVAE tokenizers (apple/ml-4m ``fourm/vq``) encode an image with a
plain ViT (section 5.1 of reference-4m.md). Module and parameter names here follow the
reference's state dict (``encoder.blocks.3.attn.qkv.weight``, ``encoder.norm_mlp.weight``,
``decoder.out_proj.weight``, ...), so a released checkpoint loads with a strict
``load_state_dict``; the code is fourm's own (attention through
``F.scaled_dot_product_attention``).

    enc = ViTEncoder(ViTSpec(dim=768, depth=12, num_heads=12), in_channels=3, patch_size=16, grid=(28, 28))
    h = enc(x)            # (B, 3, 224, 224) -> (B, 768, 14, 14)

What a re-implementation must copy (the fixture README's "conventions"):

* the position table is a fixed 2-D sin-cos table built for ``image_size / patch_size`` tokens
  per side, stored in the state dict as a frozen parameter ``pos_emb`` (1, D, g, g), and
  resized with **bicubic** interpolation (align_corners=False) to the actual token grid at every
  forward; this is what lets the 224-448 tokenizers read 224 px images (28 x 28 -> 14 x 14);
* LayerNorm eps 1e-6, exact (erf) GELU, a bias on qkv, no final encoder norm;
* ``post_mlp``: ``x + fc2(tanh(fc1(LayerNorm(x))))`` after the blocks (ViT-VQGAN), computed in
  float32 in the encoder;
* decoder output ``(B, N, C * p * p) -> (B, C, H, W)`` with channels slowest inside a patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

VIT_PRESETS: dict[str, tuple[int, int, int]] = {  # the reference's presets: (dim, depth, num_heads)
    "s": (512, 8, 8),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}


@dataclass(frozen=True)
class ViTSpec:
    """Size of a tokenizer ViT (the reference's ``vit_{s,b,l}_{enc,dec}`` presets and others).

    Args:
        dim: token width (the reference's ``dim_tokens``).
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width / dim (also the post-MLP's).
        qkv_bias: bias on the qkv projection.
        norm_eps: LayerNorm epsilon.
    """

    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim < 4 or self.dim % 4:
            raise ValueError(f"ViT dim={self.dim}: must be a positive multiple of 4 (the 2-D sin-cos table needs it)")
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"ViT num_heads={self.num_heads} must divide dim={self.dim}")
        if self.depth < 0:
            raise ValueError(f"ViT depth={self.depth}: must be >= 0")

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)


def sincos_table(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """The reference's fixed 2-D position table (1, dim, rows, cols).

    Channel blocks ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_k = T^(-k / (dim/4))``,
    r the row and c the column (for square grids; the reference scrambles non-square ones, and
    its table is in the state dict anyway, so a loaded checkpoint keeps its own values).
    """
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)  # (rows*cols,) row index
    c = torch.arange(cols, dtype=torch.float32).repeat(rows)  # column index
    a, b = r[:, None] * omega, c[:, None] * omega  # (N, dim/4)
    table = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)  # (N, dim)
    return table.T.reshape(1, dim, rows, cols)


def resize_pos(pos_emb: Tensor, rows: int, cols: int) -> Tensor:
    """Position table (1, D, g, g) -> (1, rows * cols, D), bicubic-resized as the reference does."""
    if tuple(pos_emb.shape[-2:]) != (rows, cols):
        pos_emb = F.interpolate(pos_emb, size=(rows, cols), mode="bicubic", align_corners=False)
    return pos_emb.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one packed qkv projection (q, k, v; heads inside each)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim), scale head_dim^-0.5
        return self.proj(rearrange(y, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.dim, eps=spec.norm_eps)
        self.attn = Attention(spec.dim, spec.num_heads, spec.qkv_bias)
        self.norm2 = nn.LayerNorm(spec.dim, eps=spec.norm_eps)
        self.mlp = Mlp(spec.dim, spec.mlp_hidden, nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViTBase(nn.Module):
    def __init__(self, spec: ViTSpec, grid: tuple[int, int], post_mlp: bool) -> None:
        super().__init__()
        self.spec = spec
        # a frozen parameter (not a buffer) because the reference stores it so: strict loading needs the same kind
        self.pos_emb = nn.Parameter(sincos_table(*grid, spec.dim), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(spec) for _ in range(spec.depth)])
        if post_mlp:
            self.norm_mlp = nn.LayerNorm(spec.dim, eps=spec.norm_eps)
            self.post_mlp = Mlp(spec.dim, spec.mlp_hidden, nn.Tanh)
        else:
            self.norm_mlp = self.post_mlp = None

    def _post_mlp(self, x: Tensor) -> Tensor:
        if self.post_mlp is None:
            return x
        return x + self.post_mlp(self.norm_mlp(x))


class ViTEncoder(_ViTBase):
    """Image or feature map -> token features (B, D, rows, cols).

    Args:
        spec: the ViT size.
        in_channels: input channels (3 for rgb, 1 for depth, 64 for embedded semseg ids, 512
            for CLIP-B/16 features).
        patch_size: pixels per token side; with ``patch_proj=False`` every input position is a
            token (a 1x1 convolution projects it), as for feature maps.
        grid: (rows, cols) of the stored position table (``image_size // patch_size``).
        patch_proj: patchify with a ``patch_size`` convolution (True) or project 1x1 (False).
        post_mlp: add the residual tanh MLP after the blocks.
    """

    def __init__(self, spec: ViTSpec, in_channels: int, patch_size: int, grid: tuple[int, int],
                 patch_proj: bool = True, post_mlp: bool = True) -> None:
        super().__init__(spec, grid, post_mlp)
        self.patch_size = patch_size if patch_proj else 1
        self.proj = nn.Conv2d(in_channels, spec.dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D, H / p, W / p)."""
        h = self.proj(x)  # (B, D, rows, cols)
        B, D, rows, cols = h.shape
        h = h.flatten(2).transpose(1, 2) + resize_pos(self.pos_emb, rows, cols)  # (B, N, D)
        h = self.blocks(h)
        if self.post_mlp is not None:  # in float32, as the reference (it disables autocast here)
            with torch.autocast(device_type=h.device.type, enabled=False):
                h = self._post_mlp(h.float())
        return h.transpose(1, 2).reshape(B, D, rows, cols)


class ConvNeXtBlock(nn.Module):
    """The reference's optional ``out_conv`` block: depthwise 7x7, LayerNorm, MLP, layer scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + h.permute(0, 3, 1, 2)


class ViTDecoder(_ViTBase):
    """Token features (B, D, rows, cols) -> image or feature map (B, C, rows * p, cols * p).

    Args:
        spec: the ViT size.
        out_channels: output channels (class logits for semseg, feature channels for CLIP).
        patch_size: pixels per token side of the output (1 with ``patch_proj=False``).
        grid: (rows, cols) of the stored position table.
        patch_proj: project each token to a ``patch_size`` x ``patch_size`` patch (True) or to
            one position (False).
        post_mlp: add the residual tanh MLP after the blocks, before ``out_proj``.
        out_conv: two ConvNeXt blocks on the output (against patch seams).
    """

    def __init__(self, spec: ViTSpec, out_channels: int, patch_size: int, grid: tuple[int, int],
                 patch_proj: bool = True, post_mlp: bool = True, out_conv: bool = False) -> None:
        super().__init__(spec, grid, post_mlp)
        self.out_channels = out_channels
        self.patch_size = patch_size if patch_proj else 1
        self.out_proj = nn.Linear(spec.dim, out_channels * self.patch_size**2)
        self.out_conv = nn.Sequential(ConvNeXtBlock(out_channels), ConvNeXtBlock(out_channels)) if out_conv else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        """(B, D, rows, cols) -> (B, N, D): position table added, through the blocks."""
        B, D, rows, cols = x.shape
        return self.blocks(x.flatten(2).transpose(1, 2) + resize_pos(self.pos_emb, rows, cols))

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = x.shape[-2:]
        h = self.out_proj(self._post_mlp(self.forward_blocks(x)))  # (B, N, C * p * p)
        p, C = self.patch_size, self.out_channels
        h = rearrange(h, "b (rows cols) (c p1 p2) -> b c (rows p1) (cols p2)", rows=rows, c=C, p1=p)
        return h if self.out_conv is None else self.out_conv(h)
