"""FourM: gradients, overfitting, new modalities, checkpoints, attention and decoder masks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.modalities import ModalitySpec
from fourm.models import FourM, FourMConfig, MODEL_SIZES, attention, select_tokens

IMAGE = 32  # 4 x 4 token grids keep every test fast
REPO = Path(__file__).resolve().parents[1]


def tiny_registry():
    return shapes_world_modalities(image_size=IMAGE, downsample=8, text_vocab=64, caption_length=12, det_length=12)


def tiny_config(reg=None, **kw) -> FourMConfig:
    args = dict(modalities=reg or tiny_registry(), dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
    args.update(kw)
    return FourMConfig(**args)


def make_batch(reg, B: int = 2, seed: int = 0, seq_in: int = 5, seq_tgt: int = 6) -> dict:
    """Every modality has inputs and targets (pixels: inputs only): images split their tokens
    into disjoint random inputs / targets; sequences put ``seq_in`` input ids at the start and a
    ``seq_tgt``-long target at ``num_tokens``, [PAD] = 0 elsewhere (the reference's layout)."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for s in reg:
        if s.kind == "image":
            L = s.num_tokens
            perm = torch.rand(B, L, generator=g).argsort(1)
            rank = perm.argsort(1)
            batch[s.name] = {"tokens": torch.randint(0, s.vocab_size, (B, L), generator=g),
                             "is_input": rank < L // 3, "is_target": rank >= L - L // 3}
        elif s.kind == "sequence":
            L = 2 * s.num_tokens
            pos = torch.arange(L).expand(B, L)
            is_in = pos < seq_in
            is_tgt = (pos >= s.num_tokens) & (pos < s.num_tokens + seq_tgt)
            tokens = torch.randint(4, s.vocab_size, (B, L), generator=g) * (is_in | is_tgt)
            batch[s.name] = {"tokens": tokens, "is_input": is_in, "is_target": is_tgt}
        else:
            rows, cols = s.grid
            batch[s.name] = {"tokens": torch.randn(B, s.in_channels, *s.image_size, generator=g),
                             "is_input": torch.rand(B, rows * cols, generator=g) < 0.5,
                             "is_target": torch.zeros(B, rows * cols, dtype=torch.bool)}
    return batch


def slots(batch, model) -> tuple[int, int]:
    """Encoder / decoder slots that hold every input / target of ``batch``."""
    n_in = max(int(sum(e["is_input"][b].sum() for e in batch.values())) for b in range(2))
    n_out = 0
    for b in range(2):
        n = 0
        for name, e in batch.items():
            if name in model.decoder_embeddings:
                n += int(model.decoder_embeddings[name].slots(e)[b].sum())
        n_out = max(n_out, n)
    return n_in, n_out


def explicit_attention(q, k, v, mask):
    """The reference's hand-written attention, with a positive mask."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
    return scores.softmax(-1) @ v


def test_sdpa_matches_explicit_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 7, 7, generator=g) < 0.5
    mask |= torch.eye(7, dtype=torch.bool)  # every row sees something
    torch.testing.assert_close(attention(q, k, v, mask), explicit_attention(q, k, v, mask), atol=1e-6, rtol=1e-5)
    key_mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])[:, None, None, :]
    torch.testing.assert_close(attention(q, k, v, key_mask), explicit_attention(q, k, v, key_mask), atol=1e-6, rtol=1e-5)


def test_every_parameter_gets_a_finite_gradient():
    reg = tiny_registry()
    model = FourM(tiny_config(reg))
    batch = make_batch(reg)
    n_in, n_out = slots(batch, model)
    out = model(batch, n_in, n_out)
    assert set(out.mod_losses) == {"tok_rgb", "tok_depth", "tok_semseg", "caption", "det"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # image targets read the mask token: they have no token table (the reference's unused one is
    # added by fourm.compat.ml4m only)
    assert not any(n.startswith("decoder_embeddings.tok_") and "token_emb" in n for n, _ in model.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_logits_only_for_target_rows_and_loss_is_mean_of_modalities():
    reg = tiny_registry()
    model = FourM(tiny_config(reg))
    batch = make_batch(reg)
    n_in, n_out = slots(batch, model)
    out = model(batch, n_in, n_out, return_logits=True)
    for name, pr in out.predictions.items():
        n_targets = int(model.decoder_embeddings[name].slots(batch[name]).sum())
        assert pr.logits.shape == (n_targets, reg[name].vocab_size)
        expected = F.cross_entropy(pr.logits, pr.target_ids)
        torch.testing.assert_close(out.mod_losses[name], expected)
        # image targets are the tokens at their positions; sequences predict the next token
        shift = 1 if reg[name].kind == "sequence" else 0
        assert torch.equal(pr.target_ids, batch[name]["tokens"][pr.batch_index, pr.position + shift])
        assert (pr.batch_index[1:] >= pr.batch_index[:-1]).all()
    torch.testing.assert_close(out.loss, torch.stack(list(out.mod_losses.values())).mean())


def test_modalities_without_targets_leave_the_mean_and_the_reference_counts_them():
    from fourm.compat.ml4m import reference_mod_losses

    reg = tiny_registry()
    model = FourM(tiny_config(reg))
    batch = make_batch(reg)
    batch["det"]["is_target"] = torch.zeros_like(batch["det"]["is_target"])
    n_in, n_out = slots(batch, model)
    fixed = model(batch, n_in, n_out)
    assert "det" not in fixed.mod_losses
    torch.testing.assert_close(fixed.loss, torch.stack(list(fixed.mod_losses.values())).mean())
    ref = reference_mod_losses(model(batch, n_in, n_out, return_logits=True))  # the reference: det counts as 0
    assert ref["det"].item() == 0.0 and list(ref) == ["tok_rgb", "tok_depth", "tok_semseg", "caption", "det"]
    torch.testing.assert_close(torch.stack(list(ref.values())).mean(), fixed.loss * 4 / 5)


def test_missing_modalities_are_absent_and_unknown_ones_raise():
    reg = tiny_registry()
    model = FourM(tiny_config(reg))
    batch = make_batch(reg)
    out = model({k: batch[k] for k in ("rgb", "caption")}, 32, 16)
    assert set(out.mod_losses) == {"caption"}
    with pytest.raises(KeyError, match="unknown modality 'dpeth'"):
        model({"dpeth": batch["tok_depth"]}, 8, 8)


def test_selection_packs_valid_tokens_in_order_and_truncates():
    a = torch.tensor([[False, True, True], [True, False, False]])
    b = torch.tensor([[True, False], [True, True]])
    sel = select_tokens(["a", "b"], [a, b], 4, 2, torch.device("cpu"))
    assert sel.source_index[0, :3].tolist() == [1, 2, 3] and sel.is_valid[0].tolist() == [True, True, True, False]
    assert sel.modality[0].tolist() == [0, 0, 1, -1] and sel.position[0, :3].tolist() == [1, 2, 0]
    assert sel.modality[1].tolist() == [0, 1, 1, -1]
    short = select_tokens(["a", "b"], [a, b], 2, 2, torch.device("cpu"))
    assert short.modality.tolist() == [[0, 0], [0, 1]] and short.is_valid.all()


def test_sequence_decoder_is_causal_and_modalities_are_separate():
    reg = tiny_registry()
    model = FourM(tiny_config(reg)).eval()
    batch = make_batch(reg, seq_tgt=8)
    n_in, n_out = slots(batch, model)
    start = reg["caption"].num_tokens
    changed = {k: dict(v) for k, v in batch.items()}
    changed["caption"]["tokens"] = batch["caption"]["tokens"].clone()
    changed["caption"]["tokens"][:, start + 5] = 7  # a later target token
    with torch.no_grad():
        p0 = model(batch, n_in, n_out, return_logits=True).predictions
        p1 = model(changed, n_in, n_out, return_logits=True).predictions
    cap0, cap1 = p0["caption"], p1["caption"]
    early = cap0.position < start + 5  # slots that read only tokens before the change
    torch.testing.assert_close(cap0.logits[early], cap1.logits[early], atol=0, rtol=0)
    assert (cap0.logits[~early] - cap1.logits[~early]).abs().max() > 1e-3  # the change is visible
    for name in ("tok_rgb", "det"):  # nothing crosses modalities in the decoder
        torch.testing.assert_close(p0[name].logits, p1[name].logits, atol=0, rtol=0)


def test_tiny_batch_is_overfitted():
    reg = tiny_registry()
    model = FourM(tiny_config(reg, dim=64))
    batch = make_batch(reg, seed=1)
    n_in, n_out = slots(batch, model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = model(batch, n_in, n_out).loss
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    last = loss.item()
    assert first > 3.0 and last < 0.1 * first, (first, last)


def test_a_newly_registered_modality_trains():
    reg = tiny_registry()
    reg.register(ModalitySpec("tok_normal", "image", vocab_size=16, grid=(4, 4)))
    model = FourM(tiny_config(reg))
    assert "tok_normal" in model.encoder_embeddings and "tok_normal" in model.decoder_embeddings
    batch = make_batch(reg, seed=2)
    # tok_normal is a function of tok_depth, so inputs of one predict targets of the other
    batch["tok_normal"]["tokens"] = batch["tok_depth"]["tokens"] % 16
    n_in, n_out = slots(batch, model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(batch, n_in, n_out)
        losses.append(out.mod_losses["tok_normal"].item())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_load_round_trip(tmp_path):
    reg = tiny_registry()
    model = FourM(tiny_config(reg), seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FourM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the shared modality vector is one parameter again
    assert loaded.decoder_embeddings["caption"].mod_emb is loaded.encoder_embeddings["caption"].mod_emb
    batch = make_batch(reg)
    n_in, n_out = slots(batch, model)
    assert torch.equal(model(batch, n_in, n_out).loss, loaded(batch, n_in, n_out).loss)
    # a different seed gives a different model, so the comparison above can fail
    assert not torch.equal(FourM(tiny_config(reg), seed=4).mask_token, model.mask_token)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 99"):
        FourM.from_pretrained(tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_version_1_files_with_the_unused_image_tables_load(tmp_path):
    """Format 1 also stored a token table per image target, which the forward never read (the
    bundled model is such a file); loading drops exactly those tables. Format 2 has none."""
    from safetensors.torch import load_file, save_file

    reg = tiny_registry()
    model = FourM(tiny_config(reg), seed=3)
    model.save_pretrained(tmp_path / "v2")
    tensors = load_file(str(tmp_path / "v2" / "model.safetensors"))
    assert not any("token_emb" in k and k.startswith("decoder_embeddings.tok_") for k in tensors)
    image_targets = [m.name for m in reg if m.kind == "image"]
    old = {**tensors, **{f"decoder_embeddings.{n}.token_emb.weight": torch.randn(reg[n].vocab_size, 32)
                         for n in image_targets}}
    (tmp_path / "v1").mkdir()
    save_file(old, str(tmp_path / "v1" / "model.safetensors"))
    cfg = json.loads((tmp_path / "v2" / "config.json").read_text())
    (tmp_path / "v1" / "config.json").write_text(json.dumps({**cfg, "format_version": 1}))
    loaded = FourM.from_pretrained(tmp_path / "v1")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tensors.items())
    bundled = json.loads((REPO / "models" / "shapes_bundled" / "config.json").read_text())
    assert bundled["format_version"] == 1 and FourM.from_pretrained(REPO / "models" / "shapes_bundled").config.dim == 192
    (tmp_path / "v2" / "model.safetensors").write_bytes((tmp_path / "v1" / "model.safetensors").read_bytes())
    with pytest.raises(KeyError, match="unexpected"):  # format 2 files are read strictly
        FourM.from_pretrained(tmp_path / "v2")


def test_strict_load_rejects_missing_keys_and_unequal_aliases():
    model = FourM(tiny_config())
    state = dict(model.state_dict())
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict_checked({k: v for k, v in state.items() if k != "mask_token"})
    state["decoder_embeddings.caption.mod_emb"] = state["decoder_embeddings.caption.mod_emb"] + 1
    with pytest.raises(ValueError, match="shared tensor"):
        model.load_state_dict_checked(state)


def test_extract_features_with_some_inputs():
    reg = tiny_registry()
    model = FourM(tiny_config(reg)).eval()
    batch = make_batch(reg)
    image = batch["rgb"]["tokens"]
    caption = batch["caption"]["tokens"][:, :8]  # 5 ids then [PAD]
    with torch.no_grad():
        feats = model.extract_features({"rgb": image, "caption": caption})
        only_rgb = model.extract_features({"rgb": image})
    assert feats.tokens.shape == (2, 16 + 8, 32) and feats.pooled.shape == (2, 32)
    assert feats.is_valid.sum(1).tolist() == [16 + 5, 16 + 5]
    assert set(feats.per_modality) == {"rgb", "caption"}
    valid = feats.tokens[feats.is_valid].view(2, 21, 32)
    torch.testing.assert_close(feats.pooled, valid.mean(1))
    assert only_rgb.tokens.shape == (2, 16, 32) and only_rgb.is_valid.all()
    # the caption changes the rgb features (attention mixes them)
    assert (feats.per_modality["rgb"] - only_rgb.per_modality["rgb"]).abs().max() > 1e-4
    with pytest.raises(KeyError, match="not an input modality"):
        model.extract_features({"nope": image})


def test_config_errors_name_the_field():
    reg = tiny_registry()
    with pytest.raises(ValueError, match="num_heads=5"):
        FourMConfig(modalities=reg, dim=32, num_heads=5)
    with pytest.raises(ValueError, match="act_layer='relu'"):
        FourMConfig(modalities=reg, dim=32, num_heads=2, act_layer="relu")
    with pytest.raises(ValueError, match="size='huge'"):
        FourMConfig.from_size("huge", reg)
    with pytest.raises(ValueError, match=r"unknown FourMConfig fields \['dpeth'\]"):
        FourMConfig.from_size("tiny", reg, dpeth=3)
    assert FourMConfig.from_size("large", reg).dim == MODEL_SIZES["large"]["dim"] == 1024
    cfg = tiny_config(reg)
    assert FourMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_gelu_bias_and_qk_norm_variants_run():
    reg = tiny_registry()
    model = FourM(tiny_config(reg, gated_mlp=False, act_layer="gelu", qkv_bias=True, proj_bias=True,
                              mlp_bias=True, norm_bias=True, qk_norm=True, share_modality_embeddings=False))
    keys = model.state_dict().keys()
    assert "encoder.0.attn.q_norm.weight" in keys and "decoder.0.cross_attn.k_norm.weight" in keys
    assert "encoder.0.mlp.fc1.bias" in keys and not any(".fc3." in k for k in keys)
    batch = make_batch(reg)
    loss = model(batch, *slots(batch, model)).loss
    loss.backward()
    assert math.isfinite(loss.item())


def test_model_trains_on_masking_output():
    from fourm.masking import MaskingConfig, UnifiedMasking, all_to_all_component, count_tokens, rgb_to_all_component

    # the text vocabulary must hold the 204 special ids (pad, eos, sentinels) plus some words
    reg = shapes_world_modalities(image_size=IMAGE, downsample=8, text_vocab=256, caption_length=12, det_length=12)
    tokens = [s.name for s in reg if s.kind != "pixels"]
    comps = (all_to_all_component(tokens, 0.5), rgb_to_all_component("rgb", tokens))
    masking = UnifiedMasking(MaskingConfig(tuple(reg.names()), comps, 24, 24), reg)
    g = torch.Generator().manual_seed(0)
    samples = {"rgb": torch.randn(4, 3, IMAGE, IMAGE, generator=g)}
    for s in reg:
        if s.kind == "image":
            samples[s.name] = torch.randint(0, s.vocab_size, (4, *s.grid), generator=g)
        elif s.kind == "sequence":
            samples[s.name] = [torch.randint(204, s.vocab_size, (n,), generator=g).tolist() for n in (3, 12, 0, 7)]
    batch = masking.mask_batch(samples, generator=torch.Generator().manual_seed(1))
    counts = count_tokens(batch, reg)
    model = FourM(tiny_config(reg))
    out = model(batch, 24, 24, return_logits=True)
    # every input and every decoder slot the masking produced fits and is used
    enc = model.select_encoder_tokens(batch, 24)
    assert torch.equal(enc.is_valid.sum(1), counts.inputs)
    assert sum(p.logits.shape[0] for p in out.predictions.values()) == int(counts.decoder_slots.sum())
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_precomputed_context_kv_gives_the_same_decoder_output():
    reg = tiny_registry()
    model = FourM(tiny_config(reg)).eval()
    batch = make_batch(reg)
    n_in, n_out = slots(batch, model)
    with torch.no_grad():
        enc = model.encode(batch, n_in)
        dec = model.forward_decoder(batch, enc, n_out)
        sel = model.select_decoder_tokens(batch, n_out)
        again = model.run_decoder(dec.input, None, model.decoder_self_mask(sel), enc.context_mask,
                                  context_kv=model.context_kv(enc.context))
    torch.testing.assert_close(again, dec.hidden, atol=0, rtol=0)


def test_save_in_half_precision_loads_as_float32(tmp_path):
    reg = tiny_registry()
    model = FourM(tiny_config(reg), seed=3)
    full = model.save_pretrained(tmp_path / "full") / "model.safetensors"
    half = model.save_pretrained(tmp_path / "half", dtype=torch.float16) / "model.safetensors"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = FourM.from_pretrained(tmp_path / "half")
    a, b = model.state_dict(), loaded.state_dict()
    assert all(b[k].dtype == a[k].dtype for k in a)
    assert all(torch.equal(b[k], a[k].half().float()) for k in a)
    assert max((b[k] - a[k]).abs().max().item() for k in a) > 0  # the rounding happened
    with pytest.raises(ValueError, match="dtype=torch.int8"):
        model.save_pretrained(tmp_path / "bad", dtype=torch.int8)
