"""Turn tokenised samples into the model's masked batch: random (training) or fixed (transfer).

The batch, per modality (B = batch size)::

    batch[mod] = {
        "tokens":    (B, L) int64  image or sequence ids; (B, C, H, W) float for "pixels",
        "is_input":  (B, L) bool   fed to the encoder (pixels: over the rows * cols patches),
        "is_target": (B, L) bool   predicted by the decoder (all False for pixels),
    }

Images: ``L = rows * cols``; ``is_input`` and ``is_target`` are disjoint. Sequences:
``L = 2 * (max_length + 1)``; the span-masked input sits at ``[0, len(input))`` and the target
at ``[input_budget, input_budget + len(target))`` ([PAD] = 0 elsewhere), as in the reference.

Budget accounting (what the model counts):

* encoder: ``sum(is_input)`` over all modalities, per sample, is at most the sample's input
  total (``<= num_input_tokens``). A sequence uses ``len(input)`` of its input budget (sentinels
  included), which can be less than the budget.
* decoder: every ``is_target`` position is charged one target-budget token, so
  ``sum(is_target) <= num_target_tokens`` per sample. Sequences are teacher-forced: decoder slot
  ``i`` reads ``tokens[i]`` and predicts ``tokens[i + 1]`` and is used only when
  ``is_target[i] & is_target[i + 1]``; a target of ``n`` positions therefore uses ``n - 1``
  decoder slots (its first sentinel is only read, its last token only predicted). The reference
  charges budgets the same way, so the decoder slots the model counts,
  ``sum(is_target)`` over images plus ``n - 1`` per non-empty sequence target, never exceed
  ``num_target_tokens`` either: a model may size its decoder by either count.
  :func:`count_tokens` returns all three numbers.

Sequences: raw ids come without [EOS]; masking appends it and truncates to ``max_length + 1``
tokens (so a sequence longer than ``max_length`` loses its [EOS], as in the reference). A
sequence's input and target budgets are each capped at ``max_length + 1``. Only
:class:`TransferMasking` writes a whole-sequence target, ``[S_1] ids [S_2]``, which can be
``max_length + 3`` positions long (it starts at 0, so it still fits in ``L``).

In a DataLoader, mask per sample in the workers with a per-sample generator and stack::

    masking.mask_sample(sample, generator_for(seed, epoch, index))   # in Dataset.__getitem__
    DataLoader(..., collate_fn=collate_masked)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from fourm.masking.budgets import TokenBudgets, sample_budgets
from fourm.masking.config import MaskingConfig
from fourm.masking.spans import (
    NUM_SENTINELS,
    SENTINEL_OFFSET,
    max_sentinel_index,
    prepare_sequence,
    sample_span_masks,
    span_mask,
    truncate_target,
)
from fourm.modalities import ModalityRegistry, ModalitySpec

Batch = dict[str, dict[str, torch.Tensor]]
KEEP_CODES = {"random": 0, "all": 1, "binary": 2}


def sequence_length(spec: ModalitySpec) -> int:
    """Length L of a sequence modality's batch tensor: room for input and target."""
    return 2 * spec.num_tokens


def as_generator(generator: torch.Generator | int) -> torch.Generator:
    """Accept a ``torch.Generator`` or an int seed (never the global RNG)."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A generator for one sample, from a base seed and keys such as (epoch, sample index).

    Use it inside DataLoader workers: the masks then depend on (seed, epoch, index) only, not on
    the number of workers or on the order samples are loaded in.
    """
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _check_sequence_spec(spec: ModalitySpec) -> None:
    top = SENTINEL_OFFSET + max_sentinel_index(spec.num_tokens)
    if max_sentinel_index(spec.num_tokens) >= NUM_SENTINELS:
        raise ValueError(
            f"modality {spec.name!r}: max_length={spec.max_length} needs sentinels up to "
            f"[S_{max_sentinel_index(spec.num_tokens)}] but only [S_0]..[S_{NUM_SENTINELS - 1}] exist; "
            f"use max_length <= {2 * (NUM_SENTINELS - 2) - 1}"
        )
    if spec.vocab_size <= top:
        raise ValueError(
            f"modality {spec.name!r}: vocab_size={spec.vocab_size} is too small for span masking, which can emit "
            f"sentinel id {top}; use vocab_size > {top}"
        )


