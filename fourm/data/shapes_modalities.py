"""ShapesWorld's modalities: their :class:`~fourm.modalities.ModalitySpec` objects and a scene's raw values.

    reg = shapes_world_modalities()            # tok_rgb, tok_depth, tok_semseg, caption, det, rgb (pixels)
    reg = shapes_world_modalities(image_vocab={"tok_rgb": 512}, text_vocab=4312).subset(["tok_rgb", "caption"])
    inputs, scene = scene_conditions(seed=1000, index=3, image_size=64, fields=["rgb", "caption"])

What ``fourm tokenize`` writes from ``fourm data shapes`` shards with the bundled tokenizers
(``tokenizers/shapes64``). A training run lists its modalities in its YAML config
(``configs/fm/shapes_*.yaml`` spell out the same specs); this function is for code and tests.
"""
from __future__ import annotations

from typing import Any, Sequence

from fourm.data.shapes_world import WorldConfig, render_scene
from fourm.modalities import ModalityRegistry, ModalitySpec

SCENE_FIELDS: tuple[str, ...] = ("rgb", "depth", "semseg", "caption", "det")  # a scene's raw fields a model reads


def scene_conditions(seed: int, index: int, image_size: int,
                     fields: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw fields of scene ``index`` of world ``seed``, as generation inputs, and the whole scene.

    Raises:
        ValueError: a field a scene does not have, naming the ones it has.
    """
    bad = [f for f in fields if f not in SCENE_FIELDS]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a field of a ShapesWorld scene; allowed: {', '.join(SCENE_FIELDS)}")
    scene = render_scene(seed, index, WorldConfig(image_size=image_size))
    return {f: scene[f] for f in fields}, scene

def shapes_world_modalities(
    image_size: int = 64,
    downsample: int = 8,
    image_vocab: dict[str, int] | None = None,
    text_vocab: int = 4096,
    caption_length: int = 64,
    det_length: int = 64,
    rgb_patch_size: int | None = None,
) -> ModalityRegistry:
    """The ShapesWorld modalities: three image-token grids, caption, det and rgb pixels.

    Args:
        image_size: side of the images in pixels (a multiple of ``downsample``).
        downsample: pixels per token side of the image tokenizers (8 gives 8 x 8 tokens at 64 px).
        image_vocab: codebook size per image modality (defaults: tok_rgb 1024, tok_depth 512,
            tok_semseg 256).
        text_vocab: vocabulary of the WordPiece tokenizer shared by caption and det.
        caption_length, det_length: maximum sequence lengths in tokens.
        rgb_patch_size: patch side of the input-only rgb pixel embedding (default ``downsample``).
    """
    if image_size % downsample:
        raise ValueError(f"image_size={image_size} must be a multiple of downsample={downsample}")
    vocab = {"tok_rgb": 1024, "tok_depth": 512, "tok_semseg": 256}
    if image_vocab:
        unknown = sorted(set(image_vocab) - set(vocab))
        if unknown:
            raise ValueError(f"image_vocab: unknown modalities {unknown}; known: {sorted(vocab)}")
        vocab.update(image_vocab)
    g = image_size // downsample
    p = rgb_patch_size or downsample
    if image_size % p:
        raise ValueError(f"image_size={image_size} must be a multiple of rgb_patch_size={p}")
    reg = ModalityRegistry()
    for name in ("tok_rgb", "tok_depth", "tok_semseg"):
        reg.register(ModalitySpec(name, "image", vocab_size=vocab[name], grid=(g, g)))  # tokenizer: the raw field
    reg.register(ModalitySpec("caption", "sequence", vocab_size=text_vocab, max_length=caption_length))
    reg.register(ModalitySpec("det", "sequence", vocab_size=text_vocab, max_length=det_length))
    reg.register(ModalitySpec("rgb", "pixels", grid=(image_size // p, image_size // p), patch_size=p, decoder=False))
    return reg
