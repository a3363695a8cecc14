"""The fused head + cross-entropy and the reused vocabulary-table memory give autograd's results."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fourm.models.embeddings import GradStore, lookup
from fourm.models.head_loss import head_cross_entropy


def _plain(lin: torch.nn.Linear, h: torch.Tensor, t: torch.Tensor):
    h = h.detach().requires_grad_(True)
    lin.weight.grad = None
    loss = F.cross_entropy(lin(h), t)
    (3.0 * loss).backward()  # an upstream gradient other than 1
    return loss.detach(), h.grad, lin.weight.grad.clone()


def _fused(lin, h, t, gstore, wstore):
    h = h.detach().requires_grad_(True)
    lin.weight.grad = None
    loss = head_cross_entropy(lin, h, t, gstore, wstore)
    (3.0 * loss).backward()
    return loss.detach(), h.grad, lin.weight.grad


def test_fused_head_cross_entropy_matches_autograd_across_steps():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(16, 300, bias=False)
    gstore, wstore = GradStore(), GradStore()
    for n in (7, 30, 5, 30):  # row counts change between steps: the buffer is reused or grown
        h = torch.randn(n, 16, generator=g) * 3  # large logits: the max shift matters
        t = torch.randint(0, 300, (n,), generator=g)
        t[:2] = t[0]  # repeated targets
        ref, got = _plain(lin, h, t), _fused(lin, h, t, gstore, wstore)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fused_loss_buffers_are_not_shared_between_live_graphs():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(8, 50, bias=False)
    gstore, wstore = GradStore(), GradStore()
    h1, h2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t1, t2 = torch.randint(0, 50, (6,), generator=g), torch.randint(0, 50, (6,), generator=g)
    # two forwards before one backward (e.g. losses summed over two micro-batches)
    total = head_cross_entropy(lin, h1, t1, gstore, wstore) + head_cross_entropy(lin, h2, t2, gstore, wstore)
    total.backward()
    fused = lin.weight.grad.clone()
    lin.weight.grad = None
    (F.cross_entropy(lin(h1), t1) + F.cross_entropy(lin(h2), t2)).backward()
    torch.testing.assert_close(fused, lin.weight.grad)


def test_fused_loss_refuses_a_second_backward():
    lin = torch.nn.Linear(8, 20, bias=False)
    loss = head_cross_entropy(lin, torch.randn(4, 8), torch.tensor([1, 2, 3, 4]), GradStore(), GradStore())
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_loss_falls_back_without_gradients_and_rejects_empty_rows():
    lin = torch.nn.Linear(8, 20, bias=False)
    h, t = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(lin, h, t, GradStore(), GradStore()),
                                   F.cross_entropy(lin(h), t))
    with pytest.raises(ValueError, match="no rows"):
        head_cross_entropy(lin, h[:0], t[:0], GradStore(), GradStore())


def test_reused_table_gradient_clears_only_written_rows_and_survives_in_place_edits():
    g = torch.Generator().manual_seed(2)
    table = torch.nn.Embedding(40, 4)
    store = GradStore()
    for step in range(5):
        ids = torch.randint(0, 40, (9,), generator=g)
        table.weight.grad = None
        lookup(table, ids, store).square().sum().backward()
        got = table.weight.grad.clone()
        expected = torch.zeros(40, 4).index_add_(0, ids, 2 * table.weight.detach()[ids])
        torch.testing.assert_close(got, expected)
        if step == 2:  # an in-place edit of the handed-out gradient (clipping): next step must zero fully
            table.weight.grad.add_(1.0)
