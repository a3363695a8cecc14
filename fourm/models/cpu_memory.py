"""Reused CPU memory for vocabulary-sized tensors: a speed-up of CPU training, switchable, same results.

On a CPU a fresh (V, D) gradient per step costs page faults that take longer than computing it (a
30000 x 768 table: ~70 ms of faults against ~10 ms of work), and so do the (n, V) logits of a head.
This module keeps that memory from step to step for the embedding tables and heads of FourM:

* :class:`GradStore`: one reusable buffer, handed out again only when nothing else holds it;
* :func:`lookup` / :func:`head`: ``table(ids)`` / ``linear(h)`` whose weight gradients are written
  into a store;
* :func:`head_cross_entropy`: the head and its cross-entropy in one pass over the logits.

Each embedding module owns a :class:`CPUMemory` (its stores and an ``enabled`` switch);
``FourM.set_cpu_memory_reuse(False)`` (``reuse_cpu_memory: false`` in a training config) turns it
off, and then every function here is the plain PyTorch operation. The reuse applies only to CPU
float training without autocast (CUDA's caching allocator already reuses memory); results equal
autograd's up to float rounding (tests/test_cpu_memory.py). It relies on
``torch._C._storage_Use_Count`` to know that a buffer is free; without that private API it never
reuses a buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradStore:
    """Reusable CPU memory for one vocabulary-sized tensor (a table's dense gradient, or the
    logits of a head), handed out again from step to step.

    A fresh (V, D) gradient per step costs page faults that, on CPU, take longer than computing
    it (a 30000 x 768 table: ~70 ms of faults against ~10 ms of work). The store hands its buffer
    out again only when nothing else holds it (the optimizer released ``p.grad`` with
    ``zero_grad(set_to_none=True)``, no one kept a reference); otherwise it allocates a new one.
    Results are the same either way.

    :meth:`zeros` returns the buffer zeroed. When the buffer comes back untouched since the last
    :meth:`mark_rows` (its version counter unchanged: nothing wrote to it in place, e.g. gradient
    clipping or accumulation), only the rows written then are cleared instead of all V rows.
    """

    def __init__(self) -> None:
        self.buf: Tensor | None = None
        self._rows: Tensor | None = None  # rows written since the buffer was last all zero
        self._version = -1  # buf._version right after those rows were written

    def __deepcopy__(self, memo: dict) -> "GradStore":  # scratch memory, not state
        return GradStore()

    def __getstate__(self) -> dict:
        return {"buf": None, "_rows": None, "_version": -1}

    def get(self, like: Tensor) -> Tensor:
        """An uninitialised tensor shaped like ``like`` (the stored one when it is free)."""
        buf = self.buf
        if (buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device
                or not _unshared(buf)):
            buf = self.buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        self._rows = None
        return buf.detach()  # a second handle, so that autograd can adopt it as p.grad

    def zeros(self, like: Tensor) -> Tensor:
        """A zero tensor shaped like ``like``; call :meth:`mark_rows` after writing rows of it."""
        rows, version, old = self._rows, self._version, self.buf
        out = self.get(like)
        if rows is not None and old is self.buf and out._version == version:
            out.index_fill_(0, rows, 0.0)  # (rows, D): everything else is still zero
        else:
            out.zero_()
        return out

    def mark_rows(self, out: Tensor, rows: Tensor) -> None:
        """Record that only ``rows`` of the zeroed ``out`` (from :meth:`zeros`) were written."""
        self._rows, self._version = rows.clone(), out._version  # a copy: callers may reuse ``rows``

    def matrix(self, rows: int, cols: int, like: Tensor) -> Tensor:
        """An uninitialised (rows, cols) tensor with ``like``'s dtype and device. Row counts move
        from step to step, so the memory is a flat buffer with some headroom."""
        need = rows * cols
        buf = self.buf
        if (buf is None or buf.numel() < need or buf.dtype != like.dtype or buf.device != like.device
                or not _unshared(buf)):
            buf = self.buf = torch.empty(need + need // 4 + cols, dtype=like.dtype, device=like.device)
        return buf[:need].view(rows, cols)


class CPUMemory:
    """The reused memory of one embedding module: its table's gradient (``table_grad``), its head's
    weight gradient (``head_grad``) and its head's logits (``logits``); ``enabled`` switches the reuse.
    Scratch memory, not state: copies and serialised copies start empty."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.table_grad, self.head_grad, self.logits = GradStore(), GradStore(), GradStore()

    def __deepcopy__(self, memo: dict) -> "CPUMemory":
        return CPUMemory(self.enabled)

    def __getstate__(self) -> dict:
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["enabled"])

    def applies(self, weight: Tensor) -> bool:
        """Whether to reuse memory for ``weight``'s gradient now: only where it pays and is simple,
        CPU float training without autocast."""
        return (self.enabled and weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu"))


def _unshared(buf: Tensor) -> bool:
    try:  # the storage is held by ``buf`` and by the temporary from untyped_storage()
        return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2
    except Exception:  # noqa: BLE001 - private API gone: never reuse
        return False


class _Lookup(torch.autograd.Function):
    """``weight[ids]`` whose weight gradient is written into a GradStore buffer."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int, store: GradStore) -> Tensor:
        ctx.save_for_backward(weight, ids)
        ctx.padding_idx, ctx.store = padding_idx, store
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, ids = ctx.saved_tensors
        if ctx.padding_idx >= 0:  # like nn.Embedding(padding_idx=...): that row gets no gradient
            grad = grad.masked_fill((ids == ctx.padding_idx)[:, None], 0.0)
        out = ctx.store.zeros(weight)
        out.index_add_(0, ids, grad.to(out.dtype))
        ctx.store.mark_rows(out, ids)
        return out, None, None, None


class _Head(torch.autograd.Function):
    """``h @ weight.T`` whose weight gradient is written into a GradStore buffer."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, store: GradStore) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.store = store
        return h @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = torch.mm(grad.t(), h, out=ctx.store.get(weight))  # (V, D)
        return grad_h, grad_w, None


def lookup(table: nn.Embedding, ids: Tensor, memory: CPUMemory | None = None) -> Tensor:
    """``table(ids)`` (padding rows get no gradient), its gradient in ``memory.table_grad`` when it applies."""
    pad = -1 if table.padding_idx is None else table.padding_idx
    if memory is not None and memory.applies(table.weight):
        return _Lookup.apply(table.weight, ids, pad, memory.table_grad)
    return F.embedding(ids, table.weight, table.padding_idx)


def head(linear: nn.Linear, h: Tensor, memory: CPUMemory | None = None) -> Tensor:
    """``linear(h)`` for a bias-free vocabulary head, its weight gradient in ``memory.head_grad`` when it applies."""
    if memory is not None and memory.applies(linear.weight) and h.dtype == linear.weight.dtype:
        return _Head.apply(h, linear.weight, memory.head_grad)
    return linear(h)


class _HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``; see the module docstring."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, grad_store: GradStore,
                work_store: GradStore) -> Tensor:
        n, V = h.shape[0], weight.shape[0]
        z = torch.mm(h, weight.t(), out=work_store.matrix(n, V, weight))  # (n, V) logits
        picked = z.gather(1, targets[:, None])  # (n, 1) logit of the target
        zmax = z.amax(1, keepdim=True)  # (n, 1)
        z.sub_(zmax).exp_()  # (n, V) exp(logits - max), in place
        total = z.sum(1, keepdim=True)  # (n, 1)
        loss = (total.log() + zmax - picked).mean()  # logsumexp - target logit
        ctx.save_for_backward(h, weight, targets)
        ctx.exp_logits, ctx.total, ctx.grad_store = z, total, grad_store
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight, targets = ctx.saved_tensors
        z = ctx.exp_logits
        if z is None:
            raise RuntimeError("head_cross_entropy: backward ran twice through the same graph; its buffer is "
                               "consumed by the first backward (do not use retain_graph through the loss)")
        ctx.exp_logits = None
        n = z.shape[0]
        scale = grad / n  # d loss / d row loss
        z.mul_(scale / ctx.total)  # (n, V) softmax * scale, in place
        z.scatter_add_(1, targets[:, None], (-scale).expand(n, 1).to(z.dtype))  # minus scale at the target
        grad_h = torch.mm(z, weight) if ctx.needs_input_grad[0] else None  # (n, D)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(z.t(), h, out=ctx.grad_store.get(weight))  # (V, D)
        return grad_h, grad_w, None, None, None


