"""Masking invariants: budgets, disjointness, span masking round trips, determinism, config errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fourm.config import ConfigError
from fourm.masking import (
    EOS_ID,
    MaskingConfig,
    MixtureComponent,
    TransferMasking,
    UnifiedMasking,
    all_to_all_component,
    collate_masked,
    count_tokens,
    generator_for,
    merge_spans,
    mixture_from_reference,
    prepare_sequence,
    rgb_to_all_component,
    sentinel_id,
    span_mask,
)
from fourm.masking.budgets import sample_dirichlet, sample_log_gamma, split_tokens
from fourm.masking.spans import KEEP_DECAY, is_sentinel, sample_span_masks, truncate_target
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.modalities import ml4m_modalities

S1 = sentinel_id(1)
IMAGES = ("tok_rgb", "tok_depth", "tok_semseg")
TOKENS = (*IMAGES, "caption", "det")
ALL = ("rgb", *TOKENS)
WORD_LOW = 204  # first id after the sentinels


@pytest.fixture(scope="module")
def reg():
    # 4 x 4 token grids (16 tokens), sequences of at most 20 tokens (+[EOS]), rgb as 4 x 4 patches
    return shapes_world_modalities(image_size=32, downsample=8, text_vocab=512, caption_length=20, det_length=12)


def make_samples(reg, batch_size: int, seed: int, max_len: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"rgb": torch.randn(batch_size, 3, 32, 32, generator=g)}
    for name in IMAGES:
        out[name] = torch.randint(0, reg[name].vocab_size, (batch_size, 4, 4), generator=g)
    for name in ("caption", "det"):
        top = (max_len if max_len is not None else reg[name].max_length + 3) + 1  # some longer than max_length
        lengths = torch.randint(0, top, (batch_size,), generator=g).tolist()
        out[name] = [torch.randint(WORD_LOW, reg[name].vocab_size, (n,), generator=g).tolist() for n in lengths]
    return out


def config(components, n_in=24, n_tgt=24, **kw) -> MaskingConfig:
    return MaskingConfig(ALL, tuple(components), n_in, n_tgt, **kw)


def seq_parts(batch, name, b):
    d = batch[name]
    return d["tokens"][b][d["is_input"][b]].tolist(), d["tokens"][b][d["is_target"][b]].tolist()


def check_layout(batch, reg):
    """Structure shared by every batch: shapes, dtypes, disjointness, sequence layout."""
    for name, d in batch.items():
        spec = reg[name]
        is_in, is_tgt, tok = d["is_input"], d["is_target"], d["tokens"]
        assert is_in.dtype == torch.bool and is_tgt.dtype == torch.bool
        assert not (is_in & is_tgt).any(), name
        if spec.kind == "pixels":
            assert tok.is_floating_point() and is_in.shape[1] == spec.num_tokens and not is_tgt.any()
            continue
        assert tok.dtype == torch.int64
        if spec.kind == "image":
            assert tok.shape[1] == spec.num_tokens
            continue
        L = 2 * spec.num_tokens
        assert tok.shape[1] == L
        for b in range(tok.shape[0]):
            n_in, n_tgt = int(is_in[b].sum()), int(is_tgt[b].sum())
            assert is_in[b, :n_in].all(), "inputs are a prefix"
            assert n_in <= spec.num_tokens and n_tgt <= spec.num_tokens + 2  # + 2 sentinels for a whole target
            if n_tgt:
                start = int(is_tgt[b].nonzero()[0])
                assert is_tgt[b, start : start + n_tgt].all(), "targets are contiguous"
                assert start >= n_in and is_sentinel(int(tok[b, start])), "target starts with a sentinel after the input"
            assert (tok[b][~(is_in[b] | is_tgt[b])] == 0).all(), "[PAD] everywhere else"


MIXTURES = {
    "all2all": [all_to_all_component(TOKENS, 0.5), rgb_to_all_component("rgb", TOKENS)],
    "spread": [all_to_all_component(TOKENS, a, name=f"a{a}") for a in (0.01, 0.1, 1.0, 10.0)]
    + [MixtureComponent({"rgb": 1.0, "caption": 5.0}, {m: 0.5 for m in TOKENS}, keep={"caption": "all", "det": "binary"})],
}


@pytest.mark.parametrize("mixture", sorted(MIXTURES))
@pytest.mark.parametrize("ranges", [dict(n_in=24, n_tgt=24), dict(n_in=40, n_tgt=30, min_input_tokens=0, min_target_tokens=5)])
def test_budgets_respected(reg, mixture, ranges):
    masking = UnifiedMasking(config(MIXTURES[mixture], **ranges), reg)
    for seed in range(12):
        batch = masking(make_samples(reg, 16, seed), seed)
        check_layout(batch, reg)
        counts = count_tokens(batch, reg)
        assert (counts.inputs <= ranges["n_in"]).all()
        assert (counts.target_positions <= ranges["n_tgt"]).all()
        assert (counts.decoder_slots <= counts.target_positions).all()
        for name in IMAGES + ("rgb",):
            used = batch[name]["is_input"].sum(-1) + batch[name]["is_target"].sum(-1)
            assert (used <= reg[name].num_tokens).all()
        for name in ("caption", "det"):
            assert (batch[name]["is_target"].sum(-1) <= reg[name].num_tokens).all()


def test_budget_totals_exact_when_nothing_is_capped(reg):
    masking = UnifiedMasking(config([all_to_all_component(TOKENS, 1.0)], n_in=6, n_tgt=10), reg)
    budgets = masking.sample_budgets(500, 0)
    # no cap binds: 16 tokens per image (at least 10 left after inputs), 21 per sequence
    assert (budgets.input.sum(-1) == 6).all() and (budgets.target.sum(-1) == 10).all()
    assert (budgets.input[:, 0] == 0).all(), "rgb has no alpha in this component"


def test_image_budgets_are_realised_exactly_and_targets_fit_beside_inputs(reg):
    masking = UnifiedMasking(config([all_to_all_component(IMAGES, 10.0)], n_in=40, n_tgt=40), reg)
    for seed in range(5):
        budgets = masking.sample_budgets(32, seed)  # the first draw of masking(samples, seed)
        batch = masking(make_samples(reg, 32, seed), seed)
        for name in IMAGES:
            j = masking.config.modalities.index(name)
            assert (budgets.input[:, j] + budgets.target[:, j] <= 16).all()
            assert torch.equal(batch[name]["is_input"].sum(-1), budgets.input[:, j])
            assert torch.equal(batch[name]["is_target"].sum(-1), budgets.target[:, j])


def test_a_component_input_range_gives_maskgit_shares_and_leaves_the_others_alone(reg):
    infill = MixtureComponent({"tok_rgb": 1000.0}, {"tok_rgb": 1000.0}, name="rgb_infill", input_tokens=(1, 15))
    plain = all_to_all_component(TOKENS, 1.0)
    masking = UnifiedMasking(config([plain, infill], n_in=15, n_tgt=16, min_input_tokens=6), reg)
    budgets = masking.sample_budgets(4000, 0)
    j = masking.config.modalities.index("tok_rgb")
    mine = budgets.component == 1
    n_in = budgets.input[mine, j]
    # the 4 x 4 grid: 1..15 tokens given, uniformly, and the rest of it is the target
    assert int(n_in.min()) == 1 and int(n_in.max()) == 15 and n_in.float().mean().sub(8).abs() < 0.3
    assert torch.equal(budgets.target[mine, j], 16 - n_in)
    assert (budgets.input[mine].sum(-1) == n_in).all() and (budgets.num_input[mine] == n_in).all()
    others = budgets.num_input[~mine]  # the other component keeps the config's range, 6..15
    assert int(others.min()) == 6 and int(others.max()) == 15 and (budgets.input[~mine].sum(-1) == others).all()
    batch = masking(make_samples(reg, 64, 3), 3)  # realised as drawn; inputs never exceed the encoder's slots
    assert (count_tokens(batch, reg).inputs <= 15).all()
    # without any component range the totals come from the config's range exactly as before
    same = UnifiedMasking(config([plain, all_to_all_component(IMAGES, 1.0)], n_in=15, n_tgt=16, min_input_tokens=6), reg)
    assert same.input_range == (6, 15)


def test_whole_inputs_give_the_full_condition_and_a_maskgit_share_of_the_grid(reg):
    """Conditional MaskGIT's task: all of tok_semseg (or the whole caption) in, a uniform share of
    tok_rgb in, the rest of tok_rgb out; the drawn total counts the share only."""
    seg = MixtureComponent({"tok_rgb": 1.0}, {"tok_rgb": 1.0}, name="semseg_infill", input_tokens=(0, 15),
                           whole_inputs=("tok_semseg",))
    cap = MixtureComponent({"tok_rgb": 1.0}, {"tok_rgb": 1.0}, name="caption_infill", input_tokens=(0, 15),
                           whole_inputs=("caption",))
    plain = all_to_all_component(TOKENS, 1.0)
    masking = UnifiedMasking(config([plain, seg, cap], n_in=40, n_tgt=16, min_input_tokens=6), reg)
    budgets = masking.sample_budgets(3000, 0)
    names = masking.config.modalities
    rgb, sem, capt = (names.index(m) for m in ("tok_rgb", "tok_semseg", "caption"))
    mine = budgets.component == 1
    n_rgb = budgets.input[mine, rgb]
    assert (budgets.input[mine, sem] == 16).all() and (budgets.target[mine, sem] == 0).all()
    assert int(n_rgb.min()) == 0 and int(n_rgb.max()) == 15 and n_rgb.float().mean().sub(7.5).abs() < 0.4
    assert torch.equal(budgets.target[mine, rgb], 16 - n_rgb)
    assert torch.equal(budgets.num_input[mine], 16 + n_rgb) and torch.equal(budgets.input[mine].sum(-1), 16 + n_rgb)
    assert (budgets.input[budgets.component == 2, capt] == reg["caption"].num_tokens).all()
    assert int(budgets.num_input[budgets.component == 0].max()) <= 40  # the others keep the config's range
    samples = make_samples(reg, 96, 5, max_len=20)
    batch = masking(samples, 5)
    comp = masking.sample_budgets(96, 5).component  # the first draw of masking(samples, 5)
    for b in torch.nonzero(comp == 1).flatten().tolist():
        assert batch["tok_semseg"]["is_input"][b].all() and not batch["tok_semseg"]["is_target"][b].any()
        given = batch["tok_rgb"]["is_input"][b]
        assert torch.equal(batch["tok_rgb"]["is_target"][b], ~given)  # the rest of the grid is the target
        assert not any(batch[m]["is_input"][b].any() for m in ("rgb", "tok_depth", "det"))
    whole_caption = TransferMasking(["caption"], ["tok_rgb"], reg)(samples)["caption"]
    for b in torch.nonzero(comp == 2).flatten().tolist():  # the caption exactly as a whole input
        n = int(whole_caption["is_input"][b].sum())
        assert int(batch["caption"]["is_input"][b].sum()) == n
        assert torch.equal(batch["caption"]["tokens"][b][batch["caption"]["is_input"][b]],
                           whole_caption["tokens"][b][whole_caption["is_input"][b]])
        assert not batch["caption"]["is_target"][b].any()
    assert (comp == 1).any() and (comp == 2).any()
    # no component with whole inputs: the budgets are drawn exactly as before (same stream)
    assert masking.whole_inputs is not None
    assert UnifiedMasking(config([plain], n_in=40, n_tgt=16, min_input_tokens=6), reg).whole_inputs is None


def test_whole_inputs_errors_name_the_component_and_the_bound(reg):
    with pytest.raises(ValueError, match=r"whole_inputs names 'tok_semseg', which also has input_alphas"):
        MixtureComponent({"tok_semseg": 1.0}, {"tok_rgb": 1.0}, whole_inputs=("tok_semseg",))
    with pytest.raises(ValueError, match=r"whole_inputs = 'caption': must be a list"):
        MixtureComponent({}, {"tok_rgb": 1.0}, whole_inputs="caption")
    comp = MixtureComponent({"tok_rgb": 1.0}, {"tok_rgb": 1.0}, input_tokens=(0, 15), whole_inputs=("tok_semseg",))
    with pytest.raises(ValueError, match=r"components\[0\]\.whole_inputs \['tok_semseg'\] take 16 input tokens and "
                                         r"the other inputs up to 15: 31 > num_input_tokens=24"):
        UnifiedMasking(config([comp], n_in=24, n_tgt=16), reg)
    with pytest.raises(ConfigError, match=r"components\[0\]\.whole_inputs: unknown modality 'semseg'"):
        MaskingConfig.from_dict({"modalities": list(ALL), "components": [{"whole_inputs": ["semseg"]}]})


def test_component_without_inputs_gives_targets_only(reg):
    comps = [MixtureComponent({}, {"tok_rgb": 1.0, "caption": 1.0}, name="unconditional")]
    masking = UnifiedMasking(config(comps, n_in=20, n_tgt=20), reg)
    batch = masking(make_samples(reg, 16, 0), 0)
    counts = count_tokens(batch, reg)
    assert (counts.inputs == 0).all() and (counts.target_positions > 0).all()


def test_split_tokens_caps_and_floor_remainder():
    g = torch.Generator().manual_seed(0)
    alpha = torch.tensor([[0.5, 0.5, 0.0, 2.0]]).expand(300, 4)
    cap = torch.tensor([[5, 100, 100, 100]]).expand(300, 4)
    total = torch.randint(0, 60, (300,), generator=g)
    out = split_tokens(total, alpha, cap, g)
    assert (out >= 0).all() and (out <= cap).all() and (out[:, 2] == 0).all()
    assert (out.sum(-1) <= total).all()
    uncapped = out[:, 0] < 5
    assert (out.sum(-1)[uncapped] == total[uncapped]).all()


def test_gamma_and_dirichlet_moments():
    g = torch.Generator().manual_seed(0)
    for a in (0.05, 0.5, 1.0, 4.0, 1000.0):
        x = sample_log_gamma(torch.full((40000,), a), g).exp()
        assert abs(x.mean().item() - a) < 5 * math.sqrt(a / 40000), a  # Gamma(a, 1): mean a, var a
        assert abs(x.var().item() / a - 1) < 0.2, a
    alpha = torch.tensor([0.5, 1.0, 2.5, 0.0])
    p = sample_dirichlet(alpha.expand(20000, 4), g)
    assert torch.allclose(p.sum(-1), torch.ones(20000, dtype=torch.float64))
    assert torch.allclose(p.mean(0), (alpha / alpha.sum()).double(), atol=0.01)
    assert (sample_dirichlet(torch.zeros(3, 4), g) == 0).all()


def test_zero_and_tiny_alpha_modalities_get_nothing(reg):
    comp = MixtureComponent(
        input_alphas={"tok_rgb": 0.5, "caption": 0.5, "tok_depth": 1e-9},
        target_alphas={"tok_semseg": 0.5, "det": 0.5, "tok_rgb": 1e-9},
    )
    masking = UnifiedMasking(config([comp], n_in=30, n_tgt=30), reg)
    for seed in range(10):
        batch = masking(make_samples(reg, 16, seed), seed)
        for name in ("rgb", "tok_depth", "tok_semseg", "det"):
            assert not batch[name]["is_input"].any(), name
        for name in ("rgb", "tok_rgb", "tok_depth", "caption"):
            assert not batch[name]["is_target"].any(), name
        assert batch["tok_rgb"]["is_input"].any() and batch["det"]["is_target"].any()


def test_rgb_to_all_gives_only_pixel_inputs(reg):
    masking = UnifiedMasking(config([rgb_to_all_component("rgb", TOKENS)], n_in=10, n_tgt=24), reg)
    for seed in range(8):
        batch = masking(make_samples(reg, 16, seed), seed)
        assert (batch["rgb"]["is_input"].sum(-1) == 10).all()
        for name in TOKENS:
            assert not batch[name]["is_input"].any(), name
        assert (count_tokens(batch, reg).target_positions > 0).all()
    capped = UnifiedMasking(config([rgb_to_all_component("rgb", TOKENS)], n_in=100), reg)
    assert (capped(make_samples(reg, 4, 0), 0)["rgb"]["is_input"].sum(-1) == 16).all(), "clamped to 4 x 4 patches"


def test_span_mask_round_trip_and_sentinel_numbering():
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 60, (1,), generator=g))
        ids = torch.randint(WORD_LOW, 1000, (n,), generator=g).tolist() + [EOS_ID]
        masked = (torch.rand(n + 1, generator=g) < torch.rand(1, generator=g)).tolist()
        inp, tgt = span_mask(ids, masked)
        assert merge_spans(inp, tgt) == ids
        runs = sum(m and (i == 0 or not masked[i - 1]) for i, m in enumerate(masked))
        assert [t for t in inp if is_sentinel(t)] == [sentinel_id(k) for k in range(1, runs + 1)]
        assert [t for t in tgt if is_sentinel(t)] == [sentinel_id(k) for k in range(1, runs + 2)]
        assert tgt[0] == S1 if runs else tgt == [S1]
        assert len(inp) == n + 1 - sum(masked) + runs and len(tgt) == sum(masked) + runs + 1


def test_masking_round_trip_through_batches(reg):
    # Only caption is masked, with a target budget as large as it can be, so targets are whole.
    comp = MixtureComponent({"caption": 1.0, "tok_rgb": 1.0}, {"caption": 1.0})
    masking = UnifiedMasking(config([comp], n_in=20, n_tgt=21, min_input_tokens=0), reg)
    seen_zero = seen_partial = 0
    for seed in range(10):
        samples = make_samples(reg, 16, seed, max_len=17)  # n + [EOS] + 2 sentinels <= 21
        batch = masking(samples, seed)
        check_layout(batch, reg)
        for b, raw in enumerate(samples["caption"]):
            inp, tgt = seq_parts(batch, "caption", b)
            assert tgt[0] == S1 and is_sentinel(tgt[-1])
            if not inp:  # input budget 0: the whole sequence is the target
                seen_zero += 1
                assert tgt == [S1, *raw, EOS_ID, sentinel_id(2)]
                inp = [S1]
            else:
                seen_partial += any(map(is_sentinel, inp))
            assert merge_spans(inp, tgt) == raw + [EOS_ID]
    assert seen_zero and seen_partial


def test_keep_all_puts_everything_in_the_input(reg):
    comp = MixtureComponent({"caption": 1.0}, {"caption": 1.0}, keep={"caption": "all"})
    masking = UnifiedMasking(config([comp], n_in=21, n_tgt=5), reg)
    samples = make_samples(reg, 32, 0)
    batch = masking(samples, 0)
    for b, raw in enumerate(samples["caption"]):
        inp, tgt = seq_parts(batch, "caption", b)
        assert inp == prepare_sequence(raw, 21, 512) and tgt == [S1]


def test_input_budget_zero_makes_the_whole_sequence_a_target(reg):
    samples = make_samples(reg, 32, 1, max_len=10)
    for name in ("caption", "det"):
        comp = MixtureComponent({"tok_rgb": 1.0}, {name: 1.0})
        batch = UnifiedMasking(config([comp], n_in=8, n_tgt=13), reg)(samples, 1)
        for b, raw in enumerate(samples[name]):
            inp, tgt = seq_parts(batch, name, b)
            assert inp == [] and tgt == [S1, *raw, EOS_ID, sentinel_id(2)]


def test_binary_keep_is_all_or_nothing(reg):
    comp = MixtureComponent({"caption": 1.0}, {"caption": 1.0}, keep={"caption": "binary"})
    masking = UnifiedMasking(config([comp], n_in=21, n_tgt=21), reg)
    samples = make_samples(reg, 64, 2, max_len=15)
    batch = masking(samples, 2)
    kinds = set()
    for b, raw in enumerate(samples["caption"]):
        inp, tgt = seq_parts(batch, "caption", b)
        whole = [*raw, EOS_ID]
        assert (inp, tgt) in ((whole, [S1]), ([S1], [S1, *whole, sentinel_id(2)]))
        kinds.add(len(tgt) == 1)
    assert kinds == {True, False}


def test_long_sequences_are_truncated_and_inputs_fit_small_budgets(reg):
    raw = list(range(WORD_LOW, WORD_LOW + 30))
    assert prepare_sequence(raw, 21, 512) == raw[:21], "like the reference, [EOS] is cut off over-long sequences"
    assert prepare_sequence(raw[:5], 21, 512) == raw[:5] + [EOS_ID]
    for bad in ([WORD_LOW, EOS_ID], [S1], [0], [512]):
        with pytest.raises(ValueError, match="not allowed"):
            prepare_sequence(bad, 21, 512)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (200,), generator=g)
    budget = torch.randint(0, 5, (200,), generator=g)
    masked = sample_span_masks(lengths, torch.rand(200, generator=g), budget, g)
    for b in range(200):
        n = int(lengths[b])
        assert not masked[b, n:].any()
        inp, _ = span_mask(list(range(n)), masked[b, :n].tolist())
        assert len(inp) <= max(int(budget[b]), 0) or (budget[b] == 0 and masked[b, :n].all())


def test_batched_span_attempts_match_sequential_reference():
    """Drawing attempts in blocks gives the reference's law: compare with a one-at-a-time loop."""
    g = torch.Generator().manual_seed(0)
    n, budget, p0, trials = 30, 6, 0.8, 3000

    def sequential() -> int:
        p = p0
        while True:
            keep = (torch.rand(n, generator=g) < p).tolist()
            inp, _ = span_mask(list(range(n)), [not k for k in keep])
            if len(inp) <= budget:
                return len(inp)
            p *= KEEP_DECAY

    seq = torch.tensor([sequential() for _ in range(trials)], dtype=torch.float64)
    masks = sample_span_masks(torch.full((trials,), n), torch.full((trials,), p0), torch.full((trials,), budget), g)
    kept = (~masks).sum(-1)
    starts = (masks & ~torch.nn.functional.pad(masks[:, :-1], (1, 0))).sum(-1)
    vec = (kept + starts).double()
    assert abs(seq.mean() - vec.mean()) < 4 * math.sqrt((seq.var() + vec.var()) / trials)


