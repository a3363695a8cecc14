"""The 4M reference's algorithm, run on FourM's own weights: a same-machine baseline.

``reference_style_loss(model, batch, N, M)`` computes FourM's loss the way apple/ml-4m's
``FourM.forward`` does (ml-4m/fourm/models/fm.py), without the speed-ups of fourm.models:

* every token of every modality is embedded, encoder and decoder side (sequences: all 2 x 257
  positions; image targets: ``token_emb`` of all 196 positions, then replaced by the mask token),
  concatenated to (B, L_total, D) and cut to N / M slots by a float ``argsort`` and ``gather``;
* the decoder self-attention mask is built densely from the compressed cumsum pattern plus the
  modality-separation mask;
* attention is written out (``q @ k^T``, ``masked_fill(-finfo.max)``, softmax, ``@ v``);
* logits come from boolean indexing per modality; the loss divides by every decoder modality
  present in the batch;
* gradients come from plain autograd (fresh tables each step).

Used by benchmarks/model_step.py (``--reference-style``) with ``torch.optim.AdamW`` at its
defaults (the for-loop implementation on CPU), as the reference's training script uses it. It is
written from the description, not from the reference's code; the loss equals FourM's (printed).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

import fourm.models.blocks as blocks
from fourm.models import FourM


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, backend: str = "sdpa") -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
    return scores.softmax(-1) @ v


@contextmanager
def explicit_attention():
    """Route FourM's attention through the written-out version while inside."""
    saved = blocks.attention
    blocks.attention = _explicit_attention
    try:
        yield
    finally:
        blocks.attention = saved


def _select(tensors: list[Tensor], valid: Tensor, n: int) -> tuple[list[Tensor], Tensor]:
    """The reference's valid-first float argsort and gather of n slots."""
    key = (~valid).float() + torch.arange(valid.shape[1]) * 1e-6
    keep = torch.argsort(key, dim=1)[:, :n]  # (B, n)
    out = []
    for t in tensors:
        idx = keep if t.dim() == 2 else keep[..., None].expand(-1, -1, t.shape[-1])
        out.append(torch.gather(t, 1, idx))
    return out, torch.gather(valid, 1, keep)


def reference_style_loss(model: FourM, batch: dict, num_encoder_tokens: int, num_decoder_tokens: int) -> Tensor:
    """FourM's loss computed with the reference's algorithm (see the module docstring)."""
    xs, embs, valids = [], [], []
    for name, e in batch.items():
        if name not in model.encoder_embeddings:
            continue
        m, kind = model.encoder_embeddings[name], model.specs[name].kind
        tokens = e["tokens"]
        B = tokens.shape[0]
        if kind == "pixels":
            x = m.proj(m.patchify(tokens))  # (B, L, D)
            emb = (m.pos_emb + m.mod_emb).expand(B, -1, -1)
        elif kind == "image":
            x = F.embedding(tokens.reshape(B, -1), m.token_emb.weight)
            emb = (m.pos_emb + m.mod_emb).expand(B, -1, -1)
        else:
            x = F.embedding(tokens, m.token_emb.weight, 0)
            rank = (e["is_input"].long().cumsum(1) - 1).clamp(min=0)
            pos = m.pos_emb[0][rank] * e["is_input"][..., None]
            emb = pos + m.mod_emb
        xs.append(x)
        embs.append(emb)
        valids.append(e["is_input"].reshape(B, -1))
    (x, emb), valid = _select([torch.cat(xs, 1), torch.cat(embs, 1)], torch.cat(valids, 1), num_encoder_tokens)
    x, emb = x * valid[..., None], emb * valid[..., None]
    key_mask = valid[:, None, None, :]  # (B, 1, 1, N)
    x = x + emb
    for blk in model.encoder:
        x = blk(x, key_mask)
    context = model.decoder_proj_context(model.encoder_norm(x)) + emb

    ys, dembs, dvalids, targets, pattern, mods = [], [], [], [], [], []
    names = [n for n in batch if n in model.decoder_embeddings]
    for i, name in enumerate(names):
        m, e = model.decoder_embeddings[name], batch[name]
        tokens, is_tgt = e["tokens"], e["is_target"]
        B = tokens.shape[0]
        if model.specs[name].kind == "image":
            ids = tokens.reshape(B, -1)
            x_full = F.embedding(ids, m.token_emb.weight)
            ys.append(torch.zeros_like(x_full) + model.mask_token)
            dembs.append((m.pos_emb + m.mod_emb).expand(B, -1, -1))
            dvalids.append(is_tgt)
            targets.append(ids)
            first = torch.zeros_like(ids)
            first.scatter_(1, is_tgt.long().argmax(1, keepdim=True), is_tgt.sum(1, keepdim=True))
            pattern.append(first)
        else:
            x_full = F.embedding(tokens, m.token_emb.weight, 0)
            rank = is_tgt.long().cumsum(1) - 1
            rank = torch.where(~is_tgt | (rank >= m.max_length), 0, rank)
            emb = m.pos_emb[0][rank] * is_tgt[..., None] + m.mod_emb
            ys.append(x_full[:, :-1])
            dembs.append(emb[:, :-1])
            dvalids.append(is_tgt[:, 1:] & is_tgt[:, :-1])
            targets.append(tokens[:, 1:])
            pattern.append(is_tgt[:, :-1].long())
        mods.append(torch.full_like(dvalids[-1], i, dtype=torch.long))
    (y, demb, tgt, pat, mod), dvalid = _select(
        [torch.cat(ys, 1), torch.cat(dembs, 1), torch.cat(targets, 1), torch.cat(pattern, 1), torch.cat(mods, 1)],
        torch.cat(dvalids, 1), num_decoder_tokens)
    y, demb = y * dvalid[..., None], demb * dvalid[..., None]
    M = y.shape[1]
    blocked = torch.arange(M)[None, None, :] >= pat.cumsum(1)[:, :, None]  # (B, M, M)
    blocked |= mod[:, None, :] != mod[:, :, None]
    sa_mask = ~blocked[:, None]
    mod = torch.where(dvalid, mod, -1)
    y = y + demb
    for blk in model.decoder:
        y = blk(y, context, sa_mask, key_mask)
    y = model.decoder_norm(y)
    losses = []
    for i, name in enumerate(names):
        rows = mod == i
        logits = F.linear(y[rows], model.decoder_embeddings[name].to_logits.weight)
        losses.append(F.cross_entropy(logits, tgt[rows].long()) if rows.any() else logits.sum() * 0.0)
    return sum(losses) / len(losses)
