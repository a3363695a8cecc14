"""Scene parser accuracy on ground-truth ShapesWorld images of a held-out seed: object F1 (colour +
shape, box IoU >= 0.5), precision, recall, size-word accuracy and the confusion between shapes.

    .venv/bin/python benchmarks/scene_parser.py                 # 500 scenes of seed 90210
    .venv/bin/python benchmarks/scene_parser.py --num 2000 --image-size 128
"""
from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from fourm.data.shapes_world import SHAPE_CLASSES, WorldConfig, render_scene
from fourm.evaluation.objects import scene_f1, shape_confusion
from fourm.evaluation.scene_parser import parse_scene

HELD_OUT_SEED = 90210  # never used for training data or tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = ap.parse_args()
    cfg = WorldConfig(image_size=args.image_size)
    preds, gts = [], []
    t0 = time.perf_counter()
    for i in tqdm(range(args.num), desc="parse", unit="scene"):
        s = render_scene(args.seed, i, cfg)
        preds.append(parse_scene(s["rgb"]))
        gts.append(s["objects"])
    wall = time.perf_counter() - t0
    f = scene_f1(preds, gts, args.iou)
    table = shape_confusion(preds, gts, SHAPE_CLASSES, args.iou)
    print(f"scene parser on {args.num} ground-truth scenes, seed {args.seed}, {args.image_size} px, IoU >= {args.iou} "
          f"({wall:.1f} s, {wall / args.num * 1e3:.1f} ms/scene)")
    print(f"objects {f['tp'] + f['fn']}  tp {f['tp']}  fp {f['fp']}  fn {f['fn']}")
    print(f"F1 {f['f1']:.4f}  precision {f['precision']:.4f}  recall {f['recall']:.4f}  size-word accuracy {f['size_accuracy']:.4f}")
    print("shape confusion (rows: ground truth, columns: parsed; matched by colour and box; 'none' = unmatched)")
    names = [*SHAPE_CLASSES, "none"]
    print(" " * 10 + "".join(f"{n:>10}" for n in names))
    for name, row in zip(names, table):
        print(f"{name:>10}" + "".join(f"{v:>10}" for v in row))
    if args.json:
        print(json.dumps({"num_scenes": args.num, "seed": args.seed, "image_size": args.image_size, **f,
                          "confusion": {"classes": names, "counts": table}}))


if __name__ == "__main__":
    main()