def head_cross_entropy(linear: nn.Linear, h: Tensor, targets: Tensor, memory: CPUMemory | None = None) -> Tensor:
    """Mean cross-entropy of the bias-free head ``linear`` on rows ``h`` against ``targets``.

    Where the reuse applies (:meth:`CPUMemory.applies`), one autograd function writes the (n, V)
    logits into ``memory.logits``, turns them in place into ``exp(logits - max)`` and keeps only
    that and the row sums for the backward pass, which scales them in place into
    ``softmax - one_hot`` and runs the head's two matmuls, the weight gradient into
    ``memory.head_grad``. Elsewhere it is ``F.cross_entropy(linear(h).float(), targets)``.

    Args:
        linear: the vocabulary head, ``Linear(D, V, bias=False)``.
        h: decoder features of the rows to score.
        targets: the id each row predicts.
        memory: the head's reused memory (None: plain PyTorch).

    Returns:
        A scalar: ``F.cross_entropy(linear(h), targets)`` (float32 for float32 inputs).

    Shapes:
        h (n, D) with n >= 1, targets (n,) int64 -> ().
    """
    if h.shape[0] == 0:
        raise ValueError("head_cross_entropy: no rows (n = 0); the mean over no targets is undefined")
    if (memory is not None and linear.bias is None and memory.applies(linear.weight)
            and h.dtype == linear.weight.dtype):
        return _HeadCrossEntropy.apply(h, linear.weight, targets, memory.head_grad, memory.logits)
    return F.cross_entropy(linear(h).float(), targets)