def _batch_size(samples: Mapping[str, Any], names: Iterable[str]) -> int:
    sizes = {name: len(samples[name]) for name in names}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"modalities disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def check_image_tokens(spec: ModalitySpec, x: Any) -> torch.Tensor:
    """Validate a batch of token grids of image modality ``spec``, as sequences are validated.

    Args:
        spec: an ``image`` modality.
        x: (B, rows * cols) or (B, rows, cols) token ids of an integer dtype (not bool).

    Returns:
        (B, rows * cols) int64 ids.

    Raises:
        ValueError: another shape, a float, complex or bool dtype, or an id outside
            ``[0, vocab_size)`` (the message names the modality, what was found and what is allowed).
    """
    x = torch.as_tensor(x)
    L = spec.num_tokens
    if x.dim() == 3 and tuple(x.shape[1:]) == tuple(spec.grid):
        x = x.reshape(x.shape[0], L)
    if x.dim() != 2 or x.shape[1] != L or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(
            f"modality {spec.name!r}: expected integer tokens of shape (B, {L}) or (B, {spec.grid[0]}, "
            f"{spec.grid[1]}), got {x.dtype} {tuple(x.shape)}"
        )
    x = x.long()  # (B, L); also makes unsigned dtypes comparable
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= spec.vocab_size:
            raise ValueError(f"modality {spec.name!r}: token ids must lie in [0, {spec.vocab_size - 1}] (vocab_size="
                             f"{spec.vocab_size}), got values in [{lo}, {hi}]")
    return x


