"""Token predictability statistics (fourm/evaluation/token_stats.py) on code grids whose entropies
are known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from fourm.evaluation.token_stats import object_token_mask, token_predictability

K = 64


def grids(n: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":  # every code independent and uniform: log K under every statistic
        return torch.randint(0, K, (n, 4, 4), generator=g)
    if kind == "by_position":  # the code is its grid position: nothing left once the position is known
        return torch.arange(16).reshape(1, 4, 4).expand(n, 4, 4).clone()
    if kind == "rows":  # one random code per row, repeated along it: the left neighbour tells it
        return torch.randint(0, K, (n, 4, 1), generator=g).expand(n, 4, 4).clone()
    raise ValueError(kind)


def test_uniform_codes_cost_log_k_under_every_statistic():
    s = token_predictability(grids(2000, 0, "uniform"), grids(500, 1, "uniform"), K)["all"]
    for key in ("h_code", "h_code_given_position", "h_code_given_left"):
        assert s[key] == pytest.approx(math.log(K), abs=0.08), key
    assert s["codes_used"] == K and s["tokens"] == 500 * 16


def test_a_code_fixed_by_position_costs_nothing_given_the_position():
    s = token_predictability(grids(500, 0, "by_position"), grids(100, 1, "by_position"), K)["all"]
    assert s["h_code"] == pytest.approx(math.log(16), abs=0.05)
    assert s["h_code_given_position"] < 0.02
    assert s["h_code_given_left"] < 0.02  # the left neighbour is the position minus one


def test_a_code_repeated_along_its_row_costs_nothing_given_the_left_neighbour():
    s = token_predictability(grids(2000, 0, "rows"), grids(200, 1, "rows"), K)["all"]
    assert s["h_code_given_position"] > math.log(K) - 0.1
    assert s["h_code_given_left"] < 0.1


def test_scores_are_held_out_so_memorising_the_fit_grids_does_not_help():
    few = grids(3, 0, "uniform")  # 3 grids: in-sample, position would explain almost everything
    s = token_predictability(few, grids(300, 1, "uniform"), K)["all"]
    assert s["h_code_given_position"] > math.log(K) - 0.3
    assert token_predictability(few, few, K)["all"]["h_code_given_position"] < s["h_code_given_position"] - 1.0


def test_groups_are_scored_apart():
    fit, ev = grids(1000, 0, "uniform"), grids(200, 1, "uniform")
    fit_bg, ev_bg = torch.zeros_like(fit, dtype=torch.bool), torch.zeros_like(ev, dtype=torch.bool)
    fit_bg[:, 2:], ev_bg[:, 2:] = True, True
    fit[:, 2:], ev[:, 2:] = 7, 7  # the lower half is one constant code ("background")
    s = token_predictability(fit, ev, K, {"object": ~fit_bg, "background": fit_bg},
                             {"object": ~ev_bg, "background": ev_bg})
    assert s["background"]["h_code"] < 0.01 and s["background"]["codes_used"] == 1
    assert s["object"]["h_code"] == pytest.approx(math.log(K), abs=0.1)
    assert s["background"]["h_code"] < s["all"]["h_code"] < s["object"]["h_code"]
    assert s["object"]["tokens"] + s["background"]["tokens"] == s["all"]["tokens"]


def test_bad_inputs_are_named():
    ok = grids(4, 0, "uniform")
    with pytest.raises(ValueError, match=r"eval_tokens hold codes in \[64, 64\], outside \[0, 63\]"):
        token_predictability(ok, torch.full_like(ok, K), K)
    with pytest.raises(ValueError, match="fit_tokens must have shape"):
        token_predictability(ok[0], ok, K)
    with pytest.raises(ValueError, match="same groups"):
        token_predictability(ok, ok, K, {"object": ok > 3}, {})


def test_object_token_mask_marks_the_patches_holding_an_object_pixel():
    semseg = torch.ones(1, 16, 16, dtype=torch.uint8)  # ground everywhere
    semseg[0, :4] = 0  # sky on the top row of patches: not an object
    semseg[0, 9, 13] = 3  # one object pixel, in patch (row 2, col 3) of a 4 x 4 grid
    mask = object_token_mask(semseg, (4, 4))
    assert mask.shape == (1, 4, 4) and mask.sum() == 1 and bool(mask[0, 2, 3])
    with pytest.raises(ValueError, match="does not tile"):
        object_token_mask(semseg, (5, 5))
