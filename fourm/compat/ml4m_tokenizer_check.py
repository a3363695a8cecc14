"""Checking fourm's reference tokenizers against numbers recorded with the reference itself.

    python -m fourm.compat.ml4m check-tokenizer ../shared/fixtures/ml4m/tokenizers/divae_rgb
    python -m fourm.compat.ml4m shapes ../shared/fixtures/ml4m/tokenizers/released_shapes/*.json

``check_tokenizer(folder)`` rebuilds the folder's model from ``config.json`` +
``model.safetensors`` (``load_reference_tokenizer``), reruns every recorded computation on
``inputs.safetensors`` with fourm's modules, and compares each tensor of
``outputs.safetensors`` with its tolerance. Nothing is taken from the folder's sizes but what
its files say: grids come from the inputs, step counts, spacing and seeds from ``config.json``
(``diffusion``), so folders of other sizes, seeds, codebooks, UNet layouts and step counts check
the same way. A recorded tensor this code does not know how to reproduce fails the check.

Tolerances (the fixture README's recommendation for an independent float32 implementation):
token ids and codebook lookups exact; encoder and VQ-VAE decoder tensors 1e-5; the time
embedding 1e-6; the denoiser output 5e-5; DDIM samples and the DiVAE decode 1e-4. Tensors the
README does not list get the rule of the family they belong to (see ``TOLERANCES``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from fourm.compat.layout import layout_differences
from fourm.compat.ml4m_schedule import DiffusionSampler, ScheduleConfig
from fourm.compat.ml4m_tokenizer import ReferenceTokenizer, build_reference_tokenizer, load_reference_tokenizer
from fourm.compat.ml4m_tokenizer_config import parse_config

EXACT = 0.0
# (name prefix or name, tolerance): the first match wins
TOLERANCES: tuple[tuple[str, float], ...] = (
    ("encode.tokens", EXACT), ("hires.tokens", EXACT), ("encode.quant", EXACT), ("hires.quant", EXACT),
    ("ddim.timesteps", EXACT), ("input.decode_noise", EXACT),
    ("denoise.time_embedding", 1e-6), ("scheduler.alphas_cumprod", 1e-6), ("input.", 1e-6),
    ("denoise.noisy_input", 1e-5), ("denoise.output", 5e-5),
    ("ddim.", 1e-4), ("encode.", 1e-5), ("hires.", 1e-5),
)
DIVAE_DECODE_TOL, VQVAE_DECODE_TOL = 1e-4, 1e-5


@dataclass(frozen=True)
class TensorCheck:
    """One compared tensor: largest absolute difference (or count of differing ids) vs tolerance."""

    name: str
    diff: float
    tol: float
    integer: bool = False
    numel: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.diff <= self.tol

    def line(self) -> str:
        what = f"{int(self.diff)} of {self.numel} differ" if self.integer else f"max |diff| {self.diff:.3e}"
        if self.note:
            what = self.note
        return f"{self.name:26s} {what:24s} tol {self.tol:<8g} {'ok' if self.ok else 'FAIL'}"


def tolerance(name: str, is_diffusion: bool) -> float:
    """The tolerance of a recorded tensor (see the module docstring)."""
    if name.startswith("decode."):
        return DIVAE_DECODE_TOL if is_diffusion and name == "decode.output" else VQVAE_DECODE_TOL
    for prefix, tol in TOLERANCES:
        if name == prefix or name.startswith(prefix):
            return tol
    return VQVAE_DECODE_TOL


@torch.no_grad()
def _encode(tok: ReferenceTokenizer, x: Tensor, prefix: str) -> dict[str, Tensor]:
    enc = tok.encoder
    x_in = tok.prepare_input(x)
    patches = enc.proj(x_in)  # (B, D, h, w)
    rows, cols = patches.shape[-2:]
    latent = tok.encode_latent(x)
    sim = tok.quantize.similarity(latent)  # (B, h, w, K)
    top2 = sim.topk(2, dim=-1).values
    tokens = sim.argmax(dim=-1)
    out = {f"{prefix}.latent": latent, f"{prefix}.tokens": tokens, f"{prefix}.quant": tok.quantize.embed(tokens),
           f"{prefix}.top2_gap": top2[..., 0] - top2[..., 1]}
    if prefix == "encode":
        pos = F.interpolate(enc.pos_emb, size=(rows, cols), mode="bicubic", align_corners=False)
        tokens_in = patches.flatten(2).transpose(1, 2)  # (B, N, D)
        out.update({"encode.patch_tokens": tokens_in, "encode.pos_emb": pos,
                    "encode.blocks_output": enc.blocks(tokens_in + pos.flatten(2).transpose(1, 2)),
                    "encode.encoder_output": enc(x_in)})
    return out


@torch.no_grad()
def reproduce(tok: ReferenceTokenizer, inputs: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Every tensor a fixture folder records, recomputed by fourm (names as in outputs.safetensors);
    ``input.*`` entries check fourm's own preprocessing against the recorded inputs."""
    out = _encode(tok, inputs["x"], "encode")
    if "x_hires" in inputs:
        out.update(_encode(tok, inputs["x_hires"], "hires"))
    for raw, norm in (("x_raw", "x"), ("x_raw_hires", "x_hires")):
        if raw in inputs:  # images as stored -> the reference's normalisation, by fourm's encode path
            out[f"input.{norm}"] = tok.to_model(inputs[raw])
    tokens, quant = out["encode.tokens"], out["encode.quant"]
    if not tok.is_diffusion:
        post = tok.post_quant_proj(quant)
        out.update({"decode.post_quant": post, "decode.blocks_output": tok.decoder.forward_blocks(post),
                    "decode.output": tok.decode_quant(tok.quantize.embed(tokens))})
        return out
    diff = dict(config.get("diffusion", {}))
    train = DiffusionSampler(tok.spec.schedule, 1, "ddpm")
    ts = inputs["denoise_timesteps"]
    noisy = train.add_noise(inputs["x"], inputs["denoise_noise"], ts)
    out.update({"scheduler.alphas_cumprod": train.alphas_cumprod, "denoise.noisy_input": noisy,
                "denoise.time_embedding": tok.decoder.time_embedding(ts), "denoise.output": tok.decoder(noisy, ts, quant)})
    if float(diff.get("ddim_eta", 0.0)) != 0.0:
        raise ValueError(f"ddim_eta={diff['ddim_eta']}: only the deterministic DDIM (eta 0) is supported")
    sched_cfg = diff.get("fixture_decode_scheduler_config")
    schedule = ScheduleConfig.from_dict(sched_cfg, "fixture_decode_scheduler_config") if sched_cfg else None
    seed = int(diff.get("decode_noise_seed", 0))
    shape = tuple(inputs["decode_noise"].shape)
    out["input.decode_noise"] = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    steps: list[tuple[Tensor, Tensor, Tensor]] = []
    decoded = tok.decode_quant(
        tok.quantize.embed(tokens), steps=int(diff.get("ddim_num_inference_steps", 25)), sampler="ddim",
        spacing=diff.get("ddim_timestep_mode", "trailing"), generator=torch.Generator().manual_seed(seed),
        image_size=shape[-2:], schedule=schedule, callback=lambda i, t, o, x: steps.append((t, o, x)))
    out.update({"ddim.timesteps": torch.stack([s[0] for s in steps]), "ddim.model_output": torch.stack([s[1] for s in steps]),
                "ddim.sample": torch.stack([s[2] for s in steps]), "decode.output": decoded})
    return out


