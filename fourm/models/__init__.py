"""The FourM model: blocks, per-modality embeddings, the encoder-decoder and its config."""
from fourm.models.blocks import (
    Attention,
    Block,
    CrossAttention,
    DecoderBlock,
    GatedMlp,
    LayerNorm,
    Mlp,
    attention,
    xformers_available,
)
from fourm.models.config import MODEL_SIZES, FourMConfig
from fourm.models.embeddings import sincos_1d, sincos_2d
from fourm.models.fourm import (
    DecoderState,
    EncoderFeatures,
    EncoderState,
    FourM,
    FourMOutput,
    ModalityPredictions,
    TokenSelection,
    select_tokens,
    unalias_state_dict,
)

__all__ = [
    "Attention",
    "Block",
    "CrossAttention",
    "DecoderBlock",
    "DecoderState",
    "EncoderFeatures",
    "EncoderState",
    "FourM",
    "FourMConfig",
    "FourMOutput",
    "GatedMlp",
    "LayerNorm",
    "MODEL_SIZES",
    "Mlp",
    "ModalityPredictions",
    "TokenSelection",
    "attention",
    "select_tokens",
    "sincos_1d",
    "sincos_2d",
    "unalias_state_dict",
    "xformers_available",
]
