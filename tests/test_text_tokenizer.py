"""The WordPiece text tokenizer: the 4M id layout, exact ids on the reference's file, training, save/load."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import FIXTURES, require_shared
from fourm.vq.text import (
    UNK_ID,
    LayoutError,
    TextLayout,
    TextTokenizer,
    coord_token,
    sentinel_token,
    train_text_tokenizer,
)

REF_NAME = "text_tokenizer/text_tokenizer_4m_wordpiece_30k.json"
CLASSES = ["circle", "square", "triangle", "dining table"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["small", "large", "tiny", "big"]
RELATIONS = ["left of", "right of", "in front of", "behind", "above", "below"]

# Strings the reference file must tokenise exactly like tokenizers.Tokenizer.from_file does.
PROBES = [
    "", " ", "a dog", "A man riding a wave on top of a surfboard.", "Two cats sleeping on a couch; one is orange!",
    "[S_1] v0=12 v1=40 v2=300 v3=512 dog [EOS]", "v0=0 v1=250 v2=420 v3=999 potted plant v0=400 v1=0 v2=999 v3=999 dining table",
    "[S_0][S_1] [S_199] [S_200] [s_1] [S_1]dog dog[S_2]", "[PAD][PAD] [SOS] hello [EOS] [UNK]", "V0=12 v0=1000 v4=3 v0=-1 v0=12,v1=3",
    "Dining Table", "dining  table", "hot dog teddy bear hotdog", "cats dogs wine glasses", "wine glass", "sports ballet",
    "Héllo wörld naïve café", "你好世界 中文", "emoji 😀🎉 ok", "tab\tnew\nline\r\x00control\x07", "don't can't it's we're",
    "(parentheses) [brackets] {braces} <angle>", "123 4.56 7,890 1e10 #hash @at", "supercalifragilisticexpialidocious",
    "a" * 150, "ÅΩπ∑ ß ﬁ ligature", "person person person", "UPPER lower MiXeD",
]


def _captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(CLASSES), rng.choice(CLASSES)
        out.append(f"A {rng.choice(SIZES)} {rng.choice(COLOURS)} {a} is {rng.choice(RELATIONS)} "
                   f"the {rng.choice(COLOURS)} {b}{rng.choice(['.', '', ', near the edge.'])}")
    return out


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def ref_path() -> Path:
    return require_shared(FIXTURES / "ml4m" / REF_NAME)


@pytest.fixture(scope="module")
def ref(ref_path) -> TextTokenizer:
    return TextTokenizer.from_file(ref_path)


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return _captions(300, seed=0)


@pytest.fixture(scope="module")
def tiny(captions) -> TextTokenizer:
    return train_text_tokenizer(captions, CLASSES, vocab_size=4500, show_progress=False)


# ---- the reference's file ---------------------------------------------------------------------------------
def test_reference_layout_is_detected(ref):
    # Golden values from ../shared/fixtures/ml4m/README.md (the file's documented layout).
    assert ref.vocab_size == 30000
    assert (ref.pad_id, ref.unk_id, ref.sos_id, ref.eos_id) == (0, 1, 2, 3)
    assert (ref.num_sentinels, ref.num_bins) == (200, 1000)
    assert (ref.sentinel_id(0), ref.sentinel_id(1), ref.sentinel_id(199)) == (4, 5, 203)
    assert (ref.coord_id(0, 0), ref.coord_id(0, 999), ref.coord_id(1, 0), ref.coord_id(3, 999)) == (204, 1203, 1204, 4203)
    assert len(ref.class_names) == 80 and ref.class_names[0] == "airplane" and ref.class_names[-1] == "zebra"
    assert ref.class_id("airplane") == 4204 and ref.class_id("zebra") == 4283 and ref.class_id("cat") == 4224
    assert sum(" " in c for c in ref.class_names) == 15
    assert ref.layout.first_piece_id == 4284


def test_reference_documented_example(ref):
    ids = ref.encode("[S_1] v0=12 v1=40 v2=300 v3=512 dog [EOS]")
    assert ids == [5, 216, 1244, 2504, 3716, 4232, 3]  # the README's example
    assert ref.coord_from_id(216) == (0, 12) and ref.coord_from_id(3716) == (3, 512)
    assert ref.sentinel_from_id(5) == 1 and ref.class_from_id(4232) == "dog"
    assert ref.coord_from_id(5) is None and ref.sentinel_from_id(216) is None and ref.class_from_id(4284) is None


def test_reference_ids_equal_backend(ref, ref_path):
    backend = Tokenizer.from_file(str(ref_path))
    probes = PROBES + _captions(50, seed=1)
    for text in probes:
        assert ref.encode(text) == backend.encode(text).ids, text
    assert ref.encode_batch(probes) == [e.ids for e in backend.encode_batch(probes)]
    assert ref.encode("a cat") == backend.encode("a cat").ids and 4224 in ref.encode("a cat")  # word = class token


def test_reference_unknown_and_unicode(ref):
    ids = ref.encode("emoji 😀 ok")
    assert ids.count(ref.unk_id) == 1
    assert ref.decode(ref.encode("Héllo wörld")) == "hello world"  # BERT lowercasing also strips accents


def test_decode_keeps_reserved_tokens_and_drops_control(ref):
    assert ref.decode(ref.encode("a cat sat on the dining table.")) == "a cat sat on the dining table."
    ids = ref.encode("[S_1] v0=12 v1=40 v2=300 v3=512 dog [EOS]") + [ref.pad_id] * 3
    assert ref.decode(ids) == "[S_1] v0=12 v1=40 v2=300 v3=512 dog"
    assert ref.decode(ids, skip_special=False) == "[S_1] v0=12 v1=40 v2=300 v3=512 dog [EOS] [PAD] [PAD] [PAD]"
    # The backend's own skip_special_tokens drops class and coordinate tokens: the reason decode filters itself.
    assert ref.backend.decode(ref.encode("a cat sat"), skip_special_tokens=True) == "a sat"
    with pytest.raises(ValueError, match="30000"):
        ref.decode([5, 30000])


def test_add_eos(ref):
    assert ref.encode("a dog", add_eos=True) == ref.encode("a dog") + [3]
    assert ref.encode_batch(["a", "b"], add_eos=True) == [ref.encode("a", add_eos=True), ref.encode("b", add_eos=True)]


def test_reference_save_load_round_trip(ref, tmp_path):
    ref.save_pretrained(tmp_path / "ref")
    again = TextTokenizer.from_pretrained(tmp_path / "ref")
    assert again.layout == ref.layout
    assert again.encode_batch(PROBES) == ref.encode_batch(PROBES)


# ---- layout validation ------------------------------------------------------------------------------------
def _edited(tok: TextTokenizer, edit) -> Tokenizer:
    state = json.loads(tok.backend.to_str())
    edit(state)
    return Tokenizer.from_str(json.dumps(state))


def _rename(state: dict, token_id: int, new: str) -> None:
    old = next(t["content"] for t in state["added_tokens"] if t["id"] == token_id)
    next(t for t in state["added_tokens"] if t["id"] == token_id)["content"] = new
    vocab = state["model"]["vocab"]
    vocab[new] = vocab.pop(old)


def test_layout_errors_name_the_problem(tiny):
    swapped = _edited(tiny, lambda s: _rename(s, 7, "[S_X]"))
    with pytest.raises(LayoutError, match=r"id 7 is '\[S_X\]', expected '\[S_3\]' or the first coordinate token 'v0=0'"):
        TextTokenizer(swapped)
    bad_coord = _edited(tiny, lambda s: _rename(s, tiny.coord_id(2, 5), "v2=five"))
    with pytest.raises(LayoutError, match=r"expected 'v2=5'"):
        TextTokenizer(bad_coord)

    def not_added(state):
        state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] != "[S_3]"]
    with pytest.raises(LayoutError, match=r"'\[S_3\]' \(id 7\).*not an added token"):
        TextTokenizer(_edited(tiny, not_added))

    with pytest.raises(LayoutError, match=r"id 2 is 'hello', expected '\[SOS\]'"):
        TextTokenizer(_plain())
    bare = Tokenizer(models.WordPiece({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(LayoutError, match=r"'\[PAD\]' \(id 0\) is in the vocabulary but is not an added token"):
        TextTokenizer(bare)


def _plain() -> Tokenizer:
    plain = Tokenizer(models.WordPiece({"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "##s": 4}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    plain.add_special_tokens(["[PAD]", "[UNK]"])
    return plain


def test_opt_out_loads_arbitrary_files(tmp_path):
    plain = _plain()
    path = tmp_path / "plain.json"
    plain.save(str(path))
    with pytest.raises(LayoutError):
        TextTokenizer.from_file(path)
    tok = TextTokenizer.from_file(path, require_layout=False)
    assert tok.layout is None
    assert tok.encode("hello worlds zzz") == plain.encode("hello worlds zzz").ids == [2, 3, 4, 1]
    assert tok.pad_id == 0 and tok.decode([2, 0, 3]) == "hello world"
    with pytest.raises(LayoutError, match="coord_id needs the 4M id layout.*expected '\\[SOS\\]'"):
        tok.coord_id(0, 1)
    with pytest.raises(LayoutError, match=r"no \[EOS\]"):
        tok.eos_id
    tok.save_pretrained(tmp_path / "plain")
    assert TextTokenizer.from_pretrained(tmp_path / "plain").encode("hello worlds") == [2, 3, 4]


def test_bad_arguments(ref):
    with pytest.raises(ValueError, match="sentinel index 200"):
        ref.sentinel_id(200)
    with pytest.raises(ValueError, match="axis 4"):
        ref.coord_id(4, 0)
    with pytest.raises(ValueError, match="bin 1000"):
        ref.coord_id(0, 1000)
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        ref.class_id("unicorn")
    with pytest.raises(TypeError, match="encode_batch"):
        ref.encode(["a", "b"])


# ---- training ---------------------------------------------------------------------------------------------
def test_trained_layout_is_exact(tiny):
    assert tiny.layout == TextLayout(num_sentinels=200, num_bins=1000, class_names=tuple(CLASSES))
    expected = ["[PAD]", "[UNK]", "[SOS]", "[EOS]"] + [sentinel_token(i) for i in range(200)]
    expected += [coord_token(a, b) for a in range(4) for b in range(1000)] + CLASSES
    assert [tiny.id_to_token(i) for i in range(len(expected))] == expected
    assert tiny.class_id("dining table") == 4204 + 3
    added = tiny.backend.get_added_tokens_decoder()
    assert sorted(added) == list(range(len(expected)))  # reserved tokens are added tokens; pieces are not
    assert 4208 < tiny.vocab_size <= 4500
    assert tiny.encode("[S_1] v0=12 v1=40 v2=300 v3=512 circle [EOS]") == [5, 216, 1244, 2504, 3716, 4204, 3]
    assert tiny.encode("a dining table") == [tiny.token_to_id("a"), 4207]


def test_trained_round_trips_training_words(tiny, captions):
    for text in captions:
        ids = tiny.encode(text)
        assert tiny.unk_id not in ids, text
        assert tiny.decode(ids) == _normalised(text)
    words = {w for c in captions for w in c.lower().replace(".", " ").replace(",", " ").split()}
    for w in words - set(CLASSES) - {"dining", "table"}:
        assert len(tiny.encode(w)) == 1, w  # with room to spare, every training word becomes one piece
    assert tiny.encode("circles") == [tiny.class_id("circle"), tiny.token_to_id("##s")]
    assert tiny.decode(tiny.encode("reds squares")) == "reds squares"  # unseen words: pieces, not [UNK]
    assert tiny.encode("zebra") == [tiny.unk_id]  # 'z' never occurs in training


def test_training_is_reproducible(captions, tiny):
    again = train_text_tokenizer(captions, CLASSES, vocab_size=4500, show_progress=False)
    assert again.backend.get_vocab() == tiny.backend.get_vocab()


def test_train_rejects_bad_inputs(captions):
    with pytest.raises(ValueError, match="'Circle' is not in normalised form; use 'circle'"):
        train_text_tokenizer(captions, ["Circle"], vocab_size=4500, show_progress=False)
    with pytest.raises(ValueError, match="'dining  table' is not in normalised form"):
        train_text_tokenizer(captions, ["dining  table"], vocab_size=4500, show_progress=False)
    with pytest.raises(ValueError, match="appears twice"):
        train_text_tokenizer(captions, ["circle", "circle"], vocab_size=4500, show_progress=False)
    with pytest.raises(ValueError, match="collides with a reserved token"):
        train_text_tokenizer(captions, ["v0=3"], vocab_size=4500, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size=4205 leaves no room.*reserves 4205 ids"):
        train_text_tokenizer(captions, ["circle"], vocab_size=4205, show_progress=False)
    with pytest.raises(TypeError, match="must be strings"):
        train_text_tokenizer(["ok", 3], ["circle"], vocab_size=4500, show_progress=False)


def test_small_layouts_train_and_load(captions, tmp_path):
    tok = train_text_tokenizer(captions, ["circle"], vocab_size=200, num_sentinels=8, num_bins=16, show_progress=False)
    assert (tok.num_sentinels, tok.num_bins, tok.coord_id(3, 15), tok.class_id("circle")) == (8, 16, 75, 76)
    tok.save_pretrained(tmp_path / "small")
    assert TextTokenizer.from_pretrained(tmp_path / "small").layout == tok.layout


# ---- save / load ------------------------------------------------------------------------------------------
def test_save_load_round_trip(tiny, captions, tmp_path):
    out = tiny.save_pretrained(tmp_path / "text")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]  # no temporary files left
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 1 and config["layout"]["class_names"] == CLASSES
    assert config["layout"]["num_bins"] == 1000 and config["vocab_size"] == tiny.vocab_size
    again = TextTokenizer.from_pretrained(out)
    probes = captions[:50] + PROBES
    assert again.encode_batch(probes) == tiny.encode_batch(probes)
    assert again.layout == tiny.layout
    # tokenizer.json is a plain Hugging Face file
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(captions[0]).ids == tiny.encode(captions[0])


def test_from_pretrained_rejects_bad_configs(tiny, tmp_path):
    def saved_with(**changes) -> Path:
        d = tiny.save_pretrained(tmp_path / str(len(list(tmp_path.iterdir()))))
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))
        return d

    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        TextTokenizer.from_pretrained(saved_with(format_version=99))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        TextTokenizer.from_pretrained(saved_with(colour="red"))
    with pytest.raises(LayoutError, match="says"):
        TextTokenizer.from_pretrained(saved_with(layout={"num_sentinels": 200, "num_bins": 1000, "class_names": ["x"]}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextTokenizer.from_pretrained(tmp_path / "missing")


def test_pickle_keeps_ids(tiny, captions):
    again = pickle.loads(pickle.dumps(tiny))  # DataLoader workers receive tokenizers this way
    assert again.encode_batch(captions[:20]) == tiny.encode_batch(captions[:20])
    assert again.layout == tiny.layout


def test_train_text_cli_on_your_own_shards(tmp_path, capsys):
    """`fourm tokenizer train-text --shards`: captions of raw shards, your box classes as single tokens;
    a sample without the text field is skipped and reported."""
    from fourm.cli import main
    from fourm.data.shards import ShardWriter, encode_sample

    rng = random.Random(0)
    animals, colours = ["zebra", "giraffe", "hippo"], ["striped", "spotted", "grey", "muddy"]
    with ShardWriter(tmp_path / "raw", shard_size=100) as w:
        for i in range(300):
            text = " and ".join(f"a {rng.choice(colours)} {rng.choice(animals)}" for _ in range(rng.randint(1, 3)))
            w.write(f"{i:06d}", encode_sample({"caption": text}))
        w.write("no_text", encode_sample({"other": "x"}))
    out = tmp_path / "text"
    assert main(["tokenizer", "train-text", "--out", str(out), "--shards", str(tmp_path / "raw"),
                 "--classes", "zebra,giraffe,hippo, sea lion", "--vocab-size", "4400"]) == 0
    assert "1 samples without a 'caption' text" in capsys.readouterr().out
    tok = TextTokenizer.from_pretrained(out)
    assert tok.class_names == ("zebra", "giraffe", "hippo", "sea lion")
    assert [len(tok.encode(c)) for c in tok.class_names] == [1, 1, 1, 1]
    text = "a muddy hippo and a spotted giraffe"
    assert tok.decode(tok.encode(text)) == text
    assert UNK_ID not in tok.encode("a striped zebra")
    capsys.readouterr()
    assert main(["tokenizer", "train-text", "--out", str(tmp_path / "t2"), "--shards", str(tmp_path / "raw"),
                 "--field", "title"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: --shards") and "no sample has a text field 'title'" in last
    assert main(["tokenizer", "train-text", "--out", str(tmp_path / "t3"), "--shards", str(tmp_path / "raw"),
                 "--classes", "Zebra"]) == 2
    assert "class name 'Zebra' is not in normalised form" in capsys.readouterr().err
