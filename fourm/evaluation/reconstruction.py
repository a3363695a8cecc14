"""Reconstruction scores of the image tokenizers on fresh ShapesWorld scenes (``fourm tokenizer eval``).

``fourm tokenizer eval`` renders ``num_samples`` scenes of a seed that training never used,
round-trips each modality through its tokenizer (``decode(encode(x))``) and scores the result
against the ground truth:

| modality | metric                                                                            |
|----------|-----------------------------------------------------------------------------------|
| rgb      | PSNR in dB (per image, then averaged; 255 peak); with the scene parser (default): |
|          | object F1 of (size, colour, shape) triples parsed from the reconstructions vs the |
|          | scene's objects, and the shape accuracy of parsed objects matched to a scene      |
|          | object of the same colour with box IoU >= 0.5; the same on the original images    |
|          | (``*_original``), the parser's own ceiling                                        |
| depth    | absolute relative error mean(|d^ - d| / d) over non-sky pixels; delta1 (share of  |
|          | non-sky pixels with max(d^/d, d/d^) < 1.25)                                       |
| semseg   | mIoU over the classes present in the ground truth or the prediction; pixel accuracy |
| all      | share of codes used over the whole evaluation set, and perplexity                 |

A diffusion decoder (``decoder.kind: diffusion``) decodes with its configured DDIM steps (or
``decode_steps``) from noise of one generator per tokenizer seeded with ``decode_seed`` (0), so
its scores are repeatable; the steps and seed are reported under ``decoders``.

These are the "tokenizer bound" rows of the benchmark: no model can beat them. PSNR alone hides
what the benchmark's "-> rgb" tasks need: the sky and ground fill most pixels, so a tokenizer that
turns diamonds into blobs still scores well; the parser F1 is the bound those tasks actually see.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.data.shapes_world import SEMSEG_CLASSES, WorldConfig, render_scene
from fourm.evaluation.dense import confusion_matrix, depth_errors, miou, psnr
from fourm.evaluation.objects import ParserScores, parse_images
from fourm.vq.normalize import from_world
from fourm.vq.quantizers import CodeUsage


def render_batch(seed: int, indices: range | list[int], image_size: int, objects: bool = False) -> dict[str, Any]:
    """Stored-format batches of every image modality for scenes ``indices`` of world ``seed``.

    Args:
        seed, indices, image_size: the scenes.
        objects: also return each scene's ground-truth objects (for the scene-parser scores).
    Returns:
        {"rgb": uint8 (B, 3, H, W), "depth": float32 (B, H, W), "semseg": uint8 (B, H, W)}, plus
        "objects": per scene, ``render_scene(...)["objects"]`` when ``objects`` is set.
    """
    cfg = WorldConfig(image_size=image_size)
    samples = [render_scene(seed, i, cfg) for i in indices]
    out: dict[str, Any] = {m: torch.stack([from_world(s, m) for s in samples]) for m in ("rgb", "depth", "semseg")}
    if objects:
        out["objects"] = [s["objects"] for s in samples]
    return out


class ReconstructionMetrics:
    """Accumulates the reconstruction metrics of one tokenizer over batches.

    With ``parser`` (rgb only) each batch must carry ``objects`` (``render_batch(...,
    objects=True)``) and may carry ``parsed`` (the originals already parsed, else they are parsed
    here); the result adds :class:`ParserScores` of the reconstructions and, as ``*_original``, of
    the original images.
    """

    def __init__(self, modality: str, codebook_size: int, num_classes: int = len(SEMSEG_CLASSES),
                 parser: bool = False) -> None:
        if parser and modality != "rgb":
            raise ValueError(f"parser=True scores rgb images; the {modality} tokenizer has none")
        self.modality = modality
        self.num_classes = num_classes
        self.parser = parser
        self.parsed_recon, self.parsed_original = ParserScores(), ParserScores()
        self.usage = CodeUsage(codebook_size, window=1 << 30)
        self.psnr_sum, self.images = 0.0, 0
        self.rel_sum, self.delta1_hits, self.pixels = 0.0, 0, 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, tokens: torch.Tensor, recon: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: its tokens, the reconstruction and the ground-truth batch of all modalities."""
        self.usage.update(tokens)
        recon = recon.cpu()
        self.images += recon.shape[0]
        if self.modality == "rgb":
            self.psnr_sum += float(psnr(recon, batch["rgb"]).sum())
            if self.parser:
                if "objects" not in batch:
                    raise ValueError("parser scores need the scenes' objects: render the batch with objects=True")
                original = batch["parsed"] if "parsed" in batch else parse_images(batch["rgb"])
                self.parsed_recon.update(parse_images(recon), batch["objects"])
                self.parsed_original.update(original, batch["objects"])
        elif self.modality == "depth":
            valid = batch["semseg"] != 0  # sky is class 0
            rel, hits, n = depth_errors(recon, batch["depth"], valid)
            self.rel_sum, self.delta1_hits, self.pixels = self.rel_sum + rel, self.delta1_hits + hits, self.pixels + n
        else:
            self.confusion += confusion_matrix(recon, batch["semseg"], self.num_classes)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.modality == "rgb":
            out["psnr"] = self.psnr_sum / max(self.images, 1)
            if self.parser:
                out.update(self.parsed_recon.result())
                out.update(self.parsed_original.result("_original"))
        elif self.modality == "depth":
            out["abs_rel"] = self.rel_sum / max(self.pixels, 1)
            out["delta1"] = self.delta1_hits / max(self.pixels, 1)
        else:
            out["miou"] = miou(self.confusion)
            out["pixel_accuracy"] = float(self.confusion.diag().sum() / self.confusion.sum().clamp_min(1))
        out["codes_used"] = self.usage.usage
        out["perplexity"] = self.usage.perplexity
        return out


