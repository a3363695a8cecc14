"""``fourm generate``: any-to-any generation from the command line.

    fourm generate --model out/fm/shapes_bundled --index 7 \\
        --target tok_depth:steps=4 --target caption:temperature=0.7 --out out/gen
    fourm generate --model MODEL --input caption="a large red circle" \\
        --target "tok_rgb:steps=8,cfg_scale=3,temperature_schedule=onex:0.5:0.5" --num-samples 4 --out out/gen
    fourm generate --model MODEL --input rgb=scene.png --target det --target caption --json result.json
    fourm generate --model 4M-7_B_CC12M --tokenizers 4m_tokenizers --image photo.jpg --out out/photo

Conditions come from files (``--input NAME=VALUE``: rgb / semseg PNG, depth / token .npy, det
JSON, caption text or ``@file.txt``) or from a ShapesWorld scene (``--index`` with
``--world-seed``; ``--from-scene`` picks which of its modalities condition). A target is
``NAME[:key=value,...]`` with the fields of :class:`fourm.generation.Target` (``steps``,
``scheme``, ``schedule``, ``temperature``, ``temperature_schedule``, ``top_k``, ``top_p``,
``cfg_scale``, ``cfg_conditions=caption+det``, ``max_tokens``) and ``guide=MODS*WEIGHT`` (repeat
for weighted guidance, e.g. ``guide=caption*3,guide=det*-1``).

Writes ``grid.png`` (one row per sample; the inputs, then the targets), one PNG per generated
image and ``result.json`` (settings, captions, boxes, token ids, timing) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import fourm
from fourm.cli import BUNDLED_TOKENIZERS, for_flag
from fourm.config import save_json_atomic
from fourm.generation.decode import decode_state, output_kind, render_grid, save_png, to_tile
from fourm.generation.guidance import Condition
from fourm.generation.inputs import raw_aliases
from fourm.generation.sampler import Sampler
from fourm.generation.target import Target
from fourm.hub import resolve_pretrained
from fourm.models import ATTENTION_BACKENDS, FourM
_INT_FIELDS = {"steps", "max_tokens"}
_FLOAT_FIELDS = {"temperature", "top_p", "cfg_scale"}
_STR_FIELDS = {"scheme", "schedule", "temperature_schedule"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fourm generate`` to the ``fourm`` parser."""
    examples = __doc__.split("\n\n")[1]
    p = subparsers.add_parser("generate", help="generate modalities from any others with a FourM model",
                              description="Generate target modalities from any conditions with a FourM model; writes "
                                          "grid.png, one PNG per generated image and result.json.",
                              epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model: a FourM.save_pretrained folder, a training out_dir (newest checkpoint) or checkpoint "
                        "folder, a 4M reference checkpoint (config.json + model.safetensors), or a Hub repo id of "
                        "either (EPFL-VILAB/4M-7_B_CC12M; a reference release name alone also works)")
    p.add_argument("--tokenizers", default=None,
                   help=f"tokenizer folder or Hub repo id (default: {BUNDLED_TOKENIZERS} when run from a fourm "
                        "checkout; with --image: a folder of 4M reference tokenizer folders)")
    p.add_argument("--text-tokenizer", type=Path, default=None,
                   help="a tokenizer JSON file for caption/det (e.g. the reference's text_tokenizer_4m_wordpiece_30k.json)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a condition: rgb=FILE.png, depth=FILE.npy, semseg=FILE.png|npy, caption=TEXT|@FILE, "
                        "det=FILE.json|JSON, tok_*=FILE.npy (repeat)")
    p.add_argument("--index", type=int, default=None, help="condition on ShapesWorld scene INDEX")
    p.add_argument("--world-seed", type=int, default=0, help="ShapesWorld seed of --index (default 0)")
    p.add_argument("--image-size", type=int, default=64, help="ShapesWorld image size of --index (default 64)")
    p.add_argument("--from-scene", default="rgb",
                   help="comma-separated raw fields of the scene that condition (rgb, depth, semseg, caption, det; "
                        "default rgb)")
    p.add_argument("--target", action="append", default=[], metavar="SPEC",
                   help="NAME[:key=value,...], e.g. tok_rgb:steps=8,cfg_scale=3 (repeat; generated in order)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per input (default 1)")
    p.add_argument("--out", type=Path, default=Path("out/generate"), help="output folder (default out/generate)")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    p.add_argument("--tile", type=int, default=128, help="tile size of grid.png in pixels (default 128)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto",
                   help="attention kernel: auto (xformers where installed and working on the device, else SDPA), "
                        "sdpa or xformers (default auto)")
    p.add_argument("--no-cache", action="store_true", help="decode sequences without the key/value cache (slower)")
    photo = p.add_argument_group("a photo through a 4M reference model (--image; see fourm.generation.photo)")
    photo.add_argument("--image", type=Path, default=None,
                       help="an rgb photo: with a reference model and --tokenizers holding reference tokenizer "
                            "folders, generate depth and semseg (or --target) and write them as PNGs")
    photo.add_argument("--decode-steps", type=int, default=None, help="diffusion decoder steps (default 25)")
    photo.add_argument("--decode-sampler", choices=("ddim", "ddpm"), default=None,
                       help="diffusion decoder sampler (default: the tokenizer's, ddpm for the released ones)")
    photo.add_argument("--rgb-input", choices=("both", "pixels", "tokens"), default="both",
                       help="condition on the photo as rgb pixels, rgb tokens or both (default both)")
    photo.add_argument("--fit-vocab", action="store_true",
                       help="sample only ids a tokenizer can decode when the model's vocabulary is larger")
    p.set_defaults(func=cmd_generate)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def load_model(path_or_repo_id: str | Path, device: str = "cpu", attention: str = "auto") -> FourM:
    """A FourM from a ``save_pretrained`` folder, a training checkpoint folder, a training
    ``out_dir`` (its newest checkpoint), a reference checkpoint, or a Hub repo id holding a
    ``save_pretrained`` folder or a reference checkpoint (a reference release name alone, such as
    ``4M-21_XL``, reads as ``EPFL-VILAB/4M-21_XL``); ``attention`` as in
    :meth:`FourM.set_attention_backend`."""
    from fourm.compat.ml4m import REFERENCE_ORG, RELEASED_MODELS, load_ml4m

    path = Path(path_or_repo_id)
    if not path.exists():
        name = str(path_or_repo_id)
        name = f"{REFERENCE_ORG}/{name}" if name in RELEASED_MODELS else name
        path = resolve_pretrained(name, what="a FourM folder, training out_dir or checkpoint, or a 4M reference "
                                             "checkpoint", allow_patterns=["*.json", "*.safetensors", "*.md"])
    if not (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        from fourm.training.checkpoint import latest_checkpoint

        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"{path}: no complete checkpoint under {path / 'checkpoints'}")
        path = newest
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; give a folder written by FourM.save_pretrained, a training "
                                "checkpoint folder or a reference checkpoint")
    cfg = json.loads((path / "config.json").read_text())
    model = FourM.from_pretrained(path, device=device) if cfg.get("format") == "fourm.FourM" else load_ml4m(path, device)
    model.set_attention_backend(attention, device)
    return model.eval()


