"""Does caption -> rgb improve when generation goes through a layout modality first (issue #15)?

    .venv/bin/python experiments/chains/chain_paths.py models/shapes_bundled --tokenizers tokenizers/shapes64

Scores, with `fourm eval`'s benchmark (same scenes, decoding and scoring as caption2rgb: the scene
parser on the generated image against the objects the caption names), the direct path and chains
through det and semseg: caption -> rgb, caption -> det -> rgb, caption -> semseg -> rgb and
caption -> det -> semseg -> rgb. The chains through semseg are added to the benchmark's task table
here only (semseg decoded as in rgb -> semseg: MaskGIT, temperature --semseg-temperature).

Found (2026-12-08, 64 scenes each of seeds 1000 and 2000, means): the bundled model 0.088 / 0.077 /
0.063 / 0.069 (caption -> rgb / via det / via semseg / via det and semseg); recipe P6 at the
bundled length (experiments/recipe_proxies/README.md) 0.048 / 0.067 / 0.015 / 0.051. A layout
first does not help: the rgb step draws the objects many-coloured whatever it is given.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fourm.evaluation import benchmark  # noqa: E402
from fourm.generation.commands import load_model  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402

CHAINS = {"caption2semseg2rgb": (("caption",), ("semseg", "rgb")),
          "caption2det2semseg2rgb": (("caption",), ("det", "semseg", "rgb"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seeds", default="1000,2000")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--semseg-temperature", type=float, default=0.0)
    p.add_argument("--rgb-scheme", default="maskgit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    benchmark.TASKS.update(CHAINS)  # appended: the seeds of the existing tasks do not change
    model, toks = load_model(args.model), load_tokenizers(args.tokenizers)
    decoding = benchmark.DecodingSettings(dense_temperature=args.semseg_temperature, rgb_scheme=args.rgb_scheme)
    tasks = ("caption2rgb", "caption2det2rgb", *CHAINS)
    out = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        res = benchmark.run_benchmark(model, toks, seed=seed, num_samples=args.num_samples, tasks=tasks,
                                      grid_scenes=0, progress=False, decoding=decoding)
        out[seed] = {t: res.scores[t]["model"]["f1"] for t in tasks}
        print(f"seed {seed}: " + "  ".join(f"{t} {v:.3f}" for t, v in out[seed].items()), flush=True)
    mean = {t: sum(o[t] for o in out.values()) / len(out) for t in tasks}
    print("mean:    " + "  ".join(f"{t} {v:.3f}" for t, v in mean.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "args": vars(args), "per_seed": out, "mean": mean}, f, indent=1)


if __name__ == "__main__":
    main()
