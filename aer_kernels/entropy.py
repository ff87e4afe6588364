"""Per-token entropy and target log-prob, top to bottom: torch.library ops -> autograd -> public API.

The ops are ``aer_kernels::forward`` (returns ``H``, ``logp`` and the ``[N, 2]`` row statistics
``(m, log_s)``: the row max and ``lse`` relative to it), ``aer_kernels::backward`` (a new gradient buffer)
and ``aer_kernels::backward_`` (the gradient written over the logits). Only the row statistics and ``H``
(12 bytes a row) are saved for backward.

Under ``torch.compile`` the public functions hand the ops the temperature as a 0-d float64 CPU tensor
(``temperature_tensor``): Dynamo makes a Python float a graph input, and a ``float`` op argument would pin it to
one value per compiled graph. The ops read it on the host, where it lives (no device sync), and are tagged
``cudagraph_unsafe`` so that a CUDA graph never freezes a launch with one temperature baked in. Argument errors
found while Dynamo traces become ``aer_kernels::argument_error``, which raises the same error when the compiled
code runs: a raise during tracing would reach the caller as Dynamo's ``Unsupported``. ``aer_kernels::backward``
has an autograd formula that only raises: double backward is not supported, and says so by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._layout import row_layout, with_row_layout
from ._validate import check_args

# A CUDA graph would replay the launch with the temperature read at capture.
_OP_TAGS = (torch.Tag.cudagraph_unsafe,)
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "RuntimeError": RuntimeError}  # what the checks raise


def _impl(backend: str):
    if backend == "triton":
        from . import _triton

        return _triton
    return reference


def _row_arg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(-1).contiguous()


def _temperature(temperature: float, temperature_tensor: Tensor | None) -> float:
    """T for the launchers: ``temperature_tensor``'s value when given (a CPU read, no device sync)."""
    if temperature_tensor is None:
        return temperature
    if temperature_tensor.device.type != "cpu" or temperature_tensor.numel() != 1:
        raise ValueError("temperature_tensor must hold one value on the CPU (reading a GPU tensor would sync)")
    return temperature_tensor.item()


