"""A photo through a released 4M model end to end: rgb -> depth and semseg, as PNGs.

    fourm generate --model 4M-7_B_CC12M --tokenizers tokenizers/ --image photo.jpg --out out/photo

    model = load_ml4m("4M-7_B_CC12M");  toks = load_reference_tokenizers("tokenizers/")
    res = run_photo(model, toks, load_photo("photo.jpg", 224), seed=0)
    save_photo_result(res, "out/photo")          # grid.png, photo.png, tok_depth@224_0.png, ...

Steps: the photo is centre-cropped and resized to the model's input size; it conditions the model
as rgb pixels (``rgb@224``, ImageNet mean/std as the reference feeds them) and as rgb tokens
(``tok_rgb@224``, from the reference's rgb tokenizer, which reads [-1, 1]); fourm's sampler
generates the targets (by default every depth and semseg token modality, with the reference's
RGB->X settings: ROAR in 1 step, temperature 0.01, top-p 0.8, guidance 2.0); the reference
tokenizers decode the tokens (DiVAE depth: diffusion steps; semseg: one pass) and the results are
drawn: depth in false colours (per image, 2nd to 98th percentile: the tokens carry relative
depth only), semseg with one fixed colour per class id (0, unlabelled, black).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from fourm.atomic import atomic_write
from fourm.compat.ml4m import add_reference_tables, has_reference_tables
from fourm.compat.ml4m_tokenizer import IMAGENET_MEAN, IMAGENET_STD, load_reference_tokenizers
from fourm.compat.ml4m_tokenizer_config import FEATURE_MODALITIES
from fourm.generation.decode import font
from fourm.generation.sampler import Sampler
from fourm.generation.target import Target
from fourm.models import FourM

RGB_INPUTS = ("both", "pixels", "tokens")
DEFAULT_TARGET_KEYS = ("depth", "semseg")
# the reference's RGB->X settings (demo_4M_sampler / notebooks)
RGB2X = {"steps": 1, "scheme": "roar", "temperature": 0.01, "top_p": 0.8, "cfg_scale": 2.0}
_DEPTH_RAMP = np.array([[48, 18, 59], [70, 107, 227], [40, 188, 235], [50, 242, 152], [164, 252, 60],
                        [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3]], np.float32)  # a turbo-like ramp


@dataclass
class PhotoResult:
    """What ``run_photo`` made: the photo, per target its tokens and decoded images, timings (s)."""

    photo: np.ndarray  # (H, W, 3) uint8, as fed to the model
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, rows, cols)
    decoded: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, H, W) depth / semseg
    kinds: dict[str, str] = field(default_factory=dict)  # name -> tokenizer modality
    seconds: dict[str, float] = field(default_factory=dict)


def load_photo(image: str | Path | np.ndarray | Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """A photo (file, PIL image or (H, W, 3) uint8 array) centre-cropped to a square and resized
    (bicubic) to ``size``: (H, W, 3) uint8."""
    img = Image.open(image) if isinstance(image, (str, Path)) else image
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"photo array must be (H, W, 3) uint8, got {img.dtype} {img.shape}")
        img = Image.fromarray(img)
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    size = (size, size) if isinstance(size, int) else size
    return np.array(img.resize((size[1], size[0]), Image.BICUBIC))  # a writable copy


def _find(model: FourM, key: str, kind: str) -> str | None:
    """The model's modality of ``kind`` for ``key``: a token modality by its tokenizer, a pixel
    modality (which has none) by its name before any ``@size`` (the reference's ``rgb@224``)."""
    def match(s) -> bool:
        return s.tokenizer == key if kind != "pixels" else s.name.split("@")[0] == key
    return next((n for n, s in model.specs.items() if s.kind == kind and match(s)), None)


def default_targets(model: FourM, tokenizers: Mapping[str, Any]) -> list[Target]:
    """The model's depth and semseg token modalities that have a tokenizer, with ``RGB2X`` settings."""
    names = [n for n, s in model.specs.items() if s.kind == "image" and s.decoder
             and s.tokenizer in DEFAULT_TARGET_KEYS and s.tokenizer in tokenizers]
    if not names:
        raise ValueError(f"the model has no depth or semseg target with a tokenizer (tokenizers: "
                         f"{', '.join(tokenizers) or 'none'}); name targets with --target")
    return [Target(n, **RGB2X) for n in names]


def restrict_vocab(model: FourM, sizes: Mapping[str, int]) -> FourM:
    """A copy of ``model`` whose image modalities ``sizes`` keep only their first ids (token
    embeddings and output rows cut): sampling it equals sampling with the other ids' logits at
    -inf. For a model whose vocabulary is larger than its tokenizer's codebook."""
    for n, k in sizes.items():
        spec = model.specs.get(n)
        if spec is None or spec.kind != "image" or not 2 <= k <= spec.vocab_size:
            raise ValueError(f"restrict_vocab: {n}={k}; allowed: image token modalities of the model, cut to between 2 "
                             f"and their vocabulary size ({spec.vocab_size if spec else 'not in the model'})")
    specs = []
    for s in model.config.modalities:
        specs.append(type(s).from_dict({**s.to_dict(), "vocab_size": sizes[s.name]}) if s.name in sizes else s)
    rows = {f"{side}_embeddings.{n}.{w}.weight": k for n, k in sizes.items()
            for side, w in (("encoder", "token_emb"), ("decoder", "token_emb"), ("decoder", "to_logits"))}
    state = {k: (v[: rows[k]].contiguous() if k in rows else v) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        out = FourM(model.config.replace(modalities=tuple(specs)))
        if any(hasattr(emb, "token_emb") for emb in model.decoder_embeddings.values()):
            add_reference_tables(out)  # a reference checkpoint's unused image-target tables, cut like the rest
    out.load_state_dict_checked(state, assign=True)
    return out.eval()


def check_vocab(model: FourM, tokenizers: Mapping[str, Any], targets: Sequence[str], fit_vocab: bool,
                inputs: Sequence[str] = ()) -> FourM:
    """Compare image modalities' vocabularies with their tokenizers' codebooks. A target whose
    vocabulary is larger than the codebook is cut to it when ``fit_vocab`` (else it raises); a
    vocabulary smaller than the codebook raises (inputs too: the tokenizer could emit ids the model
    does not know)."""
    cut = {}
    for n in dict.fromkeys([*targets, *inputs]):
        spec, tok = model.specs[n], tokenizers.get(model.specs[n].tokenizer)
        if spec.kind != "image" or tok is None or spec.vocab_size == tok.codebook_size:
            continue
        msg = (f"{n} has {spec.vocab_size} token ids but the {spec.tokenizer} tokenizer has {tok.codebook_size} "
               "codes (the released models and tokenizers match: is this the right tokenizer?)")
        if spec.vocab_size < tok.codebook_size:
            raise ValueError(msg)
        if n in targets:
            if not fit_vocab:
                raise ValueError(msg + "; pass --fit-vocab (fit_vocab=True) to sample only the codebook's ids")
            cut[n] = tok.codebook_size
    return restrict_vocab(model, cut) if cut else model


def photo_inputs(model: FourM, tokenizers: Mapping[str, Any], photo: np.ndarray, rgb_input: str = "both",
                 imagenet_pixels: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """The model inputs of a photo: ``rgb@224``-style pixels and/or rgb tokens (see the module
    docstring); returns the inputs and the seconds the rgb tokenizer took."""
    if rgb_input not in RGB_INPUTS:
        raise ValueError(f"rgb_input={rgb_input!r}; allowed: {', '.join(RGB_INPUTS)}")
    pix, tok_name = _find(model, "rgb", "pixels"), _find(model, "rgb", "image")
    inputs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    if rgb_input in ("both", "pixels") and pix is not None:
        spec = model.specs[pix]
        img = torch.from_numpy(load_photo(photo, spec.image_size)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        if imagenet_pixels:  # the reference's FM pixel input: ImageNet mean/std
            img = (img - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        else:
            img = img * 2 - 1
        inputs[pix] = img[None]
    if rgb_input in ("both", "tokens") and tok_name is not None:
        if "rgb" not in tokenizers:
            raise ValueError(f"rgb_input={rgb_input!r} needs the rgb tokenizer; have: {', '.join(tokenizers) or 'none'}")
        tok = tokenizers["rgb"]
        rows, cols = model.specs[tok_name].grid
        img = load_photo(photo, (rows * tok.downsample, cols * tok.downsample))
        t0 = time.perf_counter()
        inputs[tok_name] = tok.encode(torch.from_numpy(img).permute(2, 0, 1)[None]).cpu()  # (1, rows, cols)
        seconds["tokenize_rgb"] = time.perf_counter() - t0
    if not inputs:
        raise ValueError(f"rgb_input={rgb_input!r}: the model takes neither rgb pixels nor rgb tokens")
    return inputs, seconds


def run_photo(model: FourM, tokenizers: Mapping[str, Any], photo: np.ndarray, targets: Sequence[Target] | None = None,
              seed: int = 0, num_samples: int = 1, decode_steps: int | None = None, decode_sampler: str | None = None,
              rgb_input: str = "both", fit_vocab: bool = False, imagenet_pixels: bool = True,
              progress: bool = False) -> PhotoResult:
    """Photo -> generated target tokens -> decoded images (see the module docstring).

    Args:
        model, tokenizers: a reference-format FourM and ``load_reference_tokenizers`` output.
        photo: (H, W, 3) uint8, any size (centre-cropped and resized here).
        targets: what to generate (default ``default_targets``).
        seed: sampling seed; also seeds the diffusion decoders' noise.
        num_samples: samples of the photo.
        decode_steps, decode_sampler: DiVAE decoding (default 25 steps, the checkpoint's sampler;
            ``ddim`` deterministic, ``ddpm`` stochastic).
        rgb_input: condition on ``both`` rgb pixels and tokens, ``pixels`` or ``tokens``.
        fit_vocab: see ``check_vocab``.
        imagenet_pixels: normalise the pixel input with ImageNet mean/std (reference models).
    """
    targets = list(targets) if targets else default_targets(model, tokenizers)
    names = [t.modality for t in targets]
    missing = [n for n in names if n in model.specs and model.specs[n].tokenizer not in tokenizers]
    if missing:
        raise ValueError(f"no tokenizer to decode {missing} (tokenizers: {', '.join(tokenizers)})")
    inputs, seconds = photo_inputs(model, tokenizers, photo, rgb_input, imagenet_pixels)
    model = check_vocab(model, tokenizers, names, fit_vocab, list(inputs))
    sampler = Sampler(model, tokenizers, progress=progress)
    t0 = time.perf_counter()
    result = sampler.generate(sampler.prepare(inputs, num_samples), targets, seed=seed)
    seconds["generate"] = time.perf_counter() - t0
    pix = next((n for n in inputs if model.specs[n].kind == "pixels"), None)
    shown = load_photo(photo, model.specs[pix].image_size) if pix else load_photo(photo, 224)
    out = PhotoResult(photo=shown, seconds=seconds)
    for name in names:
        spec, tok = model.specs[name], tokenizers[model.specs[name].tokenizer]
        grid = result.tokens(name).reshape(-1, *spec.grid).cpu()  # (B, rows, cols)
        t0 = time.perf_counter()
        steps = decode_steps if tok.is_diffusion else None
        g = torch.Generator().manual_seed(seed) if tok.is_diffusion else None
        out.decoded[name] = tok.decode(grid, steps=steps, generator=g, sampler=decode_sampler if tok.is_diffusion else None).cpu()
        seconds[f"decode_{name}"] = time.perf_counter() - t0
        out.tokens[name], out.kinds[name] = grid, tok.modality
    return out


# ------------------------------------------------------------------------------------ pictures
def depth_image(depth: np.ndarray) -> np.ndarray:
    """Relative depth (H, W) -> false colours (H, W, 3) uint8, stretched between its 2nd and 98th
    percentiles (the reference's depth is standardised: larger is farther)."""
    d = np.asarray(depth, np.float32)
    lo, hi = np.percentile(d, [2, 98])
    t = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1) * (len(_DEPTH_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(_DEPTH_RAMP) - 2)
    f = (t - i)[..., None]
    return np.rint(_DEPTH_RAMP[i] * (1 - f) + _DEPTH_RAMP[i + 1] * f).astype(np.uint8)


def semseg_image(ids: np.ndarray) -> np.ndarray:
    """Class ids (H, W) -> one fixed colour per id (0 = unlabelled: black): (H, W, 3) uint8."""
    ids = np.asarray(ids).astype(np.int64)
    h = (ids * 2654435761 + 12345) % (1 << 32)
    rgb = np.stack([(h >> s) & 255 for s in (0, 8, 16)], -1).astype(np.uint8) | 48
    rgb[ids == 0] = 0
    return rgb


def picture(kind: str, value: torch.Tensor | np.ndarray) -> np.ndarray:
    """One decoded image as (H, W, 3) uint8 for a person to look at."""
    v = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if kind == "depth":
        return depth_image(v)
    if kind == "semseg":
        return semseg_image(v)
    if kind in FEATURE_MODALITIES:  # a feature map: its first three principal components as colours
        f = v.reshape(v.shape[0], -1).T.astype(np.float64)  # (h * w, C)
        f -= f.mean(0)
        pcs = f @ np.linalg.svd(f, full_matrices=False)[2][:3].T  # (h * w, 3)
        pcs = (pcs - pcs.min(0)) / np.maximum(pcs.max(0) - pcs.min(0), 1e-9)
        return (pcs.reshape(*v.shape[1:], 3) * 255).round().astype(np.uint8)
    if v.ndim == 3 and v.shape[0] in (1, 3) and v.dtype == np.uint8:
        return np.repeat(v, 3 // v.shape[0], axis=0).transpose(1, 2, 0)
    raise ValueError(f"cannot draw a decoded {kind!r} of shape {v.shape}")


def _png(array: np.ndarray, path: Path, size: int) -> str:
    img = Image.fromarray(array)
    img = img.resize((size, size), Image.NEAREST) if img.size != (size, size) else img
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return str(path)


def save_photo_result(res: PhotoResult, out: str | Path, tile: int = 224, settings: Mapping[str, Any] | None = None) -> dict:
    """Write ``photo.png``, ``<target>_<i>.png`` (+ ``.npy`` with the decoded values), ``grid.png``
    (a row per sample: photo, then targets) and ``result.json`` (files, seconds, settings, each
    sample's token ids row-major as one string); returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"photo": _png(res.photo, out / "photo.png", tile)}
    rows = []
    for i in range(next(iter(res.decoded.values())).shape[0] if res.decoded else 0):
        row = [np.asarray(Image.fromarray(res.photo).resize((tile, tile), Image.BICUBIC))]
        for name, images in res.decoded.items():
            pic = picture(res.kinds[name], images[i])
            files[f"{name}_{i}"] = _png(pic, out / f"{name}_{i}.png", tile)
            np.save(out / f"{name}_{i}.npy", images[i].numpy())
            row.append(np.asarray(Image.fromarray(pic).resize((tile, tile), Image.NEAREST)))
        rows.append(np.concatenate(row, axis=1))
    if rows:
        body = np.concatenate(rows, axis=0)  # (samples * tile, (1 + targets) * tile, 3)
        grid = Image.new("RGB", (body.shape[1], body.shape[0] + 16), (255, 255, 255))
        grid.paste(Image.fromarray(body), (0, 16))
        draw = ImageDraw.Draw(grid)
        for c, title in enumerate(["photo", *res.decoded]):
            draw.text((c * tile + 3, 2), title, fill=(20, 20, 20), font=font(12))
        atomic_write(out / "grid.png", lambda tmp: grid.save(tmp, format="PNG"))
        files["grid"] = str(out / "grid.png")
    report = {"files": files, "seconds": {k: round(v, 3) for k, v in res.seconds.items()},
              "tokens": {k: [" ".join(map(str, g.flatten().tolist())) for g in v] for k, v in res.tokens.items()}, "settings": dict(settings or {})}
    atomic_write(out / "result.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def cmd_photo(args: argparse.Namespace, load_model: Any, parse_target: Any) -> int:
    """``fourm generate --image PHOTO`` (see fourm.generation.commands): returns the exit status."""
    import sys

    try:
        if args.tokenizers is None:
            raise ValueError("--image needs --tokenizers DIR: a folder of reference tokenizer folders "
                             "(e.g. 4M_tokenizers_rgb_16k_224-448/, ..._depth_8k_..., ..._semseg_4k_...)")
        model = load_model(args.model, args.device, args.attention)
        tokenizers = load_reference_tokenizers(args.tokenizers, device=args.device)
        targets = [parse_target(t) for t in args.target] or None
        if not Path(args.image).is_file():
            raise FileNotFoundError(f"--image {args.image}: file not found")
        photo = np.array(Image.open(args.image).convert("RGB"))  # cropped and resized per model input in run_photo
        res = run_photo(model, tokenizers, photo, targets, seed=args.seed, num_samples=args.num_samples,
                        decode_steps=args.decode_steps, decode_sampler=args.decode_sampler, rgb_input=args.rgb_input,
                        fit_vocab=args.fit_vocab, imagenet_pixels=has_reference_tables(model), progress=True)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    settings = {"model": str(args.model), "tokenizers": str(args.tokenizers), "image": str(args.image), "seed": args.seed,
                "targets": [asdict(t) for t in (targets or default_targets(model, tokenizers))],
                "decode_steps": args.decode_steps, "decode_sampler": args.decode_sampler, "rgb_input": args.rgb_input}
    report = save_photo_result(res, args.out, max(args.tile, 64), settings)
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in report["seconds"].items())
    print(f"wrote {len(report['files'])} PNGs to {args.out} (grid: {Path(args.out) / 'grid.png'}); {timing}")
    return 0
