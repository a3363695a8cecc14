"""A model in the 4M reference's format, with the reference's text tokenizer, through the same sampler."""
from __future__ import annotations

import torch

from fourm.compat.ml4m import load_ml4m
from fourm.generation import Sampler, Target
from fourm.vq.text import TextTokenizer


def test_reference_model_generates_captions_that_decode(ml4m_fixtures):
    model = load_ml4m(ml4m_fixtures / "small")
    text = TextTokenizer.from_file(ml4m_fixtures / "text_tokenizer" / "text_tokenizer_4m_wordpiece_30k.json")
    g = torch.Generator().manual_seed(0)
    inputs = {"tok_rgb@224": torch.randint(0, 512, (2, 14, 14), generator=g),
              "rgb@224": torch.randn(2, 3, 224, 224, generator=g)}
    s = Sampler(model, {"text": text})
    targets = [Target("caption", max_tokens=24, temperature=0.7), Target("det", max_tokens=20, cfg_scale=2.0),
               Target("tok_depth@224", steps=2, cfg_scale=2.0, cfg_conditions=("caption",))]
    out = s.generate(inputs, targets, seed=0, keep_logits=True)
    dec = out.decode({"text": text}, ["caption", "det"])
    assert len(dec["caption"]) == 2 and all(isinstance(c, str) for c in dec["caption"])
    assert all(isinstance(d, list) for d in dec["det"])
    assert all(0 <= t < 256 for ids in out.sequences("caption") for t in ids)  # the fixture's caption vocabulary
    assert out.tokens("tok_depth@224").shape == (2, 196)
    # the key/value cache is exact on the reference architecture too (512-row position tables)
    plain = Sampler(model, {"text": text}, use_cache=False).generate(inputs, targets[:1], seed=0, keep_logits=True)
    assert plain.spans["caption"] == out.spans["caption"]
    torch.testing.assert_close(plain.logits["caption"], out.logits["caption"], atol=1e-5, rtol=0)
