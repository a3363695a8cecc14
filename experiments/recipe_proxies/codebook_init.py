"""Recipe proxy P4 of issue #15: a FourM whose tok_rgb token embedding (encoder) and logits head
(decoder) start from the rgb tokenizer's codebook, so that codes that look alike start alike.

Writes an initial model folder for ``fourm train <config> init_from=<folder>``:

    python experiments/recipe_proxies/codebook_init.py <train config> <tokenizer folder> <out folder>

Each code's codebook vector (standardised) goes through one fixed random projection to the model
width and is scaled to the standard deviation of the weights it replaces; everything else is the
config's fresh model (same seed as a run without init_from).
"""
import sys

import torch

from fourm.config import load_config
from fourm.models.fourm import FourM
from fourm.training.fourm_config import TrainConfig
from fourm.vq.vqvae import ImageTokenizer

cfg = load_config(TrainConfig, sys.argv[1])
tok = ImageTokenizer.from_pretrained(sys.argv[2])
model = FourM(cfg.model.fourm_config(cfg.registry()), seed=cfg.seed if cfg.model.init_seed is None else cfg.model.init_seed)
name = "tok_rgb"
V = model.encoder_embeddings[name].token_emb.weight.shape[0]
with torch.no_grad():
    codes = tok.quantizer.embed(torch.arange(tok.codebook_size).view(1, -1, 1))  # (1, D, V, 1)
    c = codes[0, :, :, 0].T.double()  # (V, D)
    c = (c - c.mean(0)) / c.std(0).clamp_min(1e-6)
    g = torch.Generator().manual_seed(0)
    dim = model.encoder_embeddings[name].token_emb.weight.shape[1]
    proj = torch.randn(c.shape[1], dim, generator=g, dtype=torch.float64) / c.shape[1] ** 0.5
    e = (c @ proj).float()  # (V, dim)
    for w in (model.encoder_embeddings[name].token_emb.weight, model.decoder_embeddings[name].to_logits.weight):
        w.copy_(e[:V] * (w.std() / e.std()))
model.save_pretrained(sys.argv[3])
print(f"{name}: {V} embeddings and logits rows from {sys.argv[2]}'s codebook -> {sys.argv[3]}")
