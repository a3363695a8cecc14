"""The flat view of an rgb tokenizer (``normalize.flat``): the network reads, and the decoder learns
to draw, each image with shading and background texture removed, so that codes carry layout and
colours only (issue #15)."""
from __future__ import annotations

import pytest
import torch

from fourm.config import from_dict
from fourm.data.shapes_world import render_scene
from fourm.evaluation.scene_parser import parse_scene
from fourm.vq.config import TokenizerConfig
from fourm.vq.normalize import FLAT_MIN_SATURATION, FLAT_MIN_VALUE, flat_rgb
from fourm.vq.vqvae import ImageTokenizer


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) / 2.0


def scene_batch(seed: int, n: int) -> torch.Tensor:
    """(n, 3, 64, 64) uint8 ShapesWorld images."""
    return torch.stack([torch.from_numpy(render_scene(seed, i)["rgb"]).permute(2, 0, 1) for i in range(n)])


def vivid_mask(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) the pixels flat_rgb treats as coloured (objects)."""
    u = images.float() / 255.0
    v = u.amax(1, keepdim=True)
    return ((v - u.amin(1, keepdim=True)) / v.clamp_min(1e-6) >= FLAT_MIN_SATURATION) & (v >= FLAT_MIN_VALUE)


def test_flat_rgb_removes_shading_and_row_texture_and_keeps_colour():
    # a row: pale pixels of two greys, then one red pixel lit at three levels of shading
    u = torch.tensor([[0.60, 0.80, 0.40, 0.80, 0.20],   # r
                      [0.60, 0.80, 0.10, 0.20, 0.05],   # g
                      [0.60, 0.80, 0.10, 0.20, 0.05]])  # b
    x = (u * 2 - 1)[:, None, :].unsqueeze(0)  # (1, 3, 1, 5)
    out = to_unit(flat_rgb(x))[0, :, 0]  # (3, 5)
    pale = torch.tensor([0.70, 0.70, 0.70])
    assert torch.allclose(out[:, 0], pale) and torch.allclose(out[:, 1], pale)  # texture gone: the row's pale mean
    red = torch.tensor([1.0, 0.25, 0.25])  # the chromaticity at full value, whatever the shading
    for col in (2, 3, 4):
        assert torch.allclose(out[:, col], red, atol=1e-6)
    assert flat_rgb(x).shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_flat_scenes_keep_every_object_for_the_scene_parser():
    images = scene_batch(777, 24)
    flat = ((flat_rgb(images.float() / 127.5 - 1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    hits = total = 0
    for i in range(len(images)):
        truth = {(o["colour"], o["shape"]) for o in render_scene(777, i)["objects"]}
        got = {(o.colour, o.shape) for o in parse_scene(flat[i].permute(1, 2, 0).numpy())}
        hits += len(truth & got)
        total += len(truth | got)
    assert hits / total >= 0.95
    assert not torch.equal(flat, images)  # it did change them (shading, ground texture)


def test_a_flat_tokenizer_gives_the_same_codes_whatever_the_shading_and_ground_texture():
    torch.manual_seed(0)
    tok = ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb", "image_size": 64,
                                                      "normalize": {"flat": True}})).eval()
    plain = ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb", "image_size": 64})).eval()
    plain.load_state_dict(tok.state_dict())
    images = scene_batch(5, 4)
    vivid = vivid_mask(images)
    # shade the objects (halve the pixels whose channels halve exactly and stay bright enough to
    # name) and shuffle the pale pixels within each row
    halvable = vivid & (images % 2 == 0).all(1, keepdim=True) & (images.amax(1, keepdim=True) >= 80)
    assert halvable.sum() > 50
    changed = torch.where(halvable, images // 2, images).float()
    g = torch.Generator().manual_seed(0)
    for b in range(len(images)):
        for r in range(images.shape[-2]):
            cols = torch.nonzero(~vivid[b, 0, r]).flatten()
            perm = cols[torch.randperm(len(cols), generator=g)]
            changed[b, :, r, cols] = changed[b, :, r, perm]
    changed = changed.round().to(torch.uint8)
    assert torch.equal(tok.encode(changed), tok.encode(images))
    assert not torch.equal(plain.encode(changed), plain.encode(images))  # the same weights without the flat view


def test_flat_is_validated_and_saved_with_the_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="normalize.flat applies to rgb images, not depth"):
        ImageTokenizer(from_dict(TokenizerConfig, {"modality": "depth", "normalize": {"flat": True}}))
    with pytest.raises(ValueError, match="with normalize.flat: .* remove loss.background"):
        from_dict(TokenizerConfig, {"modality": "rgb", "normalize": {"flat": True},
                                    "loss": {"background": "row_mean"}})
    with pytest.raises(ValueError, match="normalize.flat: expected true/false, got str 'yes'"):
        from_dict(TokenizerConfig, {"modality": "rgb", "normalize": {"flat": "yes"}})
    tok = ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb", "image_size": 32, "normalize": {"flat": True}}))
    tok.save_pretrained(tmp_path / "rgb")
    again = ImageTokenizer.from_pretrained(tmp_path / "rgb")
    assert again.config.normalize.flat is True
    images = scene_batch(3, 2)[..., :32, :32].contiguous()
    assert torch.equal(again.encode(images), tok.encode(images))
