"""Modality specs and registries.

A modality is everything the model needs to know about one stream of tokens: whether it is an
image grid or a sequence, its vocabulary, how many token slots it has and whether it can be an
input, a target or both. The model builds one encoder and one decoder embedding per spec; the
masking code reads token counts from it; the sampler picks a decoding scheme from ``kind``.

Adding a modality is registering a spec::

    reg = shapes_world_modalities()
    reg.register(ModalitySpec("tok_normal", kind="image", vocab_size=256, grid=(8, 8)))

There is no global registry: every model owns the one it was built with, and its config stores
the specs, so a checkpoint always knows its own modalities.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Literal

ModalityKind = Literal["image", "sequence", "pixels"]
KINDS: tuple[str, ...] = ("image", "sequence", "pixels")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    Args:
        name: unique name, e.g. ``"tok_rgb"`` or ``"caption"``; may contain ``@`` as in the
            reference's ``"tok_rgb@224"``.
        kind: ``"image"`` (a grid of discrete tokens), ``"sequence"`` (a variable-length run of
            discrete tokens, decoded autoregressively) or ``"pixels"`` (raw RGB patches, input only).
        vocab_size: number of token ids; ``None`` for ``"pixels"``.
        grid: (rows, cols) of the token grid for ``"image"`` / ``"pixels"``.
        max_length: longest sequence (in tokens, without the final [EOS]) for ``"sequence"``.
        patch_size: pixels per patch side for ``"pixels"`` (input is grid * patch_size pixels).
        in_channels: channels of a ``"pixels"`` input.
        encoder: can be an input.
        decoder: can be a target.
        tokenizer: name of the tokenizer that turns raw data into these tokens (informational).
    """

    name: str
    kind: str
    vocab_size: int | None = None
    grid: tuple[int, int] | None = None
    max_length: int | None = None
    patch_size: int | None = None
    in_channels: int = 3
    encoder: bool = True
    decoder: bool = True
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"modality name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.kind in ("image", "pixels"):
            if self.grid is None or len(self.grid) != 2 or min(self.grid) < 1:
                raise ValueError(f"modality {self.name!r}: kind {self.kind!r} needs grid=(rows, cols) >= 1, got {self.grid!r}")
        if self.kind in ("image", "sequence"):
            if self.vocab_size is None or self.vocab_size < 2:
                raise ValueError(f"modality {self.name!r}: vocab_size must be >= 2, got {self.vocab_size!r}")
        if self.kind == "sequence" and (self.max_length is None or self.max_length < 1):
            raise ValueError(f"modality {self.name!r}: sequences need max_length >= 1, got {self.max_length!r}")
        if self.kind == "pixels":
            if self.patch_size is None or self.patch_size < 1:
                raise ValueError(f"modality {self.name!r}: pixels need patch_size >= 1, got {self.patch_size!r}")
            if self.decoder:
                raise ValueError(f"modality {self.name!r}: a 'pixels' modality is input-only; set decoder=False")
        if not (self.encoder or self.decoder):
            raise ValueError(f"modality {self.name!r}: must be an input (encoder=True), a target (decoder=True) or both")

    @property
    def num_tokens(self) -> int:
        """Token slots: rows * cols for grids; max_length + 1 (room for [EOS]) for sequences."""
        if self.kind == "sequence":
            return int(self.max_length) + 1
        rows, cols = self.grid
        return rows * cols

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Input pixels (H, W) of a ``"pixels"`` modality."""
        if self.kind != "pixels":
            return None
        return (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)

    @property
    def uid(self) -> int:
        """A stable 15-bit id from the name (the reference's sha256 mod 2**15)."""
        return int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % (2**15)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["grid"] is not None:
            d["grid"] = list(d["grid"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"modality spec {d.get('name')!r}: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**d)


@dataclass
class ModalityRegistry:
    """An ordered set of modality specs; the order is the model's modality order."""

    specs: dict[str, ModalitySpec] = field(default_factory=dict)

    def register(self, spec: ModalitySpec, *, replace: bool = False) -> ModalitySpec:
        if spec.name in self.specs and not replace:
            raise ValueError(f"modality {spec.name!r} is already registered; pass replace=True to override it")
        self.specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ModalitySpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"unknown modality {name!r}; known: {', '.join(self.specs) or '(none)'}") from None

    def __getitem__(self, name: str) -> ModalitySpec:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[ModalitySpec]:
        return iter(self.specs.values())

    def __len__(self) -> int:
        return len(self.specs)

    def names(self) -> list[str]:
        return list(self.specs)

    def inputs(self) -> list[ModalitySpec]:
        return [s for s in self if s.encoder]

    def targets(self) -> list[ModalitySpec]:
        return [s for s in self if s.decoder]

    def subset(self, names: Iterable[str]) -> "ModalityRegistry":
        return ModalityRegistry({n: self.get(n) for n in names})

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self]

    @classmethod
    def from_list(cls, items: Iterable[dict | ModalitySpec]) -> "ModalityRegistry":
        reg = cls()
        for it in items:
            reg.register(it if isinstance(it, ModalitySpec) else ModalitySpec.from_dict(dict(it)))
        return reg


# --- built-in sets -----------------------------------------------------------------------------

# The reference's text vocabulary (WordPiece, 30k) and id layout; see fourm.vq.text.
REFERENCE_TEXT_VOCAB = 30000


def pixels_to_float(pixels):
    """uint8 pixels (0..255) -> float in [-1, 1], the input scale of ``"pixels"`` modalities.

    Training (token shards store uint8) and generation share this; float input is returned as is
    (taken to be normalised already).
    """
    import torch

    x = torch.as_tensor(pixels)
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if not x.is_floating_point():
        raise ValueError(f"pixels must be uint8 (0..255) or float in [-1, 1], got {x.dtype}")
    return x


def shapes_world_modalities(
    image_size: int = 64,
    downsample: int = 8,
    image_vocab: dict[str, int] | None = None,
    text_vocab: int = 4096,
    caption_length: int = 64,
    det_length: int = 64,
    rgb_patch_size: int | None = None,
) -> ModalityRegistry:
    """The ShapesWorld modalities: three image-token grids, caption, det and rgb pixels.

    Args:
        image_size: side of the images in pixels (a multiple of ``downsample``).
        downsample: pixels per token side of the image tokenizers (8 gives 8 x 8 tokens at 64 px).
        image_vocab: codebook size per image modality (defaults: tok_rgb 1024, tok_depth 512,
            tok_semseg 256).
        text_vocab: vocabulary of the WordPiece tokenizer shared by caption and det.
        caption_length, det_length: maximum sequence lengths in tokens.
        rgb_patch_size: patch side of the input-only rgb pixel embedding (default ``downsample``).
    """
    if image_size % downsample:
        raise ValueError(f"image_size={image_size} must be a multiple of downsample={downsample}")
    vocab = {"tok_rgb": 1024, "tok_depth": 512, "tok_semseg": 256}
    if image_vocab:
        unknown = sorted(set(image_vocab) - set(vocab))
        if unknown:
            raise ValueError(f"image_vocab: unknown modalities {unknown}; known: {sorted(vocab)}")
        vocab.update(image_vocab)
    g = image_size // downsample
    p = rgb_patch_size or downsample
    if image_size % p:
        raise ValueError(f"image_size={image_size} must be a multiple of rgb_patch_size={p}")
    reg = ModalityRegistry()
    for name in ("tok_rgb", "tok_depth", "tok_semseg"):
        reg.register(ModalitySpec(name, "image", vocab_size=vocab[name], grid=(g, g), tokenizer=name.removeprefix("tok_")))
    reg.register(ModalitySpec("caption", "sequence", vocab_size=text_vocab, max_length=caption_length, tokenizer="text"))
    reg.register(ModalitySpec("det", "sequence", vocab_size=text_vocab, max_length=det_length, tokenizer="text"))
    reg.register(ModalitySpec("rgb", "pixels", grid=(image_size // p, image_size // p), patch_size=p, decoder=False))
    return reg


# Released 4M vocabularies (reference-4m.md section 4).
_ML4M_7 = {
    "tok_rgb@224": 16384,
    "tok_depth@224": 8192,
    "tok_normal@224": 8192,
    "tok_semseg@224": 4096,
    "tok_clip@224": 8192,
}
_ML4M_21_IMAGE = {
    "tok_canny_edge@224": (8192, 14),
    "tok_sam_edge@224": (8192, 14),
    "tok_dinov2@224": (8192, 16),
    "tok_imagebind@224": (8192, 16),
    "tok_dinov2_global": (8192, 4),
    "tok_imagebind_global": (8192, 4),
}
_ML4M_21_SEQ = {"metadata": 40, "human_poses": 263, "color_palette": 23, "sam_instance": 290}


def ml4m_modalities(which: str = "4m7", vocab_override: dict[str, int] | None = None) -> ModalityRegistry:
    """The reference's modality set: ``"4m7"`` (8 domains) or ``"4m21"`` (without t5_caption).

    Names keep the reference's spelling (``"tok_rgb@224"``) so that checkpoints load by key.
    ``vocab_override`` replaces vocabulary sizes (the fixtures use reduced vocabularies).
    """
    if which not in ("4m7", "4m21"):
        raise ValueError(f"which={which!r}; allowed: '4m7', '4m21'")
    vo = dict(vocab_override or {})
    reg = ModalityRegistry()
    reg.register(ModalitySpec("rgb@224", "pixels", grid=(14, 14), patch_size=16, decoder=False))
    for name, v in _ML4M_7.items():
        reg.register(ModalitySpec(name, "image", vocab_size=vo.pop(name, v), grid=(14, 14)))
    for name in ("caption", "det"):
        reg.register(ModalitySpec(name, "sequence", vocab_size=vo.pop(name, REFERENCE_TEXT_VOCAB), max_length=256))
    if which == "4m21":
        for name, (v, g) in _ML4M_21_IMAGE.items():
            reg.register(ModalitySpec(name, "image", vocab_size=vo.pop(name, v), grid=(g, g)))
        for name, length in _ML4M_21_SEQ.items():
            reg.register(ModalitySpec(name, "sequence", vocab_size=vo.pop(name, REFERENCE_TEXT_VOCAB), max_length=length))
    if vo:
        raise ValueError(f"vocab_override names unknown modalities {sorted(vo)}; known: {reg.names()}")
    return reg
