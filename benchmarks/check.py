"""Correctness before timing: a method's outputs and gradient on a few rows against float64.

The tolerance rule of the tests (``aer_kernels.testing``): a method's error may be no worse than the error
of the same PyTorch math run in the logits' dtype, plus a small slack. Gradient errors are relative to the
largest true gradient of the checked rows.
"""

from __future__ import annotations

import torch

from aer_kernels.testing import check_close_to_truth

from .names import VOCAB_PARALLEL_OP

_NAMES = {"entropy": ("H",), "logprobs_and_entropy": ("logp", "H"), VOCAB_PARALLEL_OP: ("logp", "H")}


def check_rows(n: int) -> list[int]:
    """A peaked row, a flat row, the middle, and the far end (where int32 offsets would overflow)."""
    return sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n)))


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t[idx] if t.dim() else t


def check_forward(method, op: str, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None when the method's forward outputs pass; else what failed."""
    n = x.shape[0]
    idx = torch.tensor(check_rows(n), device=x.device)
    # Not under no_grad: the timed forward runs with grad mode on, and torch.compile guards on it, so a
    # no_grad check would compile a graph that is never timed and leave the timed one to compile later.
    got = method.run(op, x, y)
    exact, _ = method.reference(op, x[idx].double(), y[idx], n)
    pytorch, _ = method.reference(op, x[idx], y[idx], n)
    for name, g, t, p in zip(_NAMES[op], got, exact, pytorch):
        failed = check_close_to_truth(g[idx], t, p, x.dtype, f"{method.name} {op} {name}")
        if failed:
            return failed
    return None


def check_backward(method, op: str, x: torch.Tensor, y: torch.Tensor, grads) -> str | None:
    """None when the method's gradient passes on the checked rows; else what failed."""
    n = x.shape[0]
    idx = torch.tensor(check_rows(n), device=x.device)
    xg = (x.clone() if method.mutates_input else x.detach()).requires_grad_(True)
    (got,) = torch.autograd.grad(method.run(op, xg, y), xg, grads)
    got = got[idx]
    del xg
    row_grads = tuple(_pick(g, idx) for g in grads)
    _, exact = method.reference(op, x[idx].double(), y[idx], n, tuple(g.double() for g in row_grads))
    _, pytorch = method.reference(op, x[idx], y[idx], n, row_grads)
    return check_close_to_truth(got, exact, pytorch, x.dtype, f"{method.name} {op} gradient", relative=True)