def test_target_truncation_cuts_at_a_sentinel():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 40, (1,), generator=g))
        ids = list(range(WORD_LOW, WORD_LOW + n))
        _, tgt = span_mask(ids, (torch.rand(n, generator=g) < 0.5).tolist())
        budget = int(torch.randint(0, len(tgt) + 2, (1,), generator=g))
        cut = truncate_target(tgt, budget, g)
        assert len(cut) <= budget
        if len(tgt) <= budget:
            assert cut == tgt
        elif cut:
            assert is_sentinel(cut[0])
            start = max(i for i in range(len(tgt)) if tgt[i : i + len(cut)] == cut)
            assert tgt[start : start + len(cut)] == cut


def test_deterministic_for_a_seed_and_varies_across_seeds(reg):
    masking = UnifiedMasking(config(MIXTURES["spread"]), reg)
    samples = make_samples(reg, 8, 0)

    def flat(batch):
        return torch.cat([torch.cat([d["is_input"].flatten(), d["is_target"].flatten(), d["tokens"].flatten().bool()])
                          for d in batch.values()])

    a, b = flat(masking(samples, 123)), flat(masking(samples, torch.Generator().manual_seed(123)))
    assert torch.equal(a, b)
    others = [flat(masking(samples, s)) for s in range(5)]
    assert all(not torch.equal(a, o) for o in others)
    before = torch.random.get_rng_state()
    masking(samples, 7)
    assert torch.equal(before, torch.random.get_rng_state()), "the global RNG is never used"


