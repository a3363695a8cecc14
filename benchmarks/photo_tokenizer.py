"""Reconstruction PSNR of rgb tokenizers on scikit-image's held-out photographs.

    .venv/bin/python benchmarks/photo_tokenizer.py                      # shapes64/rgb vs photos64/rgb
    .venv/bin/python benchmarks/photo_tokenizer.py tokenizers/photos64/rgb --scenes 512 --png out/photos.png

Each tokenizer folder is an rgb tokenizer (config.json + model.safetensors) or a folder with an
``rgb/`` subfolder. Each held-out photo (default: the ``holdout`` of configs/tokenizers/
rgb_photos_64.yaml, fourm.data.photos.DEFAULT_HOLDOUT) is centre-cropped to whole tiles of the
tokenizer's training size (64 px), and every non-overlapping tile goes through
``decode(encode(tile))`` on its own: the tokenizers are used as 4M uses them, on images of the size
they were trained at. PSNR per photo comes from the mean squared error over all its pixels (peak
255); "mean" is the mean of the per-photo PSNRs. ``--scenes N`` adds the mean PSNR on N held-out
ShapesWorld scenes of ``--scene-seed`` (as ``fourm tokenizer eval``). ``--png`` writes, per photo,
the original then each tokenizer's reconstruction, side by side.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from fourm.config import save_json_atomic
from fourm.evaluation.reconstruction import evaluate_tokenizers
from fourm.data.photos import DEFAULT_HOLDOUT, check_photo_names, load_photo
from fourm.evaluation.reconstruction import psnr_from_mse, round_trip_photo
from fourm.vq.vqvae import ImageTokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZERS = ("tokenizers/shapes64/rgb", "tokenizers/photos64/rgb")


def load_rgb_tokenizer(folder: Path, device: str) -> ImageTokenizer:
    """The rgb tokenizer in ``folder`` (or in ``folder/rgb``)."""
    path = folder / "rgb" if (folder / "rgb" / "config.json").is_file() else folder
    tok = ImageTokenizer.from_pretrained(path).to(device).eval()
    if tok.modality != "rgb":
        raise ValueError(f"{path} holds a {tok.modality!r} tokenizer; give an rgb tokenizer folder")
    return tok


def side_by_side(rows: list[list[torch.Tensor]], pad: int = 4) -> Image.Image:
    """Rows of uint8 (3, H, W) images, laid out left to right and top to bottom on white."""
    heights = [max(im.shape[1] for im in row) for row in rows]
    widths = [sum(im.shape[2] for im in row) + pad * (len(row) - 1) for row in rows]
    canvas = torch.full((3, sum(heights) + pad * (len(rows) - 1), max(widths)), 255, dtype=torch.uint8)
    y = 0
    for row, h in zip(rows, heights):
        x = 0
        for im in row:
            canvas[:, y:y + im.shape[1], x:x + im.shape[2]] = im
            x += im.shape[2] + pad
        y += h + pad
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizers", nargs="*", default=list(DEFAULT_TOKENIZERS),
                    help=f"rgb tokenizer folders (default: {' '.join(DEFAULT_TOKENIZERS)})")
    ap.add_argument("--photos", nargs="+", default=list(DEFAULT_HOLDOUT),
                    help=f"photos to score (default, the held-out ones: {' '.join(DEFAULT_HOLDOUT)})")
    ap.add_argument("--scenes", type=int, default=0, help="also score this many ShapesWorld scenes (default 0)")
    ap.add_argument("--scene-seed", type=int, default=777, help="world seed of those scenes (default 777)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--png", default=None, help="write originals and reconstructions to this PNG")
    ap.add_argument("--json", default=None, help="write the table to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = check_photo_names(args.photos, "--photos")
    photos = {n: load_photo(n) for n in names}

    results, rows = {}, [[] for _ in names]
    for folder in args.tokenizers:
        t0 = time.perf_counter()
        tok = load_rgb_tokenizer(REPO / folder if not Path(folder).is_absolute() else Path(folder), args.device)
        per_photo = {}
        for i, n in enumerate(names):
            target, recon = round_trip_photo(tok, photos[n])
            per_photo[n] = psnr_from_mse(float((recon.double() - target.double()).pow(2).mean()))
            rows[i] += [target] if not rows[i] else []
            rows[i].append(recon)
        res = {"photos": per_photo, "mean": sum(per_photo.values()) / len(per_photo)}
        if args.scenes:
            ev = evaluate_tokenizers({"rgb": tok}, seed=args.scene_seed, num_samples=args.scenes, progress=False)
            res["scenes_psnr"] = ev["rgb"]["psnr"]
        res["wall_s"] = time.perf_counter() - t0
        results[folder] = res

    width = max(len(f) for f in results) + 2
    head = f"{'tokenizer':<{width}}" + "".join(f"{n[:11]:>12}" for n in names) + f"{'mean':>8}"
    head += f"{'scenes':>9}" if args.scenes else ""
    print(f"PSNR (dB) of held-out photos, 64 px tiles through decode(encode(.)), {args.device}")
    print(head)
    for folder, res in results.items():
        line = f"{folder:<{width}}" + "".join(f"{res['photos'][n]:>12.2f}" for n in names) + f"{res['mean']:>8.2f}"
        line += f"{res['scenes_psnr']:>9.2f}" if args.scenes else ""
        print(line)
    if args.scenes:
        print(f"scenes: mean PSNR over {args.scenes} ShapesWorld scenes of seed {args.scene_seed}")
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.png).with_suffix(".tmp.png")
        side_by_side(rows).save(tmp)
        tmp.replace(args.png)
        print(f"wrote {args.png} (per row: original, then {', '.join(results)})")
    if args.json:
        save_json_atomic({"photos": list(names), "device": args.device, "results": results}, args.json)


if __name__ == "__main__":
    main()
