"""The reused CPU memory of fourm.models.cpu_memory gives autograd's results, and its switch works.

The fused head + cross-entropy and the reused table / head gradients equal plain PyTorch's up to
float rounding, step after step; a FourM trained with the reuse on and off ends with the same
weights (float rounding apart); ``reuse_cpu_memory`` in a training config sets the switch.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fourm.models import FourM
from fourm.models.cpu_memory import CPUMemory, head, head_cross_entropy, lookup


def _plain(lin: torch.nn.Linear, h: torch.Tensor, t: torch.Tensor):
    h = h.detach().requires_grad_(True)
    lin.weight.grad = None
    loss = F.cross_entropy(lin(h), t)
    (3.0 * loss).backward()  # an upstream gradient other than 1
    return loss.detach(), h.grad, lin.weight.grad.clone()


def _fused(lin, h, t, memory):
    h = h.detach().requires_grad_(True)
    lin.weight.grad = None
    loss = head_cross_entropy(lin, h, t, memory)
    (3.0 * loss).backward()
    return loss.detach(), h.grad, lin.weight.grad


def test_fused_head_cross_entropy_matches_autograd_across_steps():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(16, 300, bias=False)
    memory = CPUMemory()
    for n in (7, 30, 5, 30):  # row counts change between steps: the buffer is reused or grown
        h = torch.randn(n, 16, generator=g) * 3  # large logits: the max shift matters
        t = torch.randint(0, 300, (n,), generator=g)
        t[:2] = t[0]  # repeated targets
        ref, got = _plain(lin, h, t), _fused(lin, h, t, memory)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fused_loss_buffers_are_not_shared_between_live_graphs():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(8, 50, bias=False)
    memory = CPUMemory()
    h1, h2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t1, t2 = torch.randint(0, 50, (6,), generator=g), torch.randint(0, 50, (6,), generator=g)
    # two forwards before one backward (e.g. losses summed over two micro-batches)
    total = head_cross_entropy(lin, h1, t1, memory) + head_cross_entropy(lin, h2, t2, memory)
    total.backward()
    fused = lin.weight.grad.clone()
    lin.weight.grad = None
    (F.cross_entropy(lin(h1), t1) + F.cross_entropy(lin(h2), t2)).backward()
    torch.testing.assert_close(fused, lin.weight.grad)


def test_fused_loss_refuses_a_second_backward():
    lin = torch.nn.Linear(8, 20, bias=False)
    loss = head_cross_entropy(lin, torch.randn(4, 8), torch.tensor([1, 2, 3, 4]), CPUMemory())
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_loss_falls_back_without_gradients_and_rejects_empty_rows():
    lin = torch.nn.Linear(8, 20, bias=False)
    h, t = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(lin, h, t, CPUMemory()),
                                   F.cross_entropy(lin(h), t))
    with pytest.raises(ValueError, match="no rows"):
        head_cross_entropy(lin, h[:0], t[:0], CPUMemory())


def test_reused_table_gradient_clears_only_written_rows_and_survives_in_place_edits():
    g = torch.Generator().manual_seed(2)
    table = torch.nn.Embedding(40, 4)
    memory = CPUMemory()
    for step in range(5):
        ids = torch.randint(0, 40, (9,), generator=g)
        table.weight.grad = None
        lookup(table, ids, memory).square().sum().backward()
        got = table.weight.grad.clone()
        expected = torch.zeros(40, 4).index_add_(0, ids, 2 * table.weight.detach()[ids])
        torch.testing.assert_close(got, expected)
        if step == 2:  # an in-place edit of the handed-out gradient (clipping): next step must zero fully
            table.weight.grad.add_(1.0)


def test_reused_gradient_memory_gives_autograd_gradients():
    g = torch.Generator().manual_seed(0)
    table, lin = torch.nn.Embedding(50, 8, padding_idx=0), torch.nn.Linear(8, 50, bias=False)
    memory = CPUMemory()

    def grads(ids, h, fast: bool):
        table.weight.grad = lin.weight.grad = None
        emb = lookup(table, ids, memory) if fast else table(ids)
        logits = head(lin, h, memory) if fast else lin(h)
        ((emb * emb.detach().flip(0)).sum() + logits.square().sum()).backward()
        return table.weight.grad, lin.weight.grad

    for step in range(3):
        ids = torch.randint(0, 50, (30,), generator=g)
        ids[:3] = torch.tensor([0, 7, 7])  # padding and duplicates
        h = torch.randn(30, 8, generator=g)
        ref = [t.clone() for t in grads(ids, h, fast=False)]
        kept = grads(ids, h, fast=True)
        torch.testing.assert_close(kept[0], ref[0])
        torch.testing.assert_close(kept[1], ref[1])
        assert kept[0][0].abs().sum() == 0  # the padding row gets no gradient
        if step == 0:
            held = [t.clone() for t in kept]  # a reference kept by the user is never overwritten
            held_refs = kept
        else:
            assert all(torch.equal(a, b) for a, b in zip(held_refs, held))
    del held_refs, kept
    # with nothing else holding it, the memory is handed out again (no new allocation)
    table.weight.grad = None
    ptr = memory.table_grad.buf.data_ptr()
    lookup(table, ids, memory).sum().backward()
    assert table.weight.grad.data_ptr() == ptr
    # accumulation into an existing gradient stays correct
    before = table.weight.grad.clone()
    lookup(table, ids, memory).sum().backward()
    torch.testing.assert_close(table.weight.grad, 2 * before)


def _train(reuse: bool, steps: int = 4) -> tuple[list[float], dict[str, torch.Tensor], FourM]:
    from test_model import make_batch, slots, tiny_config, tiny_registry

    reg = tiny_registry()
    model = FourM(tiny_config(reg), seed=0)
    model.set_cpu_memory_reuse(reuse)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam would blow rounding up on gradients near 0
    losses = []
    for step in range(steps):
        batch = make_batch(reg, seed=step)
        loss = model(batch, *slots(batch, model)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, model


def test_training_with_and_without_reuse_gives_the_same_model():
    on_losses, on, model = _train(True)
    off_losses, off, _ = _train(False)
    assert on_losses == pytest.approx(off_losses, rel=1e-5)
    for k in on:
        torch.testing.assert_close(on[k], off[k], rtol=1e-4, atol=1e-5)
    # the switch reaches every embedding, and with it on the memory is reused (not only allocated)
    memories = [e.memory for e in [*model.encoder_embeddings.values(), *model.decoder_embeddings.values()]]
    assert all(m.enabled for m in memories) and any(m.table_grad.buf is not None for m in memories)
    model.set_cpu_memory_reuse(False)
    assert not any(m.enabled for m in memories)


def test_switched_off_memory_is_plain_pytorch():
    table, lin = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    off = CPUMemory(enabled=False)
    ids, h, t = torch.tensor([1, 2, 2]), torch.randn(3, 4), torch.tensor([0, 5, 9])
    (lookup(table, ids, off).sum() + head_cross_entropy(lin, h, t, off)).backward()
    assert off.table_grad.buf is None and off.head_grad.buf is None and off.logits.buf is None  # nothing kept
    assert not off.applies(table.weight)


def test_the_training_config_sets_the_switch():
    from test_training import TINY
    from fourm.training.fourm_config import load_train_config
    from fourm.training.fourm_task import FourMTask

    cfg = load_train_config(TINY, ["data.train.shapes.shards=unused", "reuse_cpu_memory=false"])
    model = FourMTask(cfg).build_model(resuming=False)
    assert not any(e.memory.enabled for e in model.decoder_embeddings.values())
    assert all(e.memory.enabled for e in FourMTask(load_train_config(TINY, ["data.train.shapes.shards=unused"]))
               .build_model(resuming=False).decoder_embeddings.values())

