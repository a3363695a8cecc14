"""Token and temperature schedules, top-k / top-p sampling, guidance plans."""
from __future__ import annotations

import math

import pytest
import torch

from fourm.generation.guidance import Condition, plan_guidance, stack_branches
from fourm.generation.sampling import draw, filter_top_k, filter_top_p, sample_logits
from fourm.generation.schedules import TemperatureSchedule, remaining_fractions, token_counts


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("n,steps", [(64, 8), (16, 4), (3, 8), (0, 3), (196, 49), (1, 1)])
def test_token_counts_cover_every_token(schedule, n, steps):
    c = token_counts(schedule, n, steps)
    assert c.shape == (steps,) and int(c.sum()) == n and bool((c >= 0).all())


def test_cosine_schedule_is_slow_first_and_matches_its_definition():
    c = token_counts("cosine", 64, 8)
    assert c.tolist() == sorted(c.tolist()[:5]) + c.tolist()[5:]  # increasing over the first half
    assert c[0] < c[3]
    # after step i, round(n * (1 - (1 + cos(pi * (i + 1) / 8)) / 2)) tokens are decoded in all
    cum = [round(64 * (1 - (1 + math.cos(math.pi * (i + 1) / 8)) / 2)) for i in range(8)]
    assert torch.cumsum(c, 0).tolist() == cum


def test_linear_schedule_gives_near_equal_chunks_larger_first():
    assert token_counts("linear", 10, 4).tolist() == [3, 3, 2, 2]
    assert token_counts("linear", 196, 49).tolist() == [4] * 49


def test_token_counts_per_sample():
    c = token_counts("cosine", torch.tensor([64, 10, 0]), 8)
    assert c.shape == (3, 8) and c.sum(1).tolist() == [64, 10, 0]
    assert c[0].tolist() == token_counts("cosine", 64, 8).tolist()


def test_remaining_fractions():
    assert remaining_fractions(torch.tensor([2, 2, 4])) == [1.0, 0.75, 0.5]


def test_temperature_schedules():
    assert TemperatureSchedule.parse("constant")(2.0, 3, 8, 0.5) == 2.0
    assert TemperatureSchedule.parse("linear")(2.0, 3, 8, 0.5) == 1.0
    onex = TemperatureSchedule.parse("onex:0.5:0.5")
    temps = [onex(5.0, i, 10, 1.0) for i in range(10)]
    assert temps[0] == pytest.approx(5.0) and temps[-1] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(temps, temps[1:]))
    assert onex(5.0, 0, 10, 0.5) == pytest.approx(0.5 + 4.5 * 0.5)
    with pytest.raises(ValueError, match="onex:MIN:POWER"):
        TemperatureSchedule.parse("onex:0.5")


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[True, False, False, True]]
    assert torch.isinf(filter_top_k(logits, 0.5)).tolist() == [[True, False, False, True]]  # half the vocabulary
    assert torch.equal(filter_top_k(logits, 0), logits)
    p = torch.tensor([[0.1, 0.6, 0.25, 0.05]]).log()
    assert torch.isinf(filter_top_p(p, 0.8)).tolist() == [[True, False, False, True]]  # 0.6 + 0.25 reaches 0.8
    assert torch.isinf(filter_top_p(p, 0.5)).tolist() == [[True, False, True, True]]  # the top id always stays


def test_sampling_respects_filters_and_temperature_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 50, generator=g)
    ids, probs = sample_logits(logits, 0.0)
    assert torch.equal(ids, logits.argmax(-1))
    ids, _ = sample_logits(logits, 1.0, top_k=1, generator=g)
    assert torch.equal(ids, logits.argmax(-1))
    ids, probs = sample_logits(logits, 2.0, top_k=5, generator=g)
    top5 = logits.topk(5, -1).indices
    assert bool((ids[:, None] == top5).any(-1).all()) and bool(((probs > 0) & (probs <= 1)).all())
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        sample_logits(logits, 1.0)


def test_draw_follows_the_distribution():
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(20000, 4)
    freq = torch.bincount(draw(probs, g), minlength=4).double() / 20000
    assert freq[1] == 0
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=torch.float64), atol=0.02, rtol=0)


def test_guidance_plans():
    avail = ["caption", "det", "tok_rgb"]
    assert not plan_guidance(1.0, None, (), avail).guided
    p = plan_guidance(3.0, None, (), avail)
    assert p.drops == (frozenset(avail), frozenset()) and p.weights == (3.0,)
    p = plan_guidance(3.0, ("caption", "tok_depth"), (), avail)  # absent conditions are ignored
    assert p.drops == (frozenset({"caption"}), frozenset())
    assert not plan_guidance(3.0, ("tok_depth",), (), avail).guided
    p = plan_guidance(1.0, None, (Condition("caption", 2.0), Condition(("det", "tok_rgb"), -1.0)), avail)
    assert p.drops == (frozenset(avail), frozenset({"det", "tok_rgb"}), frozenset({"caption"}))
    assert p.weights == (2.0, -1.0)
    logits = torch.stack([torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)])
    assert torch.equal(p.combine(logits), torch.zeros(2, 3) + 2.0 * 1 - 1.0 * 2)


def test_stack_branches_hides_only_the_dropped_modalities():
    batch = {"a": {"tokens": torch.arange(6).view(2, 3), "is_input": torch.ones(2, 3, dtype=torch.bool)},
             "b": {"tokens": torch.arange(4).view(2, 2), "is_input": torch.tensor([[True, False], [True, True]]),
                   "is_target": torch.tensor([[False, True], [False, False]])}}
    out = stack_branches(batch, [frozenset({"a"}), frozenset()])
    assert out["a"]["tokens"].shape == (4, 3) and torch.equal(out["a"]["tokens"][2:], batch["a"]["tokens"])
    assert out["a"]["is_input"].tolist() == [[False] * 3] * 2 + [[True] * 3] * 2
    assert torch.equal(out["b"]["is_input"], batch["b"]["is_input"].repeat(2, 1))
    assert torch.equal(out["b"]["is_target"], batch["b"]["is_target"].repeat(2, 1))