def test_mixture_sampling_weights(reg):
    comps = [all_to_all_component(TOKENS, 0.5, weight=3.0), rgb_to_all_component("rgb", TOKENS, weight=1.0),
             all_to_all_component(TOKENS, 1.0, weight=0.0, name="off")]
    masking = UnifiedMasking(config(comps), reg)
    comp = masking.sample_budgets(8000, 0).component
    freq = torch.bincount(comp, minlength=3).double() / 8000
    assert abs(freq[0] - 0.75) < 0.03 and abs(freq[1] - 0.25) < 0.03 and freq[2] == 0


def test_mask_sample_and_collate(reg):
    masking = UnifiedMasking(config(MIXTURES["all2all"]), reg)
    samples = make_samples(reg, 4, 3)
    per = [masking.mask_sample({k: v[i] for k, v in samples.items()}, generator_for(0, 0, i)) for i in range(4)]
    again = masking.mask_sample({k: v[2] for k, v in samples.items()}, generator_for(0, 0, 2))
    assert all(torch.equal(again[m][k], per[2][m][k]) for m in again for k in again[m])
    batch = collate_masked(per)
    check_layout(batch, reg)
    assert batch["caption"]["tokens"].shape == (4, 42) and batch["rgb"]["tokens"].shape == (4, 3, 32, 32)
    assert batch["tok_rgb"]["tokens"].shape == (4, 16)
    assert (count_tokens(batch, reg).inputs <= 24).all()


