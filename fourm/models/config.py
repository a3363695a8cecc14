"""The typed configuration of :class:`fourm.models.FourM` and the table of model sizes.

    cfg = FourMConfig.from_size("base", ml4m_modalities("4m7"))
    cfg = FourMConfig(modalities=reg, dim=96, encoder_depth=3, decoder_depth=3, num_heads=3)

Bad values are rejected at construction with a message that names the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable

from fourm.modalities import ModalityRegistry, ModalitySpec

# The reference's sizes (ml-4m/fourm/models/fm.py); all other settings default to the released
# models' choices (SwiGLU, no biases, LayerNorm eps 1e-6, no QK-norm).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(dim=384, encoder_depth=6, decoder_depth=6, num_heads=6),
    "small": dict(dim=512, encoder_depth=8, decoder_depth=8, num_heads=8),
    "base": dict(dim=768, encoder_depth=12, decoder_depth=12, num_heads=12),
    "large": dict(dim=1024, encoder_depth=24, decoder_depth=24, num_heads=16),
    "xlarge": dict(dim=2048, encoder_depth=24, decoder_depth=24, num_heads=32),
}
ACT_LAYERS: tuple[str, ...] = ("silu", "gelu")


@dataclass(frozen=True)
class FourMConfig:
    """Architecture of a FourM model.

    Args:
        modalities: the model's modalities, in order (a ModalityRegistry or specs). A spec's
            ``encoder``/``decoder`` flags decide which embeddings are built.
        dim: model width D.
        encoder_depth, decoder_depth: number of encoder / decoder blocks.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width = ``int(dim * mlp_ratio)`` (gated: two thirds of it).
        gated_mlp: SwiGLU-style gated MLP (``fc1``, ``fc2``, ``fc3``) instead of ``fc1``/``fc2``.
        act_layer: ``"silu"`` or ``"gelu"``.
        qkv_bias, proj_bias, mlp_bias, norm_bias: biases of attention input / output projections,
            MLP layers and LayerNorms (the released 4M models use none).
        norm_eps: LayerNorm epsilon.
        qk_norm: LayerNorm on queries and keys per head.
        share_modality_embeddings: one modality vector shared by a modality's encoder and decoder
            embeddings (the 4M-7 default).
        seq_pos_len: rows of the 1D sin-cos tables of sequence modalities; ``None`` = each
            sequence's ``num_tokens``. The reference always builds 512 rows.
        init_std: std of the normal init of embeddings, mask token and modality vectors.
    """

    modalities: tuple[ModalitySpec, ...]
    dim: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    gated_mlp: bool = True
    act_layer: str = "silu"
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    norm_eps: float = 1e-6
    qk_norm: bool = False
    share_modality_embeddings: bool = True
    seq_pos_len: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        mods = self.modalities
        if isinstance(mods, ModalityRegistry):
            mods = tuple(mods)
        mods = tuple(m if isinstance(m, ModalitySpec) else ModalitySpec.from_dict(dict(m)) for m in mods)
        object.__setattr__(self, "modalities", mods)
        names = [m.name for m in mods]
        if not mods:
            raise ValueError("modalities: empty; give at least one ModalitySpec")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"modalities: duplicate names {dupes}")
        if not any(m.encoder for m in mods):
            raise ValueError(f"modalities: none is an input (encoder=True); got {names}")
        for name in ("dim", "encoder_depth", "decoder_depth", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}; must be an integer >= 1")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}; change dim or num_heads")
        if self.dim % 4:
            raise ValueError(f"dim={self.dim} must be a multiple of 4 (2D sin-cos positions)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r}; must be > 0")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r}; allowed: {', '.join(ACT_LAYERS)}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r}; must be > 0")
        if not self.init_std > 0:
            raise ValueError(f"init_std={self.init_std!r}; must be > 0")
        if self.seq_pos_len is not None:
            longest = max((m.num_tokens for m in mods if m.kind == "sequence"), default=0)
            if self.seq_pos_len < longest:
                raise ValueError(f"seq_pos_len={self.seq_pos_len} is shorter than the longest sequence "
                                 f"({longest} token slots); use None or >= {longest}")
        for name in ("gated_mlp", "qkv_bias", "proj_bias", "mlp_bias", "norm_bias", "qk_norm", "share_modality_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}; must be true or false")

    @classmethod
    def from_size(cls, size: str, modalities: ModalityRegistry | Iterable[ModalitySpec], **overrides) -> "FourMConfig":
        """A config of a named size (``tiny``, ``small``, ``base``, ``large``, ``xlarge``).

        ``overrides`` are FourMConfig fields; unknown names raise.
        """
        if size not in MODEL_SIZES:
            raise ValueError(f"size={size!r}; allowed: {', '.join(MODEL_SIZES)}")
        _check_fields(overrides)
        return cls(modalities=tuple(modalities), **{**MODEL_SIZES[size], **overrides})

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def registry(self) -> ModalityRegistry:
        """The modalities as a registry (in model order)."""
        return ModalityRegistry.from_list(self.modalities)

    def replace(self, **changes) -> "FourMConfig":
        """A copy with some fields changed (validated again)."""
        _check_fields(changes)
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = [m.to_dict() for m in self.modalities]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FourMConfig":
        _check_fields(d)
        return cls(**d)


def _check_fields(d: dict) -> None:
    known = {f.name for f in fields(FourMConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown FourMConfig fields {unknown}; allowed: {sorted(known)}")
