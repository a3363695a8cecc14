"""Dirichlet token budgets: how many input and target tokens each modality of each sample gets.

The steps follow the 4M paper and reference (``UnifiedMasking.input_token_budget`` /
``target_token_budget``), vectorised over the batch:

1. each sample picks a mixture component (``torch.multinomial`` over the component weights);
2. each sample draws its input and target totals (fixed, or uniform in a range; a component may
   have its own input range);
3. the input total is split over modalities by a Dirichlet draw: floor of ``p * total``, then the
   tokens lost to flooring go, one each, to the argmax of extra Dirichlet draws, so a modality
   with alpha 0 never gets a token; the result is clamped to each modality's available tokens;
   modalities a component gives whole (``whole_inputs``) get all their tokens on top of that total;
4. the same for targets, where an image modality's cap is what its inputs left over (input and
   target tokens of an image are disjoint), a sequence's cap is its full length, and a
   modality that cannot be a target gets 0.

torch's ``Dirichlet`` and ``_standard_gamma`` only use the global RNG, so Gamma variates are
drawn here (Marsaglia and Tsang, with the ``alpha + 1`` boost for alpha < 1) from an explicit
``torch.Generator``, in log space: an alpha of 1e-9 then gives ``log G`` near -1e9 instead of an
underflow to 0, and the Dirichlet is a softmax of the log-Gammas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def sample_log_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Elementwise ``log`` of Gamma(alpha, 1) variates.

    Args:
        alpha: concentrations >= 0, any shape; 0 gives ``-inf`` (the variate is exactly 0).
        generator: the only source of randomness.

    Returns:
        float64 tensor of ``alpha``'s shape.
    """
    alpha = alpha.to(torch.float64)
    positive = alpha > 0
    a = torch.where(positive, alpha, torch.ones_like(alpha)).reshape(-1)
    small = a < 1
    a_boost = torch.where(small, a + 1.0, a)  # Marsaglia-Tsang needs alpha >= 1
    d = a_boost - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    pending = torch.arange(a.numel())
    while pending.numel():  # acceptance rate > 95%, so a few rounds at most
        dp, cp = d[pending], c[pending]
        x = torch.randn(pending.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64)
        v = (1.0 + cp * x) ** 3
        safe_v = v.clamp_min(1e-300)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + dp - dp * safe_v + dp * torch.log(safe_v))
        out[pending[ok]] = torch.log(dp[ok] * safe_v[ok])
        pending = pending[~ok]
    # Gamma(a) = Gamma(a + 1) * U ** (1 / a), in log space; 1 - rand lies in (0, 1].
    u = 1.0 - torch.rand(a.numel(), generator=generator, dtype=torch.float64)
    out = torch.where(small, out + torch.log(u) / a, out)
    out = out.reshape(alpha.shape)
    return torch.where(positive, out, torch.full_like(out, float("-inf")))


