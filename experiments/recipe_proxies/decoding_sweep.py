"""Does the sampler decide X -> rgb? caption -> rgb and semseg -> rgb of one model under five rgb
decodings (temperature, classifier-free guidance), 64 scenes.

    python experiments/recipe_proxies/decoding_sweep.py models/shapes_bundled tokenizers/shapes64 [seed] [schemes]

With ``schemes`` last, six other decodings (scheme, steps, T, CFG) instead: roar 64 1 3, roar 64 0.5 3,
maskgit 8 0.5 3, roar 8 0.5 3, roar 16 1 1, maskgit 8 0 3 (found for recipe P6 at the bundled
length: experiments/recipe_proxies/README.md).

Found (2026-12-07, bundled model, seed 1000): caption -> rgb object F1 0.095 / 0.094 / 0.096 /
0.097 / 0.116 and semseg -> rgb shape accuracy 0.38 / 0.33 / 0.41 / 0.37 / 0.32 for (T, CFG) =
(1, 3) (the benchmark's), (0.5, 3), (0, 3), (1, 1), (0.5, 1); 32 MaskGIT steps instead of 8:
caption -> rgb 0.110 (`fourm eval --image-steps 32`). No decoding fixes the model.
"""
import sys
import time

from fourm.evaluation.benchmark import DecodingSettings, run_benchmark
from fourm.generation.commands import load_model
from fourm.vq.loading import load_tokenizers

model = load_model(sys.argv[1], "cpu")
toks = load_tokenizers(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
settings = [("maskgit", 8, temp, cfg) for temp, cfg in [(1.0, 3.0), (0.5, 3.0), (0.0, 3.0), (1.0, 1.0), (0.5, 1.0)]]
if sys.argv[4:5] == ["schemes"]:
    settings = [("roar", 64, 1.0, 3.0), ("roar", 64, 0.5, 3.0), ("maskgit", 8, 0.5, 3.0), ("roar", 8, 0.5, 3.0),
                ("roar", 16, 1.0, 1.0), ("maskgit", 8, 0.0, 3.0)]
for scheme, steps, temp, cfg in settings:
    t = time.time()
    decoding = DecodingSettings(image_steps=steps, rgb_scheme=scheme, rgb_temperature=temp, rgb_cfg_scale=cfg)
    r = run_benchmark(model, toks, seed=seed, num_samples=64, tasks="caption2rgb,semseg2rgb",
                      decoding=decoding, progress=False, grid_scenes=0)
    rows = [row for row in r.table().splitlines() if "->" in row]
    print(f"{scheme} {steps} T={temp} cfg={cfg}", " ; ".join(" ".join(x.split("|")[1:4]) for x in rows),
          f"{time.time() - t:.0f}s", flush=True)
