"""The implementations compared: each maps ``(op, logits, targets)`` to its outputs.

``op`` is ``"entropy"`` (outputs ``(H,)``), ``"logprobs_and_entropy"`` (outputs ``(logp, H)``), or, for
aer_kernels only, ``"vocab_parallel_logprobs_and_entropy"`` at world size 1 (outputs ``(logp, H)``).
A method's ``reference`` is its math in plain PyTorch, run on a few rows in float64 (the truth)
and in the logits' dtype (PyTorch's own error) by the correctness check: by default
``aer_kernels.testing.formula``, the formula the tests hold the kernels to.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import aer_kernels as ak
from aer_kernels import testing

from . import bench_vocab_parallel
from .names import METHOD_NAMES, MODES, OPS, SINGLE_GPU_OPS, VOCAB_PARALLEL_OP

CHUNK_ROWS = 2048
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def formula(op: str, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What RL trainers write today, computed in ``z``'s dtype: the eager methods."""
    h = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    if op == "entropy":
        return (h,)
    return torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1), h


def formula_fp32(op: str, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return formula(op, x.float(), y)


def _entropy_fp32(x, y):
    return formula_fp32("entropy", x, y)


def _logprobs_and_entropy_fp32(x, y):
    return formula_fp32("logprobs_and_entropy", x, y)


def pytorch_reference(op: str, x: torch.Tensor, y: torch.Tensor, n_rows: int, grads=None):
    """``(outputs, dx)`` by ``aer_kernels.testing.formula`` in ``x``'s dtype: the op's outputs and, given their
    upstream ``grads``, the logits' gradient (``n_rows``, the rows of the whole batch, is unused: per-row ops)."""
    if op == "entropy":
        _, h, dx = testing.formula(x, None, 1.0, None, (grads or (None,))[0])
        return (h,), dx
    grad_logp, grad_h = grads or (None, None)
    logp, h, dx = testing.formula(x, y, 1.0, None, grad_h, grad_logp)
    return (logp, h), dx


def cross_entropy_reference(op: str, x: torch.Tensor, y: torch.Tensor, n_rows: int, grads=None):
    """Liger's loss restricted to some rows, mean cross-entropy over all ``n_rows`` rows, and its gradient."""
    with torch.enable_grad():
        z = x.detach().requires_grad_(grads is not None)
        loss = F.cross_entropy(z, y, reduction="sum") / n_rows
        dx = None if grads is None else torch.autograd.grad(loss, z, grads)[0]
    return (loss.detach(),), dx


def row_grads(op: str, n: int, device: torch.device, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """Random fp32 upstream gradients, one per per-row output."""
    from .data import make_row_grads

    return make_row_grads(n, 1 if op == "entropy" else 2, device, seed)


def scalar_grad(op: str, n: int, device: torch.device, seed: int = 2) -> tuple[torch.Tensor]:
    return (torch.ones((), device=device),)


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[str, torch.Tensor, torch.Tensor], tuple]
    modes: tuple[str, ...] = MODES
    ops: tuple[str, ...] = SINGLE_GPU_OPS
    cuda_only: bool = False
    mutates_input: bool = False  # writes into the logits: gets its own copy
    max_elements: int | None = None  # N * V it can address
    reference: Callable = pytorch_reference  # (op, x rows, y rows, n_rows, grads) -> (outputs, dx)
    upstream: Callable = row_grads


def _aer_kernels(device: torch.device) -> Method:
    from aer_kernels._validate import interpreter_enabled

    # On a CPU the public API runs the reference path, or the Triton kernels under the interpreter.
    backend = "triton" if device.type == "cpu" and interpreter_enabled() else "auto"

    def run(op, x, y):
        if op == "entropy":
            return (ak.entropy(x, backend=backend),)
        if op == VOCAB_PARALLEL_OP:
            return bench_vocab_parallel.call(x, y, backend=backend)
        return ak.logprobs_and_entropy(x, y, backend=backend)

    return Method("aer_kernels", run, ops=OPS)


def _torch_compile() -> Method:
    import torch._dynamo

    # A graph per op, V and autograd state: lift the default limit of 8 recompiles.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    import torch._functorch.config as functorch_config

    # The bwd mode replays one backward graph (retain_graph=True), which donated buffers forbid.
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    compiled = {
        "entropy": torch.compile(_entropy_fp32, dynamic=False),
        "logprobs_and_entropy": torch.compile(_logprobs_and_entropy_fp32, dynamic=False),
    }

    def run(op, x, y):
        # N varies from batch to batch in RL while V is fixed per model: one graph per (op, V), not per shape.
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(y, 0)
        return compiled[op](x, y)

    return Method("torch_compile", run)


def _chunked(op, x, y):
    # Checkpointed per chunk, so the backward too holds one chunk's fp32 temporaries at a time.
    parts = []
    for i in range(0, x.shape[0], CHUNK_ROWS):
        xs, ys = x[i : i + CHUNK_ROWS], y[i : i + CHUNK_ROWS]
        if x.requires_grad:
            parts.append(checkpoint(formula_fp32, op, xs, ys, use_reentrant=False))
        else:
            parts.append(formula_fp32(op, xs, ys))
    return tuple(torch.cat(p) for p in zip(*parts))


def _trl() -> Method:
    fn = importlib.import_module("trl.kernels").selective_log_softmax_and_entropy

    def run(op, x, y):
        logp, h = fn(x, y)  # (log-prob of index, entropy), fp32, temperature 1
        return (h,) if op == "entropy" else (logp, h)

    # Its kernel forms row offsets as int32 program id x stride: past 2**31 elements it reads out of bounds.
    return Method("trl", run, cuda_only=True, max_elements=2**31 - 1)


def _liger_ce() -> Method:
    fn = importlib.import_module("liger_kernel.transformers.functional").liger_cross_entropy

    def run(op, x, y):
        loss = fn(x, y)
        return (loss[0] if isinstance(loss, tuple) else loss,)

    # Cross-entropy, not entropy: its forward writes the gradient over the logits (one read + one
    # write, the bytes of fwd+bwd), so it is timed in that mode only, as a ceiling.
    return Method(
        "liger_ce",
        run,
        modes=("fwd+bwd",),
        cuda_only=True,
        mutates_input=True,
        reference=cross_entropy_reference,
        upstream=scalar_grad,
    )


_PEERS = {"trl": ("trl", _trl), "liger_ce": ("liger_kernel", _liger_ce)}


def build_methods(names, dtype: torch.dtype, device: torch.device) -> tuple[list[Method], list[str]]:
    """The requested methods that can run here, and one line per method skipped, saying why."""
    own = DTYPE_NAMES[dtype]
    methods, skipped = [], []
    for name in names:
        if name.startswith("eager_") and name != "eager_fp32":
            if name != f"eager_{own}":
                skipped.append(f"{name}: skipped (the logits are {own}; eager_{own} is the formula in their dtype)")
                continue
            methods.append(Method(name, formula))
        elif name == "eager_fp32":
            methods.append(Method(name, formula_fp32))
        elif name == "chunked":
            methods.append(Method(name, _chunked))
        elif name == "aer_kernels":
            methods.append(_aer_kernels(device))
        elif name == "torch_compile":
            methods.append(_torch_compile())
        elif name in _PEERS:
            package, make = _PEERS[name]
            if device.type != "cuda":
                skipped.append(f"{name}: skipped (its Triton kernels need a CUDA GPU)")
                continue
            try:
                methods.append(make())
            except (ImportError, AttributeError) as exc:
                skipped.append(f"{name}: skipped ({package} not installed or without this entry point: {exc})")
        else:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return methods, skipped


def default_method_names(dtype: torch.dtype, device: torch.device) -> list[str]:
    own = f"eager_{DTYPE_NAMES[dtype]}"
    names = ["aer_kernels", "torch_compile", "trl", "liger_ce", own, "eager_fp32", "chunked"]
    if device.type == "cpu":
        names.remove("torch_compile")  # compiling dwarfs the run at CPU sizes; ask for it by name
    return list(dict.fromkeys(names))
