"""The attention kernel: the setting (auto | sdpa | xformers), its fallback, and agreement of the kernels.

xformers needs CUDA and is not installed in the CPU test environment: there the tests check the
selection logic (with stand-ins for "installed and usable") and the mask-to-bias glue of the
xformers path (with a stand-in for its kernel); the agreement of the real kernels runs only where
xformers runs (marked gpu; skipped without it).
"""
from __future__ import annotations

import math
import types

import pytest
import torch

import fourm.models.attention_kernels as att
from fourm.cli import main
from fourm.generation.commands import load_model
from fourm.models import FourM, attention, resolve_attention_backend, xformers_available
from test_model import make_batch, slots, tiny_config
from test_training import tok  # noqa: F401 - the token-shard fixture

XFORMERS_RUNS = torch.cuda.is_available() and att.xformers_usable("cuda")


def backends(model: FourM) -> set[str]:
    return {m.backend for m in model.modules() if hasattr(m, "backend")}


def test_auto_falls_back_to_sdpa_on_cpu():
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("sdpa", "cpu") == "sdpa"
    model = FourM(tiny_config())
    assert model.set_attention_backend("auto") == "sdpa" and backends(model) == {"sdpa"}
    if not xformers_available():  # this environment: no xformers at all
        assert resolve_attention_backend("auto", "cuda") == "sdpa"


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="attention='flash'; allowed: auto, sdpa, xformers"):
        resolve_attention_backend("flash", "cpu")
    with pytest.raises(ValueError, match="attention='xformers' cannot run on cpu .* use attention='auto'"):
        FourM(tiny_config()).set_attention_backend("xformers")
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="backend='xformers' needs xformers .* CUDA tensors"):
        attention(q, q, q, None, "xformers")
    with pytest.raises(ValueError, match="resolve 'auto'"):
        attention(q, q, q, None, "auto")


def test_auto_takes_xformers_only_where_it_runs(monkeypatch):
    runs_on = {"cuda:0"}
    monkeypatch.setattr(att, "xformers_usable", lambda device: device in runs_on)
    assert resolve_attention_backend("auto", "cuda:0") == "xformers"
    assert resolve_attention_backend("xformers", "cuda:0") == "xformers"
    assert resolve_attention_backend("sdpa", "cuda:0") == "sdpa"
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    runs_on.clear()  # installed, but broken for this GPU
    assert resolve_attention_backend("auto", "cuda:0") == "sdpa"
    with pytest.raises(ValueError, match="cannot run on cuda:0"):
        resolve_attention_backend("xformers", "cuda:0")


def test_xformers_is_not_usable_without_it_or_off_cuda(monkeypatch):
    att.xformers_usable.cache_clear()
    monkeypatch.setattr(att, "_xops", None)
    assert not att.xformers_usable("cuda:0")
    att.xformers_usable.cache_clear()
    monkeypatch.setattr(att, "_xops", types.SimpleNamespace(memory_efficient_attention=lambda q, k, v: q))
    assert not att.xformers_usable("cpu")
    att.xformers_usable.cache_clear()


def _reference_xformers_kernel(q, k, v, attn_bias=None):
    """What memory_efficient_attention computes, on (B, N, H, hd) tensors, written out."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if attn_bias is not None:
        scores = scores + attn_bias
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


@pytest.mark.parametrize("nk", [5, 8, 13])
def test_xformers_mask_glue_matches_sdpa(monkeypatch, nk):
    monkeypatch.setattr(att, "_xops", types.SimpleNamespace(memory_efficient_attention=_reference_xformers_kernel))
    g = torch.Generator().manual_seed(nk)
    q, k, v = torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, nk, 8, generator=g), torch.randn(2, 3, nk, 8, generator=g)
    mask = torch.rand(2, 1, 4, nk, generator=g) > 0.4
    mask[..., 0] = True  # every query sees a key (FourM guarantees it)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(att.xformers_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(att.xformers_attention(q, k, v, None),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not XFORMERS_RUNS, reason="xformers is not installed or does not run on a CUDA device here")
def test_sdpa_and_xformers_agree_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    model = FourM(tiny_config()).cuda().eval()
    batch = {m: {k: t.cuda() for k, t in e.items()} for m, e in make_batch(model.config.modalities, B=4).items()}
    n_in, n_out = slots(batch, model)
    with torch.no_grad():
        assert model.set_attention_backend("sdpa") == "sdpa"
        a = model(batch, n_in, n_out, return_logits=True)
        assert model.set_attention_backend("auto") == "xformers"
        b = model(batch, n_in, n_out, return_logits=True)
    for name in a.logits:
        torch.testing.assert_close(a.logits[name], b.logits[name], rtol=1e-4, atol=1e-4)


def test_cli_and_loader_take_the_setting(tmp_path, capsys):
    FourM(tiny_config()).save_pretrained(tmp_path / "m")
    assert backends(load_model(tmp_path / "m", "cpu", attention="auto")) == {"sdpa"}
    with pytest.raises(ValueError, match="cannot run on cpu"):
        load_model(tmp_path / "m", "cpu", attention="xformers")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "m"), "--target", "caption", "--attention", "flash"])
    assert e.value.code == 2 and "invalid choice: 'flash'" in capsys.readouterr().err
    rc = main(["eval", "--model", str(tmp_path / "m"), "--attention", "xformers", "--num-samples", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "attention='xformers' cannot run on cpu" in err and len(err.strip().splitlines()) == 1


def test_run_config_sets_the_kernel(tmp_path, tok):
    from fourm.config import ConfigError
    from test_training import tiny, trainer_of

    trainer = trainer_of(tiny(tmp_path / "run", tok, "steps=2", "model.attention=auto"))
    try:
        assert backends(trainer.accelerator.unwrap_model(trainer.model)) == {"sdpa"}  # CPU: auto falls back
    finally:
        trainer.close()
    with pytest.raises(ConfigError, match="attention='flash'; allowed: auto, sdpa, xformers"):
        tiny(tmp_path / "bad", tok, "model.attention=flash")
    with pytest.raises(ValueError, match="attention='xformers' cannot run on cpu"):
        trainer_of(tiny(tmp_path / "x", tok, "steps=2", "model.attention=xformers"))
