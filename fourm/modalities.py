"""Modality specs and registries.

A modality is everything the model needs to know about one stream of tokens: whether it is an
image grid or a sequence, its vocabulary, how many token slots it has and whether it can be an
input, a target or both. The model builds one encoder and one decoder embedding per spec; the
masking code reads token counts from it; the sampler picks a decoding scheme from ``kind``.

A spec also names the data it comes from, so that no other code spells names by itself:

| field          | meaning                                          | default (``tok_rgb`` / ``caption`` / pixels ``rgb``) |
|----------------|--------------------------------------------------|------------------------------------------------------|
| ``raw_field``  | field of raw shards (before tokenisation)        | ``rgb`` / ``caption`` / ``rgb``                      |
| ``token_field``| field of token shards that training reads        | ``tok_rgb`` / ``tok_caption`` / ``rgb``              |
| ``tokenizer``  | key of its tokenizer in ``load_tokenizers(dir)`` | ``rgb`` / ``text`` / none                            |

Adding a modality is registering a spec::

    reg.register(ModalitySpec("tok_normal", kind="image", vocab_size=256, grid=(8, 8)))  # tokenizer "normal"

There is no global registry: every model owns the one it was built with, and its config stores
the specs, so a checkpoint always knows its own modalities.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Literal, Mapping

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
        tokenizer: key of the tokenizer that turns raw data into these tokens (a subfolder of a
            ``load_tokenizers`` folder); default ``raw_field`` for images, ``"text"`` for
            sequences, none for pixels.
        raw_field: field of raw shards and raw generation inputs (``rgb`` for ``tok_rgb``);
            default: the name without ``tok_`` and ``@size`` (images), the name (others).
        token_field: field of token shards that training reads; default the name with ``tok_``
            in front when it lacks it (``caption`` -> ``tok_caption``); pixels: ``raw_field``.
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
    raw_field: str | None = None
    token_field: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"modality name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        for key, value in default_fields(self.name, self.kind).items():
            given = getattr(self, key)
            if given is None:
                object.__setattr__(self, key, value)
            elif not isinstance(given, str) or not given or "." in given or "/" in given:
                raise ValueError(f"modality {self.name!r}: {key}={given!r}; must be a non-empty name without "
                                 "'.' or '/' (shard members are <key>.<field>.<ext>)")
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


TOKEN_PREFIX = "tok_"
TEXT_TOKENIZER = "text"  # the tokenizer of every sequence unless a spec names another


def token_field_for(raw_field: str) -> str:
    """The token field of a raw field by the naming convention: ``normal`` -> ``tok_normal``."""
    return TOKEN_PREFIX + raw_field


def default_fields(name: str, kind: str) -> dict[str, str | None]:
    """The naming convention of raw field, token field and tokenizer for a modality without them.

    ``tok_rgb`` (image) reads raw ``rgb`` with tokenizer ``rgb`` and trains on ``tok_rgb``;
    ``caption`` (sequence) reads raw ``caption`` with tokenizer ``text`` and trains on
    ``tok_caption``; pixels ``rgb`` read and train on ``rgb``. This and :func:`token_field_for`
    are the only places that spell one name from another: everything else asks the spec.
    """
    token = name if name.startswith(TOKEN_PREFIX) else token_field_for(name)
    if kind == "image":
        raw = name.removeprefix(TOKEN_PREFIX).split("@")[0]
        return {"tokenizer": raw, "raw_field": raw, "token_field": token}
    if kind == "sequence":
        return {"tokenizer": TEXT_TOKENIZER, "raw_field": name, "token_field": token}
    return {"tokenizer": None, "raw_field": name, "token_field": name}


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
    def from_mapping(cls, specs: Mapping[str, Any], where: str = "modalities") -> "ModalityRegistry":
        """The registry of a config section ``{name: spec fields}`` (YAML), in its order.

        Raises:
            ValueError: naming ``where.<name>`` and what is wrong with it.
        """
        if not specs:
            raise ValueError(f"{where} is empty; list the modalities by name, e.g. "
                             f"{where}: {{tok_rgb: {{kind: image, vocab_size: 1024, grid: [8, 8]}}, ...}}")
        reg = cls()
        for name, fields_ in specs.items():
            if not isinstance(fields_, Mapping):
                raise ValueError(f"{where}.{name}: expected the fields of a modality (kind, vocab_size, grid, "
                                 f"max_length ...), got {fields_!r}; each entry is one modality by name, e.g. "
                                 "tok_rgb: {kind: image, vocab_size: 1024, grid: [8, 8]} (see configs/fm/shapes_tiny.yaml)")
            if "name" in fields_:
                raise ValueError(f"{where}.{name}: 'name' is the key of the entry; remove it")
            try:
                reg.register(ModalitySpec.from_dict({"name": name, **fields_}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}.{name}: {e}") from None
        return reg

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


# Released 4M vocabularies (ml-4m/fourm/data/modality_info.py).
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
