"""FourM: the any-to-any encoder-decoder of 4M, readable top to bottom.

A training step, in the paper's (MAE-style) steps::

    enc = model.forward_encoder(batch, num_encoder_tokens)   # select inputs, embed, encode
    dec = model.forward_decoder(batch, enc, num_decoder_tokens)  # select targets, decode
    out = model.forward_loss(dec)                             # logits of target rows only, CE

``model(batch, N, M)`` runs all three. The batch holds, per modality,
``{"tokens": (B, L) int64 | (B, C, H, W) float for pixels, "is_input": (B, L) bool,
"is_target": (B, L) bool}``. Masks are positive (True = used). Image modalities have
``L = rows * cols``; a sequence tensor holds input ids at its input positions and target ids at its
target positions; decoder slot ``i`` of a sequence reads token ``i`` and predicts token ``i + 1``
and is used when both are targets.

Selection: the input tokens of all modalities (concatenated in batch order) are packed, in order,
into ``N`` encoder slots; slots left over are empty and masked. Target slots are packed into ``M``
decoder slots the same way. Only selected slots are embedded, and logits are computed only for
decoder slots that hold a target, one head per modality.

Decoder self-attention stays within a modality: all-to-all for images, causal for sequences.
Cross-attention sees the non-empty encoder slots.

Encoder-only features (classification, retrieval, probing; no decoder is run), from any subset
of the input modalities::

    feats = model.extract_features({"rgb@224": images})      # images (B, 3, 224, 224), normalised
    feats.pooled            # (B, D) mean over all input tokens
    feats.per_modality["rgb@224"]  # (B, D) mean over that modality's tokens
    feats.tokens, feats.is_valid   # (B, N, D), (B, N) per-token features after encoder_norm

Generation reuses the steps: ``enc = model.encode(batch, N)`` once, ``model.context_kv(enc.context)``
for the cross-attention keys/values of every decoder block, then per step ``forward_decoder`` /
``run_decoder`` (with ``context_kv``) and ``decode_logits`` for the positions marked
``is_target``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fourm.hub import CardInfo, PushToHubMixin, resolve_pretrained, write_model_card
from fourm.models.attention_kernels import resolve_attention_backend
from fourm.models.blocks import Attention, Block, CrossAttention, DecoderBlock, LayerNorm
from fourm.models.config import FourMConfig
from fourm.models.cpu_memory import head_cross_entropy
from fourm.models.embeddings import (PAD_ID, ImageTokenDecoderEmbedding, build_decoder_embedding,
                                     build_encoder_embedding)
from fourm.models.files import read_files, write_files

Batch = Mapping[str, Mapping[str, Tensor]]


@dataclass
class TokenSelection:
    """Which token of which modality sits in each of the B x N slots.

    ``modality`` indexes ``names`` (-1 for an empty slot); ``position`` is the token's index in its
    modality's tensor (for sequence targets: the input token ``i`` of the pair ``i -> i + 1``);
    ``source_index`` is the index in the concatenation of all modalities in ``names`` order.
    ``groups`` lists, per modality and then for empty slots, the flat slot indices (b * N + n),
    in increasing order.
    """

    names: tuple[str, ...]
    modality: Tensor  # (B, N) int64
    position: Tensor  # (B, N) int64
    is_valid: Tensor  # (B, N) bool
    source_index: Tensor  # (B, N) int64
    groups: tuple[Tensor, ...]

    def rows(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """Flat slot indices, batch indices and positions of ``name``'s slots, each (n,)."""
        flat = self.groups[self.names.index(name)]
        return flat, flat // self.modality.shape[1], self.position.flatten()[flat]


@dataclass
class EncoderState:
    """Encoder output and what the decoder needs. Shapes (B, N, D) / (B, N)."""

    tokens: Tensor  # content embeddings of the slots (zero at empty slots)
    emb: Tensor  # position + modality embeddings (zero at empty slots)
    output: Tensor  # after the encoder blocks and encoder_norm
    context: Tensor  # decoder_proj_context(output) + emb: keys/values of cross-attention
    selection: TokenSelection

    @property
    def context_mask(self) -> Tensor:
        """(B, N) bool: slots the decoder may attend to."""
        return self.selection.is_valid


