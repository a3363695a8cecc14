"""Transformer building blocks: bias-free LayerNorm, (gated) MLPs, attention and pre-norm blocks.

Module and parameter names follow the 4M reference (``norm1``, ``attn.qkv``, ``cross_attn.kv``,
``mlp.fc1/fc2/fc3``, ``query_norm``, ``context_norm``) so that its checkpoints load by key.

Masks are positive: ``True`` means "may attend". Attention runs through
:func:`fourm.models.attention_kernels.attention`: SDPA, or xformers on CUDA (each attention module's
``backend``, set by ``FourM.set_attention_backend``). Callers must make sure every query row has at
least one key it may attend to (``FourM`` does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fourm.models.attention_kernels import attention

class LayerNorm(nn.Module):
    """LayerNorm with an optional bias. Without bias a zero ``bias`` buffer is kept, so that the
    state dict has the reference's ``*.bias`` keys.

    Args:
        dim: normalised (last) dimension.
        eps: variance epsilon (the reference uses 1e-6).
        bias: learn a bias.
    """

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` with hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = _activation(act)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedMlp(nn.Module):
    """SwiGLU-style gated MLP: ``fc2(act(fc1(x)) * fc3(x))``.

    ``hidden`` is the ungated width (``dim * mlp_ratio``); the gated width is ``int(2 * hidden / 3)``
    exactly as in the reference (2048 for dim 768, 2730 for 1024, 5461 for 2048; not rounded).
    """

    def __init__(self, dim: int, hidden: int, act: str = "silu", bias: bool = False) -> None:
        super().__init__()
        gated = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, gated, bias=bias)
        self.act = _activation(act)
        self.fc2 = nn.Linear(gated, dim, bias=bias)
        self.fc3 = nn.Linear(dim, gated, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)) * self.fc3(x))


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"act_layer={name!r}; allowed: 'silu', 'gelu'")


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection (q rows, then k, then v).

    Args:
        dim: model width; ``num_heads`` must divide it.
        num_heads: attention heads.
        qkv_bias, proj_bias: biases of the input and output projections.
        qk_norm: normalise q and k per head (``q_norm``/``k_norm`` over head_dim).
        norm_eps, norm_bias: settings of those norms.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, proj_bias: bool = False,
                 qk_norm: bool = False, norm_eps: float = 1e-6, norm_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = "sdpa"  # or "xformers": see fourm.models.attention_kernels
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        if qk_norm:
            self.q_norm = LayerNorm(self.head_dim, norm_eps, norm_bias)
            self.k_norm = LayerNorm(self.head_dim, norm_eps, norm_bias)
        else:
            self.q_norm = self.k_norm = None

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of ``x``, each (B, H, N, hd). A KV cache appends k and v along N."""
        q, k, v = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)  # (B, H, N, hd) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: x (B, N, D); mask bool (B, 1, N, N) or broadcastable, True = may attend."""
        q, k, v = self.project_qkv(x)
        out = attention(q, k, v, mask, self.backend)  # (B, H, N, hd)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate ``q`` and packed ``kv`` projections.

    :meth:`context_kv` computes the context's keys and values once, so generation can reuse them
    across decoding steps (pass them back as ``kv``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, proj_bias: bool = False,
                 qk_norm: bool = False, norm_eps: float = 1e-6, norm_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = "sdpa"  # or "xformers": see fourm.models.attention_kernels
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        if qk_norm:
            self.q_norm = LayerNorm(self.head_dim, norm_eps, norm_bias)
            self.k_norm = LayerNorm(self.head_dim, norm_eps, norm_bias)
        else:
            self.q_norm = self.k_norm = None

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of an (already normalised) context (B, N, D) -> 2 x (B, H, N, hd)."""
        k, v = rearrange(self.kv(context), "b n (kv h d) -> kv b h n d", kv=2, h=self.num_heads)  # (B, H, N, hd)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v

    def forward(self, x: Tensor, context: Tensor | None, mask: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Args: x (B, M, D) queries; context (B, N, D) or precomputed ``kv``; mask bool
        (B, 1, 1, N) or (B, 1, M, N), True = may attend."""
        q = rearrange(self.q(x), "b m (h d) -> b h m d", h=self.num_heads)  # (B, H, M, hd)
        if self.q_norm is not None:
            q = self.q_norm(q)
        k, v = kv if kv is not None else self.context_kv(context)
        out = attention(q, k, v, mask, self.backend)  # (B, H, M, hd)
        return self.proj(rearrange(out, "b h m d -> b m (h d)"))


def _mlp(dim: int, mlp_ratio: float, gated: bool, act: str, bias: bool) -> nn.Module:
    hidden = int(dim * mlp_ratio)
    return GatedMlp(dim, hidden, act, bias) if gated else Mlp(dim, hidden, act, bias)


class Block(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, gated_mlp: bool = True,
                 act_layer: str = "silu", qkv_bias: bool = False, proj_bias: bool = False,
                 mlp_bias: bool = False, norm_bias: bool = False, norm_eps: float = 1e-6,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, norm_eps, norm_bias)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_eps, norm_bias)
        self.norm2 = LayerNorm(dim, norm_eps, norm_bias)
        self.mlp = _mlp(dim, mlp_ratio, gated_mlp, act_layer, mlp_bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: x (B, N, D); mask bool broadcastable to (B, H, N, N)."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: self-attention, cross-attention to the context, MLP.

    ``x + self_attn(norm1(x))``; ``x + cross_attn(query_norm(x), context_norm(context))``;
    ``x + mlp(norm2(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, gated_mlp: bool = True,
                 act_layer: str = "silu", qkv_bias: bool = False, proj_bias: bool = False,
                 mlp_bias: bool = False, norm_bias: bool = False, norm_eps: float = 1e-6,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, norm_eps, norm_bias)
        self.self_attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_eps, norm_bias)
        self.query_norm = LayerNorm(dim, norm_eps, norm_bias)
        self.context_norm = LayerNorm(dim, norm_eps, norm_bias)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_eps, norm_bias)
        self.norm2 = LayerNorm(dim, norm_eps, norm_bias)
        self.mlp = _mlp(dim, mlp_ratio, gated_mlp, act_layer, mlp_bias)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """This block's cross-attention keys/values of ``context`` (B, N, D), for reuse."""
        return self.cross_attn.context_kv(self.context_norm(context))

    def forward(self, x: Tensor, context: Tensor | None, sa_mask: Tensor | None = None,
                xa_mask: Tensor | None = None, context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Args: x (B, M, D); context (B, N, D) (or ``context_kv`` from :meth:`context_kv`);
        sa_mask (B, 1, M, M); xa_mask (B, 1, 1, N); True = may attend."""
        x = x + self.self_attn(self.norm1(x), sa_mask)
        if context_kv is None:
            context_kv = self.context_kv(context)
        x = x + self.cross_attn(self.query_norm(x), None, xa_mask, kv=context_kv)
        return x + self.mlp(self.norm2(x))
