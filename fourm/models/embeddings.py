"""Per-modality encoder and decoder embeddings, and the fixed sin-cos position tables.

Each module embeds only the token slots the model selected: ``embed(entry, b, p)`` receives the
modality's batch entry (``{"tokens", "is_input", "is_target"}``) and the batch index ``b`` and
token position ``p`` of each selected slot, and returns the content ``x`` and the position +
modality embedding ``emb`` of those slots, both (n, D). No (B, L, D) tensor of a whole modality is
built, which matters for long sequence tensors (2 x 257 slots per caption) and wide models.

Names of parameters and buffers (``token_emb``, ``proj``, ``pos_emb``, ``mod_emb``,
``to_logits``) follow the 4M reference, so its checkpoints load by key.

Positions:
* image grids: fixed 2D sin-cos, row-major tokens ``n = r * cols + c``; channels are
  ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_k = 10000^(-k / (D/4))``;
* sequences: fixed 1D sin-cos ``[sin(n w), cos(n w)]``, ``w_k = 10000^(-k / (D/2))``, where ``n``
  is the rank of the token among the modality's input tokens (encoder) or target tokens (decoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fourm.modalities import ModalitySpec

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


class GradStore:
    """Reusable CPU memory for one vocabulary-sized tensor (a table's dense gradient, or the
    logits of a head), handed out again from step to step.

    A fresh (V, D) gradient per step costs page faults that, on CPU, take longer than computing
    it (a 30000 x 768 table: ~70 ms of faults against ~10 ms of work). The store hands its buffer
    out again only when nothing else holds it (the optimizer released ``p.grad`` with
    ``zero_grad(set_to_none=True)``, no one kept a reference); otherwise it allocates a new one.
    Results are the same either way.

    :meth:`zeros` returns the buffer zeroed. When the buffer comes back untouched since the last
    :meth:`mark_rows` (its version counter unchanged: nothing wrote to it in place, e.g. gradient
    clipping or accumulation), only the rows written then are cleared instead of all V rows.
    """

    def __init__(self) -> None:
        self.buf: Tensor | None = None
        self._rows: Tensor | None = None  # rows written since the buffer was last all zero
        self._version = -1  # buf._version right after those rows were written

    def __deepcopy__(self, memo: dict) -> "GradStore":  # scratch memory, not state
        return GradStore()

    def __getstate__(self) -> dict:
        return {"buf": None, "_rows": None, "_version": -1}

    def get(self, like: Tensor) -> Tensor:
        """An uninitialised tensor shaped like ``like`` (the stored one when it is free)."""
        buf = self.buf
        if (buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device
                or not _unshared(buf)):
            buf = self.buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        self._rows = None
        return buf.detach()  # a second handle, so that autograd can adopt it as p.grad

    def zeros(self, like: Tensor) -> Tensor:
        """A zero tensor shaped like ``like``; call :meth:`mark_rows` after writing rows of it."""
        rows, version, old = self._rows, self._version, self.buf
        out = self.get(like)
        if rows is not None and old is self.buf and out._version == version:
            out.index_fill_(0, rows, 0.0)  # (rows, D): everything else is still zero
        else:
            out.zero_()
        return out

    def mark_rows(self, out: Tensor, rows: Tensor) -> None:
        """Record that only ``rows`` of the zeroed ``out`` (from :meth:`zeros`) were written."""
        self._rows, self._version = rows.clone(), out._version  # a copy: callers may reuse ``rows``

    def matrix(self, rows: int, cols: int, like: Tensor) -> Tensor:
        """An uninitialised (rows, cols) tensor with ``like``'s dtype and device. Row counts move
        from step to step, so the memory is a flat buffer with some headroom."""
        need = rows * cols
        buf = self.buf
        if (buf is None or buf.numel() < need or buf.dtype != like.dtype or buf.device != like.device
                or not _unshared(buf)):
            buf = self.buf = torch.empty(need + need // 4 + cols, dtype=like.dtype, device=like.device)
        return buf[:need].view(rows, cols)


def _unshared(buf: Tensor) -> bool:
    try:  # the storage is held by ``buf`` and by the temporary from untyped_storage()
        return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2
    except Exception:  # noqa: BLE001 - private API gone: never reuse
        return False


def _use_store(weight: Tensor) -> bool:
    # only where it pays and is simple: CPU float training without autocast (CUDA caches memory)
    return (weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu"))


class _Lookup(torch.autograd.Function):
    """``weight[ids]`` whose weight gradient is written into a GradStore buffer."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int, store: GradStore) -> Tensor:
        ctx.save_for_backward(weight, ids)
        ctx.padding_idx, ctx.store = padding_idx, store
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, ids = ctx.saved_tensors
        if ctx.padding_idx >= 0:  # like nn.Embedding(padding_idx=...): that row gets no gradient
            grad = grad.masked_fill((ids == ctx.padding_idx)[:, None], 0.0)
        out = ctx.store.zeros(weight)
        out.index_add_(0, ids, grad.to(out.dtype))
        ctx.store.mark_rows(out, ids)
        return out, None, None, None