@torch.library.custom_op("aer_kernels::forward", mutates_args=(), tags=_OP_TAGS)
def _forward(
    logits: Tensor,
    targets: Tensor | None,
    mask: Tensor | None,
    temperature: float,
    backend: str,
    inplace_backward: bool,
    temperature_tensor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    temperature = _temperature(temperature, temperature_tensor)
    layout = row_layout(logits)
    n = layout.n_rows
    out = dict(device=logits.device, dtype=reference.accumulation_dtype(logits.dtype))
    h, stats = torch.empty(n, **out), torch.empty((n, 2), **out)
    logp = torch.empty(n if targets is not None else 0, **out)
    _impl(backend).forward(
        logits, layout, _row_arg(targets), _row_arg(mask), temperature, h, logp if targets is not None else None, stats
    )
    return h, logp, stats


@_forward.register_fake
def _(logits, targets, mask, temperature, backend, inplace_backward, temperature_tensor=None):
    n = logits.numel() // logits.shape[-1]
    out = dict(device=logits.device, dtype=reference.accumulation_dtype(logits.dtype))
    return (
        logits.new_empty(n, **out),
        logits.new_empty(n if targets is not None else 0, **out),
        logits.new_empty((n, 2), **out),
    )


def _backward_into(grad: Tensor, logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend):
    layout = row_layout(logits)
    grad_layout = layout if grad is logits else layout.contiguous()
    _impl(backend).backward(
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


@torch.library.custom_op("aer_kernels::backward", mutates_args=(), tags=_OP_TAGS)
def _backward(
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
    _backward_into(
        grad, logits, targets, mask, stats, h, grad_h, grad_logp, _temperature(temperature, temperature_tensor), backend
    )
    return grad


@_backward.register_fake
def _(logits, targets, mask, stats, h, grad_h, grad_logp, temperature, backend, temperature_tensor=None):
    return torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "aer_kernels::backward (the logits' gradient of aer_kernels' entropy and log-prob ops) has no gradient "
        "of its own: double backward is not supported. For second-order terms, differentiate the PyTorch "
        "expression instead: log_p = torch.log_softmax(logits.float() / T, -1); "
        "logp = log_p.gather(-1, targets[..., None]); H = -(log_p.exp() * log_p).sum(-1)"
    )


torch.library.register_autograd("aer_kernels::backward", _no_double_backward)


@torch.library.custom_op("aer_kernels::backward_", mutates_args=("logits",), tags=_OP_TAGS)
def _backward_inplace(
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
    _backward_into(
        logits,
        logits,
        targets,
        mask,
        stats,
        h,
        grad_h,
        grad_logp,
        _temperature(temperature, temperature_tensor),
        backend,
    )


def undefined_logp_grad(grad_logp: Tensor, logp_defined: Tensor) -> Tensor:
    """``grad_logp``, NaN where a nonzero gradient flows into an undefined (NaN) log-prob.

    A zero upstream gradient (the ``ignore_index`` pattern: ``torch.where(t != -100, logp, 0)``) gives a
    zero gradient, so excluded rows never poison the weights.
    """
    return torch.where(logp_defined | (grad_logp == 0), grad_logp, float("nan"))


def _setup_context(ctx, inputs, output):
    logits, targets, mask, temperature, backend, inplace_backward, temperature_tensor = inputs
    h, _, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
    ctx.save_for_backward(logits, targets, mask, stats, h, temperature_tensor)
    ctx.temperature, ctx.backend, ctx.inplace_backward = temperature, backend, inplace_backward


def _autograd_backward(ctx, grad_h, grad_logp, _grad_stats):
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
        torch.ops.aer_kernels.backward_(logits, *args)
        grad = logits
    else:
        grad = torch.ops.aer_kernels.backward(logits, *args)
    return (grad, *no_grads[1:])


torch.library.register_autograd("aer_kernels::forward", _autograd_backward, setup_context=_setup_context)


@torch.library.custom_op("aer_kernels::argument_error", mutates_args=())
def _argument_error(like: Tensor, error: str, message: str) -> Tensor:
    """Raise ``error(message)``: an argument error found while torch.compile traced the call, raised when run."""
    raise _ERRORS[error](message)


@_argument_error.register_fake
def _(like, error, message):
    return torch.empty_like(like)


torch.fx.node.has_side_effect(torch.ops.aer_kernels.argument_error.default)  # raises even when the output is unused


def _failed_call_outputs(err: Exception, logits) -> tuple[Tensor, Tensor]:
    """What a call with bad arguments returns while torch.compile traces it: placeholders shaped like the real
    outputs, made by an op that raises ``err`` (same type, same text) when the compiled code runs."""
    lead = logits.shape[:-1] if isinstance(logits, Tensor) else ()
    device = logits.device if isinstance(logits, Tensor) else None
    error = next(name for name, kind in _ERRORS.items() if isinstance(err, kind))  # not type(err).__name__:
    out = _argument_error(torch.empty(lead, device=device), error, str(err))  # torch 2.11 cannot trace that
    return out, out


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


def _temperature_args(temperature: float) -> tuple[float, Tensor | None]:
    """The ops' ``(temperature, temperature_tensor)``: under torch.compile a 0-d CPU tensor carries T (the float
    argument is then unused), so one graph serves every T."""
    if torch.compiler.is_compiling():
        # tensor * float is what AOTAutograd rewrites onto the float's graph input; torch.tensor(T) would pin T
        return 1.0, torch.ones((), dtype=torch.float64, device="cpu") * temperature
    return temperature, None


def _run(logits, targets, mask, temperature, backend, inplace_backward, *, with_targets: bool):
    """``(H, logp)``, ``logp`` None without targets."""
    try:
        if with_targets and targets is None:
            raise TypeError("targets must be a torch.Tensor of token ids; use entropy() for entropy alone")
        temperature, backend = check_args(logits, targets, mask, temperature, backend)
        if inplace_backward:
            _check_inplace(logits)
    except (TypeError, ValueError, RuntimeError) as err:
        if not torch.compiler.is_compiling():
            raise
        return _failed_call_outputs(err, logits)
    lead = logits.shape[:-1]
    temperature, temperature_tensor = _temperature_args(temperature)
    h, logp, _ = _forward(
        with_row_layout(logits), targets, mask, temperature, backend, inplace_backward, temperature_tensor
    )
    return h.view(lead), (logp.view(lead) if targets is not None else None)


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
    return _run(logits, None, mask, temperature, backend, False, with_targets=False)[0]


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
    h, logp = _run(logits, targets, mask, temperature, backend, inplace_backward, with_targets=True)
    return logp, h