def test_transfer_masking(reg):
    t = TransferMasking(["rgb", "caption", "tok_rgb"], ["tok_depth", "det"], reg)
    samples = make_samples(reg, 6, 4)
    batch = t(samples)
    check_layout(batch, reg)
    assert set(batch) == {"rgb", "caption", "tok_rgb", "tok_depth", "det"}
    assert batch["rgb"]["is_input"].all() and batch["tok_rgb"]["is_input"].all() and not batch["tok_rgb"]["is_target"].any()
    assert batch["tok_depth"]["is_target"].all() and not batch["tok_depth"]["is_input"].any()
    for b in range(6):
        inp, tgt = seq_parts(batch, "caption", b)
        assert inp == prepare_sequence(samples["caption"][b], 21, 512) and tgt == []
        inp, tgt = seq_parts(batch, "det", b)
        assert inp == [] and merge_spans([S1], tgt) == prepare_sequence(samples["det"][b], 13, 512)
    one = t.mask_sample({k: v[0] for k, v in samples.items()})
    assert torch.equal(one["det"]["tokens"], batch["det"]["tokens"][0])
    with pytest.raises(ValueError, match="'rgb'.*cannot be a target"):
        TransferMasking(["caption"], ["rgb"], reg)
    with pytest.raises(ValueError, match="both input and target"):
        TransferMasking(["caption"], ["caption"], reg)


