"""Reading a 4M reference tokenizer's config: what to build, with every size from the file.

Two layouts are read:

* the Hugging Face releases (``EPFL-VILAB/4M_tokenizers_*``): ``config.json`` holds the
  reference constructor's keyword arguments, flat (``enc_type: vit_b_enc``, ``dec_type:
  unet_patched``, ``codebook_size``, ``image_size``, ...); preset names resolve through the
  reference's preset tables below. Without ``config.json`` the same arguments are read from the
  safetensors header metadata (the reference writes them there too);
* the fixture folders (``../shared/fixtures/ml4m/tokenizers/*``): ``model_class`` +
  ``constructor_kwargs``, and ``registered_presets`` giving the numbers of presets the
  reference does not ship (``vit_fixture_enc``, ``unet_fixture``).

Keys the reference ignores at inference (EMA decay, commitment weight, dead-code policy,
``ckpt_path``, ...) are accepted; keys that change the network but are not supported (another
quantizer, a U-ViT decoder, several codebooks) raise with the value and what is supported. The
modality (rgb, depth, semseg, ...) comes from the caller, else the config, else the folder or
repository name (``4M_tokenizers_depth_8k_224-448`` -> depth).
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from safetensors import safe_open

from fourm.compat.ml4m_schedule import SAMPLERS, ScheduleConfig
from fourm.compat.ml4m_unet import UNetSpec
from fourm.compat.ml4m_vit import VIT_PRESETS, ViTSpec

MODALITIES: tuple[str, ...] = ("rgb", "depth", "normal", "semseg", "edge", "clip", "dinov2", "imagebind")
FEATURE_MODALITIES = ("clip", "dinov2", "imagebind")
_NAME_WORDS = {"rgb": "rgb", "depth": "depth", "normal": "normal", "normals": "normal", "semseg": "semseg",
               "edge": "edge", "edges": "edge", "clip": "clip", "dinov2": "dinov2", "imagebind": "imagebind"}
# the reference constructors' defaults (VQ, VQVAE, DiVAE), used for keys a config leaves out
_DEFAULTS: dict[str, Any] = {
    "image_size": 224, "image_size_enc": None, "n_channels": 3, "n_labels": None, "enc_type": "vit_b_enc",
    "patch_proj": True, "post_mlp": False, "patch_size": 16, "quant_type": "lucid", "codebook_size": 16384,
    "num_codebooks": 1, "latent_dim": 32, "norm_codes": True, "undo_std": False,
    # VQVAE
    "out_conv": False, "image_size_dec": None, "patch_size_dec": None,
    # DiVAE
    "num_train_timesteps": 1000, "scheduler": "ddpm", "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction", "clip_sample": False, "thresholding": True, "conditioning": "concat",
    "zero_terminal_snr": True,
}
_IGNORED = {  # accepted, no effect at inference
    "norm_latents", "sync_codebook", "ema_decay", "threshold_ema_dead_code", "code_replacement_policy",
    "commitment_weight", "kmeans_init", "ckpt_path", "ignore_keys", "freeze_enc", "cls_free_guidance_dropout",
    "masked_cfg", "masked_cfg_low", "masked_cfg_high", "dec_transformer_dropout", "config",
}


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to build a reference tokenizer (see ``parse_config``)."""

    kind: str  # "vqvae" or "divae"
    modality: str
    image_size: int
    n_channels: int
    n_labels: int | None
    patch_size: int
    patch_proj: bool
    post_mlp: bool
    codebook_size: int
    latent_dim: int
    undo_std: bool
    encoder: ViTSpec
    encoder_grid: tuple[int, int]
    decoder: ViTSpec | None = None  # VQVAE
    decoder_grid: tuple[int, int] | None = None
    patch_size_dec: int | None = None
    out_conv: bool = False
    unet: UNetSpec | None = None  # DiVAE
    schedule: ScheduleConfig | None = None
    sampler: str = "ddpm"  # the decode sampler the checkpoint names (the reference's default)

    @property
    def is_diffusion(self) -> bool:
        return self.kind == "divae"


def read_config(folder: str | Path) -> dict:
    """The raw config dict of a tokenizer folder: ``config.json``, else the safetensors metadata."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
        if meta:
            out = {}
            for k, v in meta.items():
                try:
                    out[k] = json.loads(v)
                except json.JSONDecodeError:
                    out[k] = v
            out.pop("format", None)
            return out
    raise FileNotFoundError(f"{folder}: no config.json (and no config in model.safetensors' metadata); expected a "
                            "reference tokenizer folder with config.json and model.safetensors")


def modality_from_name(name: str) -> str | None:
    """The modality a folder or repository name names (``4M_tokenizers_CLIP-B16_8k_224-448`` -> clip)."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in _NAME_WORDS:
            return _NAME_WORDS[word]
    return None


