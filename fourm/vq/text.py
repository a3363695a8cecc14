"""WordPiece text tokenizer with the 4M id layout.

Captions and serialised boxes share one vocabulary whose first ids are fixed (the 4M reference's
text_tokenizer_4m_wordpiece_30k.json, ml-4m/fourm/utils/tokenizer/)::

    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]
    4 ..                  sentinels [S_0] .. [S_{S-1}]              (S = 200 in the reference)
    4 + S ..              coordinate tokens v0=0 .. v3={B-1}        (4 axes x B bins, B = 1000)
    4 + S + 4B ..         class names as single tokens              ("circle", "dining table")
    then                  the learned WordPiece pieces

All reserved tokens are *added tokens* of a Hugging Face ``tokenizers.Tokenizer``, so text such as
``"[S_1] v0=12 v1=40 v2=300 v3=512 dog"`` encodes to one id per token. ``TextTokenizer`` wraps the
backend without changing what it computes: on any file, ``encode`` gives exactly the ids that
``tokenizers.Tokenizer.from_file(path).encode(text).ids`` gives.

Usage::

    tok = train_text_tokenizer(captions, class_names=["circle", "square"], vocab_size=4600)
    ids = tok.encode("a red circle", add_eos=True)
    tok.save_pretrained("out/tok/text")       # also the files of transformers.AutoTokenizer (fourm.vq.text_transformers)
    tok = TextTokenizer.from_pretrained("out/tok/text")      # or a Hub repo id
    hf_tok = tok.to_transformers()            # a transformers.PreTrainedTokenizerFast with the same ids
    ref = TextTokenizer.from_file("text_tokenizer_4m_wordpiece_30k.json")   # the reference's file
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from fourm.atomic import atomic_write_text
from fourm.hub import CardInfo, PushToHubMixin, resolve_pretrained, write_model_card
from fourm.vq import text_transformers as hf
from fourm.vq.text_transformers import DEFAULT_MODEL_MAX_LENGTH, TOKENIZER_FILE

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[SOS]", "[EOS]")
PAD_ID, UNK_ID, SOS_ID, EOS_ID = 0, 1, 2, 3
NUM_AXES = 4  # v0=xmin, v1=ymin, v2=xmax, v3=ymax
DEFAULT_NUM_SENTINELS = 200
DEFAULT_NUM_BINS = 1000
FORMAT_VERSION = 1
TOKENIZER_TYPE = "wordpiece_text"
CONFIG_FILE = "config.json"
_CONFIG_KEYS = frozenset({"format_version", "tokenizer_type", "vocab_size", "layout"})
# [PAD], [SOS] and [EOS] structure a sequence; [UNK] stands for lost content, so decode keeps it.
_CONTROL_IDS = frozenset({PAD_ID, SOS_ID, EOS_ID})


def sentinel_token(index: int) -> str:
    """The text of sentinel ``index``: ``"[S_3]"``."""
    return f"[S_{index}]"


def coord_token(axis: int, bin_index: int) -> str:
    """The text of a coordinate token: axis 0..3 (xmin, ymin, xmax, ymax), e.g. ``"v2=300"``."""
    return f"v{axis}={bin_index}"


class LayoutError(ValueError):
    """A tokenizer does not follow the 4M id layout."""


@dataclass(frozen=True)
class TextLayout:
    """Where the reserved tokens sit in the vocabulary.

    Args:
        num_sentinels: sentinel tokens [S_0] .. [S_{n-1}], ids 4 .. 3 + n.
        num_bins: bins per coordinate axis (v0=0 .. v0={num_bins-1}, then v1=, v2=, v3=).
        class_names: class tokens in id order, right after the coordinate tokens.
    """

    num_sentinels: int = DEFAULT_NUM_SENTINELS
    num_bins: int = DEFAULT_NUM_BINS
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.num_sentinels < 1:
            raise ValueError(f"num_sentinels must be >= 1, got {self.num_sentinels}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2 (a bin for 0 and one for 1), got {self.num_bins}")

    @property
    def first_coord_id(self) -> int:
        return len(SPECIAL_TOKENS) + self.num_sentinels

    @property
    def first_class_id(self) -> int:
        return self.first_coord_id + NUM_AXES * self.num_bins

    @property
    def first_piece_id(self) -> int:
        """The first id after the reserved block (learned WordPiece pieces start here)."""
        return self.first_class_id + len(self.class_names)

    def reserved_tokens(self) -> list[str]:
        """Every reserved token in id order (id i is element i)."""
        out = list(SPECIAL_TOKENS)
        out += [sentinel_token(i) for i in range(self.num_sentinels)]
        out += [coord_token(a, b) for a in range(NUM_AXES) for b in range(self.num_bins)]
        return out + list(self.class_names)


def detect_layout(tokenizer: Tokenizer) -> TextLayout:
    """Read the 4M layout off a tokenizer, or raise ``LayoutError`` naming the first mismatch.

    Sentinels are counted from id 4 while ids hold ``[S_0], [S_1], ...``; bins are counted while the next
    ids hold ``v0=0, v0=1, ...``; the three other axes must follow in order; class names are the run of
    added tokens right after the coordinates. Every reserved token must be an *added* token, else the
    pre-tokenizer would split ``"[S_1]"`` into ``[``, ``s``, ``_``, ...
    """
    added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}

    def expect(token_id: int, want: str, what: str) -> None:
        got = tokenizer.id_to_token(token_id)
        if got != want:
            raise LayoutError(f"id {token_id} is {got!r}, expected {want!r} ({what} of the 4M layout)")
        if token_id not in added:
            raise LayoutError(f"{want!r} (id {token_id}) is in the vocabulary but is not an added token, so text "
                              f"containing it would be split into word pieces; add it as a special token")

    for i, name in enumerate(SPECIAL_TOKENS):
        expect(i, name, f"special token {i}")
    unk = getattr(tokenizer.model, "unk_token", SPECIAL_TOKENS[UNK_ID])
    if unk != SPECIAL_TOKENS[UNK_ID]:
        raise LayoutError(f"the model's unk_token is {unk!r}, expected '[UNK]' (id {UNK_ID})")

    num_sentinels = 0
    while tokenizer.id_to_token(len(SPECIAL_TOKENS) + num_sentinels) == sentinel_token(num_sentinels):
        num_sentinels += 1
    if num_sentinels == 0:
        expect(len(SPECIAL_TOKENS), sentinel_token(0), "sentinel 0")
    first_coord = len(SPECIAL_TOKENS) + num_sentinels
    num_bins = 0
    while tokenizer.id_to_token(first_coord + num_bins) == coord_token(0, num_bins):
        num_bins += 1
    if num_bins < 2:
        got = tokenizer.id_to_token(first_coord + num_bins)
        want = (f"{sentinel_token(num_sentinels)!r} or the first coordinate token 'v0=0'" if num_bins == 0
                else "'v0=1' (at least 2 bins per axis)")
        raise LayoutError(f"id {first_coord + num_bins} is {got!r}, expected {want}: the 4M layout has sentinels "
                          f"[S_0].. from id {len(SPECIAL_TOKENS)}, then coordinate tokens v0=0..")
    layout = TextLayout(num_sentinels=num_sentinels, num_bins=num_bins)
    for token_id, want in enumerate(layout.reserved_tokens()[len(SPECIAL_TOKENS):], start=len(SPECIAL_TOKENS)):
        expect(token_id, want, "a sentinel" if token_id < first_coord else "a coordinate token")

    class_names = []
    token_id = layout.first_class_id
    while token_id in added:
        class_names.append(added[token_id].content)
        token_id += 1
    return TextLayout(num_sentinels=num_sentinels, num_bins=num_bins, class_names=tuple(class_names))




def _as_id_list(ids: Any) -> list[int]:
    """Accept a list, tuple, numpy array or torch tensor of ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class TextTokenizer(PushToHubMixin):
    """A ``tokenizers.Tokenizer`` plus the meaning of its reserved ids.

    Args:
        tokenizer: the Hugging Face tokenizer; it is used as is (encode gives its exact ids).
        require_layout: raise ``LayoutError`` if the tokenizer does not follow the 4M layout. With False, an
            arbitrary tokenizer loads; ``layout`` is then None and the layout-specific methods raise.
        model_max_length: the longest sequence, as declared to ``transformers`` (truncation, padding
            to max length); fourm's own sequences have their length in the model's ``ModalitySpec``.
    """

    def __init__(self, tokenizer: Tokenizer, *, require_layout: bool = True,
                 model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> None:
        if not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(f"model_max_length={model_max_length!r}; expected an integer >= 1")
        self.model_max_length = model_max_length
        self._tok = tokenizer
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # ~1 ms per backend call: cache it
        self._layout_error: str | None = None
        try:
            self.layout: TextLayout | None = detect_layout(tokenizer)
        except LayoutError as e:
            if require_layout:
                raise
            self.layout, self._layout_error = None, str(e)
        self._class_to_id = {} if self.layout is None else {
            name: self.layout.first_class_id + i for i, name in enumerate(self.layout.class_names)}

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, *, require_layout: bool = True) -> "TextTokenizer":
        """Load a Hugging Face tokenizer JSON file (ours or the reference's ``text_tokenizer_4m_wordpiece_30k.json``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)), require_layout=require_layout)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, force_download: bool = False) -> "TextTokenizer":
        """Load a folder written by ``save_pretrained`` (or a Hub repo id holding one) and check it
        against its config.

        Args:
            path_or_repo_id: a folder, or a Hub repo id (``owner/name``; see :mod:`fourm.hub`).
            revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
                :func:`fourm.hub.resolve_pretrained`.
        """
        directory = resolve_pretrained(path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                       local_files_only=local_files_only, force_download=force_download,
                                       what="a folder written by TextTokenizer.save_pretrained (config.json + "
                                            "tokenizer.json)", allow_patterns=["*.json", "*.md"])
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found; expected a folder written by TextTokenizer.save_pretrained")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        unknown = sorted(set(config) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {config.get('format_version')!r} is not supported; "
                             f"this version of fourm reads {FORMAT_VERSION}")
        if config.get("tokenizer_type") != TOKENIZER_TYPE:
            raise ValueError(f"{config_path}: tokenizer_type {config.get('tokenizer_type')!r}, expected {TOKENIZER_TYPE!r}")
        want = config.get("layout")
        tok = cls.from_file(directory / TOKENIZER_FILE, require_layout=want is not None)
        tok.model_max_length = hf.read_model_max_length(directory) or DEFAULT_MODEL_MAX_LENGTH
        if want is not None:
            try:
                want = TextLayout(**want)
            except TypeError as e:
                raise ValueError(f"{config_path}: bad 'layout' {want!r}: {e}; keys: num_sentinels, num_bins, class_names") from None
            if tok.layout != want:
                raise LayoutError(f"{directory / TOKENIZER_FILE} has layout {tok.layout}, but {config_path} says {want}")
        if tok.vocab_size != config.get("vocab_size"):
            raise ValueError(f"{directory / TOKENIZER_FILE} has vocab_size {tok.vocab_size}, "
                             f"but {config_path} says {config.get('vocab_size')}")
        return tok

    def model_card(self) -> CardInfo:
        """The default model card of :meth:`save_pretrained` and ``push_to_hub``."""
        layout = "no 4M layout" if self.layout is None else (
            f"{self.layout.num_sentinels} sentinels, {self.layout.num_bins} bins per box coordinate, class tokens "
            f"{', '.join(self.layout.class_names) or '(none)'}")
        summary = (f"The WordPiece text tokenizer of a fourm model: {self.vocab_size} ids in the 4M id layout "
                   f"({layout}). Captions and serialised boxes share it.\n\n```python\n"
                   "from fourm.vq.text import TextTokenizer\ntok = TextTokenizer.from_pretrained(\"<this repo or folder>\")"
                   "\n# or: transformers.AutoTokenizer.from_pretrained(\"<this repo or folder>\")\n```")
        return CardInfo(title="fourm TextTokenizer", summary=summary, pipeline_tag="any-to-any",
                        tags=("4m", "tokenizer", "wordpiece"))

    def save_pretrained(self, directory: str | os.PathLike, *, card: CardInfo | None = None) -> Path:
        """Write ``tokenizer.json`` and ``config.json`` (format version, layout, vocab size), the
        files of ``transformers.AutoTokenizer`` (:mod:`fourm.vq.text_transformers`) and a model card
        ``README.md`` (default :meth:`model_card`, only if the folder has none), each atomically.

        Returns:
            The folder.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        layout = None if self.layout is None else {
            "num_sentinels": self.layout.num_sentinels, "num_bins": self.layout.num_bins,
            "class_names": list(self.layout.class_names)}
        config = {"format_version": FORMAT_VERSION, "tokenizer_type": TOKENIZER_TYPE,
                  "vocab_size": self.vocab_size, "layout": layout}
        hf.write_transformers_files(directory, self._hub_backend(), self.transformers_special_tokens(),
                                    self.model_max_length)
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        write_model_card(directory, card or self.model_card(), overwrite=card is not None)
        return directory

    def transformers_special_tokens(self) -> dict[str, Any]:
        """The special tokens declared to ``transformers``: ``pad/unk/bos/eos_token`` ([PAD], [UNK],
        [SOS], [EOS], those the vocabulary has) and ``additional_special_tokens``: the sentinels and
        coordinate tokens of the 4M layout, in id order. Class names stay words."""
        roles = ("pad_token", "unk_token", "bos_token", "eos_token")
        out: dict[str, Any] = {r: t for r, t in zip(roles, SPECIAL_TOKENS) if self.token_to_id(t) is not None}
        if self.layout is not None:
            out["additional_special_tokens"] = self.layout.reserved_tokens()[len(SPECIAL_TOKENS):self.layout.first_class_id]
        return out

    def _hub_backend(self) -> Tokenizer:
        """The backend as saved: class-name tokens plain rather than special (see :mod:`fourm.vq.text_transformers`)."""
        if self.layout is None:
            return self._tok
        first = self.layout.first_class_id
        return hf.hub_backend(self._tok, range(first, first + len(self.layout.class_names)))

    def to_transformers(self) -> Any:
        """This tokenizer as a ``transformers.PreTrainedTokenizerFast`` (what
        ``AutoTokenizer.from_pretrained`` gives for a saved folder): same ids, pad/unk/bos/eos,
        sentinels and coordinate tokens declared special, ``model_max_length``."""
        return hf.to_transformers(self._hub_backend(), self.transformers_special_tokens(), self.model_max_length)

    # ---- layout -------------------------------------------------------------------------------------------
    def _need_layout(self, what: str) -> TextLayout:
        if self.layout is None:
            raise LayoutError(f"{what} needs the 4M id layout, which this tokenizer lacks: {self._layout_error}")
        return self.layout

    @property
    def backend(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (read it; adding tokens to it would desync this wrapper)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (ids are 0 .. vocab_size - 1)."""
        return self._vocab_size

    def _special_id(self, index: int) -> int:
        if self.layout is not None:
            return index
        token_id = self._tok.token_to_id(SPECIAL_TOKENS[index])
        if token_id is None:
            raise LayoutError(f"this tokenizer has no {SPECIAL_TOKENS[index]} token")
        return token_id

    pad_id = property(lambda self: self._special_id(PAD_ID), doc="Id of [PAD] (0).")
    unk_id = property(lambda self: self._special_id(UNK_ID), doc="Id of [UNK] (1).")
    sos_id = property(lambda self: self._special_id(SOS_ID), doc="Id of [SOS] (2).")
    eos_id = property(lambda self: self._special_id(EOS_ID), doc="Id of [EOS] (3).")

    @property
    def num_sentinels(self) -> int:
        return self._need_layout("num_sentinels").num_sentinels

    @property
    def num_bins(self) -> int:
        """Bins per coordinate axis (1000 in the reference)."""
        return self._need_layout("num_bins").num_bins

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names that are single tokens, in id order."""
        return self._need_layout("class_names").class_names

    def sentinel_id(self, index: int) -> int:
        """Id of sentinel ``[S_index]``; span masking uses 1, 2, ... ([S_0] exists but the reference never uses it)."""
        layout = self._need_layout("sentinel_id")
        if not 0 <= index < layout.num_sentinels:
            raise ValueError(f"sentinel index {index} out of range; allowed 0..{layout.num_sentinels - 1}")
        return len(SPECIAL_TOKENS) + index

    def coord_id(self, axis: int, bin_index: int) -> int:
        """Id of ``v{axis}={bin_index}``; axis 0..3 is xmin, ymin, xmax, ymax."""
        layout = self._need_layout("coord_id")
        if not 0 <= axis < NUM_AXES:
            raise ValueError(f"coordinate axis {axis} out of range; allowed 0..{NUM_AXES - 1} (xmin, ymin, xmax, ymax)")
        if not 0 <= bin_index < layout.num_bins:
            raise ValueError(f"coordinate bin {bin_index} out of range; allowed 0..{layout.num_bins - 1}")
        return layout.first_coord_id + axis * layout.num_bins + bin_index

    def class_id(self, name: str) -> int:
        """Id of the class token ``name``."""
        self._need_layout("class_id")
        try:
            return self._class_to_id[name]
        except KeyError:
            raise ValueError(f"unknown class {name!r}; class tokens: {', '.join(self._class_to_id) or '(none)'}") from None

    def sentinel_from_id(self, token_id: int) -> int | None:
        """The sentinel index of ``token_id``, or None if it is not a sentinel."""
        layout = self._need_layout("sentinel_from_id")
        index = token_id - len(SPECIAL_TOKENS)
        return index if 0 <= index < layout.num_sentinels else None

    def coord_from_id(self, token_id: int) -> tuple[int, int] | None:
        """``(axis, bin)`` of a coordinate token, or None if ``token_id`` is not one."""
        layout = self._need_layout("coord_from_id")
        offset = token_id - layout.first_coord_id
        if not 0 <= offset < NUM_AXES * layout.num_bins:
            return None
        return divmod(offset, layout.num_bins)

    def class_from_id(self, token_id: int) -> str | None:
        """The class name of a class token, or None if ``token_id`` is not one."""
        layout = self._need_layout("class_from_id")
        index = token_id - layout.first_class_id
        return layout.class_names[index] if 0 <= index < len(layout.class_names) else None

    # ---- text <-> ids -------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The backend's normalisation (lowercase, accents stripped, control characters removed, ...)."""
        normalizer = self._tok.normalizer
        return text if normalizer is None else normalizer.normalize_str(text)

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``: exactly the backend's ids, then [EOS] if ``add_eos``."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}; use encode_batch for several texts")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if add_eos else ids

    def encode_batch(self, texts: Sequence[str], *, add_eos: bool = False) -> list[list[int]]:
        """``encode`` over many texts (the backend runs them in parallel)."""
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch takes strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        out = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return [ids + [self.eos_id] for ids in out] if add_eos else out

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``. Sentinels, coordinate and class tokens decode to their text.

        Args:
            ids: token ids (list, numpy array or torch tensor), each in 0 .. vocab_size - 1.
            skip_special: drop [PAD], [SOS] and [EOS]. [UNK] is kept: dropping it would hide lost content.
                (The backend's own ``skip_special_tokens=True`` would also drop every sentinel, coordinate and
                class token, since the reference flags them all special: "a cat" would decode to "a".)

        Returns:
            The text, with pieces joined ("##" removed) and spaces before punctuation cleaned up.
        """
        ids = _as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range; allowed 0..{self._vocab_size - 1}")
        if skip_special:
            control = _CONTROL_IDS if self.layout is not None else {
                i for i in (self._tok.token_to_id(t) for t in ("[PAD]", "[SOS]", "[EOS]")) if i is not None}
            ids = [i for i in ids if i not in control]
        return self._tok.decode(ids, skip_special_tokens=False)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special: bool = True) -> list[str]:
        """``decode`` over several sequences."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary token (a piece such as ``"##s"`` or a reserved token), or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary token of ``token_id``, or None if out of range."""
        return self._tok.id_to_token(int(token_id))

    def __repr__(self) -> str:
        if self.layout is None:
            return f"TextTokenizer(vocab_size={self.vocab_size}, layout=None)"
        return (f"TextTokenizer(vocab_size={self.vocab_size}, num_sentinels={self.layout.num_sentinels}, "
                f"num_bins={self.layout.num_bins}, num_classes={len(self.layout.class_names)})")


def _bert_normalizer() -> normalizers.Normalizer:
    """The reference's normaliser (lowercase; accents stripped, as BERT does when lowercasing)."""
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)


def train_text_tokenizer(
    texts: Iterable[str],
    class_names: Sequence[str],
    vocab_size: int,
    *,
    num_sentinels: int = DEFAULT_NUM_SENTINELS,
    num_bins: int = DEFAULT_NUM_BINS,
    min_frequency: int = 0,
    show_progress: bool = True,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> TextTokenizer:
    """Train a WordPiece tokenizer with the 4M layout (specials, sentinels, coordinates, classes, pieces).

    The pipeline is the reference's: BertNormalizer (lowercase, clean text, CJK split, accents stripped),
    BertPreTokenizer, WordPiece with "##" continuation, no post-processor. Reserved tokens are flagged as
    the reference flags them (all special; class names matched after normalisation, the others verbatim;
    all must stand as whole words).

    Args:
        texts: training captions (any iterable; a list gives the progress bar a length).
        class_names: class names, each to become one token; may contain single spaces ("dining table");
            must be lowercase and normalised (the form the normaliser produces), unique.
        vocab_size: total ids, reserved tokens included; must exceed the reserved count
            (4 + num_sentinels + 4 * num_bins + len(class_names)).
        num_sentinels: sentinel tokens (reference: 200).
        num_bins: bins per coordinate axis (reference: 1000).
        min_frequency: pieces seen fewer times are not learned.
        show_progress: the trainer's progress bar.
        model_max_length: the longest sequence, as declared to ``transformers``.

    Returns:
        The trained tokenizer; its layout is verified id by id before it is returned.
    """
    layout = TextLayout(num_sentinels=num_sentinels, num_bins=num_bins, class_names=tuple(class_names))
    normalizer = _bert_normalizer()
    reserved = set(layout.reserved_tokens()[: layout.first_class_id])
    seen: set[str] = set()
    for name in layout.class_names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class name {name!r}: must be a non-empty string")
        canonical = " ".join(normalizer.normalize_str(name).split())
        if canonical != name:
            raise ValueError(f"class name {name!r} is not in normalised form; use {canonical!r} (lowercase, no accents, "
                             f"single spaces) so that text matches the class token")
        if name in reserved:
            raise ValueError(f"class name {name!r} collides with a reserved token; rename the class")
        if name in seen:
            raise ValueError(f"class name {name!r} appears twice in class_names")
        seen.add(name)
    if vocab_size <= layout.first_piece_id:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for word pieces: the layout reserves "
                         f"{layout.first_piece_id} ids (4 specials + {num_sentinels} sentinels + {NUM_AXES}x{num_bins} "
                         f"coordinates + {len(layout.class_names)} classes); raise vocab_size")

    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS[UNK_ID], continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    n_special, n_fixed = len(SPECIAL_TOKENS), layout.first_class_id
    special_tokens = [
        AddedToken(t, single_word=i >= n_special, normalized=i >= n_fixed, special=True)
        for i, t in enumerate(layout.reserved_tokens())
    ]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=special_tokens, continuing_subword_prefix="##",
                                        show_progress=show_progress)
    length = len(texts) if hasattr(texts, "__len__") else None
    raw_words: set[str] = set()  # whitespace-split words; normalising each distinct one is far cheaper than each text

    def texts_and_words() -> Iterable[str]:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"training texts must be strings, got {type(text).__name__}: {text!r}")
            raw_words.update(text.split())
            yield text

    tok.train_from_iterator(texts_and_words(), trainer=trainer, length=length)
    words = {w for raw in raw_words for w, _ in tok.pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(raw))}
    out = TextTokenizer(_canonical_pieces(tok, layout.first_piece_id, words), model_max_length=model_max_length)
    if out.layout != layout:  # the trainer places special tokens first, in order; check that it did
        raise RuntimeError(f"trained tokenizer has layout {out.layout}, expected {layout}")
    for token_id, token in enumerate(layout.reserved_tokens()):
        if out.token_to_id(token) != token_id:
            raise RuntimeError(f"reserved token {token!r} landed at id {out.token_to_id(token)}, expected {token_id}")
    return out


def _canonical_pieces(tok: Tokenizer, first_piece_id: int, words: set[str]) -> Tokenizer:
    """Keep the alphabet and the pieces the training words use, in sorted order from ``first_piece_id``.

    Hugging Face's trainer breaks ties between equally frequent pairs in hash-map order, which changes
    from run to run: the intermediate pieces of a merge chain ("squa" + "##re" or "sq" + "##uare")
    and every learned id then differ between runs on the same corpus. Once every training word is one
    piece those intermediates serve no word, so dropping them and sorting what is left makes the result
    a function of the corpus alone (when ``vocab_size`` cuts the merges short, pieces near the cut can
    still differ between runs).
    """
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    used = {t.value for w in words for t in tok.model.tokenize(w)}
    pieces = [t for t, i in vocab.items() if i >= first_piece_id and (t in used or len(t.removeprefix("##")) == 1)]
    pieces.sort(key=lambda t: (len(t.removeprefix("##")), t.removeprefix("##"), t.startswith("##")))
    vocab = {t: i for t, i in vocab.items() if i < first_piece_id}
    vocab.update((t, first_piece_id + k) for k, t in enumerate(pieces))
    state["model"]["vocab"] = vocab
    return Tokenizer.from_str(json.dumps(state))