def test_config_from_dict_and_validation_errors(reg):
    good = {
        "modalities": list(ALL),
        "components": [{"input_alphas": {"rgb": 1000.0}, "target_alphas": {m: 0.5 for m in TOKENS}, "weight": 2},
                       {"input_alphas": {"caption": 5}, "target_alphas": {"tok_rgb": 1}, "keep": {"caption": "all"}}],
        "num_input_tokens": 24,
        "min_input_tokens": 8,
    }
    cfg = MaskingConfig.from_dict(good)
    assert cfg.input_range == (8, 24) and cfg.components[0].weight == 2.0
    assert MaskingConfig.from_dict(cfg.to_dict()) == cfg
    UnifiedMasking(cfg, reg)

    def bad(match, **changes):
        with pytest.raises(ConfigError, match=match):
            MaskingConfig.from_dict({**good, **changes})

    bad(r"unknown key\(s\) \['foo'\]", foo=1)
    bad(r"components\[0\]\.input_alphas: unknown modality 'dpeth'", components=[{"input_alphas": {"dpeth": 1.0}}])
    bad(r"input_alphas\['rgb'\] = -1\.0.*>= 0", components=[{"input_alphas": {"rgb": -1.0}}])
    bad(r"keep.*'some' is not allowed.*'random', 'all', 'binary'", components=[{"keep": {"caption": "some"}}])
    bad(r"unknown key\(s\) \['wieght'\]", components=[{"wieght": 1.0}])
    bad(r"weight = -1\.0", components=[{"weight": -1.0}])
    bad(r"min_input_tokens = 30.*\[0, num_input_tokens=24\]", min_input_tokens=30)
    bad(r"input_tokens = \(9, 3\).*low <= high", components=[{"input_tokens": [9, 3]}])
    bad(r"components\[0\]\.input_tokens = \[4, 30\]: high must be at most num_input_tokens=24",
        components=[{"input_tokens": [4, 30]}])
    ranged = MaskingConfig.from_dict({**good, "components": [{"input_alphas": {"tok_rgb": 1}, "input_tokens": [2, 20]}]})
    assert ranged.components[0].input_tokens == (2, 20) and MaskingConfig.from_dict(ranged.to_dict()) == ranged
    bad(r"components is empty", components=[])
    bad(r"'tok_rgb'\] more than once", modalities=["tok_rgb", "tok_rgb"], components=[{}])

    with pytest.raises(ValueError, match=r"target_alphas has 1 entries but earlier lists have 2"):
        mixture_from_reference({"tok_rgb": {"input_alphas": [1, 2], "target_alphas": [1]}})
    with pytest.raises(ValueError, match=r"sampling_weights has 3 entries for 2 mixture components"):
        mixture_from_reference({"tok_rgb": {"input_alphas": "0.5-1.0", "target_alphas": [1, 0]}}, [1, 1, 1])
    comps = mixture_from_reference(
        {"rgb": {"input_alphas": [1000, 0], "target_alphas": [0, 0]},
         "caption": {"input_alphas": [0, 0.5], "target_alphas": [0.5, 0.5], "keep": ["random", "all"]}}, [1, 0.5])
    assert comps[0].input_alphas == {"rgb": 1000.0, "caption": 0.0} and comps[1].keep == {"caption": "all"}
    assert comps[1].weight == 0.5

    with pytest.raises(ValueError, match=r"unknown modality 'normal'; known: tok_rgb"):
        UnifiedMasking(MaskingConfig(("normal",), (MixtureComponent({"normal": 1.0}),)), reg)
    with pytest.raises(ValueError, match=r"target_alphas\['rgb'\] = 0\.5: 'rgb' cannot be a target"):
        UnifiedMasking(config([MixtureComponent({}, {"rgb": 0.5})]), reg)
    with pytest.raises(ValueError, match=r"keep\['tok_rgb'\]: keep applies to sequences only"):
        UnifiedMasking(config([MixtureComponent({}, {}, keep={"tok_rgb": "all"})]), reg)
    small = shapes_world_modalities(text_vocab=12, caption_length=20)  # sentinels reach id 16
    with pytest.raises(ValueError, match=r"vocab_size=12 is too small.*sentinel id 16"):
        UnifiedMasking(MaskingConfig(("caption",), (MixtureComponent({"caption": 1.0}),)), small)


