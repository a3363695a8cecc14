"""How often does training show a FourM the situation of MaskGIT's later steps: much of the tok_rgb
grid as input (and a condition), the rest as target? Draws the masking budgets of a training config.

    python experiments/recipe_proxies/input_budgets.py experiments/recipe_proxies/p1_gen_tokens.yaml

Found (2026-12-07, the bundled stage-1 mixture, 200,000 draws): tok_rgb gets 4.3 input tokens of 64
on average; >= 16 input tokens in 10.5% of samples, >= 32 in 3.1% (2.2% with a caption in the
input), >= 48 in 0.5%, >= 58 in 0.04%. Decoding an image with MaskGIT puts 32-63 of its tokens in
the input for the second half of the steps, where objects are finished: a regime the model sees in
about 3% of its samples. But tok_semseg is masked by the same mixture and the same model uses its
context well (README.md beside this file), so this is not the main reason rgb fails.
"""
import sys

from fourm.config import load_config
from fourm.masking.unified import UnifiedMasking
from fourm.training.fourm_config import TrainConfig

cfg = load_config(TrainConfig, sys.argv[1])
masking = UnifiedMasking(cfg.masking, cfg.registry())
b = masking.sample_budgets(200_000, 0)
mods = list(cfg.masking.modalities)
rgb, cap = mods.index("tok_rgb"), mods.index("caption")
inp, tgt = b.input[:, rgb].float(), b.target[:, rgb].float()
print(f"tok_rgb input tokens: mean {inp.mean():.1f}; target tokens: mean {tgt.mean():.1f}")
for k in (16, 32, 48, 58):
    given = (inp >= k) & (tgt >= 1)
    print(f">= {k:2d} tok_rgb input tokens: {(inp >= k).float().mean():.4f} of samples; with a tok_rgb target "
          f"{given.float().mean():.4f}; and caption input {(given & (b.input[:, cap] > 0)).float().mean():.4f}")
