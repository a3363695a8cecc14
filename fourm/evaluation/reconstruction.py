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

import math
import time
from typing import Any, Iterable, Mapping

import torch
from tqdm import tqdm  # text bars everywhere (tqdm.auto warns in notebooks without ipywidgets)

from fourm.data.image_sources import stored_image
from fourm.data.photos import check_photo_names, load_photo, photo_tiles, untile
from fourm.data.shapes_world import SEMSEG_CLASSES, WorldConfig, render_scene
from fourm.evaluation.dense import confusion_matrix, depth_errors, miou, psnr
from fourm.evaluation.objects import ParserScores, parse_images
from fourm.vq.quantizers import CodeUsage


SCENE_IMAGES: tuple[str, ...] = ("rgb", "depth", "semseg")  # the image fields of a ShapesWorld scene


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
    out: dict[str, Any] = {m: torch.stack([stored_image(s, m) for s in samples]) for m in SCENE_IMAGES}
    if objects:
        out["objects"] = [s["objects"] for s in samples]
    return out


class ReconstructionMetrics:
    """Accumulates the reconstruction metrics of one tokenizer over batches.

    Args:
        field: the batch's field the tokenizer reconstructs (its modality).
        codebook_size: its number of codes.
        num_classes: classes of a semseg tokenizer.
        parser: rgb only: also score the scene parser on the reconstructions; each batch must
            then carry ``objects`` (``render_batch(..., objects=True)``) and may carry ``parsed``
            (the originals already parsed, else they are parsed here); the result adds
            :class:`ParserScores` of the reconstructions and, as ``*_original``, of the originals.
        kind: how the field is stored (``rgb``, ``depth``, ``semseg``; default: ``field``); it
            picks the scores. A depth-kind map is scored on the non-sky pixels when the batch
            carries ``semseg``, on all pixels otherwise.
    """

    def __init__(self, field: str, codebook_size: int, num_classes: int = len(SEMSEG_CLASSES),
                 parser: bool = False, kind: str | None = None) -> None:
        self.field, self.kind = field, kind or field
        if parser and self.kind != "rgb":
            raise ValueError(f"parser=True scores rgb images; the {field} tokenizer has none")
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
        target = batch[self.field]
        if self.kind == "rgb":
            self.psnr_sum += float(psnr(recon, target).sum())
            if self.parser:
                if "objects" not in batch:
                    raise ValueError("parser scores need the scenes' objects: render the batch with objects=True")
                original = batch["parsed"] if "parsed" in batch else parse_images(target)
                self.parsed_recon.update(parse_images(recon), batch["objects"])
                self.parsed_original.update(original, batch["objects"])
        elif self.kind == "depth":
            valid = batch["semseg"] != 0 if "semseg" in batch else torch.ones_like(target, dtype=torch.bool)  # sky: 0
            rel, hits, n = depth_errors(recon, target, valid)
            self.rel_sum, self.delta1_hits, self.pixels = self.rel_sum + rel, self.delta1_hits + hits, self.pixels + n
        else:
            self.confusion += confusion_matrix(recon, target, self.num_classes)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.kind == "rgb":
            out["psnr"] = self.psnr_sum / max(self.images, 1)
            if self.parser:
                out.update(self.parsed_recon.result())
                out.update(self.parsed_original.result("_original"))
        elif self.kind == "depth":
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
    predictability_samples: int = 0,
) -> dict:
    """Round-trip ``num_samples`` scenes of world ``seed`` through each image tokenizer.

    Args:
        tokenizers: {"rgb": ImageTokenizer, ...}; entries that are not image tokenizers (text) are
            skipped, and so are image tokenizers of fields a scene does not have (listed under
            ``"skipped"``).
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
        predictability_samples: other scenes of the same seed (the ones after the scored scenes)
            whose codes are counted for the token-predictability statistics
            (``fourm.evaluation.token_stats``), which score the evaluated scenes' codes; 0
            (default) skips them (``fourm tokenizer eval`` counts 1500).
    Returns:
        {"seed", "num_samples", "image_size", "wall_s", "decoders": {modality: decode_settings},
        "<modality>": {metric: value}, "skipped": [modality, ...], "predictability": {modality:
        {"all" | "object" | "background": statistics}} (when ``predictability_samples`` > 0)}.
    """
    from fourm.evaluation.token_stats import object_token_mask, token_predictability
    from fourm.vq.vqvae import ImageTokenizer

    every = {m: t for m, t in tokenizers.items() if isinstance(t, ImageTokenizer)}
    image_toks = {m: t for m, t in every.items() if t.modality in SCENE_IMAGES}  # rgb/, rgb_gen/, depth/ ...
    if not image_toks:
        raise ValueError(f"no image tokenizer of a ShapesWorld scene field ({', '.join(SCENE_IMAGES)}) among "
                         f"{sorted(tokenizers)}")
    sizes = {t.config.image_size for t in image_toks.values()}
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(f"tokenizers were trained at different sizes {sorted(sizes)}; pass image_size")
        image_size = sizes.pop()
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    if predictability_samples < 0:
        raise ValueError(f"predictability_samples={predictability_samples}: must be >= 0 (0 skips the statistics)")
    settings = {m: decode_settings(t, decode_steps, decode_seed) for m, t in image_toks.items()}
    if decode_steps is not None and all(s["kind"] == "conv" for s in settings.values()):
        raise ValueError(f"decode_steps={decode_steps} applies to diffusion decoders; the tokenizers "
                         f"{', '.join(image_toks)} all have conv decoders (leave it unset)")
    decoders = {m: decoder_for(t, settings[m]) for m, t in image_toks.items()}
    start = time.perf_counter()
    metrics = {m: ReconstructionMetrics(t.modality, t.codebook_size, parser=parser and t.kind == "rgb", kind=t.kind)
               for m, t in image_toks.items()}
    codes: dict[str, dict[str, list[torch.Tensor]]] = {"eval": {m: [] for m in image_toks}, "fit": {m: [] for m in image_toks}}
    semseg: dict[str, list[torch.Tensor]] = {"eval": [], "fit": []}
    bar = tqdm(total=num_samples + predictability_samples, desc="tokenizer eval", unit="scene", disable=not progress)
    for lo in range(0, num_samples, batch_size):
        idx = range(lo, min(lo + batch_size, num_samples))
        with_objects = parser and any(t.modality == "rgb" for t in image_toks.values())
        batch = render_batch(seed, idx, image_size, objects=with_objects)
        for m, tok in image_toks.items():
            tokens = tok.encode(batch[tok.modality])
            metrics[m].update(tokens, decoders[m](tokens), batch)
            codes["eval"][m].append(tokens.cpu())
        semseg["eval"].append(batch["semseg"])
        bar.update(len(idx))
    end = num_samples + predictability_samples
    for lo in range(num_samples, end, batch_size):  # other scenes, whose codes are only counted
        batch = render_batch(seed, range(lo, min(lo + batch_size, end)), image_size)
        for m, tok in image_toks.items():
            codes["fit"][m].append(tok.encode(batch[tok.modality]).cpu())
        semseg["fit"].append(batch["semseg"])
        bar.update(min(batch_size, end - lo))
    bar.close()
    out: dict = {"seed": seed, "num_samples": num_samples, "image_size": image_size, "decoders": settings}
    out.update({m: r.result() for m, r in metrics.items()})
    if predictability_samples:
        out["predictability"] = {}
        for m, tok in image_toks.items():
            fit, ev = torch.cat(codes["fit"][m]), torch.cat(codes["eval"][m])
            groups = {}
            for part, t in (("fit", fit), ("eval", ev)):
                obj = object_token_mask(torch.cat(semseg[part]), tuple(t.shape[1:]))
                groups[part] = {"object": obj, "background": ~obj}
            out["predictability"][m] = token_predictability(fit, ev, tok.codebook_size, groups["fit"], groups["eval"])
    out["skipped"] = sorted(set(every) - set(image_toks))
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
    if "predictability" in results:
        from fourm.evaluation.token_stats import format_predictability

        lines.append("token predictability (counted on other scenes of the same seed, scored on these):")
        lines.append(format_predictability(results["predictability"]))
    return "\n".join(lines)


