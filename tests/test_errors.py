"""Every bad argument is refused before any work, with a message naming the argument: the same error, type and
text, eagerly and under ``torch.compile(fullgraph=True)`` (raised when the compiled function runs)."""

import math

import pytest
import torch

import aer_kernels as ak
from aer_kernels.testing import assert_close_to_truth, formula, realistic_logits, truth

X = torch.randn(2, 3, 11)
Y = torch.zeros(2, 3, dtype=torch.long)
OUTSIDE_RANGE = r"temperature must be a finite positive number in \[1e-30, 1e\+30\]"

ENTROPY_ERRORS = [
    (dict(logits=torch.zeros(2, 11, dtype=torch.long)), TypeError, "logits must be float"),
    (dict(logits=[[1.0, 2.0]]), TypeError, "logits must be a torch.Tensor"),
    (dict(logits=torch.tensor(1.0)), ValueError, "logits must have shape"),
    (dict(logits=torch.zeros(2, 0)), ValueError, r"logits: the vocabulary \(last\) dim is empty, shape \(2, 0\)"),
    (dict(temperature=0.0), ValueError, OUTSIDE_RANGE + ".*got 0.0"),
    (dict(temperature=-1.0), ValueError, OUTSIDE_RANGE + ".*got -1.0"),
    (dict(temperature=float("nan")), ValueError, OUTSIDE_RANGE + ".*got nan"),
    (dict(temperature=float("inf")), ValueError, OUTSIDE_RANGE + ".*got inf"),
    # 1 / T or 1e4 / T overflows float32 below the range; 1 / T flushes to zero above it
    (dict(temperature=1e-39), ValueError, OUTSIDE_RANGE + ".*got 1e-39"),
    (dict(temperature=9e-31), ValueError, OUTSIDE_RANGE),
    (dict(temperature=1.1e30), ValueError, OUTSIDE_RANGE),
    (dict(temperature=1e39), ValueError, OUTSIDE_RANGE),
    (dict(temperature=True), TypeError, "temperature must be a Python float"),
    (dict(temperature=torch.tensor(1.0)), TypeError, "temperature must be a Python float"),
    (dict(temperature="1"), TypeError, "temperature must be a Python float"),
    (dict(mask=torch.ones(2, 3)), TypeError, "mask must be a bool tensor"),
    (
        dict(mask=torch.ones(3, 2, dtype=torch.bool)),
        ValueError,
        r"mask must have shape logits.shape\[:-1\] = \(2, 3\), got \(3, 2\)",
    ),
    (dict(mask=torch.ones(2, 3, dtype=torch.bool, device="meta")), ValueError, "mask is on meta"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
]

TARGETS_ERRORS = [
    (None, TypeError, "targets must be a torch.Tensor of token ids"),
    (Y.float(), TypeError, "targets must be an integer tensor"),
    (Y.bool(), TypeError, "targets must be an integer tensor"),
    (Y[:, :2], ValueError, r"targets must have shape logits.shape\[:-1\] = \(2, 3\), got \(2, 2\)"),
    (Y[:1, :1], ValueError, r"got \(1, 1\)"),
    (Y.to("meta"), ValueError, "targets is on meta"),
    ([0, 1], TypeError, "targets must be a torch.Tensor"),
]

# Dynamo's float input is symbolic either way; dynamic=True makes the sizes symbolic too.
CALLS = ["eager", "compiled", "compiled-dynamic"]


def call(how, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` eagerly or inside ``torch.compile(fullgraph=True)``, the arguments as its inputs."""
    if how == "eager":
        return fn(*args, **kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, k: fn(*a, **k), fullgraph=True, backend="eager", dynamic=True if how == "compiled-dynamic" else None
    )
    return compiled(args, kwargs)


@pytest.mark.parametrize("how", CALLS)
@pytest.mark.parametrize("kwargs, error, match", ENTROPY_ERRORS)
def test_entropy_argument_errors(kwargs, error, match, how):
    args = dict(logits=X) | kwargs
    with pytest.raises(error, match=match) as raised:
        call(how, ak.entropy, args.pop("logits"), **args)
    assert type(raised.value) is error


@pytest.mark.parametrize("how", CALLS)
@pytest.mark.parametrize("targets, error, match", TARGETS_ERRORS)
def test_targets_errors(targets, error, match, how):
    with pytest.raises(error, match=match) as raised:
        call(how, ak.logprobs_and_entropy, X, targets)
    assert type(raised.value) is error


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_error_survives_an_unused_result(compiler):
    """The compiled error is not dead code: it raises even when the call's outputs are never used."""

    def f(x, t):
        ak.logprobs_and_entropy(x, Y, temperature=t)
        return x * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=compiler)
    x = torch.randn(2, 3, 11, requires_grad=True)
    assert torch.equal(compiled(x, 0.5), x * 2)
    with pytest.raises(ValueError, match=OUTSIDE_RANGE + ".*got -0.5"):
        compiled(x, -0.5)


@pytest.mark.parametrize("temperature", [1e-30, 1e30])
def test_temperature_range_ends_are_exact(backend, device, temperature):
    """At both ends of the range the outputs and the gradient stay finite where float64's are, hold PyTorch's
    own accuracy, and reach the limits: H -> 0 as T -> 0, H -> log(#finite logits) as T -> inf."""
    g = torch.Generator().manual_seed(0)
    x = realistic_logits((4, 37), torch.float32, g)
    x[1, 5] = -math.inf
    x[2, :10] = -math.inf
    targets = torch.tensor([int(x[0].argmax()), 5, 12, 20])
    grad_h, grad_logp = torch.randn(2, 4, generator=g)
    x, targets, grad_h, grad_logp = (t.to(device) for t in (x, targets, grad_h, grad_logp))
    leaf = x.clone().requires_grad_(True)
    logp, h = ak.logprobs_and_entropy(leaf, targets, temperature=temperature, backend=backend)
    ((h * grad_h).sum() + (logp * grad_logp).sum()).backward()
    exact = truth(x, targets, temperature, None, grad_h, grad_logp)
    baseline = formula(x, targets, temperature, None, grad_h, grad_logp)
    for got, t, b, what in zip((logp, h, leaf.grad), exact, baseline, ("logp", "H", "dlogits")):
        assert_close_to_truth(got.detach(), t, b, torch.float32, what)
    n_finite = torch.isfinite(x).sum(-1).double()
    limit = torch.zeros(4, dtype=torch.float64) if temperature < 1 else n_finite.log().cpu()
    assert torch.allclose(h.detach().double().cpu(), limit, atol=1e-6)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA logits"):
        ak.entropy(X, backend="triton")


def test_float64_is_reference_only(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="logits: backend='triton' takes float32/float16/bfloat16"):
        ak.entropy(X.double(), backend="triton")
    assert ak.entropy(X.double()).dtype == torch.float64  # the reference path accumulates in float64


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_logits_are_refused(dtype):
    """No backend is tested on float8: the message lists what is supported instead of reading it anyway."""
    with pytest.raises(TypeError, match=r"logits must be float32, float16 or bfloat16 \(float64 on the reference"):
        ak.entropy(X.to(dtype))


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

    with pytest.raises(ValueError, match=r"inplace_backward=True is not supported under torch\.compile"):
        f(logits)
