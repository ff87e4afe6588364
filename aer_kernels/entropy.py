"""Per-token entropy and target log-prob, top to bottom: torch.library ops -> autograd -> public API.

The ops are ``aer_kernels::entropy_fwd`` (returns ``logp``, ``H`` and the ``[N, 2]`` row statistics
``(m, log_s)``: the row max and ``lse`` relative to it), ``aer_kernels::entropy_bwd`` (a new gradient buffer)
and ``aer_kernels::entropy_bwd_inplace`` (the gradient written over the logits). Only the row statistics and
``H`` (12 bytes a row) are saved for backward. How the temperature and argument errors travel under
``torch.compile`` is in ``_ops.py``. ``aer_kernels::entropy_bwd`` has an autograd formula that only raises:
double backward is not supported, and says so by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backends import backend_module
from ._layout import row_layout, with_row_layout
from ._ops import OP_TAGS, failed_call_outputs, row_outputs, temperature_args, temperature_value, undefined_logp_grad
from ._validate import check_args


def _row_arg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(-1).contiguous()


@torch.library.custom_op("aer_kernels::entropy_fwd", mutates_args=(), tags=OP_TAGS)
def entropy_fwd(
    logits: Tensor,
    targets: Tensor | None,
    mask: Tensor | None,
    temperature: float,
    backend: str,
    inplace_backward: bool,
    temperature_tensor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    logp, h, stats = row_outputs(logits, targets is not None)
    backend_module(backend).forward(
        logits,
        row_layout(logits),
        _row_arg(targets),
        _row_arg(mask),
        temperature_value(temperature, temperature_tensor),
        h,
        logp if targets is not None else None,
        stats,
    )
    return logp, h, stats


@entropy_fwd.register_fake
def _(logits, targets, mask, temperature, backend, inplace_backward, temperature_tensor=None):
    return row_outputs(logits, targets is not None)


def _backward_into(grad: Tensor, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend):
    layout = row_layout(logits)
    grad_layout = layout if grad is logits else layout.contiguous()
    backend_module(backend).backward(
        logits,
        layout,
        grad,
        grad_layout,
        _row_arg(targets),
        _row_arg(mask),
        stats,
        h,
        _row_arg(grad_h),
        _row_arg(grad_logp),
        temperature,
    )


@torch.library.custom_op("aer_kernels::entropy_bwd", mutates_args=(), tags=OP_TAGS)
def entropy_bwd(
    logits: Tensor,
    targets: Tensor | None,
    mask: Tensor | None,
    stats: Tensor,
    h: Tensor,
    grad_h: Tensor | None,
    grad_logp: Tensor | None,
    temperature: float,
    backend: str,
    temperature_tensor: Tensor | None = None,
) -> Tensor:
    grad = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    temperature = temperature_value(temperature, temperature_tensor)
    _backward_into(grad, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend)
    return grad


@entropy_bwd.register_fake
def _(logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend, temperature_tensor=None):
    return torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "aer_kernels::entropy_bwd (the logits' gradient of aer_kernels' entropy and log-prob ops) has no gradient "
        "of its own: double backward is not supported. For second-order terms, differentiate the PyTorch "
        "expression instead: log_p = torch.log_softmax(logits.float() / T, -1); "
        "logp = log_p.gather(-1, targets[..., None]); H = -(log_p.exp() * log_p).sum(-1)"
    )


torch.library.register_autograd("aer_kernels::entropy_bwd", _no_double_backward)


@torch.library.custom_op("aer_kernels::entropy_bwd_inplace", mutates_args=("logits",), tags=OP_TAGS)
def entropy_bwd_inplace(
    logits: Tensor,
    targets: Tensor | None,
    mask: Tensor | None,
    stats: Tensor,
    h: Tensor,
    grad_h: Tensor | None,
    grad_logp: Tensor | None,
    temperature: float,
    backend: str,
    temperature_tensor: Tensor | None = None,
) -> None:
    temperature = temperature_value(temperature, temperature_tensor)
    _backward_into(logits, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend)


def _setup_context(ctx, inputs, output):
    logits, targets, mask, temperature, backend, inplace_backward, temperature_tensor = inputs
    _, h, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
    ctx.save_for_backward(logits, targets, mask, stats, h, temperature_tensor)
    ctx.temperature, ctx.backend, ctx.inplace_backward = temperature, backend, inplace_backward


def _autograd_backward(ctx, grad_logp, grad_h, _grad_stats):
    no_grads = (None,) * 7
    logits, targets, mask, stats, h, temperature_tensor = ctx.saved_tensors
    if targets is None:
        grad_logp = None  # logp is the empty placeholder
    if grad_h is None and grad_logp is None:
        return no_grads
    if ctx.inplace_backward and torch.is_grad_enabled():
        raise RuntimeError(
            "inplace_backward=True writes the gradient over the logits, so it cannot be part of a graph: "
            "create_graph=True needs inplace_backward=False"
        )
    if grad_logp is not None:
        in_vocab = (targets >= 0) & (targets < logits.shape[-1])
        grad_logp = undefined_logp_grad(grad_logp, in_vocab.reshape(-1))
    args = (targets, mask, stats, h, grad_h, grad_logp, ctx.temperature, ctx.backend, temperature_tensor)
    if ctx.inplace_backward:
        entropy_bwd_inplace(logits, *args)
        grad = logits
    else:
        grad = entropy_bwd(logits, *args)
    return (grad, *no_grads[1:])


torch.library.register_autograd("aer_kernels::entropy_fwd", _autograd_backward, setup_context=_setup_context)


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


def _run(logits, targets, mask, temperature, backend, inplace_backward, *, with_targets: bool):
    """``(logp, H)``, ``logp`` None without targets."""
    try:
        if with_targets and targets is None:
            raise TypeError("targets must be a torch.Tensor of token ids; use entropy() for entropy alone")
        temperature, backend = check_args(logits, targets, mask, temperature, backend)
        if inplace_backward:
            _check_inplace(logits)
    except (TypeError, ValueError, RuntimeError) as err:
        if not torch.compiler.is_compiling():
            raise
        return failed_call_outputs(err, logits)
    lead = logits.shape[:-1]
    temperature, temperature_tensor = temperature_args(temperature)
    logp, h, _ = entropy_fwd(
        with_row_layout(logits), targets, mask, temperature, backend, inplace_backward, temperature_tensor
    )
    return (logp.view(lead) if targets is not None else None), h.view(lead)


def entropy(logits: Tensor, *, temperature: float = 1.0, mask: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Per-row Shannon entropy (nats) of ``softmax(logits / temperature)``, differentiable.

    Equals ``torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)`` with ``z = logits.float() / T``,
    in one pass over the vocabulary and without an ``[N, V]`` temporary. Under ``torch.compile(fullgraph=True)``
    one graph serves every temperature, and a bad argument raises the same error as eagerly, when the compiled
    function runs. Double backward (a gradient of the gradient) raises ``NotImplementedError``.

    Args:
        logits: ``[..., V]`` float32, float16 or bfloat16 (float64 on the reference path), any leading dims;
            strided rows are read in place, a last dim with stride != 1 is copied once. ``-inf`` entries are
            legal (probability 0); a row with no distribution (all ``-inf``, or holding ``+inf`` or NaN) gives NaN.
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0); outside, float32 kernels
            overflow, so it is refused. A runtime kernel argument: no recompile per value.
        mask: optional bool tensor of shape ``logits.shape[:-1]``; False rows read nothing, output 0 and get
            gradient 0. Default None: every row.
        backend: ``"auto"`` (default): Triton for CUDA logits of a kernel dtype when triton is installed, the
            PyTorch reference path otherwise; ``"triton"`` (on a CPU only under ``TRITON_INTERPRET=1``);
            ``"reference"``.

    Returns:
        ``H``, float32 (float64 for float64 logits), shape ``logits.shape[:-1]``; its gradient comes back in
        the logits' dtype.
    """
    return _run(logits, None, mask, temperature, backend, False, with_targets=False)[1]


