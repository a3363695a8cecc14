"""The 4M reference's tokenizers in fourm against numbers recorded with the reference
(../shared/fixtures/ml4m/tokenizers) and against the released tokenizers' state-dict layouts."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fourm.compat.ml4m import main
from fourm.compat.ml4m_tokenizer import load_reference_tokenizer, load_reference_tokenizers
from fourm.compat.ml4m_tokenizer_check import check_tokenizer, compare_tokenizer_layout
from fourm.compat.ml4m_tokenizer_config import modality_from_name, parse_config

FOLDERS = ("vqvae_semseg", "vqvae_clip", "divae_rgb", "divae_depth")
RELEASED = ("rgb_16k_224-448", "depth_8k_224-448", "normal_8k_224-448", "semseg_4k_224-448", "CLIP-B16_8k_224-448")


@pytest.fixture
def tok_fixtures(ml4m_fixtures):
    return ml4m_fixtures / "tokenizers"


@pytest.mark.parametrize("folder", FOLDERS)
def test_fixture_tensors_reproduced_within_tolerance(tok_fixtures, folder):
    results = check_tokenizer(tok_fixtures / folder)
    recorded = load_file(str(tok_fixtures / folder / "outputs.safetensors"))
    assert set(recorded) <= {r.name for r in results}  # every recorded tensor is compared
    bad = {r.name: (r.diff, r.tol) for r in results if not r.ok}
    assert not bad, bad
    tokens = next(r for r in results if r.name == "encode.tokens")
    assert tokens.integer and tokens.diff == 0 and tokens.tol == 0


@pytest.mark.parametrize("name", RELEASED)
def test_released_layout_equals_what_fourm_builds(tok_fixtures, name):
    spec = json.loads((tok_fixtures / "released_shapes" / f"{name}.json").read_text())
    assert compare_tokenizer_layout(spec) == []
    from fourm.compat.ml4m_tokenizer import build_reference_tokenizer

    model = build_reference_tokenizer(parse_config(spec, name=spec["hub_id"]), "meta")
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
    assert model.codebook_size == spec["constructor_kwargs"]["codebook_size"]


def test_check_tokenizer_cli(tok_fixtures, tmp_path, capsys):
    assert main(["check-tokenizer", str(tok_fixtures / "vqvae_semseg")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("15 tensors, 0 outside tolerance") and out[-1].endswith("OK")
    assert any(line.split()[0] == "decode.output" and "tol 1e-05" in line for line in out[1:-1])
    # a perturbed weight fails with exit 1, naming the tensors that moved
    bad = tmp_path / "vqvae_semseg"
    shutil.copytree(tok_fixtures / "vqvae_semseg", bad)
    (bad / "model.safetensors").chmod(0o644)
    state = load_file(str(bad / "model.safetensors"))
    state["decoder.out_proj.weight"] = state["decoder.out_proj.weight"] + 1e-3
    save_file(state, str(bad / "model.safetensors"))
    assert main(["check-tokenizer", str(bad)]) == 1
    assert "FAIL decode.output" in capsys.readouterr().out
    # a bad folder: one error line naming it, exit 2
    assert main(["check-tokenizer", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and err[0].endswith("nowhere: no such folder")


def test_loading_is_strict_both_ways(tok_fixtures, tmp_path):
    folder = tmp_path / "depth"
    shutil.copytree(tok_fixtures / "divae_depth", folder)
    (folder / "model.safetensors").chmod(0o644)
    state = load_file(str(folder / "model.safetensors"))
    extra = dict(state, **{"decoder.spare": torch.zeros(1)})
    save_file(extra, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys \['decoder.spare'\]"):
        load_reference_tokenizer(folder)
    missing = {k: v for k, v in state.items() if k != "decoder.out.2.bias"}
    save_file(missing, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['decoder.out.2.bias'\]"):
        load_reference_tokenizer(folder)
    save_file(state, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").chmod(0o644)
    cfg["constructor_kwargs"]["codebook_size"] = 64  # the weights hold 128 codes
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"quantize._codebook.embed: \(128, 32\) != \(64, 32\)"):
        load_reference_tokenizer(folder)


def test_stored_formats_in_and_out(tok_fixtures):
    toks = load_reference_tokenizers(tok_fixtures)
    assert set(toks) == {"rgb", "depth", "semseg", "clip"}
    recorded = {}
    for name, folder in (("rgb", "divae_rgb"), ("depth", "divae_depth")):
        inp = load_file(str(tok_fixtures / folder / "inputs.safetensors"))
        recorded[name] = load_file(str(tok_fixtures / folder / "outputs.safetensors"))["encode.tokens"]
        assert torch.equal(toks[name].encode(inp["x_raw"]), recorded[name])  # uint8 rgb / uint16 depth as stored
    rgb = toks["rgb"].decode(recorded["rgb"], steps=2, sampler="ddim")
    assert rgb.dtype == torch.uint8 and rgb.shape == (2, 3, 64, 64)
    depth = toks["depth"].decode(torch.zeros(3, 5, dtype=torch.long), steps=2)  # one (h, w) grid, other size
    assert depth.dtype == torch.float32 and depth.shape == (24, 40)
    # depth in metres encodes like the stored uint16 values (the standardisation is scale-free)
    raw = load_file(str(tok_fixtures / "divae_depth" / "inputs.safetensors"))["x_raw"]
    assert torch.equal(toks["depth"].encode(raw.double() / 6553.5), toks["depth"].encode(raw))
    sem_in = load_file(str(tok_fixtures / "vqvae_semseg" / "inputs.safetensors"))["x"]
    sem = toks["semseg"].decode(toks["semseg"].encode(sem_in.to(torch.uint8)))
    assert sem.dtype == torch.uint8 and sem.shape == (2, 24, 24)
    feats = toks["clip"].decode(toks["clip"].encode(torch.randn(1, 512, 4, 4)))
    assert feats.shape == (1, 512, 4, 4) and feats.dtype == torch.float32
    with pytest.raises(ValueError, match=r"semseg ids must lie in \[0, 133\]"):
        toks["semseg"].encode(torch.full((1, 8, 8), 255, dtype=torch.uint8))
    with pytest.raises(TypeError, match="rgb must be uint8"):
        toks["rgb"].encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 127\]"):
        toks["semseg"].decode(torch.full((1, 2, 2), 128))
    with pytest.raises(ValueError, match="steps apply to a diffusion decoder"):
        toks["semseg"].decode(torch.zeros(1, 2, 2, dtype=torch.long), steps=4)


def test_diffusion_decode_seeds_steps_and_samplers(tok_fixtures):
    tok = load_reference_tokenizer(tok_fixtures / "divae_depth")
    assert tok.is_diffusion and tok.spec.sampler == "ddpm" and tok.decode_steps == 25
    tokens = load_file(str(tok_fixtures / "divae_depth" / "outputs.safetensors"))["encode.tokens"][:1]
    quant = tok.quantize.embed(tokens)

    def run(**kw):
        seen = []
        x = tok.decode_quant(quant, callback=lambda i, t, o, s: seen.append(int(t)), **kw)
        return x, seen

    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, ts = run(steps=4, sampler="ddpm", generator=g(1))
    b, _ = run(steps=4, sampler="ddpm", generator=g(1))
    c, _ = run(steps=4, sampler="ddpm", generator=g(2))
    assert ts == [750, 500, 250, 0] and torch.equal(a, b) and not torch.equal(a, c)  # leading spacing, seeded noise
    d, ts = run(steps=5, sampler="ddim", generator=g(1))
    assert ts == [999, 799, 599, 399, 199]
    # DDIM is deterministic given x_T: the same starting noise gives the same image
    noise = torch.randn(1, 1, 32, 32, generator=g(1))
    e, _ = run(steps=5, sampler="ddim", noise=noise, generator=g(9))
    assert torch.equal(d, e)
    assert float(d.abs().max()) <= 1.0  # the last DDIM step returns the clamped x0
    with pytest.raises(ValueError, match="the reference's DDPM always uses 'leading'"):
        run(steps=4, sampler="ddpm", spacing="trailing")


def test_hub_repo_id_resolves_through_snapshot_download(tok_fixtures, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return str(tok_fixtures / "divae_depth")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    tok = load_reference_tokenizer("EPFL-VILAB/4M_tokenizers_depth_8k_224-448")
    assert calls == [("EPFL-VILAB/4M_tokenizers_depth_8k_224-448", ["config.json", "model.safetensors"])]
    assert tok.modality == "depth" and tok.codebook_size == 128


def test_config_from_safetensors_metadata(tok_fixtures, tmp_path):
    """Without config.json, the constructor arguments are read from the weights' header."""
    src = tok_fixtures / "vqvae_clip"
    cfg = json.loads((src / "config.json").read_text())
    meta = {k: json.dumps(cfg[k]) for k in ("model_class", "constructor_kwargs", "registered_presets")}
    (tmp_path / "clip").mkdir()
    save_file(load_file(str(src / "model.safetensors")), str(tmp_path / "clip" / "model.safetensors"), metadata=meta)
    tok = load_reference_tokenizer(tmp_path / "clip")
    assert tok.modality == "clip" and not tok.is_diffusion and tok.spec.n_channels == 512