def parse_target(spec: str) -> Target:
    """``NAME[:key=value,...]`` -> Target (see the module docstring)."""
    name, _, rest = spec.partition(":")
    kw: dict[str, Any] = {}
    guides = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--target {spec!r}: {item!r} is not key=value")
        if key in _INT_FIELDS:
            kw[key] = _number(spec, key, value, int)
        elif key in _FLOAT_FIELDS:
            kw[key] = _number(spec, key, value, float)
        elif key in _STR_FIELDS:
            kw[key] = value
        elif key == "top_k":
            kw[key] = _number(spec, key, value, float if "." in value else int)
        elif key == "cfg_conditions":
            kw[key] = tuple(value.split("+"))
        elif key == "guide":
            mods, star, weight = value.rpartition("*")
            if not star:
                raise ValueError(f"--target {spec!r}: guide={value!r}; expected MODS*WEIGHT such as caption*3")
            guides.append(Condition(tuple(mods.split("+")), _number(spec, "guide weight", weight, float)))
        else:
            allowed = sorted(_INT_FIELDS | _FLOAT_FIELDS | _STR_FIELDS | {"top_k", "cfg_conditions", "guide"})
            raise ValueError(f"--target {spec!r}: unknown setting {key!r}; allowed: {', '.join(allowed)}")
    if guides:
        kw["guidance"] = tuple(guides)
    return Target(name, **kw)


def _number(spec: str, key: str, value: str, kind: type) -> int | float:
    """``value`` as ``kind`` (int or float); a mistake names the target and the setting."""
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"--target {spec!r}: {key}={value!r} is not {what}; e.g. {key}="
                         f"{'8' if kind is int else '0.7'}") from None


def _read_input(name: str, value: str, specs: dict) -> Any:
    """A condition's value from the command line: text / JSON for sequences (``@FILE`` reads a
    file; det also takes a .json file), a .npy or image file otherwise.

    Raises:
        FileNotFoundError, ValueError: naming the input (``--input NAME=VALUE``) and what is wrong.
    """
    where = f"--input {name}={value if len(value) <= 60 else value[:57] + '...'}"
    spec = specs.get(name)
    if spec is not None and spec.kind == "sequence":
        text = _read_text(where, value[1:]) if value.startswith("@") else value
        if name.split("@")[0] != "det":
            return text.strip()
        if Path(text).suffix == ".json":
            text = _read_text(where, text)
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e}); give a list of boxes, e.g. det='[{{\"class\": "
                             "\"circle\", \"box\": [0.1, 0.1, 0.5, 0.5]}]', or a .json file") from None
    path = Path(value.removeprefix("@"))
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file not found")
    if path.suffix == ".npy":
        try:
            return np.load(path)
        except (ValueError, OSError):  # numpy reads numeric arrays only: nothing in the file runs
            raise ValueError(f"{where}: not a .npy file of a numeric array (as numpy.save writes)") from None
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: not a readable image ({type(e).__name__}); give a PNG or JPEG file, or a .npy "
                         "array") from None
    return np.asarray(img.convert("RGB")) if name.split("@")[0] == "rgb" else np.asarray(img)