def logprobs_and_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    backend: str = "auto",
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(logp, H)``: the target's log-prob ``log_softmax(z, -1).gather(-1, targets)`` and the entropy.

    ``z = logits.float() / T``; one pass over the vocabulary, both outputs differentiable, either may be left
    unused (it then costs no backward work). Under ``torch.compile`` and for double backward, as ``entropy``.

    Args:
        logits: as for ``entropy``: ``[..., V]`` float32, float16 or bfloat16 (float64 on the reference path).
        targets: integer tensor of shape ``logits.shape[:-1]`` on the logits' device. A target outside
            ``[0, V)`` gives ``logp = NaN`` (never an out-of-bounds read) and a NaN gradient where a nonzero
            gradient flows into it; a zero upstream gradient gives zero, so
            ``torch.where(targets != -100, logp, 0)`` is safe.
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``logits.shape[:-1]``; False rows output 0 and get gradient 0.
        backend: ``"auto"`` (default), ``"triton"`` or ``"reference"``, as for ``entropy``.
        inplace_backward: default False. True writes the logits' gradient over the logits' own storage instead
            of a new ``[N, V]`` buffer: use it only when nothing else needs those logits afterwards (PyTorch's
            version counter raises if another autograd node saved them). Refused for leaf tensors, rows that
            share memory, under ``torch.compile`` and with ``create_graph=True``.

    Returns:
        ``(logp, H)``, both float32 (float64 for float64 logits) with shape ``logits.shape[:-1]``.
    """
    return _run(logits, targets, mask, temperature, backend, inplace_backward, with_targets=True)
