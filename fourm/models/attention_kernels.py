"""Scaled dot-product attention with a positive mask, and the choice of its kernel.

Two backends compute the same function:

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (any device; on CUDA PyTorch picks
  flash, memory-efficient or math kernels itself);
* ``xformers``: ``xformers.ops.memory_efficient_attention`` (CUDA only; ``pip install fourm[cuda]``).

The setting (``model.attention`` of a run config, ``--attention`` of ``fourm generate`` / ``fourm
eval``, :meth:`fourm.models.FourM.set_attention_backend`) is ``auto``, ``sdpa`` or ``xformers``;
:func:`resolve_attention_backend` turns it into the backend a device runs: ``auto`` takes xformers
when it is installed and one tiny call of it works on that CUDA device, else SDPA; ``xformers``
where it cannot run is an error that says so.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

try:  # optional; only used on CUDA
    import xformers.ops as _xops
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _xops = None

ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers")


def xformers_available() -> bool:
    """Whether ``xformers.ops`` imported."""
    return _xops is not None


@functools.lru_cache(maxsize=None)
def xformers_usable(device: str) -> bool:
    """Whether xformers is installed and one small attention call runs on ``device`` (a CUDA device;
    a wheel built for another CUDA or GPU architecture imports but fails here). Cached per device."""
    if _xops is None or torch.device(device).type != "cuda":
        return False
    try:
        q = torch.zeros(1, 8, 1, 16, device=device, dtype=torch.float16)
        _xops.memory_efficient_attention(q, q, q)
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        logger.warning("xformers is installed but does not run on %s (%s: %s); using SDPA", device, type(e).__name__, e)
        return False


def resolve_attention_backend(backend: str, device: str | torch.device) -> str:
    """The backend that runs on ``device`` for the setting ``backend``: ``"sdpa"`` or ``"xformers"``.

    Args:
        backend: ``auto`` (xformers when :func:`xformers_usable` on ``device``, else SDPA), ``sdpa``
            or ``xformers``.
        device: where the model runs.

    Raises:
        ValueError: an unknown setting, or ``xformers`` where it cannot run.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention={backend!r}; allowed: {', '.join(ATTENTION_BACKENDS)}")
    device = str(torch.device(device))
    if backend == "sdpa":
        return "sdpa"
    usable = xformers_usable(device)
    if backend == "xformers" and not usable:
        raise ValueError(f"attention='xformers' cannot run on {device} (xformers installed: {xformers_available()}; it "
                         "needs a CUDA device); use attention='auto' (xformers where it runs, else SDPA) or 'sdpa'")
    return "xformers" if usable else "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, backend: str = "sdpa") -> Tensor:
    """Scaled dot-product attention with a boolean "may attend" mask.

    Args:
        q, k, v: queries, keys and values.
        mask: boolean, ``True`` = may attend; broadcastable to (B, H, Nq, Nk). ``None`` = all.
        backend: ``"sdpa"`` or ``"xformers"`` (CUDA tensors; see :func:`resolve_attention_backend`).

    Returns:
        The attended values.

    Shapes:
        q (B, H, Nq, hd), k and v (B, H, Nk, hd) -> (B, H, Nq, hd).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backend != "xformers":
        raise ValueError(f"backend={backend!r}; allowed: 'sdpa', 'xformers' (resolve 'auto' with "
                         "resolve_attention_backend)")
    if _xops is None or not q.is_cuda:
        raise ValueError(f"backend='xformers' needs xformers (installed: {_xops is not None}) and CUDA tensors (got "
                         f"{q.device}); set the model's backend with FourM.set_attention_backend('auto')")
    return xformers_attention(q, k, v, mask)


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`attention` through ``xformers.ops.memory_efficient_attention``: the boolean mask becomes
    an additive bias (0 or -inf); xformers takes (B, N, H, hd) tensors. Shapes as in :func:`attention`."""
    B, H, Nq, hd = q.shape
    Nk = k.shape[2]
    bias = None
    if mask is not None:
        # xformers wants an additive (B, H, Nq, Nk) bias whose last dim is 8-aligned in memory
        pad = (Nk + 7) // 8 * 8
        bias = q.new_zeros(B, H, Nq, pad)[..., :Nk]
        bias.masked_fill_(~mask.expand(B, H, Nq, Nk), float("-inf"))
    out = _xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)  # (B, Nq, H, hd) -> (B, H, Nq, hd)