def _vit_spec(name: str, presets: Mapping[str, Any], what: str) -> ViTSpec:
    m = re.fullmatch(r"vit_([slb])_(enc|dec)", name)
    if m:
        dim, depth, heads = VIT_PRESETS[m.group(1)]
        return ViTSpec(dim=dim, depth=depth, num_heads=heads)
    if name not in presets:
        raise ValueError(f"{what}={name!r}: unknown ViT preset; known: vit_s/b/l_enc, vit_s/b/l_dec, or one described "
                         f"in the config's registered_presets ({', '.join(presets) or 'none'})")
    p = presets[name]
    cls = str(p.get("class", ""))
    if not cls.endswith(("ViTEncoder", "ViTDecoder")):
        raise ValueError(f"{what}={name!r}: class {cls!r} is not supported; supported: ViTEncoder, ViTDecoder")
    kw, fixed = dict(p.get("kwargs", {})), dict(p.get("fixed_kwargs_same_as_released_preset", {}))
    eps = re.search(r"eps\s*=\s*([0-9.eE+-]+)", str(fixed.get("norm_layer", "eps=1e-6")))
    return ViTSpec(dim=int(kw["dim_tokens"]), depth=int(kw["depth"]), num_heads=int(kw["num_heads"]),
                   mlp_ratio=float(kw.get("mlp_ratio", 4.0)), qkv_bias=bool(fixed.get("qkv_bias", True)),
                   norm_eps=float(eps.group(1)) if eps else 1e-6)


def _unet_spec(name: str, presets: Mapping[str, Any]) -> UNetSpec:
    if name == "unet_patched":
        return UNetSpec()
    if name not in presets:
        raise ValueError(f"dec_type={name!r}: unknown DiVAE decoder; supported: unet_patched or a PatchedUNetCondCat "
                         f"preset in registered_presets ({', '.join(presets) or 'none'}); U-ViT decoders are not")
    p = presets[name]
    if not str(p.get("class", "")).endswith("PatchedUNetCondCat"):
        raise ValueError(f"dec_type={name!r}: class {p.get('class')!r} is not supported; supported: PatchedUNetCondCat")
    kw = {**p.get("fixed_kwargs_same_as_released_preset", {}), **p.get("kwargs", {})}
    checks = {"dims": 2, "num_classes": None, "resblock_updown": False}
    for key, allowed in checks.items():
        if kw.get(key, allowed) != allowed:
            raise ValueError(f"dec_type={name!r}: {key}={kw[key]!r} is not supported; supported: {allowed!r}")
    heads = int(kw.get("num_heads", 1))
    if kw.get("num_heads_upsample", -1) not in (-1, heads):
        raise ValueError(f"dec_type={name!r}: num_heads_upsample={kw['num_heads_upsample']} differs from num_heads "
                         f"({heads}); not supported")
    return UNetSpec(patch_size=int(kw["patch_size"]), model_channels=int(kw["model_channels"]),
                    channel_mult=tuple(kw["channel_mult"]), num_res_blocks=int(kw["num_res_blocks"]),
                    attention_resolutions=tuple(kw["attention_resolutions"]), num_heads=heads,
                    num_head_channels=int(kw.get("num_head_channels", -1)),
                    use_new_attention_order=bool(kw.get("use_new_attention_order", False)),
                    use_scale_shift_norm=bool(kw.get("use_scale_shift_norm", False)),
                    conv_resample=bool(kw.get("conv_resample", True)))


