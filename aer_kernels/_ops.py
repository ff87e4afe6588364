"""What the entropy, vocab-parallel and fused LM-head ops share: their tags, the temperature under
``torch.compile``, argument errors raised when compiled code runs, and the gradient of an undefined log-prob.

Under ``torch.compile`` the public functions hand the ops the temperature as a 0-d float64 CPU tensor
(``temperature_tensor``): Dynamo makes a Python float a graph input, and a ``float`` op argument would pin it to
one value per compiled graph. The ops read it on the host, where it lives (no device sync), and are tagged
``cudagraph_unsafe`` so that a CUDA graph never freezes a launch with one temperature baked in. Argument errors
found while Dynamo traces become ``aer_kernels::argument_error``, which raises the same error when the compiled
code runs: a raise during tracing would reach the caller as Dynamo's ``Unsupported``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validate import accumulation_dtype

# A CUDA graph would replay the launch with the temperature read at capture.
OP_TAGS = (torch.Tag.cudagraph_unsafe,)
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "RuntimeError": RuntimeError}  # what the checks raise


def temperature_args(temperature: float) -> tuple[float, Tensor | None]:
    """The ops' ``(temperature, temperature_tensor)``: under torch.compile a 0-d CPU tensor carries T (the float
    argument is then unused), so one graph serves every T."""
    if torch.compiler.is_compiling():
        # tensor * float is what AOTAutograd rewrites onto the float's graph input; torch.tensor(T) would pin T
        return 1.0, torch.ones((), dtype=torch.float64, device="cpu") * temperature
    return temperature, None


def temperature_value(temperature: float, temperature_tensor: Tensor | None) -> float:
    """T for the launchers: ``temperature_tensor``'s value when given (a CPU read, no device sync)."""
    if temperature_tensor is None:
        return temperature
    if temperature_tensor.device.type != "cpu" or temperature_tensor.numel() != 1:
        raise ValueError("temperature_tensor must hold one value on the CPU (reading a GPU tensor would sync)")
    return temperature_tensor.item()


@torch.library.custom_op("aer_kernels::argument_error", mutates_args=())
def _argument_error(like: Tensor, error: str, message: str) -> Tensor:
    """Raise ``error(message)``: an argument error found while torch.compile traced the call, raised when run."""
    raise _ERRORS[error](message)


@_argument_error.register_fake
def _(like, error, message):
    return torch.empty_like(like)


torch.fx.node.has_side_effect(torch.ops.aer_kernels.argument_error.default)  # raises even when the output is unused


def failed_call_outputs(err: Exception, logits) -> tuple[Tensor, Tensor]:
    """What a call with bad arguments returns while torch.compile traces it: placeholders shaped like the real
    outputs, made by an op that raises ``err`` (same type, same text) when the compiled code runs."""
    lead = logits.shape[:-1] if isinstance(logits, Tensor) else ()
    device = logits.device if isinstance(logits, Tensor) else None
    error = next(name for name, kind in _ERRORS.items() if isinstance(err, kind))  # not type(err).__name__:
    out = _argument_error(torch.empty(lead, device=device), error, str(err))  # torch 2.11 cannot trace that
    return out, out


def row_outputs(rows: Tensor, has_targets: bool) -> tuple[Tensor, Tensor, Tensor]:
    """A forward op's ``(logp, H, stats)`` for the rows of ``rows`` (``[..., V]`` logits or ``[..., D]`` hidden
    states): ``[N]`` (``[0]`` without targets), ``[N]``, ``[N, 2]``, in the accumulation dtype."""
    n = math.prod(rows.shape[:-1])
    out = dict(device=rows.device, dtype=accumulation_dtype(rows.dtype))
    return torch.empty(n if has_targets else 0, **out), torch.empty(n, **out), torch.empty((n, 2), **out)


def undefined_logp_grad(grad_logp: Tensor, logp_defined: Tensor) -> Tensor:
    """``grad_logp``, NaN where a nonzero gradient flows into an undefined (NaN) log-prob.

    A zero upstream gradient (the ``ignore_index`` pattern: ``torch.where(t != -100, logp, 0)``) gives a
    zero gradient, so excluded rows never poison the weights.
    """
    return torch.where(logp_defined | (grad_logp == 0), grad_logp, float("nan"))