def _compare(name: str, got: Tensor | None, ref: Tensor, tol: float) -> TensorCheck:
    if got is None:
        return TensorCheck(name, float("inf"), tol, note="not reproduced")
    if tuple(got.shape) != tuple(ref.shape):
        return TensorCheck(name, float("inf"), tol, note=f"shape {tuple(got.shape)} != {tuple(ref.shape)}")
    integer = not ref.is_floating_point()
    if integer:
        return TensorCheck(name, float((got.long() != ref.long()).sum()), tol, True, ref.numel())
    diff = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    return TensorCheck(name, diff, tol, numel=ref.numel())


def check_tokenizer(folder: str | Path) -> list[TensorCheck]:
    """Compare every recorded tensor of a fixture folder (``outputs.safetensors``, and the
    inputs fourm derives itself) with fourm's recomputation."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError("no such folder")
    for name in ("config.json", "model.safetensors", "inputs.safetensors", "outputs.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no {name}; a tokenizer fixture folder holds config.json, "
                                    "model.safetensors, inputs.safetensors and outputs.safetensors")
    config = json.loads((folder / "config.json").read_text())
    tok = load_reference_tokenizer(folder)
    inputs, recorded = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    mine = reproduce(tok, inputs, config)
    expected = dict(recorded)
    for key in [k for k in mine if k.startswith("input.")]:
        expected[key] = inputs[key.removeprefix("input.")]
    return [_compare(k, mine.get(k), expected[k], tolerance(k, tok.is_diffusion)) for k in sorted(expected)]


# ------------------------------------------------------------------------------------ released layouts
def tokenizer_layout(model: torch.nn.Module) -> dict[str, dict]:
    """``{key: {shape, dtype, kind, requires_grad}}`` of a model's state dict."""
    params = dict(model.named_parameters())
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():
        entry = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                 "kind": "parameter" if k in params else "buffer"}
        if k in params:
            entry["requires_grad"] = bool(params[k].requires_grad)
        out[k] = entry
    return out


def compare_tokenizer_layout(spec: Mapping[str, Any]) -> list[str]:
    """Differences between a released_shapes JSON (key / shape / dtype / kind of the reference's
    object) and the tokenizer fourm builds from its ``constructor_kwargs`` (empty = identical)."""
    model = build_reference_tokenizer(parse_config(spec, name=str(spec.get("hub_id", ""))), "meta")
    mine, theirs = tokenizer_layout(model), {e["key"]: e for e in spec["state_dict"]}
    problems = layout_differences(mine, theirs)
    for k in mine.keys() & theirs.keys():
        if theirs[k]["kind"] == "parameter" and mine[k].get("requires_grad") != theirs[k].get("requires_grad", True):
            problems.append(f"{k}: requires_grad {mine[k].get('requires_grad')} != reference "
                            f"{theirs[k].get('requires_grad', True)}")
    return sorted(problems)


def print_check(folder: str | Path) -> int:
    """Run ``check_tokenizer`` and print one line per tensor; 0 when every tensor holds, 1 otherwise."""
    results = check_tokenizer(folder)
    print(f"{folder}:")
    for r in results:
        print("  " + r.line())
    failed = [r.name for r in results if not r.ok]
    worst = max((r.diff / r.tol if r.tol else (0.0 if r.diff == 0 else float("inf"))) for r in results)
    print(f"{len(results)} tensors, {len(failed)} outside tolerance (largest diff/tol {worst:.3g}): "
          f"{'OK' if not failed else 'FAIL ' + ', '.join(failed)}")
    return 0 if not failed else 1