def decode_settings(tokenizer: torch.nn.Module, steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """How ``tokenizer`` decodes in an evaluation: ``{"kind": "conv"}`` or ``{"kind": "diffusion",
    "steps": DDIM steps (``steps`` or the tokenizer's default), "seed": seed of the noise}``."""
    if not getattr(tokenizer, "is_diffusion", False):
        return {"kind": "conv"}
    return {"kind": "diffusion", "steps": tokenizer.decode_steps if steps is None else steps, "seed": seed}


def decoder_for(tokenizer: torch.nn.Module, settings: Mapping[str, Any]):
    """A ``tokens -> images`` function of ``tokenizer`` under ``settings`` (``decode_settings``);
    a diffusion decoder draws its noise from one generator, seeded once here."""
    if settings["kind"] == "conv":
        return tokenizer.decode
    generator = torch.Generator().manual_seed(settings["seed"])
    return lambda tokens: tokenizer.decode(tokens, steps=settings["steps"], generator=generator)


@torch.no_grad()
def evaluate_tokenizers(
    tokenizers: Mapping[str, torch.nn.Module],
    seed: int,
    num_samples: int,
    image_size: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    parser: bool = True,
    decode_steps: int | None = None,
    decode_seed: int = 0,
) -> dict:
    """Round-trip ``num_samples`` scenes of world ``seed`` through each image tokenizer.

    Args:
        tokenizers: {"rgb": ImageTokenizer, ...}; entries that are not image tokenizers (text) are skipped.
        seed: world seed of the held-out scenes (use one that training never saw).
        num_samples: number of scenes.
        image_size: scene size in pixels (default: the tokenizers' training size, which must agree).
        batch_size: scenes per batch.
        progress: show a progress bar.
        parser: score the rgb reconstructions with the scene parser too (about 35 ms per scene
            on a CPU core: reconstruction and original).
        decode_steps: DDIM steps of the diffusion decoders (default: each one's configured
            ``num_inference_steps``); refused when no tokenizer has a diffusion decoder.
        decode_seed: seed of the diffusion decoders' starting noise.
    Returns:
        {"seed", "num_samples", "image_size", "wall_s", "decoders": {modality: decode_settings},
        "<modality>": {metric: value}}.
    """
    from fourm.vq.vqvae import ImageTokenizer

    image_toks = {m: t for m, t in tokenizers.items() if isinstance(t, ImageTokenizer)}
    if not image_toks:
        raise ValueError(f"no image tokenizer among {sorted(tokenizers)}")
    sizes = {t.config.image_size for t in image_toks.values()}
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(f"tokenizers were trained at different sizes {sorted(sizes)}; pass image_size")
        image_size = sizes.pop()
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    settings = {m: decode_settings(t, decode_steps, decode_seed) for m, t in image_toks.items()}
    if decode_steps is not None and all(s["kind"] == "conv" for s in settings.values()):
        raise ValueError(f"decode_steps={decode_steps} applies to diffusion decoders; the tokenizers "
                         f"{', '.join(image_toks)} all have conv decoders (leave it unset)")
    decoders = {m: decoder_for(t, settings[m]) for m, t in image_toks.items()}
    start = time.perf_counter()
    metrics = {m: ReconstructionMetrics(m, t.codebook_size, parser=parser and m == "rgb")
               for m, t in image_toks.items()}
    bar = tqdm(total=num_samples, desc="tokenizer eval", unit="scene", disable=not progress)
    for lo in range(0, num_samples, batch_size):
        idx = range(lo, min(lo + batch_size, num_samples))
        batch = render_batch(seed, idx, image_size, objects=parser and "rgb" in image_toks)
        for m, tok in image_toks.items():
            tokens = tok.encode(batch[m])
            metrics[m].update(tokens, decoders[m](tokens), batch)
        bar.update(len(idx))
    bar.close()
    out: dict = {"seed": seed, "num_samples": num_samples, "image_size": image_size, "decoders": settings}
    out.update({m: r.result() for m, r in metrics.items()})
    out["wall_s"] = time.perf_counter() - start
    return out


def format_results(results: Mapping) -> str:
    """A small text table of ``evaluate_tokenizers`` results."""
    lines = [f"tokenizer reconstruction: {results['num_samples']} scenes, seed {results['seed']}, "
             f"{results['image_size']} px, {results['wall_s']:.1f} s"]
    for m, d in results.get("decoders", {}).items():
        if d["kind"] == "diffusion":
            lines.append(f"  {m} decoder: diffusion, {d['steps']} DDIM steps, noise seed {d['seed']}")
    for m in ("rgb", "depth", "semseg"):
        if m in results:
            own = {k: v for k, v in results[m].items() if not k.endswith("_original")}
            ref = {k[: -len("_original")]: v for k, v in results[m].items() if k.endswith("_original")}
            lines.append(f"  {m:<7} " + "  ".join(f"{k} {v:.4f}" for k, v in own.items()))
            if ref:
                lines.append(f"  {'':<7} scene parser on the original images (its ceiling): "
                             + "  ".join(f"{k} {v:.4f}" for k, v in ref.items()))
    return "\n".join(lines)
