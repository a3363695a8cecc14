"""The sampler against the model run by hand: cache, guidance, MaskGIT/ROAR, seeds, chains, editing."""
from __future__ import annotations

import pytest
import torch

from fourm.generation import Chain, Condition, Sampler, Target, edit, inpaint
from fourm.generation.kv_cache import IncrementalDecoder
from fourm.generation.schedules import token_counts
from fourm.masking.spans import EOS_ID, sentinel_id
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.models import FourM, FourMConfig

L = 16  # 4 x 4 token grids


def tiny_model(seed: int = 0, **kw) -> FourM:
    reg = shapes_world_modalities(image_size=32, downsample=8, text_vocab=256, caption_length=12, det_length=12)
    reg = reg.subset(["tok_rgb", "tok_depth", "tok_semseg", "caption", "det"])
    args = dict(modalities=reg, dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
    args.update(kw)
    return FourM(FourMConfig(**args), seed=seed).eval()


@pytest.fixture(scope="module")
def model() -> FourM:
    return tiny_model()


def rgb_tokens(B: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 1024, (B, L), generator=torch.Generator().manual_seed(seed))


def words(B: int = 3, n: int = 6, seed: int = 2) -> torch.Tensor:
    """Caption ids above the sentinel range (204..255)."""
    return torch.randint(204, 256, (B, n), generator=torch.Generator().manual_seed(seed))


def by_hand_logits(model: FourM, inputs: dict, name: str, hide: tuple[str, ...] = ()) -> torch.Tensor:
    """Logits (B, L, V) of every token of image modality ``name`` from one forward of the model,
    with the modalities in ``hide`` absent. Captions get their [EOS], as the sampler gives them."""
    B = next(iter(inputs.values())).shape[0]
    inputs = {k: torch.cat([v, torch.full((B, 1), EOS_ID)], 1) if k == "caption" else v for k, v in inputs.items()}
    batch = {k: {"tokens": v, "is_input": torch.ones_like(v, dtype=torch.bool)} for k, v in inputs.items() if k not in hide}
    target = {"tokens": torch.zeros(B, L, dtype=torch.long), "is_input": torch.zeros(B, L, dtype=torch.bool),
              "is_target": torch.ones(B, L, dtype=torch.bool)}
    batch[name] = target
    n_in = max(1, sum(e["is_input"].shape[1] for e in batch.values() if e is not target))
    with torch.no_grad():
        enc = model.forward_encoder(batch, n_in)
        dec = model.forward_decoder({name: target}, enc, L)
        pred = model.decode_logits(dec, [name])[name]
    return pred.logits.view(B, L, -1)


# ---------------------------------------------------------------- key/value cache
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_cached_decoding_equals_uncached(model, cfg_scale):
    inputs = {"tok_rgb": rgb_tokens()}
    t = Target("caption", temperature=1.0, cfg_scale=cfg_scale)
    cached = Sampler(model, use_cache=True).generate(inputs, [t], seed=3, keep_logits=True)
    plain = Sampler(model, use_cache=False).generate(inputs, [t], seed=3, keep_logits=True)
    assert cached.spans["caption"] == plain.spans["caption"]
    assert torch.equal(cached.tokens("caption"), plain.tokens("caption"))
    lc, lp = cached.logits["caption"], plain.logits["caption"]
    assert lc.abs().sum() > 0 and lc.shape == lp.shape
    torch.testing.assert_close(lc, lp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_incremental_decoder_matches_teacher_forced_forward(model, padded):
    """Each cached step's logits equal the model's own teacher-forced forward over the sequence;
    ``padded``: sample 1 sees half the input tokens, so its context has padding slots that the
    cross-attention must mask (with every slot valid the cached path attends without a mask)."""
    B, T = 2, 9
    is_input = torch.ones(B, L, dtype=torch.bool)
    if padded:
        is_input[1, L // 2:] = False
    inputs = {"tok_rgb": {"tokens": rgb_tokens(B), "is_input": is_input}}
    seq = torch.cat([torch.full((B, 1), sentinel_id(1)), words(B, T - 1)], 1)  # (B, T)
    with torch.no_grad():
        enc = model.encode(inputs, L)
        assert bool(enc.context_mask.all()) != padded
        dec = IncrementalDecoder(model, "caption", enc.context, enc.context_mask, T)
        steps = torch.stack([dec.step(seq[:, t]) for t in range(T)], 1)  # (B, T, V): logits of token t + 1
        batch = dict(inputs)
        batch["caption"] = {"tokens": torch.cat([seq, seq[:, :1]], 1), "is_target": torch.ones(B, T + 1, dtype=torch.bool)}
        ref = model.decode_logits(model.forward_decoder(batch, enc, T))["caption"].logits.view(B, T, -1)
    torch.testing.assert_close(steps, ref, atol=1e-5, rtol=0)


def test_finished_samples_leave_the_batch_and_match_single_runs(monkeypatch):
    model = tiny_model(seed=0, init_std=0.5)  # larger embeddings: greedy captions differ between samples
    with torch.no_grad():  # [EOS] wins wherever token 103 would: at different steps in different samples
        w = model.decoder_embeddings["caption"].to_logits.weight
        w[EOS_ID] = w[103] * 1.01
    kept_rows = []
    original = IncrementalDecoder.keep

    def spy(self, rows):
        kept_rows.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(IncrementalDecoder, "keep", spy)
    inputs = {"tok_rgb": rgb_tokens(4, seed=9)}
    t = Target("caption", temperature=0.0)
    batched = Sampler(model).generate(inputs, [t])
    lengths = [len(s) for s in batched.spans["caption"]]
    assert len(set(lengths)) > 1, f"test needs samples that stop at different steps, got lengths {lengths}"
    assert kept_rows and min(kept_rows) < 4  # finished samples were dropped from the buffers
    for b in range(4):
        single = Sampler(model).generate({"tok_rgb": inputs["tok_rgb"][b : b + 1]}, [t])
        assert single.spans["caption"][0] == batched.spans["caption"][b]


# ---------------------------------------------------------------- guidance
def test_batched_guidance_equals_two_passes(model):
    inputs = {"tok_rgb": rgb_tokens(), "caption": words()}
    targets = [Target("tok_depth", steps=3, cfg_scale=3.0, temperature=1.0),
               Target("det", cfg_scale=2.0, cfg_conditions=("caption",)),
               Target("tok_semseg", steps=2, scheme="roar",
                      guidance=(Condition("caption", 2.0), Condition(("tok_rgb", "tok_depth"), -0.5)))]
    one = Sampler(model, batch_guidance=True).generate(inputs, targets, seed=5, keep_logits=True)
    two = Sampler(model, batch_guidance=False).generate(inputs, targets, seed=5, keep_logits=True)
    for name in ("tok_depth", "tok_semseg", "caption", "det"):
        assert torch.equal(one.tokens(name), two.tokens(name)), name
    torch.testing.assert_close(one.logits["det"], two.logits["det"], atol=1e-5, rtol=0)
    for a, b in zip(one.logits["tok_depth"] + one.logits["tok_semseg"], two.logits["tok_depth"] + two.logits["tok_semseg"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_guided_logits_follow_the_formula(model):
    inputs = {"tok_rgb": rgb_tokens(), "caption": words()}
    cond = by_hand_logits(model, inputs, "tok_depth")
    no_caption = by_hand_logits(model, inputs, "tok_depth", hide=("caption",))
    no_rgb = by_hand_logits(model, inputs, "tok_depth", hide=("tok_rgb",))
    uncond = by_hand_logits(model, inputs, "tok_depth", hide=("caption", "tok_rgb"))
    s = Sampler(model)
    # plain CFG over every input
    out = s.generate(inputs, [Target("tok_depth", steps=1, cfg_scale=3.0)], keep_logits=True)
    torch.testing.assert_close(out.logits["tok_depth"][0].view_as(cond), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=0)
    # weighted guidance with a negative weight
    g = (Condition("caption", 2.0), Condition("tok_rgb", -1.0))
    out = s.generate(inputs, [Target("tok_depth", steps=1, guidance=g)], keep_logits=True)
    want = uncond + 2.0 * (no_rgb - uncond) - 1.0 * (no_caption - uncond)
    torch.testing.assert_close(out.logits["tok_depth"][0].view_as(cond), want, atol=1e-5, rtol=0)


def test_guidance_weight_zero_is_the_unguided_conditional(model):
    inputs = {"tok_rgb": rgb_tokens(), "caption": words()}
    s = Sampler(model)
    plain = s.generate(inputs, [Target("tok_depth", steps=2)], seed=1, keep_logits=True)
    # cfg_scale 1 = guidance weight 0 on top of the conditional, computed through the two branches
    one = s.generate(inputs, [Target("tok_depth", steps=2, guidance=(Condition(("caption", "tok_rgb"), 1.0),))],
                     seed=1, keep_logits=True)
    assert torch.equal(plain.tokens("tok_depth"), one.tokens("tok_depth"))
    for a, b in zip(plain.logits["tok_depth"], one.logits["tok_depth"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # weight 0 on a condition = the conditional model without that condition
    zero = s.generate(inputs, [Target("tok_depth", steps=2, guidance=(Condition("tok_rgb", 1.0), Condition("caption", 0.0)))],
                      seed=1, keep_logits=True)
    rgb_only = s.generate({"tok_rgb": inputs["tok_rgb"]}, [Target("tok_depth", steps=2)], seed=1, keep_logits=True)
    assert torch.equal(zero.tokens("tok_depth"), rgb_only.tokens("tok_depth"))
    for a, b in zip(zero.logits["tok_depth"], rgb_only.logits["tok_depth"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- image decoding
@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_one_step_at_temperature_zero_is_the_argmax_of_one_forward(model, scheme):
    inputs = {"tok_rgb": rgb_tokens(), "caption": words()}
    out = Sampler(model).generate(inputs, [Target("tok_depth", steps=1, scheme=scheme, temperature=0.0)])
    want = by_hand_logits(model, inputs, "tok_depth").argmax(-1)
    assert torch.equal(out.tokens("tok_depth"), want)


@pytest.mark.parametrize("scheme,schedule", [("maskgit", "cosine"), ("maskgit", "linear"), ("roar", "linear")])
def test_tokens_per_step_follow_the_schedule(model, scheme, schedule):
    out = Sampler(model).generate({"tok_rgb": rgb_tokens(2)}, [Target("tok_depth", steps=4, scheme=scheme, schedule=schedule)],
                                  keep_logits=True)
    counts = token_counts(schedule, L, 4)
    steps = [c for c in counts.tolist() if c > 0]
    rows = [x.shape[0] // 2 for x in out.logits["tok_depth"]]  # positions queried per sample
    if scheme == "roar":  # queries exactly the step's share
        assert rows == steps
    else:  # queries everything left
        assert rows == [L - sum(steps[:i]) for i in range(len(steps))]


def test_seed_reproduces_and_differs(model):
    inputs = {"tok_rgb": rgb_tokens()}
    targets = [Target("tok_depth", steps=3, scheme="roar"), Target("caption")]
    s = Sampler(model)
    a, b, c = (s.generate(inputs, targets, seed=k) for k in (0, 0, 1))
    for name in ("tok_depth", "caption"):
        assert torch.equal(a.tokens(name), b.tokens(name))
    assert not torch.equal(a.tokens("tok_depth"), c.tokens("tok_depth"))
    assert a.spans["caption"] != c.spans["caption"]


def test_global_rng_untouched(model):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    Sampler(model).generate({"tok_rgb": rgb_tokens()}, [Target("tok_depth", steps=2, scheme="roar"),
                                                        Target("caption", top_k=20, top_p=0.9)], seed=7)
    assert torch.equal(torch.get_rng_state(), before)


def test_raw_names_stand_for_token_modalities(model):
    inputs = {"tok_rgb": rgb_tokens(), "caption": words()}
    a = Sampler(model).generate(inputs, [Target("depth", steps=2, cfg_scale=2.0, cfg_conditions=("rgb",))], seed=0)
    b = Sampler(model).generate(inputs, [Target("tok_depth", steps=2, cfg_scale=2.0, cfg_conditions=("tok_rgb",))], seed=0)
    assert a.generated == ("tok_depth",) and torch.equal(a.tokens("tok_depth"), b.tokens("tok_depth"))


def test_unconditional_generation_uses_num_samples(model):
    out = Sampler(model).generate(None, [Target("tok_rgb", steps=2), Target("caption")], num_samples=3)
    assert out.tokens("tok_rgb").shape == (3, L) and len(out.sequences("caption")) == 3


def test_num_samples_repeat_inputs_and_draw_different_samples(model):
    out = Sampler(model).generate({"tok_rgb": rgb_tokens(1)}, [Target("tok_depth", steps=2)], num_samples=2)
    assert torch.equal(out.tokens("tok_rgb")[0], out.tokens("tok_rgb")[1])
    assert not torch.equal(out.tokens("tok_depth")[0], out.tokens("tok_depth")[1])


# ---------------------------------------------------------------- editing and chains
def test_inpainting_keeps_the_unmasked_tokens(model):
    s = Sampler(model)
    base = s.generate({"caption": words()}, [Target("tok_rgb", steps=2)], seed=0)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:3, 1:3] = True
    holes = inpaint(base, "tok_rgb", mask)
    assert int((~holes.state["tok_rgb"]["is_input"]).sum()) == 3 * 4
    out = s.generate(holes, [Target("tok_rgb", steps=2, cfg_scale=2.0)], seed=1, keep_logits=True)
    keep = ~mask.flatten()
    assert torch.equal(out.tokens("tok_rgb")[:, keep], base.tokens("tok_rgb")[:, keep])
    assert not torch.equal(out.tokens("tok_rgb")[:, ~keep], base.tokens("tok_rgb")[:, ~keep])
    assert sum(x.shape[0] for x in out.logits["tok_rgb"]) >= 3 * 4  # only the holes were queried
    assert out.logits["tok_rgb"][0].shape[0] == 3 * 4
    assert bool(out.state["tok_rgb"]["is_input"].all())


def test_complete_modality_is_regenerated_not_kept(model):
    rgb = rgb_tokens()
    out = Sampler(model).generate({"tok_rgb": rgb}, [Target("tok_rgb", steps=1)], keep_logits=True)
    assert out.logits["tok_rgb"][0].shape[0] == 3 * L
    assert not torch.equal(out.tokens("tok_rgb"), rgb)


def test_caption_infill_keeps_the_prompt(model):
    s = Sampler(model)
    w = words(2, 4).tolist()
    prompts = [[w[0][0], w[0][1], sentinel_id(1)],  # continue after two words
               [w[1][0], sentinel_id(3), w[1][1], w[1][2], EOS_ID]]  # fill in the middle (renumbered to [S_1])
    out = s.generate({"tok_rgb": rgb_tokens(2), "caption": prompts}, [Target("caption", temperature=0.5)], seed=2)
    seq = out.sequences("caption", strip_eos=False)
    assert seq[0][:2] == w[0][:2]
    assert seq[1][0] == w[1][0] and seq[1][-3:] == [w[1][1], w[1][2], EOS_ID]
    for ids in seq:
        assert ids.count(EOS_ID) == 1 and ids[-1] == EOS_ID
    assert out.spans["caption"][1][0] == sentinel_id(1)


def test_chain_equals_steps_composed_by_hand(model):
    s = Sampler(model)
    inputs = {"tok_rgb": rgb_tokens()}
    new_caption = words(1, 5, seed=8)[0].tolist()
    mask = torch.arange(L).reshape(4, 4) < 6
    chain = (Chain(s).then(Target("caption"))
             .edit(caption=new_caption)
             .then(Target("tok_rgb", steps=3, cfg_scale=2.0))
             .inpaint("tok_rgb", mask)
             .then(Target("tok_rgb", steps=2), Target("det")))
    got = chain.run(inputs, seed=11)
    g = torch.Generator().manual_seed(11)
    r = s.generate(inputs, [Target("caption")], seed=g)
    r = edit(r, None, caption=new_caption)
    r = s.generate(r, [Target("tok_rgb", steps=3, cfg_scale=2.0)], seed=g)
    r = inpaint(r, "tok_rgb", mask)
    r = s.generate(r, [Target("tok_rgb", steps=2), Target("det")], seed=g)
    assert got.generated == ("caption", "tok_rgb", "tok_rgb", "det")
    assert set(got.state) == set(r.state)
    for name in r.state:
        assert torch.equal(got.tokens(name), r.tokens(name)), name
    assert got.sequences("caption") == [new_caption] * 3


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("target,match", [
    (Target("dpeth"), "cannot generate 'dpeth'"),
    (Target("caption", steps=4), "steps/schedule apply to image"),
    (Target("caption", scheme="maskgit"), "sequences decode with 'autoregressive'"),
    (Target("tok_rgb", scheme="autoregressive"), "is for sequences"),
    (Target("tok_rgb", max_tokens=5), "max_tokens applies to sequences"),
    (Target("tok_rgb", cfg_scale=2.0, cfg_conditions=("dpeth",)), "'dpeth' is not an input"),
])
def test_bad_targets_are_rejected_with_the_setting_named(model, target, match):
    with pytest.raises(ValueError, match=match):
        Sampler(model).generate({"tok_rgb": rgb_tokens()}, [target])


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps=0"), (dict(scheme="greedy"), "scheme='greedy'"), (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k"), (dict(temperature_schedule="cosine"), "temperature_schedule"),
    (dict(cfg_scale=2.0, guidance=(Condition("caption", 1.0),)), "both given"), (dict(schedule="quadratic"), "schedule"),
])
def test_target_fields_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        Target("tok_rgb", **kw)


def test_bad_inputs_name_the_problem(model):
    s = Sampler(model)
    with pytest.raises(KeyError, match="unknown input 'rbg'"):
        s.generate({"rbg": rgb_tokens()}, ["caption"])
    with pytest.raises(ValueError, match="token ids must lie in"):
        s.generate({"tok_rgb": rgb_tokens() + 2000}, ["caption"])
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        s.generate({"caption": [[5000, 6000]]}, ["tok_rgb"])
    with pytest.raises(ValueError, match="needs the 'text' tokenizer"):
        s.generate({"caption": "a red circle"}, ["tok_rgb"])
    with pytest.raises(ValueError, match="disagree on the batch size"):
        s.generate({"tok_rgb": rgb_tokens(3), "caption": words(2)}, ["tok_depth"])
