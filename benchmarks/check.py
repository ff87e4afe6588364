"""Correctness before timing: a method's outputs and gradient on a few rows against float64.

The tolerance rule of the tests: a method's error may be no worse than the error of the same PyTorch
math run in the logits' dtype, plus a small slack. Gradient errors are relative to the largest
true gradient of the checked rows.
"""

from __future__ import annotations

import torch

from .names import VOCAB_PARALLEL_OP

SLACK = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
_NAMES = {"entropy": ("H",), "logprobs_and_entropy": ("logp", "H"), VOCAB_PARALLEL_OP: ("logp", "H")}


def check_rows(n: int) -> list[int]:
    """A peaked row, a flat row, the middle, and the far end (where int32 offsets would overflow)."""
    return sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n)))


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t[idx] if t.dim() else t


def _verdict(what: str, err: float, bound: float, dtype: torch.dtype) -> str | None:
    if err <= bound:  # False for NaN
        return None
    return f"{what}: error {err:.3g} > bound {bound:.3g} (PyTorch's own error in {dtype} + slack)"


def check_forward(method, op: str, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None when the method's forward outputs pass; else what failed."""
    n = x.shape[0]
    idx = torch.tensor(check_rows(n), device=x.device)
    # Not under no_grad: the timed forward runs with grad mode on, and torch.compile guards on it, so a
    # no_grad check would compile a graph that is never timed and leave the timed one to compile later.
    got = [o[idx].double() for o in method.run(op, x, y)]
    truth = method.reference(op, x[idx].double(), y[idx], n)
    base = [o.double() for o in method.reference(op, x[idx], y[idx], n)]
    for name, g, t, b in zip(_NAMES[op], got, truth, base):
        bound = (b - t).abs().max().item() + SLACK[x.dtype]
        failed = _verdict(f"{method.name} {op} {name}", (g - t).abs().max().item(), bound, x.dtype)
        if failed:
            return failed
    return None


def _reference_grad(method, op, x_rows, y_rows, n, grads):
    x_rows = x_rows.detach().requires_grad_(True)
    outs = method.reference(op, x_rows, y_rows, n)
    (g,) = torch.autograd.grad(outs, x_rows, grads)
    return g.double()


def check_backward(method, op: str, x: torch.Tensor, y: torch.Tensor, grads) -> str | None:
    """None when the method's gradient passes on the checked rows; else what failed."""
    n = x.shape[0]
    idx = torch.tensor(check_rows(n), device=x.device)
    xg = (x.clone() if method.mutates_input else x.detach()).requires_grad_(True)
    (got,) = torch.autograd.grad(method.run(op, xg, y), xg, grads)
    got = got[idx].double()
    del xg
    row_grads = tuple(_pick(g, idx) for g in grads)
    truth = _reference_grad(method, op, x[idx].double(), y[idx], n, tuple(g.double() for g in row_grads))
    base = _reference_grad(method, op, x[idx], y[idx], n, row_grads)
    scale = truth.abs().max().item() or 1.0
    bound = (base - truth).abs().max().item() / scale + SLACK[x.dtype]
    return _verdict(f"{method.name} {op} gradient", (got - truth).abs().max().item() / scale, bound, x.dtype)