def _read_text(where: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: cannot read {path} as text ({e})") from None


def _scene_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from fourm.data.shapes_modalities import scene_conditions

    names = [n.strip() for n in args.from_scene.split(",") if n.strip()]
    try:
        return scene_conditions(args.world_seed, args.index, args.image_size, names)
    except ValueError as e:
        raise ValueError(f"--from-scene: {e}") from None


def _load_tokenizers(args: argparse.Namespace) -> dict[str, Any]:
    from fourm.vq.loading import load_tokenizers

    path = args.tokenizers or (BUNDLED_TOKENIZERS if Path(BUNDLED_TOKENIZERS).is_dir() else None)
    toks = dict(load_tokenizers(path, map_location=args.device)) if path else {}
    if args.text_tokenizer:
        from fourm.vq.text import TextTokenizer

        toks["text"] = TextTokenizer.from_file(args.text_tokenizer)
    return toks


def cmd_generate(args: argparse.Namespace) -> int:
    if args.image is not None:
        from fourm.generation.photo import cmd_photo

        return cmd_photo(args, load_model, parse_target)
    if not args.target:
        return _fail("give at least one --target (e.g. --target caption)")
    try:
        model = for_flag("--model", load_model, args.model, args.device, args.attention)
        tokenizers = for_flag("--tokenizers", _load_tokenizers, args)
        aliases = raw_aliases(model.specs)
        sampler = Sampler(model, tokenizers, use_cache=not args.no_cache, progress=True)
        targets = [sampler.resolve(parse_target(t)) for t in args.target]
        inputs: dict[str, Any] = {}
        if args.index is not None:
            inputs, _ = _scene_inputs(args)
        for item in args.input:
            name, eq, value = item.partition("=")
            if not eq:
                return _fail(f"--input {item!r}: expected NAME=VALUE")
            if name not in model.specs and name not in aliases:
                return _fail(f"unknown input {name!r}; this model takes: {', '.join(sorted({*model.specs, *aliases}))}")
            inputs[name] = _read_input(name, value, model.specs)
        initial = sampler.prepare(inputs, args.num_samples)
        t0 = time.perf_counter()
        result = sampler.generate(initial, targets, seed=args.seed)
        seconds = time.perf_counter() - t0
    except (ValueError, KeyError, FileNotFoundError, TypeError) as e:
        return _fail(str(e).strip("'\""))

    specs = model.specs
    generated = list(dict.fromkeys(result.generated))

    def shown(state: dict, names: list[str]) -> list[str]:
        return [n for n in names if n in state and output_kind(specs[n]) != "pixels"
                and (specs[n].kind != "sequence" or specs[n].tokenizer in tokenizers)]

    decoded_in = decode_state(initial.state, specs, tokenizers, shown(initial.state, list(initial.state)))
    decoded = decode_state(result.state, specs, tokenizers, shown(result.state, generated))
    columns = {f"in: {n}": v for n, v in decoded_in.items()} | decoded
    column_specs = {f"in: {n}": specs[n] for n in decoded_in} | {n: specs[n] for n in decoded}
    out = Path(args.out)
    save_png(render_grid(columns, column_specs, args.tile, row_labels=[f"#{i}" for i in range(result.batch_size)]),
             out / "grid.png")
    images = []
    for name in generated:
        kind = output_kind(specs[name], tokenizers)
        if name in decoded and kind in ("rgb", "depth", "semseg", "tokens"):
            for i, value in enumerate(decoded[name]):
                images.append(str(save_png(to_tile(kind, value, args.tile), out / f"{name}_{i}.png")))
    samples = []
    for i in range(result.batch_size):
        sample: dict[str, Any] = {}
        for name in [n for n in initial.state if n not in generated] + generated:
            entry = result.state[name]
            if name in decoded_in or name in decoded:
                value = (decoded if name in decoded else decoded_in)[name][i]
                if output_kind(specs[name]) in ("text", "boxes"):
                    sample[name] = value
            if output_kind(specs[name]) != "pixels":
                sample[f"{name}_tokens"] = entry["tokens"][i][entry["is_input"][i]].tolist()
        samples.append(sample)
    report = {
        "fourm_version": fourm.__version__, "model": str(args.model), "seed": args.seed,
        "num_samples": args.num_samples, "inputs": sorted(inputs), "targets": [asdict(t) for t in targets],
        "seconds": round(seconds, 3), "samples": samples, "grid": str(out / "grid.png"), "images": images,
    }
    if args.index is not None:
        report["scene"] = {"world_seed": args.world_seed, "index": args.index, "image_size": args.image_size}
    save_json_atomic(report, out / "result.json")
    if args.json:
        save_json_atomic(report, args.json)
    for i, sample in enumerate(samples):
        for name in generated:
            if name in sample:
                print(f"#{i} {name}: {sample[name]}")
    print(f"generated {', '.join(result.generated)} for {result.batch_size} sample(s) in {seconds:.2f} s; "
          f"wrote {out / 'grid.png'} and {out / 'result.json'}")
    return 0
