"""Cross-entropy of a bias-free vocabulary head, computed in one pass over the logits.

``head_cross_entropy(linear, h, targets, ...)`` equals
``F.cross_entropy(linear(h), targets)`` (mean over rows) within float rounding. On CPU float
training it is computed by one autograd function that

* writes the (n, V) logits into memory reused from step to step (a fresh 30000-column block costs
  page faults on every step),
* turns them, in place, into ``exp(logits - max)`` and keeps only that tensor and the row sums
  for the backward pass (no separate log-softmax output, no dense one-hot gradient),
* in backward, scales that tensor in place into ``softmax - one_hot`` (times the upstream
  gradient over n) and runs the two matmuls of the head, the weight gradient into a
  :class:`~fourm.models.embeddings.GradStore` buffer.

Elsewhere (CUDA, autocast, no gradient) it is the plain ``F.cross_entropy(linear(h).float(), t)``.
The logits themselves are not returned: callers that need them use the head directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fourm.models.embeddings as _emb  # module, not names: benchmarks switch _use_store off
from fourm.models.embeddings import GradStore


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


def head_cross_entropy(linear: nn.Linear, h: Tensor, targets: Tensor, grad_store: GradStore,
                       work_store: GradStore) -> Tensor:
    """Mean cross-entropy of the bias-free head ``linear`` on rows ``h`` against ``targets``.

    Args:
        linear: the vocabulary head, ``Linear(D, V, bias=False)``.
        h: decoder features of the rows to score.
        targets: the id each row predicts.
        grad_store: memory for the head's weight gradient.
        work_store: memory for the (n, V) logits.

    Returns:
        A scalar: ``F.cross_entropy(linear(h), targets)`` (float32 for float32 inputs).

    Shapes:
        h (n, D) with n >= 1, targets (n,) int64 -> ().
    """
    if h.shape[0] == 0:
        raise ValueError("head_cross_entropy: no rows (n = 0); the mean over no targets is undefined")
    if linear.bias is None and _emb._use_store(linear.weight) and h.dtype == linear.weight.dtype:
        return _HeadCrossEntropy.apply(h, linear.weight, targets, grad_store, work_store)
    return F.cross_entropy(linear(h).float(), targets)