@dataclass
class DecoderState:
    """Decoder input and output. Shapes (B, M, D) / (B, M)."""

    emb: Tensor  # position + modality embeddings (zero at empty slots)
    input: Tensor  # mask token / teacher-forced token embedding + emb
    hidden: Tensor  # after the decoder blocks and decoder_norm
    target_ids: Tensor  # id each slot predicts (0 at empty slots)
    selection: TokenSelection


@dataclass
class ModalityPredictions:
    """Logits of one modality's target rows, ordered by batch index then position."""

    logits: Tensor  # (n, vocab)
    target_ids: Tensor  # (n,)
    batch_index: Tensor  # (n,)
    position: Tensor  # (n,)


@dataclass
class FourMOutput:
    """``loss``: mean over modalities of each modality's mean cross-entropy. ``mod_losses``: per
    modality with targets in the batch. ``predictions``: per-modality logits when ``return_logits``
    (also of modalities without targets: (0, vocab))."""

    loss: Tensor
    mod_losses: dict[str, Tensor]
    predictions: dict[str, ModalityPredictions] | None = None

    @property
    def logits(self) -> dict[str, Tensor] | None:
        return None if self.predictions is None else {k: v.logits for k, v in self.predictions.items()}


@dataclass
class EncoderFeatures:
    """Encoder features (after encoder_norm) of the given inputs.

    ``tokens`` (B, N, D) with ``is_valid`` (B, N); ``pooled`` (B, D): mean over valid tokens;
    ``per_modality``: name -> (B, D) mean over that modality's tokens (zero when it has none).
    """

    tokens: Tensor
    is_valid: Tensor
    pooled: Tensor
    per_modality: dict[str, Tensor]
    selection: TokenSelection


def select_tokens(names: list[str], valids: list[Tensor], num_tokens: int, batch_size: int,
                  device: torch.device) -> TokenSelection:
    """Pack the valid tokens of several modalities, in order, into ``num_tokens`` slots.

    Args:
        names: modality names, in concatenation order.
        valids: per modality, (B, L_m) bool: which tokens to place.
        num_tokens: slots per sample; tokens beyond it are dropped (in concatenation order).
        batch_size, device: used when ``names`` is empty.

    Returns:
        The TokenSelection (one host sync: the per-modality row counts).
    """
    if num_tokens < 1:
        raise ValueError(f"number of tokens must be >= 1, got {num_tokens}")
    lengths = [v.shape[1] for v in valids]
    valid = torch.cat(valids, 1) if valids else torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
    mod_of = torch.repeat_interleave(torch.arange(len(names), device=device), torch.tensor(lengths, device=device))
    pos_of = torch.cat([torch.arange(n, device=device) for n in lengths]) if lengths else mod_of
    total = valid.shape[1]
    if total < num_tokens:  # pad with empty columns so that there are always N slots
        valid = F.pad(valid, (0, num_tokens - total), value=False)
        mod_of = F.pad(mod_of, (0, num_tokens - total), value=-1)
        pos_of = F.pad(pos_of, (0, num_tokens - total), value=0)
    # valid tokens first, in order (stable), then keep N
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :num_tokens]  # (B, N)
    is_valid = valid.gather(1, order)
    modality = torch.where(is_valid, mod_of[order], -1)
    position = torch.where(is_valid, pos_of[order], 0)
    key = torch.where(modality < 0, len(names), modality).flatten()  # empty slots last
    perm = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=len(names) + 1).tolist()
    groups = tuple(perm.split(counts))
    return TokenSelection(tuple(names), modality, position, is_valid, order, groups)


