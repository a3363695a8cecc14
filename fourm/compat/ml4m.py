"""Compatibility with the 4M reference (apple/ml-4m): checkpoints, configs and mod_dicts.

FourM keeps the reference's state-dict names (``encoder_embeddings.tok_rgb@224.token_emb.weight``,
``decoder.0.cross_attn.kv.weight``, zero LayerNorm ``bias`` buffers, (1, 512, D) sequence position
buffers, the shared ``mod_emb`` listed under both embeddings), so loading is a strict key-for-key
copy. What only the reference has lives here: its inverted masks (True = ignored), the unused
token table of each image target (:func:`add_reference_tables`), and its loss, which counts a
modality without targets as 0 (:func:`run_ml4m`).

    model = load_ml4m("path/to/4M-7_B_CC12M")            # config.json + model.safetensors
    model = load_ml4m("EPFL-VILAB/4M-21_XL")             # from the Hub (or its cache); "4M-21_XL" alone too
    out = run_ml4m(model, mod_dict, 128, 128)             # reference-format masks
    save_ml4m(model, "out/dir")                           # back to the reference layout

Command line::

    python -m fourm.compat.ml4m check ../shared/fixtures/ml4m/small   # compare with recorded outputs
    python -m fourm.compat.ml4m shapes ../shared/fixtures/ml4m/released_shapes/4m7_b.json
    python -m fourm.compat.ml4m check-tokenizer ../shared/fixtures/ml4m/tokenizers/divae_rgb
    python -m fourm.compat.ml4m shapes ../shared/fixtures/ml4m/tokenizers/released_shapes/*.json

Tokenizers (VQ-VAE, DiVAE) live in ``fourm.compat.ml4m_tokenizer``; their checks in
``fourm.compat.ml4m_tokenizer_check``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fourm.compat.layout import layout_differences
from fourm.modalities import ModalitySpec, ml4m_modalities
from fourm.models.config import FourMConfig
from fourm.atomic import atomic_write
from fourm.hub import resolve_pretrained
from fourm.models.files import unalias_state_dict
from fourm.models.fourm import FourM, FourMOutput

REFERENCE_POS_ROWS = 512  # the reference's max_sincos_pos_emb; sequence pos buffers keep all rows
# Keys of the reference's FM(config) dict. Settings that only matter for training are accepted
# and ignored (drop path, activation checkpointing); unsupported ones raise.
_KNOWN_KEYS = {
    "domains_in", "domains_out", "image_size", "patch_size", "norm_bias", "act_layer", "dim",
    "encoder_depth", "decoder_depth", "num_heads", "mlp_ratio", "qkv_bias", "proj_bias", "mlp_bias",
    "drop_path_rate_encoder", "drop_path_rate_decoder", "shared_drop_path", "gated_mlp", "qk_norm",
    "decoder_causal_mask", "decoder_sep_mask", "num_register_tokens", "use_act_checkpoint",
    "share_modality_embeddings",
}
_REQUIRED_KEYS = ("domains_in", "domains_out", "dim", "encoder_depth", "decoder_depth", "num_heads")
_SIZE_OF_RELEASE = {"B": "base", "L": "large", "XL": "xlarge"}
REFERENCE_ORG = "EPFL-VILAB"
# The reference's released checkpoints on the Hub (``EPFL-VILAB/<name>``); load_ml4m takes the name alone.
RELEASED_MODELS: tuple[str, ...] = (
    "4M-7_B_CC12M", "4M-7_L_CC12M", "4M-7_XL_CC12M", "4M-7_B_COYO700M", "4M-7_L_COYO700M", "4M-7_XL_COYO700M",
    "4M-21_B", "4M-21_L", "4M-21_XL", "4M-7-T2I_B_CC12M", "4M-7-T2I_L_CC12M", "4M-7-T2I_XL_CC12M", "4M-7-SR_L_CC12M",
)


# ---------------------------------------------------------------------------- configs
def reference_spec(name: str, vocab_override: Mapping[str, int] | None = None) -> ModalitySpec:
    """The ModalitySpec of a reference domain name (4M-7 and 4M-21 names, ``@448`` variants)."""
    known = ml4m_modalities("4m21")
    base = name.replace("@448", "@224")
    if base not in known:
        raise ValueError(f"reference domain {name!r} is not supported; supported: {', '.join(known.names())} "
                         f"(and their @448 variants); t5_caption (precomputed T5 embeddings) is not")
    spec = known[base]
    changes = {k: v for k, v in spec.to_dict().items() if k not in ("raw_field", "token_field", "tokenizer")}
    changes["name"] = name  # the fields it reads follow from the new name
    if name != base:
        changes["grid"] = [2 * g for g in spec.grid]
    if vocab_override and name in vocab_override:
        changes["vocab_size"] = int(vocab_override[name])
    return ModalitySpec.from_dict(changes)


def config_from_ml4m(cfg: Mapping) -> FourMConfig:
    """FourMConfig from a reference config: the released ``config.json`` (the FM(config) dict,
    optionally with ``vocab_override``) or a fixture config (``fm_config`` + ``vocab_override``)."""
    fm = dict(cfg["fm_config"]) if "fm_config" in cfg else {k: v for k, v in cfg.items() if k != "vocab_override"}
    vocab_override = cfg.get("vocab_override") or {}
    unknown = sorted(set(fm) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"reference config: unknown keys {unknown}; known: {sorted(_KNOWN_KEYS)}")
    missing = [k for k in _REQUIRED_KEYS if k not in fm]
    if missing:
        raise ValueError(f"reference config: missing keys {missing}")
    if fm.get("num_register_tokens", 0):
        raise ValueError(f"num_register_tokens={fm['num_register_tokens']}: register tokens are not supported; use 0")
    if fm.get("decoder_causal_mask", False):
        raise ValueError("decoder_causal_mask=true is not supported (no released model uses it); use false")
    if not fm.get("decoder_sep_mask", True):
        raise ValueError("decoder_sep_mask=false is not supported (no released model uses it); use true")
    act = str(fm.get("act_layer", "GELU")).lower()
    if act not in ("silu", "gelu"):
        raise ValueError(f"act_layer={fm.get('act_layer')!r}; supported: 'SiLU', 'GELU'")
    for key in ("drop_path_rate_encoder", "drop_path_rate_decoder"):
        if fm.get(key, 0.0):
            warnings.warn(f"{key}={fm[key]} is ignored (fourm has no stochastic depth)", stacklevel=2)
    din, dout = list(fm["domains_in"]), list(fm["domains_out"])
    unknown_vocab = sorted(set(vocab_override) - set(din) - set(dout))
    if unknown_vocab:
        raise ValueError(f"vocab_override names modalities {unknown_vocab} that are not in domains_in/domains_out")
    specs = []
    for name in din + [d for d in dout if d not in din]:
        spec = reference_spec(name, vocab_override)
        is_in, is_out = name in din, name in dout and spec.kind != "pixels"
        specs.append(ModalitySpec.from_dict({**spec.to_dict(), "encoder": is_in, "decoder": is_out}))
    return FourMConfig(
        modalities=tuple(specs), dim=int(fm["dim"]), encoder_depth=int(fm["encoder_depth"]),
        decoder_depth=int(fm["decoder_depth"]), num_heads=int(fm["num_heads"]),
        mlp_ratio=float(fm.get("mlp_ratio", 4.0)), gated_mlp=bool(fm.get("gated_mlp", False)), act_layer=act,
        qkv_bias=bool(fm.get("qkv_bias", True)), proj_bias=bool(fm.get("proj_bias", True)),
        mlp_bias=bool(fm.get("mlp_bias", True)), norm_bias=bool(fm.get("norm_bias", True)), norm_eps=1e-6,
        qk_norm=bool(fm.get("qk_norm", False)),
        share_modality_embeddings=bool(fm.get("share_modality_embeddings", True)),
        seq_pos_len=REFERENCE_POS_ROWS, init_std=0.02)


def config_to_ml4m(config: FourMConfig) -> dict:
    """The reference's FM(config) dict for ``config`` (+ ``vocab_override`` when a vocabulary
    differs from the released one)."""
    if config.seq_pos_len != REFERENCE_POS_ROWS or config.norm_eps != 1e-6:
        raise ValueError(f"config is not reference-compatible: seq_pos_len={config.seq_pos_len} (needs "
                         f"{REFERENCE_POS_ROWS}), norm_eps={config.norm_eps} (needs 1e-6)")
    out = {
        "domains_in": [m.name for m in config.modalities if m.encoder],
        "domains_out": [m.name for m in config.modalities if m.decoder],
        "image_size": 224, "patch_size": 16, "norm_bias": config.norm_bias,
        "act_layer": {"silu": "SiLU", "gelu": "GELU"}[config.act_layer], "dim": config.dim,
        "encoder_depth": config.encoder_depth, "decoder_depth": config.decoder_depth,
        "num_heads": config.num_heads, "mlp_ratio": config.mlp_ratio, "qkv_bias": config.qkv_bias,
        "proj_bias": config.proj_bias, "mlp_bias": config.mlp_bias, "drop_path_rate_encoder": 0.0,
        "drop_path_rate_decoder": 0.0, "shared_drop_path": False, "gated_mlp": config.gated_mlp,
        "qk_norm": config.qk_norm, "decoder_causal_mask": False, "decoder_sep_mask": True,
        "num_register_tokens": 0, "use_act_checkpoint": False,
        "share_modality_embeddings": config.share_modality_embeddings,
    }
    vocab = {}
    for m in config.modalities:
        ref = reference_spec(m.name)  # raises for names the reference does not know
        if m.vocab_size != ref.vocab_size:
            vocab[m.name] = m.vocab_size
    if vocab:
        out["vocab_override"] = vocab
    return out


def released_config(size: str, family: str = "4m7") -> dict:
    """The FM(config) dict of a released model: size ``"B"``, ``"L"`` or ``"XL"``."""
    if size not in _SIZE_OF_RELEASE:
        raise ValueError(f"size={size!r}; allowed: {', '.join(_SIZE_OF_RELEASE)}")
    mods = ml4m_modalities(family)
    cfg = FourMConfig.from_size(_SIZE_OF_RELEASE[size], mods, seq_pos_len=REFERENCE_POS_ROWS)
    out = config_to_ml4m(cfg)
    # the reference lists the domains as 4M-7 does (rgb, tok_*, caption, det)
    if family == "4m7":
        out["domains_in"] = ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224",
                             "tok_clip@224", "caption", "det"]
        out["domains_out"] = out["domains_in"][1:]
    return out


def add_reference_tables(model: FourM) -> FourM:
    """Give every image target the reference's token table (``decoder_embeddings.<name>.token_emb``):
    the reference builds one, FourM's forward never reads it (image targets read the mask token),
    and reference checkpoints hold it. Returns ``model``."""
    for name, emb in model.decoder_embeddings.items():
        spec = model.specs[name]
        if spec.kind == "image" and not hasattr(emb, "token_emb"):
            emb.token_emb = nn.Embedding(spec.vocab_size, model.config.dim, device=model.mask_token.device)
    return model


def has_reference_tables(model: FourM) -> bool:
    """Whether ``model`` was built for a reference checkpoint (:func:`add_reference_tables`), which
    also says that its pixel inputs take ImageNet-normalised images."""
    return any(hasattr(emb, "token_emb") for name, emb in model.decoder_embeddings.items()
               if model.specs[name].kind == "image")


def build_on_meta(cfg: Mapping) -> FourM:
    """FourM for a reference config on the meta device (no memory, no init), reference tables included."""
    with torch.device("meta"):
        return add_reference_tables(FourM(config_from_ml4m(cfg)))


def state_dict_layout(model: FourM) -> list[dict]:
    """``[{key, shape, dtype, kind}]`` of the model's state dict (kind: parameter / buffer)."""
    params = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    return [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
             "kind": "parameter" if k in params else "buffer"} for k, v in model.state_dict().items()]


