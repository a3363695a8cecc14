"""transformers.AutoTokenizer reads a saved text tokenizer: same ids, special tokens, padding, decoding."""
from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import REPO
from fourm.data.shapes_world import render_scene
from fourm.vq.boxes import boxes_to_ids, boxes_to_text
from fourm.vq.text import TextTokenizer

BUNDLED = REPO / "tokenizers" / "shapes64" / "text"
SCENES = [render_scene(7, i) for i in range(24)]
CAPTIONS = [s["caption"] for s in SCENES]
BOXES = [boxes_to_text(s["det"]) for s in SCENES]
SPANS = ["a [S_1] circle [S_2] left of a [S_3]", "[S_0] v0=0 v1=999 v2=500 v3=1 diamond [S_1]"]


@pytest.fixture(scope="module")
def fourm_tok() -> TextTokenizer:
    return TextTokenizer.from_pretrained(BUNDLED)


@pytest.fixture(scope="module", params=["committed", "saved", "in memory"])
def hf_tok(request, fourm_tok, tmp_path_factory) -> PreTrainedTokenizerFast:
    if request.param == "committed":  # tokenizers/shapes64/text as committed
        return AutoTokenizer.from_pretrained(BUNDLED)
    if request.param == "saved":  # what save_pretrained writes today
        return AutoTokenizer.from_pretrained(fourm_tok.save_pretrained(tmp_path_factory.mktemp("text")))
    return fourm_tok.to_transformers()


def test_same_ids_as_fourm(hf_tok, fourm_tok):
    assert isinstance(hf_tok, PreTrainedTokenizerFast)
    texts = CAPTIONS + BOXES + SPANS + ["A RED Circle, déjà vu!", "zzz qqq"]
    assert hf_tok(texts)["input_ids"] == fourm_tok.encode_batch(texts)
    assert hf_tok(BOXES[0])["input_ids"] == boxes_to_ids(SCENES[0]["det"], fourm_tok)
    assert len(hf_tok) == fourm_tok.vocab_size and hf_tok.get_vocab() == fourm_tok.backend.get_vocab()


def test_special_tokens_are_declared(hf_tok, fourm_tok):
    assert (hf_tok.pad_token, hf_tok.unk_token, hf_tok.bos_token, hf_tok.eos_token) == ("[PAD]", "[UNK]", "[SOS]", "[EOS]")
    assert (hf_tok.pad_token_id, hf_tok.unk_token_id, hf_tok.bos_token_id, hf_tok.eos_token_id) == (
        fourm_tok.pad_id, fourm_tok.unk_id, fourm_tok.sos_id, fourm_tok.eos_id)
    special = set(hf_tok.all_special_ids)
    sentinels = {fourm_tok.sentinel_id(i) for i in range(fourm_tok.num_sentinels)}
    coords = {fourm_tok.coord_id(a, b) for a in range(4) for b in range(fourm_tok.num_bins)}
    assert sentinels | coords | {0, 1, 2, 3} == special  # class names are words, not special tokens
    assert hf_tok.model_max_length == 64 and hf_tok.padding_side == "right"


def test_batch_padding_truncation_and_decoding(hf_tok, fourm_tok):
    texts = [CAPTIONS[0], BOXES[1], "a circle"]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = [len(fourm_tok.encode(t)) for t in texts]
    assert ids.shape == (3, max(lengths)) and mask.sum(1).tolist() == lengths
    assert (ids[mask == 0] == fourm_tok.pad_id).all()
    # skip_special_tokens drops padding, sentinels and coordinates, and keeps class names
    assert hf_tok.batch_decode(ids, skip_special_tokens=True)[0] == fourm_tok.decode(fourm_tok.encode(CAPTIONS[0]))
    assert "circle" in hf_tok.decode(ids[2], skip_special_tokens=True)
    # without skipping, a box string decodes as fourm decodes it (coordinates and classes kept)
    for row, text in zip(ids, texts):
        assert hf_tok.decode(row[row != fourm_tok.pad_id]) == fourm_tok.decode(fourm_tok.encode(text), skip_special=False)
    long = " ".join(CAPTIONS)
    assert len(hf_tok(long, truncation=True)["input_ids"]) == 64 < len(fourm_tok.encode(long))
    assert hf_tok(["a", "a red circle"], padding="max_length")["input_ids"][0][-1] == fourm_tok.pad_id


def test_round_trip_keeps_words(hf_tok, fourm_tok):
    for caption in CAPTIONS[:8]:
        ids = hf_tok(caption)["input_ids"]
        assert fourm_tok.unk_id not in ids
        decoded = hf_tok.decode(ids)
        assert re.findall(r"\w+", decoded) == re.findall(r"\w+", caption.lower()) and decoded == fourm_tok.decode(ids)


def test_class_names_as_words_keep_every_id(fourm_tok):
    """The saved tokenizer.json flags class tokens as plain words; the reference flags them special.
    Both encode every caption, box string and vocabulary entry alike."""
    import json

    from tokenizers import Tokenizer

    state = json.loads(fourm_tok.backend.to_str())
    first = fourm_tok.layout.first_class_id
    for entry in state["added_tokens"]:
        if first <= entry["id"] < first + len(fourm_tok.class_names):
            assert entry["special"] is False
            entry["special"] = True
    as_reference = Tokenizer.from_str(json.dumps(state))
    vocab = list(fourm_tok.backend.get_vocab())
    texts = CAPTIONS + BOXES + SPANS + vocab + [" ".join(vocab[i:i + 40]) for i in range(0, len(vocab), 40)]
    assert [e.ids for e in as_reference.encode_batch(texts, add_special_tokens=False)] == fourm_tok.encode_batch(texts)
    assert as_reference.decode(fourm_tok.encode("a red circle"), skip_special_tokens=True) == "a red"  # why they are words