def _kind(raw: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str:
    cls = str(raw.get("model_class", raw.get("model_type", "")))
    if cls:
        name = cls.rsplit(".", 1)[-1]
        if name not in ("VQVAE", "DiVAE"):
            raise ValueError(f"model class {cls!r} is not supported; supported: VQVAE, DiVAE (VQControlNet and the "
                             "encoder-only VQ are not)")
        return name.lower()
    dec = str(kwargs.get("dec_type", ""))
    divae = "unet" in dec or "uvit" in dec or any(k in kwargs for k in ("beta_schedule", "num_train_timesteps"))
    return "divae" if divae else "vqvae"


def parse_config(raw: Mapping[str, Any], modality: str | None = None, name: str = "") -> TokenizerSpec:
    """The ``TokenizerSpec`` of a raw config (either layout, see the module docstring).

    Args:
        raw: the config dict (``read_config``).
        modality: the modality, when the caller knows it (else from the config or ``name``).
        name: the folder or repository name, a hint for the modality.
    """
    kwargs = dict(raw["constructor_kwargs"]) if "constructor_kwargs" in raw else dict(raw)
    presets = raw.get("registered_presets", {}) if "constructor_kwargs" in raw else {}
    kind = _kind(raw, kwargs)
    if "constructor_kwargs" not in raw:
        for key in ("model_class", "model_type", "domain", "training_domain"):
            kwargs.pop(key, None)
    known = set(_DEFAULTS) | _IGNORED | {"dec_type"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        warnings.warn(f"tokenizer config {name or ''}: keys {unknown} are not reference constructor arguments; "
                      "ignored (as the reference ignores them)", stacklevel=2)
    c = {**_DEFAULTS, **{k: v for k, v in kwargs.items() if k in _DEFAULTS}}
    if c["quant_type"] != "lucid" or not c["norm_codes"] or int(c["num_codebooks"]) != 1:
        raise ValueError(f"quantizer quant_type={c['quant_type']!r}, norm_codes={c['norm_codes']}, num_codebooks="
                         f"{c['num_codebooks']}: supported is the released tokenizers' cosine codebook (quant_type "
                         "'lucid', norm_codes true, num_codebooks 1)")
    if isinstance(c["codebook_size"], str) and not c["codebook_size"].isdigit():
        raise ValueError(f"codebook_size={c['codebook_size']!r}: only an integer codebook size is supported")
    enc_type = str(c["enc_type"])
    if "vit" not in enc_type:
        raise ValueError(f"enc_type={enc_type!r}: only ViT encoders are supported (MLP encoders of the global / pose "
                         "tokenizers are not)")
    patch, image = int(c["patch_size"]), int(c["image_size"])
    enc_size = int(c["image_size_enc"] or image)
    if enc_size % patch:
        raise ValueError(f"image_size={enc_size} is not a multiple of patch_size={patch}")
    spec: dict[str, Any] = {
        "kind": kind, "image_size": image, "n_channels": int(c["n_channels"]),
        "n_labels": None if c["n_labels"] is None else int(c["n_labels"]), "patch_size": patch,
        "patch_proj": bool(c["patch_proj"]), "post_mlp": bool(c["post_mlp"]),
        "codebook_size": int(c["codebook_size"]), "latent_dim": int(c["latent_dim"]), "undo_std": bool(c["undo_std"]),
        "encoder": _vit_spec(enc_type, presets, "enc_type"), "encoder_grid": (enc_size // patch,) * 2,
    }
    if kind == "vqvae":
        dec_type = str(kwargs.get("dec_type", "vit_b_dec"))
        if "vit" not in dec_type:
            raise ValueError(f"dec_type={dec_type!r}: only ViT decoders are supported for VQ-VAEs")
        pdec = int(c["patch_size_dec"] or patch)
        dec_size = int(c["image_size_dec"] or image)
        spec.update(decoder=_vit_spec(dec_type, presets, "dec_type"), decoder_grid=(dec_size // pdec,) * 2,
                    patch_size_dec=pdec, out_conv=bool(c["out_conv"]))
    else:
        if c["conditioning"] != "concat":
            raise ValueError(f"conditioning={c['conditioning']!r}: only 'concat' (the patched UNet's) is supported")
        if c["scheduler"] not in SAMPLERS:
            raise ValueError(f"scheduler={c['scheduler']!r}; supported: {', '.join(SAMPLERS)}")
        schedule = ScheduleConfig(
            num_train_timesteps=int(c["num_train_timesteps"]), beta_schedule=str(c["beta_schedule"]),
            zero_terminal_snr=bool(c["zero_terminal_snr"]), prediction_type=str(c["prediction_type"]),
            thresholding=bool(c["thresholding"]), clip_sample=bool(c["clip_sample"]))
        spec.update(unet=_unet_spec(str(kwargs.get("dec_type", "unet_patched")), presets), schedule=schedule,
                    sampler=str(c["scheduler"]))
    spec["modality"] = _resolve_modality(modality, raw, name, spec)
    return TokenizerSpec(**spec)


def _resolve_modality(modality: str | None, raw: Mapping[str, Any], name: str, spec: Mapping[str, Any]) -> str:
    if modality is None:
        for key in ("domain", "training_domain"):
            if key in raw:
                modality = modality_from_name(str(raw[key]))
                break
    if modality is None:
        hints = [name, str(raw.get("released_counterpart", "")), str(raw.get("hub_id", ""))]
        modality = next((m for m in map(modality_from_name, hints) if m), None)
    if modality is None:  # from the structure alone
        if spec["n_labels"] is not None:
            modality = "semseg"
        elif not spec["patch_proj"]:
            modality = "clip"
        else:
            modality = {1: "depth", 3: "rgb"}.get(spec["n_channels"])
    if modality not in MODALITIES:
        raise ValueError(f"tokenizer {name!r}: modality {modality!r} unknown or not found; give one of "
                         f"{', '.join(MODALITIES)} (or name the folder after it, e.g. 'depth')")
    n_ch, labels, proj = spec["n_channels"], spec["n_labels"], spec["patch_proj"]
    if modality == "semseg":
        ok = labels is not None
    elif modality in FEATURE_MODALITIES:
        ok = labels is None and not proj
    else:
        ok = labels is None and proj and {"rgb": 3, "normal": 3, "depth": 1}.get(modality, n_ch) == n_ch
    if not ok:
        raise ValueError(f"tokenizer {name!r}: modality {modality!r} does not fit its config (n_channels="
                         f"{spec['n_channels']}, n_labels={spec['n_labels']}, patch_proj={spec['patch_proj']})")
    return modality
