"""A plain background target for the rgb tokenizer (``loss.background: row_mean``) and the
latent invariance term (``loss.invariance``): codes made predictable for generation (issue #15)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import REPO
from fourm.config import from_dict, load_config
from fourm.evaluation.reconstruction import render_batch
from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
from fourm.vq.config import TokenizerConfig
from fourm.vq.losses import latent_invariance, object_weight_map, reconstruction_loss, row_mean_background
from fourm.vq.vqvae import ImageTokenizer

CONFIGS = REPO / "configs" / "tokenizers"


def rgb_tokenizer(**loss) -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb", "image_size": 32, "loss": loss}))


def test_row_mean_background_keeps_objects_and_flattens_each_row_of_background():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    objects = torch.zeros(2, 8, 8, dtype=torch.bool)
    objects[0, 2:5, 3:6] = True
    objects[1, 6] = True  # a row with no background pixel at all
    out = row_mean_background(x, objects)
    assert torch.equal(out[objects.unsqueeze(1).expand_as(x)], x[objects.unsqueeze(1).expand_as(x)])
    bg = ~objects
    for b in range(2):
        for r in range(8):
            if bg[b, r].any():
                expected = x[b, :, r][:, bg[b, r]].mean(-1)  # (C,) the row's background mean
                assert torch.allclose(out[b, :, r][:, bg[b, r]], expected[:, None].expand(-1, int(bg[b, r].sum())),
                                      atol=1e-6)
    assert torch.equal(out[1, :, 6], x[1, :, 6])
    with pytest.raises(ValueError, match="bool"):
        row_mean_background(x, objects.float())


def test_background_and_invariance_settings_are_validated():
    def cfg(**kw):
        return from_dict(TokenizerConfig, {"modality": "rgb", **kw})

    with pytest.raises(ValueError, match="loss.background='blur': must be one of image, row_mean"):
        cfg(loss={"background": "blur"})
    with pytest.raises(ValueError, match="applies to rgb only, not depth"):
        from_dict(TokenizerConfig, {"modality": "depth", "loss": {"background": "row_mean"}})
    with pytest.raises(ValueError, match="set loss.background: row_mean too"):
        cfg(loss={"invariance": 1.0})
    with pytest.raises(ValueError, match="loss.invariance=-1.0: must be a finite number >= 0"):
        cfg(loss={"background": "row_mean", "invariance": -1.0})
    with pytest.raises(ValueError, match="needs the conv decoder"):
        load_config(TokenizerTrainConfig, CONFIGS / "rgb_diffusion_tiny.yaml",
                    overrides=["tokenizer.loss.background=row_mean"])
    assert cfg(loss={"background": "row_mean"}).needs_objects
    assert not cfg().needs_objects


def test_row_mean_target_is_what_the_decoder_is_scored_against():
    tok = rgb_tokenizer(background="row_mean")
    b = render_batch(3, range(2), 32)
    objects = b["semseg"] >= 2
    with pytest.raises(ValueError, match="need the images' object pixels"):
        tok(b["rgb"])
    out = tok(b["rgb"], objects)
    x = tok.normalizer.to_model(tok.normalizer.check(b["rgb"])[0])
    plain = row_mean_background(x, objects)
    assert not torch.allclose(plain, x)  # the scenes have textured ground
    w = object_weight_map(objects, 0.0)
    assert torch.allclose(out.recon_loss, reconstruction_loss(out.output, plain, "rgb", tok.config.loss_weights, w))
    assert not torch.allclose(out.recon_loss, reconstruction_loss(out.output, x, "rgb", tok.config.loss_weights, w))


def test_invariance_adds_its_term_and_trains_the_encoder_only_through_the_image():
    b = render_batch(3, range(2), 32)
    objects = b["semseg"] >= 2
    without = rgb_tokenizer(background="row_mean")
    with_inv = rgb_tokenizer(background="row_mean", invariance=5.0)
    with_inv.load_state_dict(without.state_dict())
    torch.manual_seed(1)
    a = without(b["rgb"], objects)
    torch.manual_seed(1)
    c = with_inv(b["rgb"], objects)
    x = with_inv.normalizer.to_model(with_inv.normalizer.check(b["rgb"])[0])
    with torch.no_grad():
        term = latent_invariance(with_inv.forward_encoder(x), with_inv.forward_encoder(row_mean_background(x, objects)))
    assert term > 0
    assert math.isclose((c.loss - a.loss).item(), 5.0 * term.item(), rel_tol=1e-4, abs_tol=1e-7)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_plain = torch.randn(2, 4, 3, 3, requires_grad=True)
    latent_invariance(z, z_plain).backward()
    assert z.grad is not None and z_plain.grad is None  # the plain image's latents are the fixed target


def test_training_with_a_plain_background_and_invariance(tmp_path):
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "rgb_tiny.yaml",
                      overrides=[f"out_dir={tmp_path / 'run'}", "steps=2", "checkpoint.every=2", "val.samples=2",
                                 "val.parser=false", "tokenizer.loss.background=row_mean",
                                 "tokenizer.loss.invariance=10"])
    summary = train_tokenizer(cfg, progress=False)
    assert math.isfinite(summary.last["loss"])
    saved = ImageTokenizer.from_pretrained(summary.model_dir)
    assert (saved.config.loss.background, saved.config.loss.invariance) == ("row_mean", 10.0)
