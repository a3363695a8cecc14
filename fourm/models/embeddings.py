"""Per-modality encoder and decoder embeddings, and the fixed sin-cos position tables.

Each module embeds only the token slots the model selected: ``embed(entry, b, p)`` receives the
modality's batch entry (``{"tokens", "is_input", "is_target"}``) and the batch index ``b`` and
token position ``p`` of each selected slot, and returns the content ``x`` and the position +
modality embedding ``emb`` of those slots, both (n, D). No (B, L, D) tensor of a whole modality is
built, which matters for long sequence tensors (2 x 257 slots per caption) and wide models.

Names of parameters and buffers (``token_emb``, ``proj``, ``pos_emb``, ``mod_emb``,
``to_logits``) follow the 4M reference, so its checkpoints load by key (the reference's extra,
unused table of image targets is added by ``fourm.compat.ml4m``). Token tables and heads reuse
their gradient memory on CPU (:mod:`fourm.models.cpu_memory`, ``memory``; switchable).

Positions:
* image grids: fixed 2D sin-cos, row-major tokens ``n = r * cols + c``; channels are
  ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_k = 10000^(-k / (D/4))``;
* sequences: fixed 1D sin-cos ``[sin(n w), cos(n w)]``, ``w_k = 10000^(-k / (D/2))``, where ``n``
  is the rank of the token among the modality's input tokens (encoder) or target tokens (decoder).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from fourm.modalities import ModalitySpec
from fourm.models.cpu_memory import CPUMemory, head, lookup

PAD_ID = 0  # [PAD] of the text tokenizer; sequence token embeddings never receive its gradient


def sincos_1d(num_positions: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """1D sin-cos table (1, num_positions, dim); ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"dim={dim} must be even for 1D sin-cos positions")
    half = dim // 2
    omega = 1.0 / temperature ** (torch.arange(half, dtype=torch.float32) / half)  # (D/2,)
    angle = torch.arange(num_positions, dtype=torch.float32)[:, None] * omega[None]  # (P, D/2)
    return torch.cat([angle.sin(), angle.cos()], dim=1)[None]


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2D sin-cos table (1, rows * cols, dim) in row-major token order; ``dim % 4 == 0``."""
    if dim % 4:
        raise ValueError(f"dim={dim} must be a multiple of 4 for 2D sin-cos positions")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)  # (rows*cols,)
    c = torch.arange(cols, dtype=torch.float32).repeat(rows)
    ar, ac = r[:, None] * omega[None], c[:, None] * omega[None]  # (N, D/4) each
    return torch.cat([ar.sin(), ar.cos(), ac.sin(), ac.cos()], dim=1)[None]


def _tokens(entry: dict, name: str) -> Tensor:
    try:
        tokens = entry["tokens"]
    except KeyError:
        raise KeyError(f"batch[{name!r}] has no 'tokens'; keys: {sorted(entry)}") from None
    return tokens.reshape(tokens.shape[0], -1)  # image grids may come as (B, rows, cols)


def _rank(mask: Tensor) -> Tensor:
    """Rank of each True position among the True positions of its row; (B, L) int64."""
    return mask.long().cumsum(1) - 1


class _Embedding(nn.Module):
    """Shared state: the position table and the modality vector."""

    def __init__(self, spec: ModalitySpec, dim: int, pos_emb: Tensor) -> None:
        super().__init__()
        self.name = spec.name
        self.kind = spec.kind
        self.dim = dim
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_emb", pos_emb)
        self.memory = CPUMemory()  # reused memory of token_emb / to_logits gradients and logits (not state)

    def _pos(self, pos: Tensor) -> Tensor:
        return self.pos_emb[0].index_select(0, pos) + self.mod_emb[0]  # (n, D)


def _grid_pos(spec: ModalitySpec, dim: int) -> Tensor:
    return sincos_2d(spec.grid[0], spec.grid[1], dim)


class ImageTokenEncoderEmbedding(_Embedding):
    """Image-token input: ``token_emb`` lookup + 2D position + modality embedding."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim, _grid_pos(spec, dim))
        self.token_emb = nn.Embedding(spec.vocab_size, dim)

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """Args: entry; b, p (n,) slot batch index / token position. Returns x, emb (n, D)."""
        ids = _tokens(entry, self.name)[b, p]  # (n,)
        return lookup(self.token_emb, ids, self.memory), self._pos(p)