def compare_layout(model: FourM, expected: list[dict]) -> list[str]:
    """Differences between the model's state-dict layout and ``expected`` (empty = identical)."""
    return layout_differences({e["key"]: e for e in state_dict_layout(model)}, {e["key"]: e for e in expected})


# ---------------------------------------------------------------------------- checkpoints
def load_ml4m(path_or_repo_id: str | os.PathLike, device: str | torch.device = "cpu", *,
              revision: str | None = None, cache_dir: str | os.PathLike | None = None,
              token: str | bool | None = None, local_files_only: bool = False,
              force_download: bool = False) -> FourM:
    """Load a reference checkpoint (``config.json`` + ``model.safetensors``) strictly, from a folder
    or from the Hub.

    Args:
        path_or_repo_id: a folder; a Hub repo id (``EPFL-VILAB/4M-21_XL``); or a released name
            alone (``4M-7_B_CC12M``, ``4M-21_L``: see :data:`RELEASED_MODELS`), read as
            ``EPFL-VILAB/<name>``. Only ``config.json`` and ``model.safetensors`` are fetched (some
            releases also hold a ``pytorch_model.bin`` of several GB, which fourm never reads).
        device: where the weights are loaded.
        revision, cache_dir, token, local_files_only, force_download: for a repo id, as in
            :func:`fourm.hub.resolve_pretrained`.
    """
    name = str(path_or_repo_id)
    if name in RELEASED_MODELS and not Path(name).exists():
        name = f"{REFERENCE_ORG}/{name}"
    path = resolve_pretrained(name, what="a 4M reference checkpoint folder (config.json + model.safetensors)",
                              revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                              force_download=force_download, allow_patterns=["config.json", "model.safetensors"])
    cfg = json.loads((path / "config.json").read_text())
    model = build_on_meta(cfg)
    state = load_file(str(path / "model.safetensors"), device=str(device))
    model.load_state_dict_checked(state, assign=True)
    return model.eval()