class _Head(torch.autograd.Function):
    """``h @ weight.T`` whose weight gradient is written into a GradStore buffer."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, store: GradStore) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.store = store
        return h @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = torch.mm(grad.t(), h, out=ctx.store.get(weight))  # (V, D)
        return grad_h, grad_w, None


def lookup(table: nn.Embedding, ids: Tensor, store: GradStore) -> Tensor:
    """``table(ids)`` (padding rows get no gradient), reusing gradient memory on CPU."""
    pad = -1 if table.padding_idx is None else table.padding_idx
    if _use_store(table.weight):
        return _Lookup.apply(table.weight, ids, pad, store)
    return F.embedding(ids, table.weight, table.padding_idx)


def head(linear: nn.Linear, h: Tensor, store: GradStore) -> Tensor:
    """``linear(h)`` for a bias-free vocabulary head, reusing gradient memory on CPU."""
    if _use_store(linear.weight) and h.dtype == linear.weight.dtype:
        return _Head.apply(h, linear.weight, store)
    return linear(h)


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
        self.token_grad = GradStore()  # gradient memory of token_emb / to_logits (not state)
        self.logits_grad = GradStore()
        self.logits_work = GradStore()  # memory of the logits in the fused head + cross-entropy

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
        return lookup(self.token_emb, ids, self.token_grad), self._pos(p)


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
        x = image.reshape(B, C, rows, P, cols, P).permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, P, P, C)
        return x.reshape(B, rows * cols, P * P * C)

    def embed(self, entry: dict, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        image = entry["tokens"]
        B, C, H, W = image.shape
        P, (rows, cols) = self.patch_size, self.grid
        if (H, W) != (rows * P, cols * P):
            raise ValueError(f"{self.name}: image is {H}x{W}, expected {rows * P}x{cols * P} (grid {rows}x{cols}, patch {P})")
        # gather only the selected patches, then lay each out as (ph, pw, c)
        grid = image.reshape(B, C, rows, P, cols, P)
        patches = grid[b, :, p // cols, :, p % cols, :]  # (n, C, P, P): advanced dims go first
        patches = patches.permute(0, 2, 3, 1).reshape(len(b), P * P * C)  # (n, P*P*C)
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
        return lookup(self.token_emb, ids, self.token_grad), self._pos(rank)


class ImageTokenDecoderEmbedding(_Embedding):
    """Image-token target: the model feeds its mask token; this module gives the 2D position +
    modality embedding, the target ids and the logits head ``to_logits`` (no bias).

    ``token_emb`` is not used by the forward pass; it exists for checkpoint compatibility.
    """

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim, _grid_pos(spec, dim))
        self.token_emb = nn.Embedding(spec.vocab_size, dim)
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
        return head(self.to_logits, h, self.logits_grad)


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
        return lookup(self.token_emb, ids, self.token_grad), self._pos(rank)

    def target_ids(self, entry: dict, b: Tensor, p: Tensor) -> Tensor:
        return _tokens(entry, self.name)[b, p + 1]

    def forward_logits(self, h: Tensor) -> Tensor:
        """(n, D) -> (n, vocab)."""
        return head(self.to_logits, h, self.logits_grad)


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
