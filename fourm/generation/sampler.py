"""The sampler: any-to-any generation with a FourM model, one target modality after another.

    sampler = Sampler(model, load_tokenizers("tokenizers/shapes64"))
    out = sampler.generate(inputs={"rgb": image},
                           targets=[Target("tok_depth", steps=4), Target("caption", temperature=0.7)], seed=0)
    out.sequences("caption"), out.tokens("tok_depth"), out.decode()

Each target is generated against everything known so far (the inputs and the earlier targets), and
its result becomes an input of the next. The loops:

* image modalities (MaskGIT / ROAR): per step, ONE encoder pass over every known token (the
  target's own decoded tokens included) and one decoder pass over the positions queried
  (MaskGIT: all remaining; ROAR: a random subset of the step's size); MaskGIT keeps the step's
  share of the most confident samples, ROAR keeps all it sampled.
* sequences (autoregressive): ONE encoder pass per target, then one token per step through
  :class:`~fourm.generation.kv_cache.IncrementalDecoder` (self-attention keys/values cached, the
  context's cross-attention keys/values computed once). Samples that produce [EOS] or their
  closing sentinel leave the batch. The generated spans are merged into the prompt
  (:func:`fourm.masking.merge_spans`): a prompt with sentinels is in-filled; otherwise the
  sequence is generated whole.
* guidance: all branches of a step go through the model as ONE batch (cond / uncond stacked on
  the batch axis, :mod:`fourm.generation.guidance`); ``batch_guidance=False`` runs them one after
  the other instead (same results; for checking and measuring).

Randomness comes only from the ``seed`` (or a ``torch.Generator``) given to :meth:`generate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from fourm.generation.decode import decode_state
from fourm.generation.guidance import Condition, GuidancePlan, branch, plan_guidance, stack_branches
from fourm.generation.inputs import (
    State,
    batch_size as state_batch_size,
    build_state,
    finish_sequence,
    raw_aliases,
    renumber_sentinels,
    sequence_entry,
    sequence_ids,
)
from fourm.generation.kv_cache import IncrementalDecoder
from fourm.generation.sampling import sample_logits
from fourm.generation.schedules import TemperatureSchedule, remaining_fractions, token_counts
from fourm.generation.target import Target, as_targets
from fourm.masking.spans import EOS_ID, PAD_ID, merge_spans, sentinel_id
from fourm.modalities import ModalitySpec
from fourm.models import FourM


@dataclass
class GenerationResult:
    """The state after generation, and what was generated.

    Attributes:
        state: every known modality as an input entry (``tokens``, ``is_input``); feed it (or
            this result) back to :meth:`Sampler.generate` to continue.
        specs: the model's modalities.
        generated: the target modalities, in order.
        spans: per generated sequence modality, the raw decoder output of each sample
            (``[S_1] span ... [EOS] or closing sentinel``), before it was merged into the prompt.
        logits: with ``keep_logits``: per target, the guided logits of every step (images: a list
            of (n_step, V) tensors, rows ordered by sample then position; sequences: one
            (B, max_tokens, V) tensor, zero after a sample stopped).
        num_rows: the batch size (needed only while the state is empty).
    """

    state: State
    specs: dict[str, ModalitySpec]
    generated: tuple[str, ...] = ()
    spans: dict[str, list[list[int]]] = field(default_factory=dict)
    logits: dict[str, Any] = field(default_factory=dict)
    num_rows: int | None = None

    @property
    def batch_size(self) -> int:
        """Samples in the result (also when the state is empty: unconditional generation)."""
        return state_batch_size(self.state, default=self.num_rows or 1)

    def tokens(self, modality: str) -> Tensor:
        """Image tokens (B, rows * cols), or sequence ids (B, num_tokens) padded with [PAD]."""
        if modality not in self.state:
            raise KeyError(f"{modality!r} is not in the result; it has: {', '.join(self.state)}")
        return self.state[modality]["tokens"]

    def sequences(self, modality: str, strip_eos: bool = True) -> list[list[int]]:
        """The ids of a sequence modality per sample (without [EOS] unless ``strip_eos=False``)."""
        if modality not in self.state or self.specs[modality].kind != "sequence":
            raise KeyError(f"{modality!r} is not a sequence in the result; it has: {', '.join(self.state)}")
        out = sequence_ids(self.state[modality])
        return [ids[: ids.index(EOS_ID)] if strip_eos and EOS_ID in ids else ids for ids in out]

    def decode(self, tokenizers: Mapping[str, Any], modalities: Sequence[str] | None = None,
               seed: int = 0) -> dict[str, list[Any]]:
        """Images, text and boxes of ``modalities`` (default: all); see :func:`fourm.generation.decode.decode_state`
        (``seed``: the noise of diffusion-decoder tokenizers)."""
        return decode_state(self.state, self.specs, tokenizers, modalities, seed)


def make_generator(seed: int | torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` from a seed, or ``seed`` itself when it is one."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


def _input_counts(batch: Mapping[str, Mapping[str, Tensor]]) -> int:
    """Encoder slots that hold every input of every row (>= 1)."""
    counts = [e["is_input"].reshape(e["is_input"].shape[0], -1).sum(1) for e in batch.values() if "is_input" in e]
    return max(1, int(torch.stack(counts).sum(0).max())) if counts else 1


def _rank(scores: Tensor, descending: bool) -> Tensor:
    """Rank of each entry within its row (0 = first), ties broken by position. (B, L) -> (B, L)."""
    order = torch.sort(scores, dim=1, descending=descending, stable=True).indices
    return torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))


class Sampler:
    """Generates target modalities from any inputs with a FourM model.

    Args:
        model: the model (any device; generation runs under ``torch.inference_mode``).
        tokenizers: ``{"rgb": ImageTokenizer, ..., "text": TextTokenizer}`` for raw inputs
            (images, text, boxes) and :meth:`GenerationResult.decode`; token inputs need none.
        use_cache: key/value cache for sequences (False: rerun the decoder over the prefix per token).
        batch_guidance: one stacked forward for all guidance branches (False: one per branch).
        progress: show progress bars.
    """

    def __init__(self, model: FourM, tokenizers: Mapping[str, Any] | None = None, *, use_cache: bool = True,
                 batch_guidance: bool = True, progress: bool = False) -> None:
        self.model = model
        self.tokenizers = dict(tokenizers) if tokenizers else {}
        self.use_cache = use_cache
        self.batch_guidance = batch_guidance
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.model.mask_token.device

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        return self.model.specs

    def prepare(self, inputs: Mapping[str, Any] | GenerationResult | None, num_samples: int = 1) -> GenerationResult:
        """An empty result holding the state of ``inputs`` (see :mod:`fourm.generation.inputs`);
        a GenerationResult is taken as it is (its batch is kept: ``num_samples`` must be 1)."""
        if isinstance(inputs, GenerationResult):
            if num_samples != 1:
                raise ValueError("num_samples applies to fresh inputs; a GenerationResult keeps its batch")
            return GenerationResult(dict(inputs.state), dict(self.specs), num_rows=inputs.batch_size)
        state = build_state(self.specs, inputs, self.tokenizers, self.device, num_samples)
        return GenerationResult(state, dict(self.specs), num_rows=state_batch_size(state, default=num_samples))

    def resolve(self, target: Target | str) -> Target:
        """``target`` with its defaults filled in for this model's modality. Raw names stand for
        their token modality (``"rgb"`` -> ``"tok_rgb"``), also in guidance conditions."""
        (target,) = as_targets(target)
        aliases = raw_aliases(self.specs)

        def canonical(name: str) -> str:
            return name if name in self.specs else aliases.get(name, name)

        if target.modality not in self.model.decoder_embeddings and target.modality in aliases:
            target = target.replace(modality=aliases[target.modality])
        if target.modality not in self.model.decoder_embeddings:
            raise ValueError(f"cannot generate {target.modality!r}; this model's targets: "
                             f"{', '.join(self.model.decoder_embeddings)}")
        changes = {}
        if target.cfg_conditions is not None:
            changes["cfg_conditions"] = tuple(canonical(n) for n in target.cfg_conditions)
        if target.guidance:
            changes["guidance"] = tuple(Condition(tuple(canonical(n) for n in c.modalities), c.weight)
                                        for c in target.guidance)
        target = target.replace(**changes) if changes else target
        named = (target.cfg_conditions or ()) + tuple(n for cond in target.guidance for n in cond.modalities)
        for cond_name in named:
            if cond_name not in self.model.encoder_embeddings:
                raise ValueError(f"Target({target.modality!r}): guidance condition {cond_name!r} is not an input modality "
                                 f"of this model; inputs: {', '.join(self.model.encoder_embeddings)}")
        return target.resolve(self.specs[target.modality])

    @torch.inference_mode()
    def generate(self, inputs: Mapping[str, Any] | GenerationResult | None = None,
                 targets: Target | str | Sequence[Target | str] = (), seed: int | torch.Generator = 0,
                 num_samples: int = 1, keep_logits: bool = False) -> GenerationResult:
        """Generate ``targets`` in order, each conditioned on the inputs and the earlier targets.

        Args:
            inputs: modality -> raw data or tokens (see :mod:`fourm.generation.inputs`), or a
                previous GenerationResult; None for unconditional generation.
            targets: Target objects (or modality names, with default settings).
            seed: an int, or a torch.Generator (on the model's device) to continue a stream.
            num_samples: samples per input (inputs are repeated; each sample draws its own tokens).
            keep_logits: store the guided logits of every step in the result (for inspection).

        Returns:
            A GenerationResult.
        """
        resolved = [self.resolve(t) for t in as_targets(targets)]
        g = make_generator(seed, self.device)
        result = self.prepare(inputs, num_samples)
        state, B = result.state, result.batch_size
        for t in resolved:
            if self.specs[t.modality].kind == "sequence":
                state, spans, logits = self._generate_sequence(state, B, t, g, keep_logits)
                result.spans[t.modality] = spans
            else:
                state, logits = self._generate_image(state, B, t, g, keep_logits)
            if keep_logits:
                result.logits[t.modality] = logits
            result.generated += (t.modality,)
        result.state = state
        return result

    # ------------------------------------------------------------------------ image modalities
    def _image_logits(self, cond: State, stacked: State | None, plan: GuidancePlan, name: str,
                      entry: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Guided logits (n, V) of the positions ``entry["is_target"]`` marks, with their sample
        and position (n,) each, rows ordered by sample then position."""
        m, G = self.model, plan.num_branches
        if stacked is not None:  # one forward over G * B rows
            stacked_entry = {k: v.repeat(G, 1) for k, v in entry.items()}
            batch = {**stacked, name: stacked_entry}
            enc = m.forward_encoder(batch, _input_counts(batch))
            dec = m.forward_decoder({name: stacked_entry}, enc, int(entry["is_target"].sum(1).max()))
            pred = m.decode_logits(dec, [name])[name]
            n = pred.logits.shape[0] // G
            return plan.combine(pred.logits.view(G, n, -1)), pred.batch_index[:n], pred.position[:n]
        outs = []
        for drop in plan.drops:  # one forward per branch
            batch = {**branch(cond, drop), name: entry}
            enc = m.forward_encoder(batch, _input_counts(batch))
            dec = m.forward_decoder({name: entry}, enc, int(entry["is_target"].sum(1).max()))
            outs.append(m.decode_logits(dec, [name])[name])
        return plan.combine(torch.stack([o.logits for o in outs])), outs[0].batch_index, outs[0].position

    def _generate_image(self, state: State, B: int, target: Target, g: torch.Generator,
                        keep_logits: bool) -> tuple[State, list[Tensor]]:
        name, spec = target.modality, self.specs[target.modality]
        L, dev = spec.num_tokens, self.device
        if name in state:  # keep the known tokens of a partly known modality; regenerate a complete one
            known = state[name]["is_input"].clone()
            known[known.all(1)] = False
            tokens = state[name]["tokens"].clone()
        else:
            known = torch.zeros(B, L, dtype=torch.bool, device=dev)
            tokens = torch.zeros(B, L, dtype=torch.long, device=dev)
        cond = {k: v for k, v in state.items() if k != name}
        plan = plan_guidance(target.cfg_scale, target.cfg_conditions, target.guidance, cond)
        stacked = stack_branches(cond, plan.drops) if self.batch_guidance else None
        counts = token_counts(target.schedule, (~known).sum(1).cpu(), target.steps).to(dev)  # (B, S)
        remaining = remaining_fractions(counts.sum(0))
        temp_schedule = TemperatureSchedule.parse(target.temperature_schedule)
        kept_logits = []
        for s in tqdm(range(target.steps), desc=f"{name} ({target.scheme})", disable=not self.progress, leave=False):
            k = counts[:, s]  # (B,) tokens to commit now
            if not bool(k.any()):
                continue
            todo = ~known
            if target.scheme == "roar":  # a random subset of k positions among those left
                scores = torch.rand(B, L, generator=g, device=dev).masked_fill(known, 2.0)
                query = (_rank(scores, descending=False) < k[:, None]) & todo
            else:
                query = todo
            entry = {"tokens": tokens, "is_input": known, "is_target": query}
            logits, b, p = self._image_logits(cond, stacked, plan, name, entry)
            temp = temp_schedule(target.temperature, s, target.steps, remaining[s])
            ids, probs = sample_logits(logits, temp, target.top_k, target.top_p, g)
            if keep_logits:
                kept_logits.append(logits)
            if target.scheme == "maskgit":  # keep the k most confident of the sampled positions
                conf = torch.full((B, L), -1.0, device=dev)
                conf[b, p] = probs.to(conf.dtype)
                commit = (_rank(conf, descending=True) < k[:, None]) & query
            else:
                commit = query
            new = torch.zeros_like(tokens)
            new[b, p] = ids
            tokens = torch.where(commit, new, tokens)
            known = known | commit
        out = dict(state)
        out[name] = {"tokens": tokens, "is_input": torch.ones_like(known)}
        return out, kept_logits

    # ------------------------------------------------------------------------ sequences
    def _generate_sequence(self, state: State, B: int, target: Target, g: torch.Generator,
                           keep_logits: bool) -> tuple[State, list[list[int]], Tensor | None]:
        name, spec, m, dev = target.modality, self.specs[target.modality], self.model, self.device
        prompts = sequence_ids(state[name]) if name in state else [[] for _ in range(B)]
        enc_prompts, merge_prompts, stops = [], [], []
        for ids in prompts:
            ids, k = renumber_sentinels(ids)
            if k == 0:  # nothing to fill in: generate the whole sequence, the encoder sees none of it
                enc_prompts.append([])
                merge_prompts.append([sentinel_id(1)])
                k = 1
            else:
                enc_prompts.append(ids)
                merge_prompts.append(ids)
            stops.append(sentinel_id(k + 1))
        cond = {k: v for k, v in state.items() if k != name}
        plan = plan_guidance(target.cfg_scale, target.cfg_conditions, target.guidance, cond)
        cond[name] = sequence_entry(enc_prompts, spec, dev)
        max_new = target.max_tokens or spec.num_tokens + 1
        G = plan.num_branches
        if self.batch_guidance:
            batch = stack_branches(cond, plan.drops)
            enc = m.encode(batch, _input_counts(batch))
            decoders = [IncrementalDecoder(m, name, enc.context, enc.context_mask, max_new + 1, self.use_cache)]
        else:
            decoders = []
            for drop in plan.drops:
                batch = branch(cond, drop)
                enc = m.encode(batch, _input_counts(batch))
                decoders.append(IncrementalDecoder(m, name, enc.context, enc.context_mask, max_new + 1, self.use_cache))
        stop = torch.tensor(stops, device=dev)
        out = torch.full((B, max_new), PAD_ID, dtype=torch.long, device=dev)
        kept = torch.zeros(B, max_new, spec.vocab_size, device=dev) if keep_logits else None
        active = torch.arange(B, device=dev)
        nxt = torch.full((B,), sentinel_id(1), dtype=torch.long, device=dev)
        temp_schedule = TemperatureSchedule.parse(target.temperature_schedule)
        for t in tqdm(range(max_new), desc=name, disable=not self.progress, leave=False):
            if len(decoders) == 1:
                logits = decoders[0].step(nxt.repeat(G)).view(G, len(active), -1)  # (G, b, V)
            else:
                logits = torch.stack([d.step(nxt) for d in decoders])
            logits = plan.combine(logits)  # (b, V)
            temp = temp_schedule(target.temperature, t, max_new, 1.0 - t / max_new)
            ids, _ = sample_logits(logits, temp, target.top_k, target.top_p, g)
            out[active, t] = ids
            if kept is not None:
                kept[active, t] = logits
            finished = (ids == EOS_ID) | (ids == stop[active])
            if bool(finished.any()):  # early exit: finished samples leave every buffer
                keep = (~finished).nonzero()[:, 0]
                if keep.numel() == 0:
                    break
                if len(decoders) == 1:
                    rows = (torch.arange(G, device=dev)[:, None] * len(active) + keep[None, :]).flatten()
                    decoders[0].keep(rows)
                else:
                    for d in decoders:
                        d.keep(keep)
                active, ids = active[keep], ids[keep]
            nxt = ids
        spans, merged = [], []
        for b, row in enumerate(out.tolist()):
            end = next((i for i, tok in enumerate(row) if tok in (EOS_ID, stops[b])), len(row) - 1)
            span = [sentinel_id(1)] + row[: end + 1]
            spans.append(span)
            ids = [tok for tok in merge_spans(merge_prompts[b], span) if tok != PAD_ID]
            if EOS_ID in ids:
                ids = ids[: ids.index(EOS_ID) + 1]
            merged.append(finish_sequence(ids, spec.num_tokens))
        new_state = {k: v for k, v in state.items() if k != name}
        new_state[name] = sequence_entry(merged, spec, dev)
        return new_state, spans, kept