def test_flat_hub_config_and_names():
    """The released config.json layout: flat constructor arguments with preset names."""
    flat = {"enc_type": "vit_b_enc", "dec_type": "unet_patched", "image_size": 448, "patch_size": 16, "n_channels": 1,
            "codebook_size": 8192, "latent_dim": 32, "post_mlp": True, "prediction_type": "sample",
            "beta_schedule": "linear", "zero_terminal_snr": True, "scheduler": "ddim", "ema_decay": 0.99}
    spec = parse_config(flat, name="EPFL-VILAB/4M_tokenizers_depth_8k_224-448")
    assert (spec.kind, spec.modality, spec.encoder.dim, spec.encoder.depth, spec.encoder_grid) == ("divae", "depth", 768, 12, (28, 28))
    assert spec.unet.model_channels == 256 and spec.unet.channel_mult == (1, 2, 2, 2) and spec.sampler == "ddim"
    with pytest.raises(ValueError, match="quant_type='memcodes'"):
        parse_config({**flat, "quant_type": "memcodes"}, name="x_depth")
    with pytest.raises(ValueError, match="unknown DiVAE decoder"):
        parse_config({**flat, "dec_type": "uvit_b_p4_f16"}, name="x_depth")
    with pytest.warns(UserWarning, match=r"\['colour'\]"):
        parse_config({**flat, "colour": 1}, name="x_depth")
    assert [modality_from_name(n) for n in ("4M_tokenizers_CLIP-B16_8k_224-448", "divae_rgb", "semseg_coco",
                                            "4M_tokenizers_normal_8k_224-448", "nothing")] == \
        ["clip", "rgb", "semseg", "normal", None]