def sample_dirichlet(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dirichlet draws over the last axis; a row whose alphas are all 0 gives all zeros.

    Shapes: alpha (..., M) -> probabilities (..., M), float64.
    """
    log_g = sample_log_gamma(alpha, generator)
    has_any = (alpha > 0).any(-1, keepdim=True)
    probs = torch.softmax(torch.where(has_any, log_g, torch.zeros_like(log_g)), dim=-1)
    return torch.where(has_any, probs, torch.zeros_like(probs))


def split_tokens(
    total: torch.Tensor, alpha: torch.Tensor, cap: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Split per-sample totals over modalities by a Dirichlet draw (floor plus remainder), then cap.

    Args:
        total: (B,) int tokens to hand out per sample.
        alpha: (B, M) concentrations; alpha 0 modalities get nothing.
        cap: (B, M) int most tokens each modality may take.
        generator: randomness.

    Returns:
        (B, M) int64 budgets with ``budget <= cap`` and ``budget.sum(-1) <= total``; the sum is
        ``total`` unless capping removed tokens or every alpha of the row is 0.
    """
    B, M = alpha.shape
    probs = sample_dirichlet(alpha, generator)  # (B, M)
    budget = torch.floor(probs * total[:, None].to(torch.float64)).long()  # (B, M)
    has_any = (alpha > 0).any(-1)
    left = (total - budget.sum(-1)).clamp(0, M) * has_any  # (B,): fewer than M lost to flooring
    # Each left-over token goes to the argmax of one more Dirichlet draw (argmax of the Gammas).
    winners = sample_log_gamma(alpha[:, None, :].expand(B, M, M), generator).argmax(-1)  # (B, M)
    use = (torch.arange(M)[None, :] < left[:, None]).long()  # (B, M): first `left` draws count
    budget.scatter_add_(1, winners, use)
    return torch.minimum(budget, cap.long())


@dataclass(frozen=True)
class TokenBudgets:
    """Per-sample budgets. Shapes: component, num_input, num_target (B,); input, target (B, M)."""

    component: torch.Tensor
    num_input: torch.Tensor
    num_target: torch.Tensor
    input: torch.Tensor
    target: torch.Tensor


def sample_budgets(
    batch_size: int,
    input_alphas: torch.Tensor,
    target_alphas: torch.Tensor,
    weights: torch.Tensor,
    input_range: tuple[int, int] | torch.Tensor,
    target_range: tuple[int, int],
    input_cap: torch.Tensor,
    target_cap: torch.Tensor,
    is_image: torch.Tensor,
    generator: torch.Generator,
    whole: torch.Tensor | None = None,
) -> TokenBudgets:
    """Draw mixture components, totals and per-modality budgets for a batch.

    Args:
        batch_size: B.
        input_alphas, target_alphas: (K, M) alphas per mixture component and modality.
        weights: (K,) component sampling weights (not necessarily normalised).
        input_range, target_range: inclusive (low, high) of the per-sample totals; ``input_range``
            may also be a (K, 2) int tensor, one range per component.
        input_cap: (M,) tokens a modality can give as input (0 if it cannot be an input).
        target_cap: (M,) tokens a modality can give as target before inputs are removed.
        is_image: (M,) bool; an image's target cap shrinks by its input budget (disjoint sets).
        generator: randomness.
        whole: (K, M) bool: modalities each component gives whole as input (their full ``input_cap``,
            added to the drawn total; their alphas are 0). ``None``: none (no extra draws either).

    Returns:
        :class:`TokenBudgets`; ``num_input`` includes the whole inputs.
    """
    B = batch_size
    comp = torch.multinomial(weights.to(torch.float64), B, replacement=True, generator=generator)  # (B,)
    if isinstance(input_range, torch.Tensor):  # per component: low + floor(U * (high - low + 1))
        low, high = input_range[comp, 0], input_range[comp, 1]  # (B,), (B,)
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        n_in = low + torch.minimum((u * (high - low + 1)).floor().long(), high - low)
    else:
        n_in = torch.randint(input_range[0], input_range[1] + 1, (B,), generator=generator)
    n_tgt = torch.randint(target_range[0], target_range[1] + 1, (B,), generator=generator)
    in_budget = split_tokens(n_in, input_alphas[comp], input_cap[None].expand(B, -1), generator)  # (B, M)
    if whole is not None:
        w = whole[comp]  # (B, M)
        in_budget = torch.where(w, input_cap[None].expand(B, -1), in_budget)
        n_in = n_in + (w * input_cap[None]).sum(-1)
    tgt_cap = torch.where(is_image[None], target_cap[None] - in_budget, target_cap[None].expand(B, -1))
    tgt_budget = split_tokens(n_tgt, target_alphas[comp], tgt_cap.clamp_min(0), generator)  # (B, M)
    return TokenBudgets(comp, n_in, n_tgt, in_budget, tgt_budget)

