"""Every bad argument is refused before any work, with a message naming the argument."""

import pytest
import torch

import aer_kernels as ak

X = torch.randn(2, 3, 11)
Y = torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(logits=torch.zeros(2, 11, dtype=torch.long)), TypeError, "logits must be float"),
        (dict(logits=[[1.0, 2.0]]), TypeError, "logits must be a torch.Tensor"),
        (dict(logits=torch.tensor(1.0)), ValueError, "logits must have shape"),
        (dict(logits=torch.zeros(2, 0)), ValueError, "logits: the vocabulary"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite positive"),
        (dict(temperature=-1.0), ValueError, "temperature must be a finite positive"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite positive"),
        (dict(temperature=float("inf")), ValueError, "temperature must be a finite positive"),
        (dict(temperature=True), TypeError, "temperature must be a Python float"),
        (dict(temperature=torch.tensor(1.0)), TypeError, "temperature must be a Python float"),
        (dict(temperature="1"), TypeError, "temperature must be a Python float"),
        (dict(mask=torch.ones(2, 3)), TypeError, "mask must be a bool tensor"),
        (dict(mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, r"mask must have shape logits.shape\[:-1\]"),
        (dict(mask=torch.ones(2, 3, dtype=torch.bool, device="meta")), ValueError, "mask is on meta"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_entropy_argument_errors(kwargs, error, match):
    args = dict(logits=X) | kwargs
    with pytest.raises(error, match=match):
        ak.entropy(args.pop("logits"), **args)


@pytest.mark.parametrize(
    "targets, error, match",
    [
        (None, TypeError, "targets must be a torch.Tensor of token ids"),
        (Y.float(), TypeError, "targets must be an integer tensor"),
        (Y.bool(), TypeError, "targets must be an integer tensor"),
        (Y[:, :2], ValueError, r"targets must have shape logits.shape\[:-1\] = \(2, 3\)"),
        (Y.to("meta"), ValueError, "targets is on meta"),
        ([0, 1], TypeError, "targets must be a torch.Tensor"),
    ],
)
def test_targets_errors(targets, error, match):
    with pytest.raises(error, match=match):
        ak.logprobs_and_entropy(X, targets)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA logits"):
        ak.entropy(X, backend="triton")


def test_float64_is_reference_only(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="logits: backend='triton' takes float32/float16/bfloat16"):
        ak.entropy(X.double(), backend="triton")
    assert ak.entropy(X.double()).dtype == torch.float64  # the reference path accumulates in float64


def test_errors_come_before_work(monkeypatch):
    """A bad argument fails without touching the data (no kernel runs, nothing allocated)."""
    calls = []
    monkeypatch.setattr(torch, "empty", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        ak.logprobs_and_entropy(X, Y, temperature=-2.0)
    assert calls == []


def test_inplace_backward_refused_under_compile():
    logits = torch.randn(2, 5, requires_grad=True) * 1.0

    @torch.compile(fullgraph=True, backend="eager")
    def f(x):
        return ak.logprobs_and_entropy(x, torch.zeros(2, dtype=torch.long), inplace_backward=True)

    with pytest.raises(Exception, match="inplace_backward=True is not supported under torch.compile"):
        f(logits)