def save_ml4m(model: FourM, path: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in the reference layout (reference key
    names, buffers included, shared ``mod_emb`` stored under both names; the config also goes
    into the safetensors metadata as JSON strings, as the reference reads it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = config_to_ml4m(model.config)
    fm = {k: v for k, v in cfg.items() if k != "vocab_override"}
    meta = {k: json.dumps(v) for k, v in fm.items()}
    tensors = unalias_state_dict(model.state_dict())
    for name, emb in model.decoder_embeddings.items():  # a FourM of its own has no reference tables: zeros
        key = f"decoder_embeddings.{name}.token_emb.weight"
        if model.specs[name].kind == "image" and key not in tensors:
            tensors[key] = torch.zeros(model.specs[name].vocab_size, model.config.dim, dtype=emb.mod_emb.dtype)
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta))
    atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))
    return path


# ---------------------------------------------------------------------------- mod_dicts
def mod_dict_to_batch(model: FourM, mod_dict: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """Reference mod_dict (``tensor``, ``input_mask``, ``target_mask`` with True = ignored,
    ``decoder_attention_mask``) -> fourm batch with positive masks, same modality order.

    The decoder attention pattern is implied by each modality's kind in fourm; a
    ``decoder_attention_mask`` that encodes a different pattern raises (an all-zero one, as used
    in the reference's generation, is accepted).
    """
    batch = {}
    for name, d in mod_dict.items():
        if name not in model.specs:
            raise KeyError(f"mod_dict modality {name!r} is not in the model; known: {', '.join(model.specs)}")
        t = d["tensor"]
        entry = {"tokens": t if t.is_floating_point() else t.long(), "is_input": ~d["input_mask"].bool()}
        if "target_mask" in d:
            entry["is_target"] = ~d["target_mask"].bool()
            if "decoder_attention_mask" in d and name in model.decoder_embeddings:
                _check_attention_pattern(name, model.specs[name].kind, entry["is_target"], d["decoder_attention_mask"])
        batch[name] = entry
    return batch


def _check_attention_pattern(name: str, kind: str, is_target: Tensor, dam: Tensor) -> None:
    dam = dam.reshape(dam.shape[0], -1).long()
    if not dam.any():
        return
    is_target = is_target.reshape(is_target.shape[0], -1)
    if kind == "sequence":  # causal: 1 at every target
        expected = is_target.long()
    else:  # all-to-all: the target count at the first target
        expected = torch.zeros_like(dam)
        n = is_target.sum(1)
        first = is_target.long().argmax(1)
        expected.scatter_(1, first[:, None], n[:, None])
    if not torch.equal(dam, expected):
        raise ValueError(f"{name}: decoder_attention_mask encodes a pattern other than "
                         f"{'causal' if kind == 'sequence' else 'all-to-all'} within the modality, which fourm does not support")


def run_ml4m(model: FourM, mod_dict: Mapping, num_encoder_tokens: int, num_decoder_tokens: int,
             loss_type: str = "mod") -> tuple[Tensor, dict[str, Tensor]]:
    """The reference's ``forward(mod_dict, N, M, loss_type)`` -> ``(loss, mod_losses)``, exactly
    (modalities without targets count as 0; ``'token'`` weights by rows x vocab as it does)."""
    if loss_type not in ("mod", "token"):
        raise ValueError(f"loss_type={loss_type!r}; allowed: 'mod', 'token'")
    out = model(mod_dict_to_batch(model, mod_dict), num_encoder_tokens, num_decoder_tokens, return_logits=True)
    mod_losses = reference_mod_losses(out)
    return _reference_loss(out, mod_losses, loss_type), mod_losses


def reference_mod_losses(out: FourMOutput) -> dict[str, Tensor]:
    """The reference's per-modality losses (``out`` with ``return_logits``): a modality in the batch
    without target slots counts as 0, through its head, so that the head gets its (zero) gradient."""
    return {name: out.mod_losses[name] if name in out.mod_losses else pr.logits.sum() * 0.0
            for name, pr in out.predictions.items()}


def _reference_loss(out: FourMOutput, mod_losses: Mapping[str, Tensor], loss_type: str) -> Tensor:
    if not mod_losses:
        return out.loss
    if loss_type == "mod":
        return torch.stack(list(mod_losses.values())).mean()
    weights = {k: out.predictions[k].logits.numel() for k in mod_losses}
    return sum(mod_losses[k] * weights[k] for k in weights) / sum(weights.values())


@torch.no_grad()
def reference_outputs(model: FourM, mod_dict: Mapping, num_encoder_tokens: int, num_decoder_tokens: int) -> dict[str, Tensor]:
    """The tensors the fixture records (see ../shared/fixtures/ml4m/README.md), from fourm."""
    batch = mod_dict_to_batch(model, mod_dict)
    enc = model.forward_encoder(batch, num_encoder_tokens)
    dec = model.forward_decoder(batch, enc, num_decoder_tokens)
    out = model.forward_loss(dec, return_logits=True)
    mod_losses = reference_mod_losses(out)
    sel = enc.selection
    uid = torch.tensor([model.specs[n].uid for n in sel.names] + [-1], dtype=torch.int16, device=sel.modality.device)
    res = {
        "loss": _reference_loss(out, mod_losses, "mod"), "loss_token": _reference_loss(out, mod_losses, "token"),
        "encoder.tokens": enc.tokens, "encoder.emb": enc.emb, "encoder.input": enc.tokens + enc.emb,
        "encoder.output": enc.output, "encoder.pad_mask": ~sel.is_valid,
        "encoder.modality_id": uid[torch.where(sel.modality < 0, len(sel.names), sel.modality)],
        "encoder.source_index": sel.source_index, "decoder.context": enc.context,
    }
    for name, loss in mod_losses.items():
        res[f"mod_loss.{name}"] = loss
    hidden, inp, emb = (t.flatten(0, 1) for t in (dec.hidden, dec.input, dec.emb))
    for name, pr in out.predictions.items():
        flat, _, _ = dec.selection.rows(name)
        res.update({f"decoder.{name}.batch_index": pr.batch_index, f"decoder.{name}.position": pr.position,
                    f"decoder.{name}.emb": emb[flat], f"decoder.{name}.input": inp[flat],
                    f"decoder.{name}.output": hidden[flat], f"logits.{name}": pr.logits,
                    f"target_ids.{name}": pr.target_ids})
    return res


def load_mod_dict(path: str | os.PathLike, order: list[str] | None = None) -> dict[str, dict[str, Tensor]]:
    """Read a fixture ``inputs.safetensors`` (keys ``<modality>.<field>``) into a mod_dict."""
    flat = load_file(str(path))
    out: dict[str, dict[str, Tensor]] = {}
    for key, t in flat.items():
        mod, field = key.rsplit(".", 1)
        out.setdefault(mod, {})[field] = t
    if order is not None:
        out = {m: out[m] for m in order}
    return out


def check_fixture(path: str | os.PathLike, tol: float = 1e-4, device: str = "cpu") -> list[tuple[str, float]]:
    """Run a fixture directory's inputs through fourm; ``[(tensor name, max abs diff)]`` for every
    recorded output (``inf`` when missing or of another shape). ``encoder.output`` is compared
    on non-padding rows only, as the fixture README says."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model = load_ml4m(path, device)
    mod_dict = load_mod_dict(path / "inputs.safetensors", cfg.get("modality_order_in_mod_dict"))
    mod_dict = {m: {k: t.to(device) for k, t in d.items()} for m, d in mod_dict.items()}
    fwd = cfg.get("forward", {})
    mine = reference_outputs(model, mod_dict, fwd.get("num_encoder_tokens", 128), fwd.get("num_decoder_tokens", 128))
    mine = {k: v.cpu() for k, v in mine.items()}
    results = []
    with safe_open(str(path / "outputs.safetensors"), "pt") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}
    for key in sorted(expected):
        ref, got = expected[key], mine.get(key)
        if got is None or tuple(got.shape) != tuple(ref.shape):
            results.append((key, float("inf")))
            continue
        if key == "encoder.output":
            keep = ~expected["encoder.pad_mask"]
            ref, got = ref[keep], got[keep]
        results.append((key, (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fourm.compat.ml4m", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="compare fourm with a reference fixture directory")
    p.add_argument("dir")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--device", default="cpu", help="run the model there (e.g. cuda)")
    p = sub.add_parser("shapes", help="compare the state-dict layout fourm builds with released_shapes/*.json "
                                      "(FourM models and tokenizers)")
    p.add_argument("json", nargs="+")
    p = sub.add_parser("check-tokenizer", help="compare a reference tokenizer fixture folder's recorded tensors "
                                               "with fourm's recomputation")
    p.add_argument("dir")
    args = parser.parse_args(argv)
    if args.cmd == "check-tokenizer":
        from fourm.compat.ml4m_tokenizer_check import print_check

        try:
            return print_check(args.dir)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"error: {args.dir}: {str(e).strip(chr(39))}", file=sys.stderr)
            return 2
    if args.cmd == "check":
        results = check_fixture(args.dir, args.tol, args.device)
        worst = 0.0
        for key, diff in results:
            worst = max(worst, diff)
            print(f"{key:40s} {diff:.3e}{'  FAIL' if diff > args.tol else ''}")
        ok = worst <= args.tol
        print(f"{len(results)} tensors, largest difference {worst:.3e}: {'OK' if ok else 'FAIL'} (tolerance {args.tol:g})")
        return 0 if ok else 1
    failed = False
    for name in args.json:
        spec = json.loads(Path(name).read_text())
        if "constructor_kwargs" in spec:  # a tokenizer
            from fourm.compat.ml4m_tokenizer_check import compare_tokenizer_layout

            problems = compare_tokenizer_layout(spec)
        else:
            problems = compare_layout(build_on_meta(spec["fm_config"]), spec["state_dict"])
        print(f"{name}: {len(spec['state_dict'])} keys, {'identical' if not problems else f'{len(problems)} differences'}")
        for line in problems[:50]:
            print("  " + line)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