def _pixels(spec: ModalitySpec, x: Any) -> torch.Tensor:
    x = torch.as_tensor(x)
    want = (spec.in_channels, *spec.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != want or not x.is_floating_point():
        raise ValueError(
            f"modality {spec.name!r}: expected float pixels of shape (B, {', '.join(map(str, want))}), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    return x


def _check_samples(specs: Mapping[str, ModalitySpec], samples: Mapping[str, Any]) -> None:
    missing = [m for m in specs if m not in samples]
    if missing:
        raise KeyError(f"samples lack modality {missing[0]!r}; masking needs: {', '.join(specs)}")


def _rank_masks(
    B: int, L: int, n_in: torch.Tensor, n_tgt: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random permutation per sample: first ``n_in`` positions are inputs, next ``n_tgt`` targets."""
    perm = torch.rand(B, L, generator=generator).argsort(-1)  # (B, L): positions in random order
    rank = torch.empty_like(perm).scatter_(1, perm, torch.arange(L).expand(B, L))  # (B, L): rank of each position
    is_input = rank < n_in[:, None]
    is_target = (rank >= n_in[:, None]) & (rank < (n_in + n_tgt)[:, None])
    return is_input, is_target


def _layout_sequences(
    spec: ModalitySpec, inputs: list[list[int]], targets: list[list[int]], input_budget: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Write inputs at [0, len) and targets at [input_budget, input_budget + len) of (B, L) rows."""
    B, L = len(inputs), sequence_length(spec)
    rows = [[0] * L for _ in range(B)]
    for b, (inp, tgt) in enumerate(zip(inputs, targets)):
        o = int(input_budget[b])
        # inputs never run into the target region, and everything fits in L
        assert (not tgt or len(inp) <= o) and len(inp) <= L and o + len(tgt) <= L, (spec.name, len(inp), o, len(tgt))
        rows[b][: len(inp)] = inp
        rows[b][o : o + len(tgt)] = tgt
    pos = torch.arange(L)[None, :]
    n_in = torch.tensor([len(x) for x in inputs], dtype=torch.long)[:, None]
    n_tgt = torch.tensor([len(x) for x in targets], dtype=torch.long)[:, None]
    return {
        "tokens": torch.tensor(rows, dtype=torch.long),
        "is_input": pos < n_in,
        "is_target": (pos >= input_budget[:, None]) & (pos < input_budget[:, None] + n_tgt),
    }


class UnifiedMasking:
    """Random multimodal masking for training (the 4M recipe).

    Args:
        config: budgets and the Dirichlet mixture.
        modalities: the registry that ``config.modalities`` are looked up in.

    Call ``masking(samples, generator)`` (= :meth:`mask_batch`) on a batch, or
    :meth:`mask_sample` on one sample inside a DataLoader worker and :func:`collate_masked`
    afterwards.
    """

    def __init__(self, config: MaskingConfig, modalities: ModalityRegistry) -> None:
        self.config = config
        self.specs: dict[str, ModalitySpec] = {}
        for name in config.modalities:
            if name not in modalities:
                raise ValueError(
                    f"MaskingConfig.modalities: unknown modality {name!r}; known: {', '.join(modalities.names())}"
                )
            self.specs[name] = modalities[name]
        for spec in self.specs.values():
            if spec.kind == "sequence":
                _check_sequence_spec(spec)
        comps = config.components
        for i, comp in enumerate(comps):
            for name, a in comp.input_alphas.items():
                if a > 0 and not self.specs[name].encoder:
                    raise ValueError(
                        f"components[{i}].input_alphas[{name!r}] = {a}: {name!r} cannot be an input "
                        "(encoder=False); set it to 0"
                    )
            for name, a in comp.target_alphas.items():
                if a > 0 and not self.specs[name].decoder:
                    raise ValueError(
                        f"components[{i}].target_alphas[{name!r}] = {a}: {name!r} cannot be a target "
                        f"(kind {self.specs[name].kind!r}, decoder=False); set it to 0"
                    )
            for name in comp.whole_inputs:
                if not self.specs[name].encoder:
                    raise ValueError(f"components[{i}].whole_inputs: {name!r} cannot be an input (encoder=False)")
            whole_tokens = sum(self.specs[name].num_tokens for name in comp.whole_inputs)
            high = (comp.input_tokens or config.input_range)[1]
            if whole_tokens + high > config.num_input_tokens:
                raise ValueError(
                    f"components[{i}].whole_inputs {list(comp.whole_inputs)} take {whole_tokens} input tokens and "
                    f"the other inputs up to {high}: {whole_tokens + high} > num_input_tokens="
                    f"{config.num_input_tokens} (the encoder's slots); lower input_tokens or raise num_input_tokens"
                )
            for name in comp.keep:
                if self.specs[name].kind != "sequence":
                    raise ValueError(
                        f"components[{i}].keep[{name!r}]: keep applies to sequences only; "
                        f"{name!r} is {self.specs[name].kind!r}"
                    )
        names = list(self.specs)
        f64 = torch.float64
        # (K, M) tables: one row per mixture component, one column per modality
        self.input_alphas = torch.tensor([[c.input_alphas.get(m, 0.0) for m in names] for c in comps], dtype=f64)
        self.target_alphas = torch.tensor([[c.target_alphas.get(m, 0.0) for m in names] for c in comps], dtype=f64)
        self.weights = torch.tensor([c.weight for c in comps], dtype=f64)  # (K,)
        # a whole sequence input is kept whole ("all"); its input budget is its full length
        self.keep = torch.tensor([[KEEP_CODES["all" if m in c.whole_inputs else c.keep.get(m, "random")]
                                   for m in names] for c in comps])
        whole = torch.tensor([[m in c.whole_inputs for m in names] for c in comps])  # (K, M)
        self.whole_inputs = whole if whole.any() else None
        self.input_cap = torch.tensor([s.num_tokens if s.encoder else 0 for s in self.specs.values()])
        self.target_cap = torch.tensor([s.num_tokens if s.decoder else 0 for s in self.specs.values()])
        self.is_image = torch.tensor([s.kind in ("image", "pixels") for s in self.specs.values()])
        # a (K, 2) table only when some component has its own input range: otherwise the totals are
        # drawn exactly as before (same random stream, so older runs resume and reproduce bit for bit)
        ranges = config.component_input_ranges()
        self.input_range = (torch.tensor(ranges) if any(c.input_tokens is not None for c in comps)
                            else config.input_range)

    def sample_budgets(self, batch_size: int, generator: torch.Generator | int) -> TokenBudgets:
        """Draw components, totals and per-modality budgets (columns in ``config.modalities`` order)."""
        return sample_budgets(
            batch_size, self.input_alphas, self.target_alphas, self.weights,
            self.input_range, self.config.target_range,
            self.input_cap, self.target_cap, self.is_image, as_generator(generator), self.whole_inputs,
        )

    def mask_batch(self, samples: Mapping[str, Any], generator: torch.Generator | int) -> Batch:
        """Mask a batch.

        Args:
            samples: per modality: image tokens (B, rows*cols) or (B, rows, cols) int; pixels
                (B, C, H, W) float; sequences a list of B id lists (or 1-D tensors) without
                [EOS]. Extra keys are ignored.
            generator: a ``torch.Generator`` or an int seed; the only randomness.

        Returns:
            The batch described in this module's docstring.
        """
        g = as_generator(generator)
        _check_samples(self.specs, samples)
        B = _batch_size(samples, self.specs)
        budgets = self.sample_budgets(B, g)
        out: Batch = {}
        for j, (name, spec) in enumerate(self.specs.items()):
            n_in, n_tgt = budgets.input[:, j], budgets.target[:, j]
            if spec.kind == "sequence":
                keep = self.keep[budgets.component, j]  # (B,)
                out[name] = self._mask_sequences(spec, samples[name], n_in, n_tgt, keep, g)
                continue
            tokens = (_pixels if spec.kind == "pixels" else check_image_tokens)(spec, samples[name])
            is_input, is_target = _rank_masks(B, spec.num_tokens, n_in, n_tgt, g)
            out[name] = {"tokens": tokens, "is_input": is_input, "is_target": is_target}
        return out

    __call__ = mask_batch

    def mask_sample(self, sample: Mapping[str, Any], generator: torch.Generator | int) -> Batch:
        """Mask one sample (no batch axis in or out); stack results with :func:`collate_masked`."""
        return _unbatch(self.mask_batch(_batch_of_one(self.specs, sample), generator))

    def _mask_sequences(
        self,
        spec: ModalitySpec,
        seqs: Sequence[Any],
        n_in: torch.Tensor,
        n_tgt: torch.Tensor,
        keep: torch.Tensor,
        g: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        ids = _prepare_all(spec, seqs)
        B = len(ids)
        u = torch.rand(B, generator=g, dtype=torch.float64)  # "random": U(0, 1)
        coin = (torch.rand(B, generator=g) < 0.5).to(torch.float64)  # "binary": 0 or 1
        p_keep = torch.where(keep == KEEP_CODES["binary"], coin, u)
        p_keep = torch.where(keep == KEEP_CODES["all"], torch.ones_like(u), p_keep)  # (B,)
        lengths = torch.tensor([len(x) for x in ids])
        masked = sample_span_masks(lengths, p_keep, n_in, g).tolist()  # (B, n) flags
        inputs, targets = [], []
        for b in range(B):
            inp, tgt = span_mask(ids[b], masked[b])
            if n_in[b] == 0:
                inp = []  # no input at all, not even a lone sentinel (the reference's convention)
            inputs.append(inp)
            targets.append(truncate_target(tgt, int(n_tgt[b]), g))
        return _layout_sequences(spec, inputs, targets, n_in)


class TransferMasking:
    """Fixed roles: every token of an input modality is input, every token of a target one a target.

    For evaluation, transfer fine-tuning and as the starting point of generation. Input sequences
    are the whole sequence (with [EOS]) and have no target; target sequences have no input and
    the target ``[S_1] ids... [EOS] [S_2]`` at position 0 (their input budget is 0).

    Args:
        input_modalities: names whose tokens are all inputs.
        target_modalities: names whose tokens are all targets (disjoint from the inputs).
        modalities: the registry to look them up in.
    """

    def __init__(
        self, input_modalities: Sequence[str], target_modalities: Sequence[str], modalities: ModalityRegistry
    ) -> None:
        self.input_modalities = tuple(input_modalities)
        self.target_modalities = tuple(target_modalities)
        both = sorted(set(self.input_modalities) & set(self.target_modalities))
        if both:
            raise ValueError(f"TransferMasking: {both} are both input and target; a modality may be one or the other")
        if not (self.input_modalities or self.target_modalities):
            raise ValueError("TransferMasking: give at least one input or target modality")
        self.specs: dict[str, ModalitySpec] = {}
        roles = (("input_modalities", self.input_modalities), ("target_modalities", self.target_modalities))
        for role, names in roles:
            for name in names:
                if name not in modalities:
                    raise ValueError(
                        f"TransferMasking.{role}: unknown modality {name!r}; known: {', '.join(modalities.names())}"
                    )
                spec = modalities[name]
                if role == "input_modalities" and not spec.encoder:
                    raise ValueError(f"TransferMasking.input_modalities: {name!r} cannot be an input (encoder=False)")
                if role == "target_modalities" and not spec.decoder:
                    raise ValueError(
                        f"TransferMasking.target_modalities: {name!r} (kind {spec.kind!r}) cannot be a target"
                    )
                if spec.kind == "sequence":
                    _check_sequence_spec(spec)
                self.specs[name] = spec

    def mask_batch(self, samples: Mapping[str, Any], generator: torch.Generator | int | None = None) -> Batch:
        """Build the batch (same format as :class:`UnifiedMasking`); ``generator`` is unused."""
        _check_samples(self.specs, samples)
        B = _batch_size(samples, self.specs)
        out: Batch = {}
        for name, spec in self.specs.items():
            is_in = name in self.input_modalities
            if spec.kind == "sequence":
                ids = _prepare_all(spec, samples[name])
                empty = [[] for _ in ids]
                if is_in:
                    out[name] = _layout_sequences(spec, ids, empty, torch.zeros(B, dtype=torch.long))
                else:  # [S_1] ids [S_2]: everything masked, as one span
                    targets = [span_mask(x, [True] * len(x))[1] for x in ids]
                    out[name] = _layout_sequences(spec, empty, targets, torch.zeros(B, dtype=torch.long))
                continue
            tokens = (_pixels if spec.kind == "pixels" else check_image_tokens)(spec, samples[name])
            full = torch.ones(B, spec.num_tokens, dtype=torch.bool)
            out[name] = {"tokens": tokens, "is_input": full if is_in else ~full, "is_target": ~full if is_in else full}
        return out

    __call__ = mask_batch

    def mask_sample(self, sample: Mapping[str, Any], generator: torch.Generator | int | None = None) -> Batch:
        """One sample, no batch axis in or out."""
        return _unbatch(self.mask_batch(_batch_of_one(self.specs, sample)))


def _prepare_all(spec: ModalitySpec, seqs: Sequence[Any]) -> list[list[int]]:
    return [prepare_sequence(s, spec.num_tokens, spec.vocab_size, f"{spec.name}[{b}]") for b, s in enumerate(seqs)]


def _batch_of_one(specs: Mapping[str, ModalitySpec], sample: Mapping[str, Any]) -> dict[str, Any]:
    _check_samples(specs, sample)
    return {
        name: [sample[name]] if spec.kind == "sequence" else torch.as_tensor(sample[name])[None]
        for name, spec in specs.items()
    }


def _unbatch(batch: Batch) -> Batch:
    return {m: {k: v[0] for k, v in d.items()} for m, d in batch.items()}


def collate_masked(samples: Sequence[Batch]) -> Batch:
    """Stack per-sample outputs of ``mask_sample`` into a batch (for a DataLoader's collate_fn)."""
    if not samples:
        raise ValueError("collate_masked: empty list of samples")
    mods = list(samples[0])
    for i, s in enumerate(samples):
        if list(s) != mods:
            raise ValueError(f"collate_masked: sample {i} has modalities {list(s)}, sample 0 has {mods}")
    return {m: {k: torch.stack([s[m][k] for s in samples]) for k in samples[0][m]} for m in mods}


@dataclass(frozen=True)
class TokenCounts:
    """Per-sample counts, each (B,): encoder tokens, target positions, decoder (teacher-forcing) slots."""

    inputs: torch.Tensor
    target_positions: torch.Tensor
    decoder_slots: torch.Tensor


def count_tokens(batch: Batch, modalities: ModalityRegistry) -> TokenCounts:
    """Count what the model will see: ``sum(is_input)``, ``sum(is_target)`` and decoder slots.

    A sequence's decoder slot ``i`` is used when ``is_target[i] & is_target[i + 1]``.
    """
    inputs = target_positions = slots = 0
    for name, d in batch.items():
        is_in, is_tgt = d["is_input"], d["is_target"]
        inputs = inputs + is_in.sum(-1)
        target_positions = target_positions + is_tgt.sum(-1)
        if modalities[name].kind == "sequence":
            slots = slots + (is_tgt[:, :-1] & is_tgt[:, 1:]).sum(-1)
        else:
            slots = slots + is_tgt.sum(-1)
    return TokenCounts(torch.as_tensor(inputs), torch.as_tensor(target_positions), torch.as_tensor(slots))


__all__ = [
    "Batch",
    "TokenCounts",
    "TransferMasking",
    "UnifiedMasking",
    "as_generator",
    "check_image_tokens",
    "collate_masked",
    "count_tokens",
    "generator_for",
    "sequence_length",
]
