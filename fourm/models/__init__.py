"""The FourM model: blocks, per-modality embeddings, the encoder-decoder and its config."""
from fourm.models.attention_kernels import ATTENTION_BACKENDS, attention, resolve_attention_backend, xformers_available
from fourm.models.blocks import Attention, Block, CrossAttention, DecoderBlock, GatedMlp, LayerNorm, Mlp
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
)
from fourm.models.files import unalias_state_dict

__all__ = [
    "ATTENTION_BACKENDS",
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
    "resolve_attention_backend",
    "select_tokens",
    "sincos_1d",
    "sincos_2d",
    "unalias_state_dict",
    "xformers_available",
]
