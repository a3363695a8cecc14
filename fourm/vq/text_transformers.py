"""The text tokenizer as Hugging Face ``transformers`` sees it.

``TextTokenizer.save_pretrained`` writes, beside fourm's own ``config.json``, the files from which
``transformers.AutoTokenizer.from_pretrained(folder)`` builds a ``PreTrainedTokenizerFast`` that
gives the same ids as ``TextTokenizer.encode`` (no [SOS]/[EOS] added: fourm appends [EOS] itself
where a sequence needs it)::

    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained("tokenizers/shapes64/text")
    batch = hf(["a red circle", "v0=12 v1=40 v2=300 v3=512 circle"], padding=True, return_tensors="pt")
    hf.batch_decode(batch["input_ids"], skip_special_tokens=True)

* ``tokenizer.json``: the backend, with class-name tokens (``circle``) as plain added tokens rather
  than special ones: the reference flags them special, and then ``decode(skip_special_tokens=True)``
  would drop every class name from a caption. Ids and encoding are unchanged (the flag only
  matters to decoding).
* ``tokenizer_config.json``: ``PreTrainedTokenizerFast`` with pad ``[PAD]``, unk ``[UNK]``, bos
  ``[SOS]``, eos ``[EOS]``, the sentinels and box coordinate tokens as additional special tokens, a
  ``model_max_length`` and right padding.
* ``special_tokens_map.json``: the same special tokens (transformers 4 reads them from here).

:func:`to_transformers` builds the same object in memory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping

from tokenizers import Tokenizer

from fourm.atomic import atomic_write_text

if TYPE_CHECKING:  # imported for real only by to_transformers: transformers takes seconds to import
    from transformers import PreTrainedTokenizerFast

TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
DEFAULT_MODEL_MAX_LENGTH = 256  # the reference's caption length (ml-4m modality_info: max_tokens 256)


def hub_backend(backend: Tokenizer, word_ids: Collection[int]) -> Tokenizer:
    """A copy of ``backend`` in which the added tokens ``word_ids`` (class names) are plain, not
    special: same ids, same encoding; only ``decode(skip_special_tokens=True)`` keeps them."""
    state = json.loads(backend.to_str())
    for entry in state["added_tokens"]:
        if entry["id"] in word_ids:
            entry["special"] = False
    return Tokenizer.from_str(json.dumps(state))


def tokenizer_config(special_tokens: Mapping[str, Any], model_max_length: int) -> dict[str, Any]:
    """The content of ``tokenizer_config.json``: the class, the special tokens (``pad_token`` ...,
    ``additional_special_tokens``), ``model_max_length`` and right padding."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
            "padding_side": "right", "truncation_side": "right", "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"], **special_tokens}


def write_transformers_files(directory: str | os.PathLike, backend: Tokenizer, special_tokens: Mapping[str, Any],
                             model_max_length: int) -> None:
    """Write ``tokenizer.json`` (``backend`` as is), ``tokenizer_config.json`` and
    ``special_tokens_map.json``, each atomically."""
    directory = Path(directory)
    atomic_write_text(directory / TOKENIZER_FILE, backend.to_str(pretty=True))
    config = tokenizer_config(special_tokens, model_max_length)
    atomic_write_text(directory / HF_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    atomic_write_text(directory / SPECIAL_TOKENS_MAP_FILE, json.dumps(dict(special_tokens), indent=2) + "\n")


def read_model_max_length(directory: str | os.PathLike) -> int | None:
    """``model_max_length`` of a folder's ``tokenizer_config.json`` (None without one)."""
    path = Path(directory) / HF_CONFIG_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{path}: model_max_length={value!r}; expected an integer >= 1")
    return value


def to_transformers(backend: Tokenizer, special_tokens: Mapping[str, Any], model_max_length: int) -> "PreTrainedTokenizerFast":
    """A ``transformers.PreTrainedTokenizerFast`` around ``backend`` (what ``AutoTokenizer`` loads
    from the files of :func:`write_transformers_files`)."""
    from transformers import PreTrainedTokenizerFast

    config = tokenizer_config(special_tokens, model_max_length)
    config.pop("tokenizer_class")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config)