def test_bad_samples_are_named(reg):
    masking = UnifiedMasking(config(MIXTURES["all2all"]), reg)
    samples = make_samples(reg, 4, 0)
    with pytest.raises(KeyError, match="lack modality 'det'"):
        masking({k: v for k, v in samples.items() if k != "det"}, 0)
    with pytest.raises(ValueError, match=r"'tok_rgb': expected integer tokens of shape \(B, 16\)"):
        masking({**samples, "tok_rgb": torch.zeros(4, 15, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        masking({**samples, "caption": samples["caption"][:3]}, 0)
    with pytest.raises(TypeError, match="torch.Generator or an int seed"):
        masking(samples, None)


def test_fixture_batch_counts_match_the_reference(ml4m_fixtures):
    """The reference's own masked batch, in fourm's positive-mask format, counts as the reference does."""
    from safetensors.torch import load_file

    small = ml4m_fixtures / "small"
    info = json.loads((small / "config.json").read_text())["batch"]
    raw = load_file(str(small / "inputs.safetensors"))
    reg = ml4m_modalities("4m7")
    batch = {
        mod: {"tokens": raw[f"{mod}.tensor"] if reg[mod].kind == "pixels" else raw[f"{mod}.tensor"].long(), "is_input": ~raw[f"{mod}.input_mask"],
              "is_target": ~raw[f"{mod}.target_mask"] if reg[mod].decoder else torch.zeros_like(raw[f"{mod}.target_mask"])}
        for mod in info["budgets"][0]["inp"]
    }
    check_layout(batch, reg)
    counts = count_tokens(batch, reg)
    assert counts.inputs.tolist() == info["valid_encoder_tokens_per_sample"]
    assert counts.decoder_slots.tolist() == info["valid_target_tokens_per_sample"]
    for b, budget in enumerate(info["budgets"]):
        assert counts.target_positions[b] <= sum(budget["tgt"].values())
        for mod in ("caption", "det"):
            inp, tgt = seq_parts(batch, mod, b)
            assert len(inp) <= budget["inp"][mod] and len(tgt) <= budget["tgt"][mod]
            if tgt:
                assert int(batch[mod]["is_target"][b].nonzero()[0]) == budget["inp"][mod], "target starts at input_budget"
    inp, tgt = seq_parts(batch, "caption", 0)
    merged = merge_spans(inp, tgt)
    assert merged[-1] == EOS_ID and not any(map(is_sentinel, merged))
