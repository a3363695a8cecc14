"""Autoregressive decoding of one sequence modality, with or without a key/value cache.

A sequence target is decoded token by token against a fixed encoder output. The decoder input is
``[S_1] t_1 ... t_k``; slot ``i`` reads token ``i`` and predicts token ``i + 1`` (teacher forcing,
causal self-attention within the modality), so each step only adds one query.

* cached (default): every decoder block keeps the keys and values of the tokens seen so far in a
  preallocated (R, H, max_len, hd) buffer, and the cross-attention keys/values of the context are
  computed once (:meth:`fourm.models.FourM.context_kv`). A step runs the blocks on ONE new
  token: norm1 -> self-attention against the cache -> cross-attention -> MLP, the same
  submodules, in the same order, as :class:`fourm.models.blocks.DecoderBlock`.
* uncached: the whole prefix goes through the model's own decoder path
  (``select_decoder_tokens`` / ``embed_decoder`` / ``run_decoder``) at every step, as the
  reference does. It is the ground truth the cached path is tested against, and the benchmark's
  baseline.

Rows can be dropped between steps (:meth:`IncrementalDecoder.keep`): finished samples leave the
batch and cost nothing more.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fourm.models import FourM, attention


def context_key_mask(context_valid: Tensor) -> Tensor | None:
    """(R, N) -> (R, 1, 1, N) "may attend" mask of cross-attention, or None when every slot is
    valid (attention without a mask is faster). A row with no valid context attends to all (zero)
    slots, as ``FourM.run_decoder`` does, instead of producing NaN."""
    mask = context_valid | ~context_valid.any(1, keepdim=True)
    return None if bool(mask.all()) else mask[:, None, None, :]


class IncrementalDecoder:
    """The decoder of ``modality`` over a growing prefix.

    Args:
        model: the FourM model.
        modality: a sequence modality with a decoder.
        context: (R, N, D) encoder context (``EncoderState.context``).
        context_valid: (R, N) bool, the valid context slots (``EncoderState.context_mask``).
        max_len: most tokens the prefix will hold (the first one included).
        use_cache: keep keys/values (True) or rerun the whole prefix at every step (False).

    Call :meth:`step` with the next input token of every row; it returns the logits of the token
    that follows it.
    """

    def __init__(self, model: FourM, modality: str, context: Tensor, context_valid: Tensor, max_len: int,
                 use_cache: bool = True) -> None:
        if modality not in model.decoder_embeddings or model.specs[modality].kind != "sequence":
            seqs = [n for n in model.decoder_embeddings if model.specs[n].kind == "sequence"]
            raise ValueError(f"{modality!r} is not a sequence target of this model; sequence targets: {', '.join(seqs)}")
        self.model, self.modality, self.use_cache = model, modality, use_cache
        self.embedding = model.decoder_embeddings[modality]
        R, N, D = context.shape
        self.max_len = max_len
        self.length = 0
        self.prefix = torch.zeros(R, max_len, dtype=torch.long, device=context.device)  # (R, T) tokens so far
        self.context, self.context_valid = context, context_valid
        self._all_targets = torch.ones(R, max_len, dtype=torch.bool, device=context.device)  # every prefix token is a target
        self._rows = torch.arange(R, device=context.device)
        if use_cache:
            # per block: 2 x (R, H, N, hd), contiguous: read at every step, copied once here
            self.context_kv = [(k.contiguous(), v.contiguous()) for k, v in model.context_kv(context)]
            self.xa_mask = context_key_mask(context_valid)  # (R, 1, 1, N) or None
            shape = (R, model.config.num_heads, max_len, model.config.head_dim)
            dtype = context.dtype
            self.keys = [context.new_zeros(shape, dtype=dtype) for _ in model.decoder]
            self.values = [context.new_zeros(shape, dtype=dtype) for _ in model.decoder]

    @property
    def rows(self) -> int:
        return self.prefix.shape[0]

    def keep(self, rows: Tensor) -> None:
        """Keep only ``rows`` (int64 indices, in the new order) of every buffer."""
        self.prefix = self.prefix.index_select(0, rows)
        self._all_targets = self._all_targets[: len(rows)]
        self._rows = self._rows[: len(rows)]
        self.context = self.context.index_select(0, rows)
        self.context_valid = self.context_valid.index_select(0, rows)
        if self.use_cache:
            self.context_kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.context_kv]
            self.xa_mask = context_key_mask(self.context_valid)
            self.keys = [k.index_select(0, rows) for k in self.keys]
            self.values = [v.index_select(0, rows) for v in self.values]

    def _embed_last(self) -> Tensor:
        """Content + position + modality embedding of the newest prefix token, (R, 1, D)."""
        t = self.length - 1
        entry = {"tokens": self.prefix[:, : t + 1], "is_target": self._all_targets[:, : t + 1]}
        x, emb = self.embedding.embed(entry, self._rows, torch.full_like(self._rows, t))  # (R, D) each
        return (x + emb)[:, None, :]

    def step(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (R,) to the prefix; return the logits (R, V) of the next token."""
        if self.length >= self.max_len:
            raise RuntimeError(f"prefix is full ({self.max_len} tokens); raise max_len")
        self.prefix[:, self.length] = tokens
        self.length += 1
        hidden = self._step_cached() if self.use_cache else self._step_uncached()  # (R, D)
        return self.embedding.forward_logits(hidden)

    def _step_cached(self) -> Tensor:
        t = self.length - 1
        y = self._embed_last()  # (R, 1, D)
        R, _, D = y.shape
        for i, blk in enumerate(self.model.decoder):
            q, k, v = blk.self_attn.project_qkv(blk.norm1(y))  # (R, H, 1, hd) each
            self.keys[i][:, :, t] = k[:, :, 0]
            self.values[i][:, :, t] = v[:, :, 0]
            # the newest token may attend to every token so far: causal without a mask
            a = attention(q, self.keys[i][:, :, : t + 1], self.values[i][:, :, : t + 1], None, blk.self_attn.backend)
            y = y + blk.self_attn.proj(a.transpose(1, 2).reshape(R, 1, D))
            y = y + blk.cross_attn(blk.query_norm(y), None, self.xa_mask, kv=self.context_kv[i])
            y = y + blk.mlp(blk.norm2(y))
        return self.model.decoder_norm(y)[:, 0]

    def _step_uncached(self) -> Tensor:
        m = self.model
        T = self.length
        # T tokens, plus one placeholder so that the last token forms a (read, predict) pair
        tokens = torch.nn.functional.pad(self.prefix[:, :T], (0, 1))
        entry = {"tokens": tokens, "is_target": torch.ones_like(tokens, dtype=torch.bool)}
        batch = {self.modality: entry}
        sel = m.select_decoder_tokens(batch, T)  # T slots: token i -> i + 1
        x, emb, _ = m.embed_decoder(batch, sel)
        hidden = m.run_decoder(x + emb, self.context, m.decoder_self_mask(sel), self.context_valid)  # (R, T, D)
        return hidden[:, -1]
