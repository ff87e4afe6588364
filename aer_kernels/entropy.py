"""Per-token entropy and target log-prob, top to bottom: torch.library ops -> autograd -> public API.

The ops are ``aer_kernels::forward`` (returns ``H``, ``logp`` and the ``[N, 2]`` row statistics
``(m, log_s)``: the row max and ``lse`` relative to it), ``aer_kernels::backward`` (a new gradient buffer)
and ``aer_kernels::backward_`` (the gradient written over the logits). Only the row statistics and ``H``
(12 bytes a row) are saved for backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from ._layout import row_layout, with_row_layout
from ._validate import check_args

def _impl(backend: str):
    if backend == "triton":
        from . import _triton

        return _triton
    return reference


def _row_arg(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.reshape(-1).contiguous()


@torch.library.custom_op("aer_kernels::forward", mutates_args=())
def _forward(logits: Tensor, targets: Optional[Tensor], mask: Optional[Tensor], temperature: float,
             backend: str, inplace_backward: bool) -> tuple[Tensor, Tensor, Tensor]:
    layout = row_layout(logits)
    n = layout.n_rows
    out = dict(device=logits.device, dtype=reference.accumulation_dtype(logits.dtype))
    h, stats = torch.empty(n, **out), torch.empty((n, 2), **out)
    logp = torch.empty(n if targets is not None else 0, **out)
    _impl(backend).forward(logits, layout, _row_arg(targets), _row_arg(mask), temperature,
                           h, logp if targets is not None else None, stats)
    return h, logp, stats


@_forward.register_fake
def _(logits, targets, mask, temperature, backend, inplace_backward):
    n = logits.numel() // logits.shape[-1]
    out = dict(device=logits.device, dtype=reference.accumulation_dtype(logits.dtype))
    return (logits.new_empty(n, **out), logits.new_empty(n if targets is not None else 0, **out),
            logits.new_empty((n, 2), **out))


def _backward_into(grad: Tensor, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend):
    layout = row_layout(logits)
    grad_layout = layout if grad is logits else layout.contiguous()
    _impl(backend).backward(logits, layout, grad, grad_layout, _row_arg(targets), _row_arg(mask), stats, h,
                            _row_arg(grad_h), _row_arg(grad_logp), temperature)


@torch.library.custom_op("aer_kernels::backward", mutates_args=())
def _backward(logits: Tensor, targets: Optional[Tensor], mask: Optional[Tensor], stats: Tensor, h: Tensor,
              grad_h: Optional[Tensor], grad_logp: Optional[Tensor], temperature: float, backend: str) -> Tensor:
    grad = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    _backward_into(grad, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend)
    return grad


@_backward.register_fake
def _(logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend):
    return torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)


@torch.library.custom_op("aer_kernels::backward_", mutates_args=("logits",))
def _backward_inplace(logits: Tensor, targets: Optional[Tensor], mask: Optional[Tensor], stats: Tensor,
                      h: Tensor, grad_h: Optional[Tensor], grad_logp: Optional[Tensor], temperature: float,
                      backend: str) -> None:
    _backward_into(logits, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend)


def undefined_logp_grad(grad_logp: Tensor, logp_defined: Tensor) -> Tensor:
    """``grad_logp``, NaN where a nonzero gradient flows into an undefined (NaN) log-prob.

    A zero upstream gradient (the ``ignore_index`` pattern: ``torch.where(t != -100, logp, 0)``) gives a
    zero gradient, so excluded rows never poison the weights.
    """
    return torch.where(logp_defined | (grad_logp == 0), grad_logp, float("nan"))


def _setup_context(ctx, inputs, output):
    logits, targets, mask, temperature, backend, inplace_backward = inputs
    h, _, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
    ctx.save_for_backward(logits, targets, mask, stats, h)
    ctx.temperature, ctx.backend, ctx.inplace_backward = temperature, backend, inplace_backward


def _autograd_backward(ctx, grad_h, grad_logp, _grad_stats):
    logits, targets, mask, stats, h = ctx.saved_tensors
    if targets is None:
        grad_logp = None  # logp is the empty placeholder
    if grad_h is None and grad_logp is None:
        return None, None, None, None, None, None
    if grad_logp is not None:
        in_vocab = (targets >= 0) & (targets < logits.shape[-1])
        grad_logp = undefined_logp_grad(grad_logp, in_vocab.reshape(-1))
    args = (targets, mask, stats, h, grad_h, grad_logp, ctx.temperature, ctx.backend)
    if ctx.inplace_backward:
        torch.ops.aer_kernels.backward_(logits, *args)
        grad = logits
    else:
        grad = torch.ops.aer_kernels.backward(logits, *args)
    return grad, None, None, None, None, None


torch.library.register_autograd("aer_kernels::forward", _autograd_backward, setup_context=_setup_context)


def _check_inplace(logits: Tensor) -> None:
    if torch.compiler.is_compiling():
        raise ValueError("inplace_backward=True is not supported under torch.compile; leave it False there")
    if logits.is_leaf and logits.requires_grad:
        raise ValueError(
            "inplace_backward=True would overwrite a leaf tensor whose .grad you asked for; "
            "it is meant for logits produced by the model (a non-leaf)"
        )
    layout = row_layout(logits)
    if layout is not None and layout.rows_overlap():
        raise ValueError("inplace_backward=True needs logits whose rows do not share memory (not an expanded view)")


def _run(logits, targets, mask, temperature, backend, inplace_backward):
    temperature, backend = check_args(logits, targets, mask, temperature, backend)
    if inplace_backward:
        _check_inplace(logits)
    lead = logits.shape[:-1]
    h, logp, _ = _forward(with_row_layout(logits), targets, mask, temperature, backend, inplace_backward)
    return h.view(lead), (logp.view(lead) if targets is not None else None)


def entropy(logits: Tensor, *, temperature: float = 1.0, mask: Optional[Tensor] = None,
            backend: str = "auto") -> Tensor:
    """Per-row Shannon entropy (nats) of ``softmax(logits / temperature)``, fp32, shape ``logits.shape[:-1]``.

    Equals ``torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)`` with ``z = logits.float() / T``,
    in one pass over the vocabulary and without an ``[N, V]`` temporary. Rows where ``mask`` is False
    output 0 and get gradient 0. Differentiable.
    """
    return _run(logits, None, mask, temperature, backend, False)[0]


def logprobs_and_entropy(logits: Tensor, targets: Tensor, *, temperature: float = 1.0,
                         mask: Optional[Tensor] = None, backend: str = "auto",
                         inplace_backward: bool = False) -> tuple[Tensor, Tensor]:
    """``(logp, H)``: the target's log-prob ``log_softmax(z, -1).gather(-1, targets)`` and the entropy.

    Both fp32 with shape ``logits.shape[:-1]``, both differentiable; either may be left unused.
    ``inplace_backward=True`` writes the logits' gradient over the logits' own storage instead of a new
    ``[N, V]`` buffer: use it only when nothing else needs those logits afterwards (PyTorch's version
    counter raises if another autograd node saved them; leaf tensors and ``torch.compile`` are refused).
    """
    if targets is None:
        raise TypeError("targets must be a torch.Tensor of token ids; use entropy() for entropy alone")
    logp, h = _run(logits, targets, mask, temperature, backend, inplace_backward)[::-1]
    return logp, h
