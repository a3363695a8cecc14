"""Quantizer invariants: codes in range, gradients reach the encoder, dead codes replaced,
float32 quantisation under bf16 autocast, usage statistics against a direct computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fourm.vq.quantizers import CodeUsage, CosineVQ, FSQQuantizer, QuantizerConfig, build_quantizer

CONFIGS = {
    "vq": QuantizerConfig(kind="vq", latent_dim=8, codebook_size=32, dead_code_threshold=0.0),
    "vq_rotation": QuantizerConfig(kind="vq", latent_dim=8, codebook_size=32, dead_code_threshold=0.0, rotation_trick=True),
    "fsq": QuantizerConfig(kind="fsq", latent_dim=8, levels=(5, 4, 3)),
}


@pytest.fixture(params=sorted(CONFIGS))
def quantizer(request) -> nn.Module:
    torch.manual_seed(0)
    return build_quantizer(CONFIGS[request.param])


def test_codes_in_range_and_consistent(quantizer):
    z = torch.randn(3, 8, 4, 5)
    quantizer.eval()
    out = quantizer(z)
    assert out.codes.dtype == torch.int64 and out.codes.shape == (3, 4, 5)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < quantizer.codebook_size
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    # lookup (no state change) and embed (codes -> latents) agree with the forward pass
    assert torch.equal(quantizer.lookup(z), out.codes)
    torch.testing.assert_close(quantizer.embed(out.codes), out.quantized)


def test_codes_cover_the_codebook_size():
    fsq = build_quantizer(CONFIGS["fsq"])
    assert fsq.codebook_size == 5 * 4 * 3
    # every FSQ code maps to latents and back to itself
    codes = torch.arange(fsq.codebook_size).reshape(1, 6, 10)
    assert torch.equal(fsq.lookup(_fsq_inverse(fsq, codes)), codes)


def _fsq_inverse(fsq: FSQQuantizer, codes: torch.Tensor) -> torch.Tensor:
    """Latents (B, D, h, w) whose projection lands on the centres of ``codes`` (via a pseudo-inverse)."""
    target = fsq.fsq._indices_to_codes(codes)  # (B, h, w, d) in [-1, 1]
    target = torch.atanh(target.clamp(-0.999, 0.999) * 0.999)  # undo the tanh bound (levels are scaled inside)
    w, b = fsq.fsq.project_in.weight, fsq.fsq.project_in.bias  # (d, D), (d,)
    z = (target - b) @ torch.linalg.pinv(w).t()  # (B, h, w, D)
    return z.permute(0, 3, 1, 2).detach()


def test_nearest_code_is_the_cosine_argmax():
    torch.manual_seed(1)
    vq = build_quantizer(CONFIGS["vq"]).eval()
    z = torch.randn(2, 8, 3, 3)
    codes = vq.lookup(z)
    cb = F.normalize(vq.codebook, dim=-1)  # (K, D)
    sims = torch.einsum("bdhw,kd->bhwk", F.normalize(z, dim=1), cb)
    assert torch.equal(codes, sims.argmax(-1))


def test_straight_through_gradient_reaches_encoder(quantizer):
    torch.manual_seed(2)
    encoder = nn.Conv2d(3, 8, 3, padding=1)
    quantizer.train()
    out = quantizer(encoder(torch.randn(4, 3, 6, 6)))
    target = torch.randn_like(out.quantized)
    ((out.quantized - target) ** 2).mean().backward()
    g = encoder.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_commitment_loss_trains_the_encoder():
    """With a commitment weight, the auxiliary loss alone sends a gradient to the encoder."""
    torch.manual_seed(3)
    encoder = nn.Conv2d(3, 8, 1)
    vq = CosineVQ(QuantizerConfig(latent_dim=8, codebook_size=16, commitment_weight=1.0, dead_code_threshold=0.0)).train()
    out = vq(encoder(torch.randn(2, 3, 4, 4)))
    assert out.loss > 0
    out.loss.backward()
    assert encoder.weight.grad.abs().sum() > 0


def test_dead_code_is_replaced_by_a_batch_latent():
    torch.manual_seed(4)
    vq = CosineVQ(QuantizerConfig(latent_dim=8, codebook_size=64, decay=0.99, dead_code_threshold=0.5)).train()
    cb = vq.vq._codebook
    cb.cluster_size.fill_(100.0)  # every code alive ...
    z = torch.randn(2, 8, 4, 4)
    used = set(vq.lookup(z).flatten().tolist())
    unused = [k for k in range(64) if k not in used]
    dead, alive_unused = unused[0], unused[1]
    cb.cluster_size[0, dead] = 0.0  # ... but one, which no latent of the batch picks
    before = vq.codebook.clone()
    vq(z)
    after = vq.codebook
    assert not torch.allclose(after[dead], before[dead]), "the dead code was not replaced"
    # it now equals one of the batch's (normalised) latents
    latents = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)  # (N, D)
    assert (latents @ after[dead]).max() > 1 - 1e-4
    # an unused code that is still alive keeps its direction (EMA only rescales it)
    torch.testing.assert_close(F.normalize(after[alive_unused], dim=0), F.normalize(before[alive_unused], dim=0))


def test_no_replacement_or_update_in_eval_mode():
    vq = CosineVQ(QuantizerConfig(latent_dim=8, codebook_size=16, dead_code_threshold=10.0)).eval()
    before = vq.codebook.clone()
    vq(torch.randn(2, 8, 3, 3))
    assert torch.equal(vq.codebook, before)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_float32_quantisation_under_bf16_autocast(kind):
    torch.manual_seed(5)
    q = build_quantizer(CONFIGS[kind]).eval()
    proj = nn.Conv2d(4, 8, 1)
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = proj(x)
        assert z.dtype == torch.bfloat16  # autocast is really on
        out = q(z)
        codes = q.lookup(z)
        emb = q.embed(codes)
    assert out.quantized.dtype == torch.float32 and emb.dtype == torch.float32
    # the same latents (as bf16 values) quantised in plain float32 give the same codes
    ref = q(z.float())
    assert torch.equal(out.codes, ref.codes) and torch.equal(codes, ref.codes)
    torch.testing.assert_close(out.quantized, ref.quantized)


def test_config_validation():
    with pytest.raises(ValueError, match="levels"):
        QuantizerConfig(kind="fsq", levels=(2, 4))
    with pytest.raises(ValueError, match="prod"):
        QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5), codebook_size=1024)
    assert QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5)).codebook_size == 1000
    with pytest.raises(ValueError, match="only for kind 'fsq'"):
        QuantizerConfig(kind="vq", levels=(8, 8))
    with pytest.raises(ValueError, match="decay"):
        QuantizerConfig(decay=1.0)


def test_code_usage_against_direct_computation():
    usage = CodeUsage(codebook_size=8, window=2)
    assert usage.perplexity == 0.0 and usage.usage == 0.0
    usage.update(torch.arange(8))  # uniform over all codes
    assert usage.usage == 1.0 and math.isclose(usage.perplexity, 8.0, rel_tol=1e-9)
    usage.update(torch.zeros(8, dtype=torch.long))  # window: 8 x code 0 + one of each
    counts = torch.tensor([9.0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    p = counts / counts.sum()
    assert math.isclose(usage.perplexity, float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-9)
    usage.update(torch.zeros(4, dtype=torch.long))  # the uniform batch leaves the window
    assert usage.usage == 1 / 8 and math.isclose(usage.perplexity, 1.0)
    with pytest.raises(ValueError, match="exceed"):
        usage.update(torch.tensor([8]))
