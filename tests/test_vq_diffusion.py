"""The diffusion decoder of the image tokenizers (``tokenizer.decoder.kind: diffusion``), on the
tiny config configs/tokenizers/rgb_diffusion_tiny.yaml: training reaches every part, DDIM decoding
is deterministic per generator and equals a hand-written DDIM loop, save/load, config errors, and
conv tokenizers as before."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO
from fourm.cli import main as cli
from fourm.config import ConfigError, from_dict, load_config, to_dict
from fourm.evaluation.reconstruction import evaluate_tokenizers, render_batch
from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
from fourm.vq.config import DecoderConfig, NetConfig, TokenizerConfig
from fourm.vq.vqvae import CONFIG_NAME, ImageTokenizer

CONFIGS = REPO / "configs" / "tokenizers"


def tiny_cfg(out_dir: Path = Path("unused"), *overrides: str) -> TokenizerTrainConfig:
    return load_config(TokenizerTrainConfig, CONFIGS / "rgb_diffusion_tiny.yaml",
                       overrides=[f"out_dir={out_dir}", *overrides])


def tiny_tokenizer(seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(tiny_cfg().tokenizer)


def scenes(n: int = 4, seed: int = 11) -> torch.Tensor:
    return render_batch(seed, range(n), 32)["rgb"]  # uint8 (n, 3, 32, 32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- training -----------------------------------------------------------------------------------

def test_gradients_reach_encoder_and_unet():
    tok = tiny_tokenizer().train()
    out = tok(scenes(), generator=gen(0))
    assert out.output.shape == (4, 3, 32, 32) and out.codes.shape == (4, 4, 4)
    assert torch.isfinite(out.loss) and out.quant_loss > 0  # commitment loss is part of the total
    assert torch.allclose(out.loss.detach(), out.recon_loss + out.quant_loss)
    out.loss.backward()
    for name, p in tok.named_parameters():
        if name.startswith("quantizer."):
            continue  # the codebook follows EMA updates, not gradients
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    for part in (tok.encoder, tok.decoder.cond_proj, tok.decoder.unet):  # through the straight-through estimator
        assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0


def test_a_few_steps_reduce_the_denoising_loss():
    tok = tiny_tokenizer()
    batch = scenes(8)

    def loss_at_fixed_noise() -> float:  # the same noise and timesteps before and after training
        probe = copy.deepcopy(tok).train()  # train mode would move the EMA codebook: use a copy
        with torch.no_grad():
            return float(probe(batch, generator=gen(123)).recon_loss)

    before = loss_at_fixed_noise()
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    tok.train()
    for step in range(12):
        tok(batch, generator=gen(step)).loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss_at_fixed_noise() < 0.8 * before


def test_training_noise_comes_from_the_generator():
    tok = tiny_tokenizer().eval()  # eval: the codebook does not move between the calls
    batch = scenes(2)
    a = tok(batch, generator=gen(5)).recon_loss
    torch.manual_seed(99)  # the global RNG does not matter when a generator is given
    b = tok(batch, generator=gen(5)).recon_loss
    c = tok(batch, generator=gen(6)).recon_loss
    assert a == b and a != c


def test_forward_under_bf16_autocast_is_finite():
    tok = tiny_tokenizer().train()
    batch = scenes(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(batch, generator=gen(0))
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


# --- decoding -----------------------------------------------------------------------------------

def test_decode_is_deterministic_per_generator():
    tok = tiny_tokenizer().eval()
    tokens = tok.encode(scenes(3))
    a = tok.decode(tokens, generator=gen(1))
    torch.manual_seed(1234)
    b = tok.decode(tokens, generator=gen(1))
    c = tok.decode(tokens, generator=gen(2))
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(tok.decode(tokens), tok.decode(tokens))  # no generator: a fixed seed
    assert torch.equal(tok.decode(tokens, generator=gen(0)), tok.decode(tokens))  # the default seed is 0
    assert not torch.equal(tok.decode(tokens, steps=1, generator=gen(1)), a)  # steps matter
    assert tok.decode(tokens[0], generator=gen(1)).shape == (3, 32, 32)  # one grid -> one image
    assert tok.decode(torch.zeros(2, 3, 5, dtype=torch.long)).shape == (2, 3, 24, 40)  # other grids


def test_decode_does_not_draw_from_the_global_rng():
    tok = tiny_tokenizer().eval()
    tokens = tok.encode(scenes(2))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tok.decode(tokens, generator=gen(3))
    tok.decode(tokens)
    assert torch.equal(torch.rand(3), expected)


def test_ddim_sampler_matches_a_hand_written_ddim_loop():
    """eta = 0 DDIM with v-prediction, trailing spacing and x0 clipped to [-1, 1], written out."""
    tok = tiny_tokenizer().eval()
    dec, dc = tok.decoder, tok.config.decoder.diffusion
    tokens = tok.encode(scenes(2))
    steps = 4
    with torch.no_grad():
        z = tok.quantizer.embed(tokens)  # (B, D, h, w)
        got = tok.forward_decoder(z, steps, gen(8))  # normalised (B, 3, H, W)
        cond = dec.condition(z, (32, 32))
        ab = dec.train_scheduler.alphas_cumprod.double()
        x = torch.randn((2, 3, 32, 32), generator=gen(8)).double()
        T, stride = dc.num_train_timesteps, dc.num_train_timesteps // steps
        for t in [T - 1 - i * stride for i in range(steps)]:  # 99, 74, 49, 24
            v = dec.denoise(x.float(), torch.full((2,), t), cond).double()
            a_t = ab[t]
            a_prev = ab[t - stride] if t - stride >= 0 else torch.tensor(1.0, dtype=torch.float64)
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * v
            eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x
            x = a_prev.sqrt() * x0.clamp(-1, 1) + (1 - a_prev).sqrt() * eps
    assert torch.allclose(got.double(), x.clamp(-1, 1), atol=1e-4)


def test_steps_are_checked():
    tok = tiny_tokenizer().eval()
    tokens = tok.encode(scenes(1))
    for bad in (0, 101, True, 2.5):
        with pytest.raises(ValueError, match=r"steps=.*\[1, 100\]"):
            tok.decode(tokens, steps=bad)


def test_depth_gets_a_diffusion_decoder_too():
    cfg = from_dict(TokenizerConfig, {**to_dict(tiny_cfg().tokenizer), "modality": "depth"})
    tok = ImageTokenizer(cfg).eval()
    depth = render_batch(3, range(2), 32)["depth"]
    out = tok.decode(tok.encode(depth), generator=gen(0))
    assert out.dtype == torch.float32 and out.shape == (2, 32, 32) and bool(torch.isfinite(out).all())


# --- save / load --------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_decodes(tmp_path):
    tok = tiny_tokenizer(seed=3).eval()
    tokens = tok.encode(scenes(3))
    tok.save_pretrained(tmp_path / "rgb")
    meta = json.loads((tmp_path / "rgb" / CONFIG_NAME).read_text())
    assert meta["format_version"] == 1 and meta["config"]["decoder"]["kind"] == "diffusion"
    back = ImageTokenizer.from_pretrained(tmp_path / "rgb")
    assert back.is_diffusion and back.config == tok.config and back.decode_steps == 4
    assert torch.equal(back.encode(scenes(3)), tokens)
    assert torch.equal(back.decode(tokens, generator=gen(4)), tok.decode(tokens, generator=gen(4)))


def test_conv_tokenizers_saved_before_decoder_kind_load_unchanged(tmp_path):
    """Configs written before ``decoder.kind`` existed hold {dim, dim_mult, depths} only."""
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml").tokenizer
    assert cfg.decoder.kind == "conv" and cfg.decoder.diffusion is None
    torch.manual_seed(0)
    tok = ImageTokenizer(cfg).eval()
    tok.save_pretrained(tmp_path / "rgb")
    path = tmp_path / "rgb" / CONFIG_NAME
    meta = json.loads(path.read_text())
    meta["config"]["decoder"] = {k: meta["config"]["decoder"][k] for k in ("dim", "dim_mult", "depths")}
    path.write_text(json.dumps(meta))  # the old layout (the weights hash covers the weights only)
    back = ImageTokenizer.from_pretrained(tmp_path / "rgb")
    assert back.config == tok.config and not back.is_diffusion and back.decode_steps is None
    tokens = tok.encode(scenes(2))
    assert torch.equal(back.decode(tokens), tok.decode(tokens))
    assert not any(k.startswith("decoder.unet") for k in back.state_dict())
    with pytest.raises(ValueError, match="steps=4 applies to a diffusion decoder"):
        back.decode(tokens, steps=4)
    # a NetConfig given in Python is read as the conv decoder it describes
    c = TokenizerConfig(modality="rgb", decoder=NetConfig(dim=8))
    assert c.decoder == DecoderConfig(kind="conv", dim=8, dim_mult=(1, 2, 4), depths=(0, 1, 1))


# --- config errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"modality": "semseg"}, "class ids are not a diffusion target"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"block_out_channels": [8, 8, 8, 8, 8], "norm_num_groups": 4,
                                                      "mid_attention": False}}},
     r"halves the image 4 times \(by 16\), which must divide downsample=8"),
    ({"decoder": {"kind": "diffusion", "dim": 16}}, "decoder.dim size the conv decoder"),
    ({"decoder": {"kind": "conv", "diffusion": {}}}, "decoder.diffusion is set but decoder.kind is 'conv'"),
    ({"decoder": {"kind": "unet"}}, r"'unet' is not allowed; allowed: 'conv', 'diffusion'"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"prediction_type": "x0"}}}, "allowed: 'epsilon'"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"prediction_type": "epsilon", "zero_terminal_snr": True}}},
     "use v_prediction or sample"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"block_out_channels": [12, 24]}}},
     r"norm_num_groups=8 must divide every entry of block_out_channels=\[12, 24\]"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"attention_levels": [3]}}}, r"attention_levels=\[3\]"),
    ({"decoder": {"kind": "diffusion", "diffusion": {"num_inference_steps": 0}}},
     r"num_inference_steps=0: need an integer DDIM step count in \[1, 1000\]"),
    ({"loss": {"l1": 1.0}}, "loss.l1 / loss.mse weight the conv decoder's reconstruction"),
])
def test_config_errors_name_the_field_and_the_fix(change, message):
    data = {**to_dict(tiny_cfg().tokenizer), **change}
    with pytest.raises(ConfigError, match=message):
        from_dict(TokenizerConfig, data, "tokenizer")


def test_diffusion_override_of_a_conv_config_says_what_to_remove():
    with pytest.raises(ConfigError, match="remove them and size the UNet"):
        load_config(TokenizerTrainConfig, CONFIGS / "rgb_64.yaml", overrides=["tokenizer.decoder.kind=diffusion"])


def test_the_64px_config_differs_from_rgb_64_in_the_decoder_only():
    diff = load_config(TokenizerTrainConfig, CONFIGS / "rgb_diffusion_64.yaml").tokenizer
    conv = load_config(TokenizerTrainConfig, CONFIGS / "rgb_64.yaml").tokenizer
    assert diff.decoder.kind == "diffusion" and conv.decoder.kind == "conv"
    for name in ("modality", "image_size", "downsample", "encoder", "quantizer", "normalize"):
        assert getattr(diff, name) == getattr(conv, name), name


# --- training loop and eval ---------------------------------------------------------------------

def test_train_then_cli_eval_reports_the_ddim_steps(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path / "run", "steps=4", "checkpoint.every=4")
    summary = train_tokenizer(cfg, progress=False)
    assert math.isfinite(summary.last["loss"]) and "psnr" in summary.val and "parser_f1" in summary.val
    tok = ImageTokenizer.from_pretrained(summary.model_dir)
    assert tok.is_diffusion
    tok.save_pretrained(tmp_path / "toks" / "rgb")
    out = tmp_path / "eval.json"
    args = ["tokenizer", "eval", "--tokenizers", str(tmp_path / "toks"), "--seed", "5", "--num-samples", "2",
            "--no-parser", "--json", str(out)]
    assert cli(args + ["--decode-steps", "2"]) == 0
    assert "rgb decoder: diffusion, 2 DDIM steps, noise seed 0" in capsys.readouterr().out
    first = json.loads(out.read_text())
    assert first["decoders"]["rgb"] == {"kind": "diffusion", "steps": 2, "seed": 0}
    assert cli(args + ["--decode-steps", "2"]) == 0  # a fixed seed: the same scores again
    assert json.loads(out.read_text())["rgb"]["psnr"] == first["rgb"]["psnr"]
    assert cli(args) == 0
    assert json.loads(out.read_text())["decoders"]["rgb"]["steps"] == 4  # the configured default


def test_decode_steps_are_refused_without_a_diffusion_decoder():
    conv = ImageTokenizer(load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml").tokenizer)
    res = evaluate_tokenizers({"rgb": conv}, seed=3, num_samples=1, progress=False, parser=False)
    assert res["decoders"] == {"rgb": {"kind": "conv"}}
    with pytest.raises(ValueError, match="decode_steps=3 applies to diffusion decoders"):
        evaluate_tokenizers({"rgb": conv}, seed=3, num_samples=1, progress=False, parser=False, decode_steps=3)


def test_generation_decode_passes_its_seed_to_a_diffusion_decoder():
    from fourm.generation.decode import decode_images
    from fourm.data.shapes_modalities import shapes_world_modalities

    tok = tiny_tokenizer().eval()
    spec = shapes_world_modalities(image_size=tok.config.image_size, downsample=tok.config.downsample)["tok_rgb"]
    tokens = torch.randint(0, tok.config.quantizer.codebook_size, (2, spec.grid[0] * spec.grid[1]),
                           generator=gen(3))
    a, b, c = (decode_images(tokens, spec, {"rgb": tok}, seed=s) for s in (0, 0, 1))
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != z).any() for x, z in zip(a, c))
