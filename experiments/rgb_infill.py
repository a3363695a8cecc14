"""Where does caption -> rgb go wrong: the objects, or the ground and sky around them?

    .venv/bin/python experiments/rgb_infill.py models/shapes_bundled

For ``--num-samples`` held-out ShapesWorld scenes (world seed ``--seed``), the model generates
tok_rgb with MaskGIT under up to six conditions, and the scene parser scores each decoded image against
the objects the scene's caption names (the object F1 of ``fourm eval``'s caption -> rgb):

* ``tokenizer bound``: the scene's own tokens, decoded (nothing generated);
* ``rgb pixels given`` (models with an rgb pixel input): every token from the whole image, a
  transcription, the easiest way to tok_rgb there is;
* ``caption -> rgb``: every token generated from the caption (the benchmark task);
* ``objects given``: the caption and the ground-truth tokens of every 8 x 8 patch that holds an
  object pixel; the ground and sky tokens are generated;
* ``ground given``: the caption and the ground-truth ground and sky tokens; the object tokens
  are generated (in-painting, :func:`fourm.generation.chain.inpaint`);
* ``ground given, no caption``: the same without the caption (what the model draws from the
  ground alone).

Precision is where spurious objects show: generated tokens that the parser reads as objects that
the caption does not name. ``F1 no colour`` matches (size, shape) alone. The bundled model
(``models/shapes_bundled``, 64 scenes of seed 1000, greedy, no guidance): tokenizer bound 0.913;
rgb pixels given 0.127 (0.476 without colour); caption -> rgb 0.092 (2.75 spurious objects per
scene); objects given 0.399 (2.27); ground given 0.159 (3.00), and 0.173 without the caption.
Even from the whole image its tok_rgb puts objects where they are, with their shapes, in the
wrong colours (F1 0.476 without colour, 0.127 with it): its training mixtures asked for tok_rgb
from the pixels only inside all-to-all, and its tok_rgb head has not learned colour (250 steps of
pixels -> tok_rgb alone, ``experiments/configs/shapes_bundled_transcribe.yaml``, lift that row to 0.628;
caption -> rgb stays at 0.071). Its object tokens do not follow the caption (no better with it
than without), and around ground-truth objects it draws extra object parts where the ground and
sky should be.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fourm.data.shapes_world import WorldConfig, parse_caption, render_scene  # noqa: E402
from fourm.evaluation.objects import object_triples, triple_f1  # noqa: E402
from fourm.evaluation.scene_parser import parse_scene  # noqa: E402
from fourm.generation import Sampler, Target  # noqa: E402
from fourm.generation.chain import inpaint  # noqa: E402
from fourm.models import FourM  # noqa: E402
from fourm.data.image_sources import stored_image  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402

SKY, GROUND = 0, 1  # ShapesWorld semseg ids; every other id is an object


def object_patches(semseg: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) class ids -> (rows * cols,) bool: the token patches holding an object pixel."""
    rows, cols = grid
    H, W = semseg.shape
    obj = torch.as_tensor(semseg > GROUND).reshape(rows, H // rows, cols, W // cols)
    return obj.any(3).any(1).reshape(-1)


def colourless(scenes: list) -> list:
    """Per scene, (size, colour, shape) triples with the colour blanked: matches on size and shape."""
    return [[(size, "-", shape) for size, _, shape in triples] for triples in scenes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a saved FourM with tok_rgb and caption (e.g. models/shapes_bundled)")
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seed", type=int, default=1000, help="world seed of the held-out scenes")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64, help="scene size: the tokenizers' and the model's")
    p.add_argument("--steps", type=int, default=8, help="MaskGIT steps")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FourM.from_pretrained(args.model).eval()
    toks = load_tokenizers(args.tokenizers)
    sampler = Sampler(model, toks)
    grid = tuple(sampler.specs["tok_rgb"].grid)
    scenes = [render_scene(args.seed, i, WorldConfig(image_size=args.image_size)) for i in range(args.num_samples)]
    with torch.no_grad():
        pixels = torch.stack([stored_image(s, "rgb") for s in scenes])  # (B, 3, H, W) uint8
        rgb = toks["rgb"].encode(pixels).reshape(len(scenes), -1).cpu()
    objects = torch.stack([object_patches(s["semseg"], grid) for s in scenes])  # (B, L)
    captions = [s["caption"] for s in scenes]
    named = [parse_caption(c) for c in captions]
    target = Target("tok_rgb", steps=args.steps, temperature=args.temperature, cfg_scale=args.cfg_scale)
    print(f"{args.model}: {len(scenes)} scenes of seed {args.seed}; tok_rgb by MaskGIT {args.steps} steps, "
          f"temperature {args.temperature:g}, CFG {args.cfg_scale:g}; {objects.float().sum(1).mean():.1f} of "
          f"{objects.shape[1]} tokens per scene hold an object")
    print(f"{'condition':28s} {'F1':>6s} {'prec.':>6s} {'recall':>6s} {'spurious/scene':>15s} "
          f"{'F1 no colour':>13s} {'s':>5s}")

    def score(name: str, tokens: torch.Tensor, t0: float) -> None:
        with torch.no_grad():
            images = toks["rgb"].decode(tokens.reshape(-1, *grid).to(toks["rgb"].device)).permute(0, 2, 3, 1).cpu()
        parsed = [object_triples(parse_scene(np.ascontiguousarray(im.numpy()))) for im in images]
        s = triple_f1(parsed, named)
        blind = triple_f1(colourless(parsed), colourless(named))
        print(f"{name:28s} {s['f1']:6.3f} {s['precision']:6.3f} {s['recall']:6.3f} {s['fp'] / len(scenes):15.2f} "
              f"{blind['f1']:13.3f} {time.perf_counter() - t0:5.0f}", flush=True)

    score("tokenizer bound", rgb, time.perf_counter())
    pixel_inputs = [n for n, spec in sampler.specs.items() if spec.kind == "pixels" and spec.in_channels == 3]
    if pixel_inputs:  # transcription: every tok_rgb token from the whole image, the easiest way to tok_rgb
        t0 = time.perf_counter()
        result = sampler.generate({pixel_inputs[0]: pixels}, [target], seed=args.seed)
        score("rgb pixels given", result.tokens("tok_rgb"), t0)
    for name, given, keep_caption in (("caption -> rgb", None, True), ("objects given", objects, True),
                                      ("ground given", ~objects, True), ("ground given, no caption", ~objects, False)):
        t0 = time.perf_counter()
        inputs = {"caption": captions} if keep_caption else {}
        if given is None:
            result = sampler.generate(inputs, [target], seed=args.seed)
        else:
            state = sampler.generate({**inputs, "tok_rgb": rgb}, [], seed=args.seed)
            result = sampler.generate(inpaint(state, "tok_rgb", ~given), [target], seed=args.seed)
        score(name, result.tokens("tok_rgb"), t0)


if __name__ == "__main__":
    main()
