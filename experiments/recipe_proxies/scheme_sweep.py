"""MaskGIT (confidence order) against ROAR (random order) for the directions into rgb of one model.

    python experiments/recipe_proxies/scheme_sweep.py <model> <tokenizers> [num_samples] [steps,...]

Prints caption -> rgb, det -> rgb and semseg -> rgb for each scheme at the benchmark's other
settings (rgb temperature 1 annealed linearly to 0, CFG 3), seed 1000. One scheme over all tasks:
`fourm eval --rgb-scheme roar`.

Found (2026-12-07, 8 steps): the bundled model (64 scenes) caption -> rgb 0.095 / 0.088, det -> rgb
box IoU 0.290 / 0.258, semseg -> rgb shape 0.378 / 0.301 (MaskGIT / random order): the order does
not rescue it. P5 (32 scenes) 0.121 / 0.099; P6, trained with the rgb_infill component, 0.000 /
0.080 (det -> rgb box IoU 0.007 / 0.110): confidence order lets its background crowd out objects.
"""
import sys
import time

from fourm.evaluation.benchmark import DecodingSettings, run_benchmark
from fourm.generation.commands import load_model
from fourm.vq.loading import load_tokenizers

model = load_model(sys.argv[1], "cpu")
toks = load_tokenizers(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 32
steps_list = [int(s) for s in sys.argv[4].split(",")] if len(sys.argv) > 4 else [8]
for scheme in ("maskgit", "roar"):
    for steps in steps_list:
        t0 = time.time()
        r = run_benchmark(model, toks, seed=1000, num_samples=n, tasks="caption2rgb,det2rgb,semseg2rgb",
                          decoding=DecodingSettings(image_steps=steps, rgb_scheme=scheme), progress=False,
                          grid_scenes=0)
        rows = [row for row in r.table().splitlines() if "->" in row]
        print(f"{scheme} {steps} steps:", " ; ".join(" ".join(x.split("|")[1:4]) for x in rows),
              f"{time.time() - t0:.0f}s", flush=True)