class ImageEncoderEmbedding(_Embedding):
    """Pixel input: bias-free linear projection of ``patch x patch`` patches (channels fastest
    inside a patch, as in the reference) + 2D position + modality embedding. Input-only."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim, _grid_pos(spec, dim))
        self.patch_size = spec.patch_size
        self.grid = spec.grid
        self.proj = nn.Linear(spec.in_channels * spec.patch_size ** 2, dim, bias=False)

    def patchify(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, rows * cols, P * P * C)."""
        B, C, H, W = image.shape
        P, (rows, cols) = self.patch_size, self.grid
        if (H, W) != (rows * P, cols * P):
            raise ValueError(f"{self.name}: image is {H}x{W}, expected {rows * P}x{cols * P} (grid {rows}x{cols}, patch {P})")
        return rearrange(image, "b c (rows p1) (cols p2) -> b (rows cols) (p1 p2 c)", p1=P, p2=P)

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        image = entry["tokens"]
        B, C, H, W = image.shape
        P, (rows, cols) = self.patch_size, self.grid
        if (H, W) != (rows * P, cols * P):
            raise ValueError(f"{self.name}: image is {H}x{W}, expected {rows * P}x{cols * P} (grid {rows}x{cols}, patch {P})")
        # gather only the selected patches (a view first, no copy), then lay each out as (ph, pw, c)
        grid = rearrange(image, "b c (rows p1) (cols p2) -> b rows cols p1 p2 c", p1=P, p2=P)
        patches = rearrange(grid[b, p // cols, p % cols], "n p1 p2 c -> n (p1 p2 c)")  # (n, P*P*C)
        return self.proj(patches), self._pos(p)


class SequenceEncoderEmbedding(_Embedding):
    """Sequence input: ``token_emb`` (padding id 0) + 1D position of the token's rank among the
    modality's input tokens + modality embedding."""

    def __init__(self, spec: ModalitySpec, dim: int, num_positions: int) -> None:
        super().__init__(spec, dim, sincos_1d(num_positions, dim))
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=PAD_ID)

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        ids = _tokens(entry, self.name)[b, p]
        rank = _rank(entry["is_input"])[b, p].clamp_(0, self.pos_emb.shape[1] - 1)  # (n,)
        return lookup(self.token_emb, ids, self.memory), self._pos(rank)


class ImageTokenDecoderEmbedding(_Embedding):
    """Image-token target: the model feeds its mask token; this module gives the 2D position +
    modality embedding, the target ids and the logits head ``to_logits`` (no bias)."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim, _grid_pos(spec, dim))
        self.vocab_size = int(spec.vocab_size)
        self.to_logits = nn.Linear(dim, spec.vocab_size, bias=False)

    def slots(self, entry: dict) -> Tensor:
        """Decoder slots (B, L) bool: every target token."""
        return entry["is_target"].reshape(entry["is_target"].shape[0], -1)

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor | None, Tensor]:
        """Returns (None: use the mask token, emb (n, D))."""
        return None, self._pos(p)

    def target_ids(self, entry: dict, b: Tensor, p: Tensor) -> Tensor:
        return _tokens(entry, self.name)[b, p]

    def forward_logits(self, h: Tensor) -> Tensor:
        """(n, D) -> (n, vocab)."""
        return head(self.to_logits, h, self.memory)


class SequenceDecoderEmbedding(_Embedding):
    """Sequence target with teacher forcing: slot ``i`` reads token ``i`` and predicts token
    ``i + 1``; it is used when both are targets. Its position is the rank of token ``i`` among the
    targets (ranks >= ``max_length`` map to 0, as in the reference)."""

    def __init__(self, spec: ModalitySpec, dim: int, num_positions: int) -> None:
        super().__init__(spec, dim, sincos_1d(num_positions, dim))
        self.max_length = int(spec.max_length)
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=PAD_ID)
        self.to_logits = nn.Linear(dim, spec.vocab_size, bias=False)

    def slots(self, entry: dict) -> Tensor:
        """Decoder slots (B, L - 1) bool: ``is_target[i] & is_target[i + 1]``."""
        t = entry["is_target"]
        return t[:, :-1] & t[:, 1:]

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        ids = _tokens(entry, self.name)[b, p]
        rank = _rank(entry["is_target"])[b, p]
        rank = torch.where(rank >= min(self.max_length, self.pos_emb.shape[1]), 0, rank)
        return lookup(self.token_emb, ids, self.memory), self._pos(rank)

    def target_ids(self, entry: dict, b: Tensor, p: Tensor) -> Tensor:
        return _tokens(entry, self.name)[b, p + 1]

    def forward_logits(self, h: Tensor) -> Tensor:
        """(n, D) -> (n, vocab)."""
        return head(self.to_logits, h, self.memory)


def build_encoder_embedding(spec: ModalitySpec, dim: int, seq_positions: int | None) -> nn.Module:
    """The encoder embedding for ``spec``; ``seq_positions`` sizes 1D tables (None: num_tokens)."""
    if spec.kind == "pixels":
        return ImageEncoderEmbedding(spec, dim)
    if spec.kind == "image":
        return ImageTokenEncoderEmbedding(spec, dim)
    return SequenceEncoderEmbedding(spec, dim, seq_positions or spec.num_tokens)


def build_decoder_embedding(spec: ModalitySpec, dim: int, seq_positions: int | None) -> nn.Module:
    """The decoder embedding for ``spec`` (``"image"`` or ``"sequence"``)."""
    if spec.kind == "image":
        return ImageTokenDecoderEmbedding(spec, dim)
    if spec.kind == "sequence":
        return SequenceDecoderEmbedding(spec, dim, seq_positions or spec.num_tokens)
    raise ValueError(f"modality {spec.name!r}: kind {spec.kind!r} cannot be a decoder target")