def _scatter_rows(chunks: list[Tensor], sel: TokenSelection, dim: int, like: Tensor) -> Tensor:
    """Put per-group rows (in ``sel.groups`` order; empty slots get zeros) back into (B, N, D)."""
    B, N = sel.modality.shape
    chunks = [c.to(like.dtype) for c in chunks]
    chunks.append(like.new_zeros(len(sel.groups[-1]), dim))
    perm = torch.cat(sel.groups)
    out = like.new_zeros(B * N, dim).index_copy(0, perm, torch.cat(chunks))  # (B*N, D)
    return out.view(B, N, dim)


def _key_mask(is_valid: Tensor) -> Tensor:
    """(B, N) -> (B, 1, 1, N) "may attend"; a sample with no valid key attends to all (zeroed)
    slots, as the reference does, instead of producing NaN."""
    return (is_valid | ~is_valid.any(1, keepdim=True))[:, None, None, :]


class FourM(nn.Module, PushToHubMixin):
    """The 4M encoder-decoder.

    Args:
        config: the architecture (see :class:`FourMConfig`).
        seed: seed of the MAE-style initialisation (own generator; no global RNG).
    """

    def __init__(self, config: FourMConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        self.specs = {m.name: m for m in c.modalities}
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.encoder_embeddings = nn.ModuleDict(
            {m.name: build_encoder_embedding(m, c.dim, c.seq_pos_len) for m in c.modalities if m.encoder})
        self.decoder_embeddings = nn.ModuleDict(
            {m.name: build_decoder_embedding(m, c.dim, c.seq_pos_len) for m in c.modalities if m.decoder})
        if c.share_modality_embeddings:
            for name in self.encoder_embeddings.keys() & self.decoder_embeddings.keys():
                self.decoder_embeddings[name].mod_emb = self.encoder_embeddings[name].mod_emb
        block_args = dict(dim=c.dim, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, gated_mlp=c.gated_mlp,
                          act_layer=c.act_layer, qkv_bias=c.qkv_bias, proj_bias=c.proj_bias, mlp_bias=c.mlp_bias,
                          norm_bias=c.norm_bias, norm_eps=c.norm_eps, qk_norm=c.qk_norm)
        self.encoder = nn.ModuleList([Block(**block_args) for _ in range(c.encoder_depth)])
        self.encoder_norm = LayerNorm(c.dim, c.norm_eps, c.norm_bias)
        self.decoder_proj_context = nn.Linear(c.dim, c.dim)  # with bias, as in the reference
        self.decoder = nn.ModuleList([DecoderBlock(**block_args) for _ in range(c.decoder_depth)])
        self.decoder_norm = LayerNorm(c.dim, c.norm_eps, c.norm_bias)
        if not self.mask_token.is_meta:
            self.init_weights(seed)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """MAE-style init: xavier-uniform Linears (q/k/v of packed projections as separate
        matrices), zero biases, unit norms, N(0, init_std) embeddings / mask token / modality vectors."""
        g = torch.Generator(device=self.mask_token.device).manual_seed(seed)
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                parts = 3 if name.endswith("qkv") else 2 if name.endswith(".kv") else 1
                bound = math.sqrt(6.0 / (fan_out // parts + fan_in))
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std, generator=g)
            elif isinstance(m, ImageTokenDecoderEmbedding):
                # draws of the token table image targets had until format 2 (never used): the same
                # seed keeps giving the same weights, so runs of earlier configs reproduce exactly
                torch.empty(m.vocab_size, self.config.dim, device=g.device).normal_(0.0, std, generator=g)
        self.mask_token.normal_(0.0, std, generator=g)
        for emb in self.encoder_embeddings.values():
            emb.mod_emb.normal_(0.0, std, generator=g)
        for name, emb in self.decoder_embeddings.items():
            if not (self.config.share_modality_embeddings and name in self.encoder_embeddings):
                emb.mod_emb.normal_(0.0, std, generator=g)

    def set_attention_backend(self, backend: str, device: str | torch.device | None = None) -> str:
        """Choose the attention kernel: ``auto`` (xformers when it runs on ``device``, else SDPA),
        ``sdpa`` or ``xformers`` (see :mod:`fourm.models.attention_kernels`). Returns the one chosen.

        Args:
            backend: the setting (``model.attention`` of a run, ``--attention`` of the CLI).
            device: where the model will run (default: where its weights are).
        """
        chosen = resolve_attention_backend(backend, self.mask_token.device if device is None else device)
        for m in self.modules():
            if isinstance(m, (Attention, CrossAttention)):
                m.backend = chosen
        return chosen

    def _check_batch(self, batch: Batch) -> int:
        if not batch:
            raise ValueError("empty batch: give at least one modality")
        for name, entry in batch.items():
            if name not in self.specs:
                raise KeyError(f"unknown modality {name!r}; this model knows: {', '.join(self.specs)}")
            if "tokens" not in entry:
                raise KeyError(f"batch[{name!r}] has no 'tokens'; keys: {sorted(entry)}")
        return next(iter(batch.values()))["tokens"].shape[0]

    # ------------------------------------------------------------------ encoder
    def select_encoder_tokens(self, batch: Batch, num_encoder_tokens: int) -> TokenSelection:
        """Pack every input token (``is_input``) into ``num_encoder_tokens`` slots, batch order."""
        B = self._check_batch(batch)
        names = [n for n, e in batch.items() if n in self.encoder_embeddings and "is_input" in e]
        valids = [batch[n]["is_input"].reshape(B, -1) for n in names]
        device = next(iter(batch.values()))["tokens"].device
        return select_tokens(names, valids, num_encoder_tokens, B, device)

    def embed_encoder(self, batch: Batch, sel: TokenSelection) -> tuple[Tensor, Tensor]:
        """Content and position+modality embeddings of the selected slots, each (B, N, D)."""
        xs, es = [], []
        for name in sel.names:
            _, b, p = sel.rows(name)
            x, e = self.encoder_embeddings[name].embed(batch[name], b, p)  # (n, D) each
            xs.append(x)
            es.append(e)
        like = self.mask_token
        return _scatter_rows(xs, sel, self.config.dim, like), _scatter_rows(es, sel, self.config.dim, like)

    def run_encoder(self, x: Tensor, is_valid: Tensor) -> Tensor:
        """Encoder blocks + encoder_norm. x (B, N, D), is_valid (B, N) -> (B, N, D)."""
        mask = _key_mask(is_valid)
        for blk in self.encoder:
            x = blk(x, mask)
        return self.encoder_norm(x)

    def forward_encoder(self, batch: Batch, num_encoder_tokens: int) -> EncoderState:
        """Select, embed and encode the inputs; also computes the decoder context."""
        sel = self.select_encoder_tokens(batch, num_encoder_tokens)
        tokens, emb = self.embed_encoder(batch, sel)
        out = self.run_encoder(tokens + emb, sel.is_valid)
        context = self.decoder_proj_context(out) + emb  # embeddings are added again
        return EncoderState(tokens, emb, out, context, sel)

    def encode(self, batch: Batch, num_encoder_tokens: int) -> EncoderState:
        """Alias of :meth:`forward_encoder` for generation: ``state.context`` and
        ``state.context_mask`` can be reused across decoding steps."""
        return self.forward_encoder(batch, num_encoder_tokens)

    # ------------------------------------------------------------------ decoder
    def select_decoder_tokens(self, batch: Batch, num_decoder_tokens: int) -> TokenSelection:
        """Pack every decoder slot (image targets; sequence target pairs) into M slots."""
        B = self._check_batch(batch)
        names = [n for n, e in batch.items() if n in self.decoder_embeddings and "is_target" in e]
        valids = [self.decoder_embeddings[n].slots(batch[n]) for n in names]
        device = next(iter(batch.values()))["tokens"].device
        return select_tokens(names, valids, num_decoder_tokens, B, device)

    def embed_decoder(self, batch: Batch, sel: TokenSelection) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder input content (mask token or teacher-forced token), position+modality
        embeddings (each (B, M, D)) and target ids (B, M)."""
        xs, es, ts = [], [], []
        for name in sel.names:
            _, b, p = sel.rows(name)
            module = self.decoder_embeddings[name]
            x, e = module.embed(batch[name], b, p)
            xs.append(self.mask_token[0].expand_as(e) if x is None else x)
            es.append(e)
            ts.append(module.target_ids(batch[name], b, p).long())
        D, like = self.config.dim, self.mask_token
        x, emb = _scatter_rows(xs, sel, D, like), _scatter_rows(es, sel, D, like)
        B, M = sel.modality.shape
        ts.append(sel.modality.new_full((len(sel.groups[-1]),), PAD_ID))
        targets = sel.modality.new_zeros(B * M).index_copy(0, torch.cat(sel.groups), torch.cat(ts))
        return x, emb, targets.view(B, M)

    def decoder_self_mask(self, sel: TokenSelection) -> Tensor:
        """(B, 1, M, M) "may attend": same modality only; causal (by position) within sequences.
        Empty slots attend to each other only, so that no row is fully masked."""
        mod, pos = sel.modality, sel.position
        is_seq = torch.tensor([self.specs[n].kind == "sequence" for n in sel.names] + [False], device=mod.device)
        seq_row = is_seq[torch.where(mod < 0, len(sel.names), mod)]  # (B, M)
        same = mod[:, :, None] == mod[:, None, :]  # (B, M, M) query x key
        causal = pos[:, None, :] <= pos[:, :, None]  # key position <= query position
        return (same & (~seq_row[:, :, None] | causal))[:, None]

    def context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per decoder block, the cross-attention keys and values of ``context`` (B, N, D), each
        (B, H, N, hd). Generation computes them once per encoding and passes them to
        :meth:`run_decoder` at every decoding step."""
        return [blk.context_kv(context) for blk in self.decoder]

    def run_decoder(self, y: Tensor, context: Tensor | None, self_mask: Tensor, context_valid: Tensor,
                    context_kv: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Decoder blocks + decoder_norm. y (B, M, D), context (B, N, D) (or its
        :meth:`context_kv`), self_mask (B, 1, M, M), context_valid (B, N) -> (B, M, D)."""
        xa_mask = _key_mask(context_valid)
        for i, blk in enumerate(self.decoder):
            y = blk(y, context, self_mask, xa_mask, None if context_kv is None else context_kv[i])
        return self.decoder_norm(y)

    def forward_decoder(self, batch: Batch, enc: EncoderState, num_decoder_tokens: int) -> DecoderState:
        """Select and embed the targets and run the decoder against ``enc``'s context."""
        sel = self.select_decoder_tokens(batch, num_decoder_tokens)
        x, emb, targets = self.embed_decoder(batch, sel)
        y_in = x + emb
        hidden = self.run_decoder(y_in, enc.context, self.decoder_self_mask(sel), enc.context_mask)
        return DecoderState(emb, y_in, hidden, targets, sel)

    # ------------------------------------------------------------------ heads and loss
    def decode_logits(self, dec: DecoderState, modalities: list[str] | None = None) -> dict[str, ModalityPredictions]:
        """Logits of the target rows of each modality (only those rows go through its head)."""
        hidden = dec.hidden.flatten(0, 1)  # (B*M, D)
        out = {}
        for name in dec.selection.names if modalities is None else modalities:
            flat, b, p = dec.selection.rows(name)
            logits = self.decoder_embeddings[name].forward_logits(hidden.index_select(0, flat))  # (n, V)
            out[name] = ModalityPredictions(logits, dec.target_ids.flatten()[flat], b, p)
        return out

    def forward_loss(self, dec: DecoderState, return_logits: bool = False) -> FourMOutput:
        """Mean over modalities of each modality's mean cross-entropy (modalities without target
        slots in the batch are left out; ``fourm.compat.ml4m`` reproduces the reference, which
        counts them as 0).

        Args:
            dec: the decoder state.
            return_logits: keep the per-modality logits in the output (else the fused head and
                cross-entropy of :mod:`fourm.models.cpu_memory` never materialise them).
        """
        preds = self.decode_logits(dec) if return_logits else None
        hidden, targets = dec.hidden.flatten(0, 1), dec.target_ids.flatten()  # (B*M, D), (B*M,)
        mod_losses = {}
        for name in dec.selection.names:
            flat = dec.selection.rows(name)[0]  # (n,) slots of this modality
            if len(flat) == 0:
                continue
            if preds is not None:  # logits wanted: the head, then the cross-entropy
                mod_losses[name] = F.cross_entropy(preds[name].logits.float(), preds[name].target_ids)
            else:
                module = self.decoder_embeddings[name]
                mod_losses[name] = head_cross_entropy(module.to_logits, hidden.index_select(0, flat), targets[flat],
                                                      module.memory)
        if mod_losses:
            loss = torch.stack(list(mod_losses.values())).mean()
        else:  # nothing to predict: a zero that still has a graph
            loss = dec.hidden.sum() * 0.0
        return FourMOutput(loss, mod_losses, preds)

    def forward(self, batch: Batch, num_encoder_tokens: int, num_decoder_tokens: int, *,
                return_logits: bool = False) -> FourMOutput:
        """Encoder, decoder and loss. See the module docstring for the batch format.

        Args:
            batch: modality -> {"tokens", "is_input", "is_target"}; missing modalities are absent.
            num_encoder_tokens: encoder slots N per sample.
            num_decoder_tokens: decoder slots M per sample.
            return_logits: see :meth:`forward_loss`.
        """
        enc = self.forward_encoder(batch, num_encoder_tokens)
        dec = self.forward_decoder(batch, enc, num_decoder_tokens)
        return self.forward_loss(dec, return_logits)

    def set_cpu_memory_reuse(self, enabled: bool) -> None:
        """Reuse the memory of vocabulary-sized gradients and logits on CPU from step to step, or
        not (:mod:`fourm.models.cpu_memory`; on by default; results are the same either way)."""
        for emb in [*self.encoder_embeddings.values(), *self.decoder_embeddings.values()]:
            emb.memory.enabled = bool(enabled)

    # ------------------------------------------------------------------ features
    def extract_features(self, inputs: Mapping[str, Tensor | Mapping[str, Tensor]],
                         num_encoder_tokens: int | None = None) -> EncoderFeatures:
        """Encoder-only features of some input modalities (no decoder is run).

        Args:
            inputs: modality -> a tensor (every token is an input; for sequences, every non-[PAD]
                token) or a batch entry with ``tokens`` and ``is_input``. Any subset of the
                model's input modalities.
            num_encoder_tokens: encoder slots; default: all tokens of the given modalities.

        Returns:
            EncoderFeatures with per-token features (after encoder_norm), a masked mean over all
            tokens and a masked mean per modality.
        """
        batch: dict[str, dict[str, Tensor]] = {}
        for name, value in inputs.items():
            if name not in self.encoder_embeddings:
                raise KeyError(f"{name!r} is not an input modality of this model; inputs: {', '.join(self.encoder_embeddings)}")
            entry = dict(value) if isinstance(value, Mapping) else {"tokens": value}
            spec = self.specs[name]
            if "is_input" not in entry:
                t = entry["tokens"]
                if spec.kind == "sequence":
                    entry["is_input"] = t != PAD_ID
                else:
                    entry["is_input"] = torch.ones(t.shape[0], spec.num_tokens, dtype=torch.bool, device=t.device)
            batch[name] = entry
        if num_encoder_tokens is None:
            num_encoder_tokens = sum(e["is_input"].reshape(e["is_input"].shape[0], -1).shape[1] for e in batch.values())
        enc = self.forward_encoder(batch, num_encoder_tokens)
        sel, feats = enc.selection, enc.output
        w = sel.is_valid.to(feats.dtype)[..., None]  # (B, N, 1)
        pooled = (feats * w).sum(1) / w.sum(1).clamp_min(1.0)
        per_mod = {}
        for i, name in enumerate(sel.names):
            wm = ((sel.modality == i).to(feats.dtype))[..., None]
            per_mod[name] = (feats * wm).sum(1) / wm.sum(1).clamp_min(1.0)
        return EncoderFeatures(feats, sel.is_valid, pooled, per_mod, sel)

    # ------------------------------------------------------------------ checkpoints
    def model_card(self) -> CardInfo:
        """The default model card of :meth:`save_pretrained` and ``push_to_hub``."""
        c, params = self.config, sum(p.numel() for p in self.parameters())
        summary = (f"A FourM any-to-any masked model (4M, Mizrahi et al. 2023): width {c.dim}, {c.encoder_depth} encoder "
                   f"and {c.decoder_depth} decoder blocks, {c.num_heads} heads, {params / 1e6:.1f} M parameters; "
                   f"modalities {', '.join(f'`{m.name}` ({m.kind})' for m in c.modalities)}. Load it with "
                   "`fourm.models.FourM.from_pretrained(\"<this repo or folder>\")`.")
        return CardInfo("FourM", summary, "any-to-any", ("4m", "any-to-any", "multimodal", "masked-modeling"))

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None, *,
                        card: CardInfo | None = None) -> Path:
        """Write ``config.json`` (with format name and version) and ``model.safetensors`` into
        directory ``path``, each atomically (:mod:`fourm.models.files`), and a model card ``README.md``.

        Args:
            path: the directory.
            dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` halves the
                file); :meth:`from_pretrained` loads them back as float32. None keeps them as they are.
            card: the model card; default :meth:`model_card`, written only when the folder has no
                ``README.md`` yet (a card given here replaces it).
        """
        path = write_files(path, self.config, self.state_dict(), dtype)
        write_model_card(path, card or self.model_card(), overwrite=card is not None)
        return path

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, device: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        token: str | bool | None = None, local_files_only: bool = False,
                        force_download: bool = False) -> "FourM":
        """Load a folder written by :meth:`save_pretrained`, or a Hub repo id holding one; keys must
        match exactly.

        Args:
            path_or_repo_id: a folder, or a Hub repo id (``owner/name``; see :mod:`fourm.hub`).
            device: where the weights are loaded.
            revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
                :func:`fourm.hub.resolve_pretrained` (branch / tag / commit, cache folder ...).
        """
        path = resolve_pretrained(path_or_repo_id, what="a folder written by FourM.save_pretrained", revision=revision,
                                  cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                  force_download=force_download, allow_patterns=["*.json", "*.safetensors", "*.md"])
        config, state = read_files(path, device)
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict_checked(state, assign=True)
        return model

    def load_state_dict_checked(self, state: Mapping[str, Tensor], assign: bool = False) -> None:
        """Strict load that also checks that aliases of shared tensors hold equal values."""
        own = self.state_dict(keep_vars=True)
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing {missing[:10]} ({len(missing)}), "
                           f"unexpected {unexpected[:10]} ({len(unexpected)})")
        seen: dict[int, str] = {}
        for key, t in own.items():
            first = seen.setdefault(id(t), key)
            if first != key and not torch.equal(state[first], state[key]):
                raise ValueError(f"{key} and {first} are one shared tensor in this model but differ in the checkpoint")
        self.load_state_dict(dict(state), strict=True, assign=assign)
        if assign and self.config.share_modality_embeddings:  # assign breaks sharing: restore it
            for name in self.encoder_embeddings.keys() & self.decoder_embeddings.keys():
                self.decoder_embeddings[name].mod_emb = self.encoder_embeddings[name].mod_emb