# --- photographs ----------------------------------------------------------------------------------

def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error on the 0..255 scale (100 dB for an exact match)."""
    return 100.0 if mse <= 0 else min(10.0 * math.log10(255.0**2 / mse), 100.0)


@torch.no_grad()
def round_trip_photo(tokenizer: torch.nn.Module, photo: torch.Tensor,
                     batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo's tiles through ``decode(encode(.))`` at the tokenizer's training size, reassembled.

    Args:
        tokenizer: an rgb ``ImageTokenizer`` (encode / decode uint8 images, ``config.image_size``).
        photo: uint8 (3, H, W).
        batch_size: tiles per forward.
    Returns:
        (the photo centre-cropped to whole tiles, its reconstruction), both uint8 (3, H', W') on the CPU.
    """
    tile = tokenizer.config.image_size
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    tiles = photo_tiles(photo, tile)  # (N, 3, t, t)
    recon = torch.cat([tokenizer.decode(tokenizer.encode(tiles[lo:lo + batch_size].to(device))).cpu()
                       for lo in range(0, tiles.shape[0], batch_size)])
    rows, cols = photo.shape[1] // tile, photo.shape[2] // tile
    return untile(tiles, rows, cols), untile(recon, rows, cols)


def photo_psnr(tokenizer: torch.nn.Module, names: Iterable[str], batch_size: int = 64) -> dict[str, float]:
    """PSNR of each photo round-tripped tile by tile through an rgb tokenizer (``round_trip_photo``).

    Args:
        tokenizer: an rgb ``ImageTokenizer``.
        names: catalogued photos (normally the held-out ones).
        batch_size: tiles per forward.
    Returns:
        {name: PSNR in dB from the mean squared error over all the photo's tiles}.
    """
    out = {}
    for name in check_photo_names(names, "photos"):
        target, recon = round_trip_photo(tokenizer, load_photo(name), batch_size)
        out[name] = psnr_from_mse(float((recon.double() - target.double()).pow(2).mean()))
    return out
