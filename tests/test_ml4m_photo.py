"""A photo through a model in the reference's format and reference tokenizers, end to end.

The fixture models are random, so only shapes, ranges and the absence of errors are asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.cli import main as cli
from fourm.compat.ml4m import load_ml4m
from fourm.generation.photo import check_vocab, picture, restrict_vocab, run_photo, save_photo_result
from fourm.compat.ml4m_tokenizer import load_reference_tokenizers
from fourm.generation import Target


def _photo() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:  # scikit-image is a dev dependency; any photo-like image will do
        g = np.random.default_rng(0)
        return (g.random((300, 400, 3)) * 255).astype(np.uint8)
    return data.astronaut()  # (512, 512, 3) uint8


@pytest.fixture
def reference(ml4m_fixtures):
    return load_ml4m(ml4m_fixtures / "small"), load_reference_tokenizers(ml4m_fixtures / "tokenizers")


def test_photo_to_depth_and_semseg(reference, tmp_path):
    model, toks = reference
    res = run_photo(model, toks, _photo(), seed=0, num_samples=2, decode_steps=2, fit_vocab=True)
    assert res.photo.shape == (224, 224, 3) and res.photo.dtype == np.uint8
    assert set(res.decoded) == {"tok_depth@224", "tok_semseg@224"}
    depth, semseg = res.decoded["tok_depth@224"], res.decoded["tok_semseg@224"]
    assert depth.shape == (2, 112, 112) and depth.dtype == torch.float32  # 14 x 14 tokens x patch 8
    assert semseg.shape == (2, 56, 56) and semseg.dtype == torch.uint8 and int(semseg.max()) < 134
    assert res.tokens["tok_depth@224"].shape == (2, 14, 14) and int(res.tokens["tok_depth@224"].max()) < 128
    assert {"tokenize_rgb", "generate", "decode_tok_depth@224"} <= set(res.seconds)
    report = save_photo_result(res, tmp_path / "out", tile=64)
    grid = Image.open(tmp_path / "out" / "grid.png")
    assert grid.size == (3 * 64, 2 * 64 + 16)
    for key in ("photo", "tok_depth@224_0", "tok_semseg@224_1"):
        assert Image.open(report["files"][key]).size == (64, 64)
    assert np.load(tmp_path / "out" / "tok_depth@224_1.npy").shape == (112, 112)


def test_inputs_and_targets_options(reference):
    model, toks = reference
    res = run_photo(model, toks, _photo(), [Target("tok_semseg@224", steps=2, temperature=0.5)], rgb_input="tokens")
    assert list(res.decoded) == ["tok_semseg@224"] and "tokenize_rgb" in res.seconds
    res = run_photo(model, toks, _photo(), [Target("tok_semseg@224", steps=1)], rgb_input="pixels")
    assert "tokenize_rgb" not in res.seconds
    res = run_photo(model, toks, _photo(), [Target("tok_clip@224", steps=1)], fit_vocab=True)  # features: PCA colours
    assert res.decoded["tok_clip@224"].shape == (1, 512, 14, 14)
    assert picture(res.kinds["tok_clip@224"], res.decoded["tok_clip@224"][0]).shape == (14, 14, 3)
    with pytest.raises(ValueError, match="rgb_input='all'"):
        run_photo(model, toks, _photo(), rgb_input="all")
    with pytest.raises(ValueError, match=r"no tokenizer to decode \['tok_normal@224'\]"):
        run_photo(model, toks, _photo(), [Target("tok_normal@224")])


def test_vocabulary_mismatch_is_named_or_fitted(reference):
    model, toks = reference
    with pytest.raises(ValueError, match="tok_depth@224 has 256 token ids but the depth tokenizer has 128 codes.*--fit-vocab"):
        check_vocab(model, toks, ["tok_depth@224"], fit_vocab=False)
    cut = check_vocab(model, toks, ["tok_depth@224", "tok_semseg@224"], fit_vocab=True)
    assert cut.specs["tok_depth@224"].vocab_size == 128 and cut.specs["tok_semseg@224"].vocab_size == 128
    a, b = model.state_dict(), cut.state_dict()
    assert torch.equal(b["decoder_embeddings.tok_depth@224.to_logits.weight"],
                       a["decoder_embeddings.tok_depth@224.to_logits.weight"][:128])
    assert torch.equal(b["decoder.0.mlp.fc1.weight"], a["decoder.0.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="caption"):
        restrict_vocab(model, {"caption": 10**6})


def test_generate_image_command(ml4m_fixtures, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo()).save(photo)
    base = ["generate", "--model", str(ml4m_fixtures / "small"), "--tokenizers", str(ml4m_fixtures / "tokenizers"),
            "--image", str(photo), "--decode-steps", "2", "--out", str(tmp_path / "out")]
    assert cli(base) == 2  # the fixture model's depth vocabulary (256) is larger than its tokenizer's (128)
    assert "--fit-vocab" in capsys.readouterr().err
    assert cli([*base, "--fit-vocab", "--decode-sampler", "ddim", "--target", "tok_depth@224:steps=2"]) == 0
    assert "grid.png" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(report["files"]) == {"photo", "tok_depth@224_0", "grid"}
    assert report["settings"]["decode_sampler"] == "ddim" and len(report["tokens"]["tok_depth@224"][0].split()) == 196
