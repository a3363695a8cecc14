"""Multimodal masking: Dirichlet token budgets, image token sampling and span masking.

* :mod:`fourm.masking.config` - :class:`MaskingConfig` and :class:`MixtureComponent`.
* :mod:`fourm.masking.budgets` - Dirichlet budgets across modalities (batched, explicit RNG).
* :mod:`fourm.masking.spans` - T5-style span masking with sentinels and :func:`merge_spans`.
* :mod:`fourm.masking.unified` - :class:`UnifiedMasking` (training), :class:`TransferMasking`
  (fixed inputs/targets), :func:`collate_masked`, :func:`count_tokens`; the batch format and the
  budget accounting are documented there.

    masking = UnifiedMasking(MaskingConfig(...), registry)
    batch = masking(samples, generator=torch.Generator().manual_seed(0))
"""
from fourm.masking.budgets import TokenBudgets, sample_budgets, sample_dirichlet, split_tokens
from fourm.masking.config import (
    KEEP_SCHEMES,
    MaskingConfig,
    MixtureComponent,
    all_to_all_component,
    mixture_from_reference,
    rgb_to_all_component,
)
from fourm.masking.spans import (
    EOS_ID,
    NUM_SENTINELS,
    PAD_ID,
    SENTINEL_OFFSET,
    merge_spans,
    prepare_sequence,
    sentinel_id,
    span_mask,
    split_by_sentinel,
)
from fourm.masking.unified import (
    Batch,
    TokenCounts,
    TransferMasking,
    UnifiedMasking,
    as_generator,
    check_image_tokens,
    collate_masked,
    count_tokens,
    generator_for,
    sequence_length,
)

__all__ = [
    "Batch",
    "EOS_ID",
    "KEEP_SCHEMES",
    "MaskingConfig",
    "MixtureComponent",
    "NUM_SENTINELS",
    "PAD_ID",
    "SENTINEL_OFFSET",
    "TokenBudgets",
    "TokenCounts",
    "TransferMasking",
    "UnifiedMasking",
    "all_to_all_component",
    "as_generator",
    "check_image_tokens",
    "collate_masked",
    "count_tokens",
    "generator_for",
    "merge_spans",
    "mixture_from_reference",
    "prepare_sequence",
    "rgb_to_all_component",
    "sample_budgets",
    "sample_dirichlet",
    "sentinel_id",
    "sequence_length",
    "span_mask",
    "split_by_sentinel",
    "split_tokens",
]
