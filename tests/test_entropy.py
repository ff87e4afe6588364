"""Numerics of ``entropy`` / ``logprobs_and_entropy`` on both backends against float64 ground truth."""

import math

import pytest
import torch

import aer_kernels as ak
from aer_kernels.testing import assert_close_to_truth, formula, max_error, realistic_logits, truth

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The fp32 block is 4096 columns and the 16-bit block 8192: cover both sides of each boundary.
VOCABS = [1, 7, 1000, 4095, 4097, 8191, 8193, 30011]


def run(x, targets, temperature, mask, backend, grad_h=None, grad_logp=None, inplace=False):
    """Public API forward and (when upstream grads are given) backward; returns (logp, H, dx)."""
    leaf = x.detach().clone().requires_grad_(True)
    src = leaf * 1 if inplace else leaf  # in-place needs a non-leaf
    if targets is None:
        h, logp = ak.entropy(src, temperature=temperature, mask=mask, backend=backend), None
    else:
        logp, h = ak.logprobs_and_entropy(
            src, targets, temperature=temperature, mask=mask, backend=backend, inplace_backward=inplace
        )
    loss = 0.0
    if grad_h is not None:
        loss = loss + (h * grad_h).sum()
    if grad_logp is not None:
        loss = loss + (logp * grad_logp).sum()
    if torch.is_tensor(loss):
        loss.backward()
    return (None if logp is None else logp.detach()), h.detach(), leaf.grad


def check_against_truth(x, targets, temperature, mask, backend, grad_h, grad_logp):
    dtype = x.dtype
    logp, h, dx = run(x, targets, temperature, mask, backend, grad_h, grad_logp)
    assert h.dtype == torch.float32 and h.shape == x.shape[:-1]
    t_logp, t_h, t_dx = truth(x, targets, temperature, mask, grad_h, grad_logp)
    b_logp, b_h, b_dx = formula(x, targets, temperature, mask, grad_h, grad_logp)
    assert_close_to_truth(h, t_h, b_h, dtype, "H")
    if targets is not None:
        assert logp.dtype == torch.float32
        assert_close_to_truth(logp, t_logp, b_logp, dtype, "logp")
    if dx is not None:
        assert dx.dtype == dtype and dx.shape == x.shape
        assert_close_to_truth(dx, t_dx, b_dx, dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_matches_float64(backend, device, dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    x = realistic_logits((5, vocab), dtype, g).to(device)
    targets = torch.randint(vocab, (5,), generator=g).to(device)
    mask = torch.tensor([True, True, False, True, True], device=device)
    grad_h, grad_logp = torch.randn(2, 5, generator=g).to(device)
    for temperature in (1.0, 0.6):
        check_against_truth(x, targets, temperature, mask, backend, grad_h, grad_logp)
    check_against_truth(x, None, 1.7, None, backend, grad_h, None)


def test_qwen_vocab_two_rows(backend, device):
    g = torch.Generator().manual_seed(0)
    x = realistic_logits((2, 151936), torch.bfloat16, g).to(device)
    targets = torch.tensor([0, 151935], device=device)
    grads = torch.randn(2, 2, generator=g).to(device)
    check_against_truth(x, targets, 0.9, None, backend, grads[0], grads[1])


@pytest.mark.parametrize("which", ["h", "logp", "both"])
def test_either_output_alone(backend, device, which):
    """An unused output contributes nothing to the gradient."""
    g = torch.Generator().manual_seed(1)
    x = realistic_logits((4, 300), torch.float32, g).to(device)
    targets = torch.randint(300, (4,), generator=g).to(device)
    gh = torch.randn(4, generator=g).to(device) if which in ("h", "both") else None
    gl = torch.randn(4, generator=g).to(device) if which in ("logp", "both") else None
    check_against_truth(x, targets, 1.3, None, backend, gh, gl)


def test_3d_and_strided_views(backend, device):
    g = torch.Generator().manual_seed(2)
    full = realistic_logits((3, 6, 520), torch.bfloat16, g).to(device)
    views = {
        "3d": full,
        "sliced time": full[:, :-1],  # rows at two strides, no copy
        "sliced vocab": full[..., :500],  # row stride 520 > V
        "transposed": full.transpose(0, 1),  # leading dims not collapsible: copied once
        "strided vocab": full[..., ::2],  # last-dim stride 2: copied once
    }
    for x in views.values():
        targets = torch.randint(x.shape[-1], x.shape[:-1], generator=g).to(device)
        mask = torch.rand(x.shape[:-1], generator=g).to(device) > 0.3
        gh, gl = torch.randn(2, *x.shape[:-1], generator=g).to(device)
        check_against_truth(x, targets, 0.8, mask, backend, gh, gl)


def test_empty_batch(backend, device):
    x = torch.randn(2, 0, 11, device=device)
    logp, h = ak.logprobs_and_entropy(x, torch.zeros(2, 0, dtype=torch.long, device=device), backend=backend)
    assert logp.shape == h.shape == (2, 0)


def test_neg_inf_logits(backend, device):
    """Masked vocab entries (-inf) contribute probability 0 and no NaN, forward or backward."""
    g = torch.Generator().manual_seed(3)
    x = realistic_logits((6, 1000), torch.float32, g)
    x[torch.rand(6, 1000, generator=g) < 0.5] = float("-inf")
    x[:, 0] = 1.0  # every row keeps a finite entry
    x, targets = x.to(device), torch.zeros(6, dtype=torch.long, device=device)
    gh, gl = torch.randn(2, 6, generator=g).to(device)
    logp, h, dx = run(x, targets, 1.0, None, backend, gh, gl)
    assert torch.isfinite(h).all() and torch.isfinite(logp).all() and torch.isfinite(dx).all()
    assert (dx[x == float("-inf")] == 0).all()
    check_against_truth(x, targets, 1.0, None, backend, gh, gl)


def test_target_on_neg_inf_logit(backend, device):
    x = torch.randn(2, 50, device=device)
    x[:, 7] = float("-inf")
    targets = torch.tensor([7, 3], device=device)
    logp, h, dx = run(x, targets, 1.0, None, backend, torch.ones(2, device=device), torch.ones(2, device=device))
    assert logp[0] == float("-inf") and torch.isfinite(logp[1])
    assert torch.isfinite(h).all() and torch.isfinite(dx).all()
    assert dx[0, 7] == 1.0  # d logp / d x_y = 1 - p_y with p_y = 0


def test_rows_without_a_distribution_give_nan(backend, device):
    """All -inf, +inf or NaN rows output NaN (and NaN gradient); the other rows are unaffected."""
    g = torch.Generator().manual_seed(4)
    x = realistic_logits((5, 300), torch.float32, g)
    x[0] = float("-inf")
    x[1, 10] = float("inf")
    x[2, 20] = float("nan")
    x = x.to(device)
    targets = torch.full((5,), 3, device=device)
    gh, gl = torch.ones(2, 5, device=device)
    logp, h, dx = run(x, targets, 1.0, None, backend, gh, gl)
    assert torch.isnan(h[:3]).all() and torch.isnan(logp[:3]).all()
    assert torch.isnan(dx[:3]).any(dim=-1).all()
    assert torch.isfinite(h[3:]).all() and torch.isfinite(dx[3:]).all()


def test_masked_rows_are_zero_whatever_they_hold(backend, device):
    x = torch.randn(4, 100, device=device)
    x[1] = float("nan")
    x[2] = float("-inf")
    targets = torch.tensor([1, -5, 1000, 2], device=device)  # out-of-range targets on masked rows
    mask = torch.tensor([True, False, False, True], device=device)
    logp, h, dx = run(x, targets, 1.0, mask, backend, torch.ones(4, device=device), torch.ones(4, device=device))
    assert (h[1:3] == 0).all() and (logp[1:3] == 0).all() and (dx[1:3] == 0).all()
    assert torch.isfinite(h).all() and torch.isfinite(dx).all()


def test_out_of_range_target_is_nan(backend, device):
    x = torch.randn(4, 100, device=device)
    targets = torch.tensor([-1, 100, 10**12, 5], device=device)
    logp, h, dx = run(x, targets, 1.0, None, backend, None, torch.ones(4, device=device))
    assert torch.isnan(logp[:3]).all() and torch.isfinite(logp[3]) and torch.isfinite(h).all()
    assert torch.isnan(dx[:3]).all() and torch.isfinite(dx[3]).all()


def test_shift_invariance_all_negative_rows(backend, device):
    """A running max initialised to 0 (or padding lanes counted as exp(0)) breaks these rows."""
    g = torch.Generator().manual_seed(5)
    base = realistic_logits((3, 4097), torch.float32, g, std=3.0)
    targets = torch.randint(4097, (3,), generator=g).to(device)
    gh, gl = torch.randn(2, 3, generator=g).to(device)
    ref_logp, ref_h, ref_dx = run(base.to(device), targets, 1.0, None, backend, gh, gl)
    for shift in (-200.0, -1e3, 50.0):
        logp, h, dx = run((base + shift).to(device), targets, 1.0, None, backend, gh, gl)
        tol = 1e-4 * max(1.0, abs(shift) / 100)  # the shifted fp32 input itself is rounded
        assert max_error(h, ref_h) < tol and max_error(logp, ref_logp) < tol and max_error(dx, ref_dx) < tol


@pytest.mark.parametrize("vocab", [1, 4097, 8193])
def test_uniform_and_peaked_rows(backend, device, vocab):
    x = torch.zeros(2, vocab, device=device)
    x[1, vocab // 2] = 1e4
    h = ak.entropy(x, backend=backend)
    assert abs(h[0].item() - math.log(vocab)) < 1e-5
    assert abs(h[1].item()) < 1e-6


def test_deterministic(backend, device):
    g = torch.Generator().manual_seed(6)
    x = realistic_logits((5, 9000), torch.bfloat16, g).to(device)
    targets = torch.randint(9000, (5,), generator=g).to(device)
    gh, gl = torch.randn(2, 5, generator=g).to(device)
    first = run(x, targets, 0.7, None, backend, gh, gl)
    second = run(x, targets, 0.7, None, backend, gh, gl)
    for a, b in zip(first, second):
        assert torch.equal(
            a.view(torch.uint8) if a.dtype == torch.bfloat16 else a,
            b.view(torch.uint8) if b.dtype == torch.bfloat16 else b,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_unchanged(backend, device, dtype):
    x = torch.randn(3, 4, 77, device=device, dtype=dtype, requires_grad=True)
    saved = x.detach().clone()
    logp, h = ak.logprobs_and_entropy(
        x, torch.zeros(3, 4, dtype=torch.long, device=device), temperature=0.5, backend=backend
    )
    (logp.sum() + h.sum()).backward()
    assert torch.equal(x.detach(), saved)


def test_inplace_backward_matches(backend, device):
    g = torch.Generator().manual_seed(7)
    x = realistic_logits((4, 5000), torch.bfloat16, g).to(device)
    targets = torch.randint(5000, (4,), generator=g).to(device)
    mask = torch.tensor([True, False, True, True], device=device)
    gh, gl = torch.randn(2, 4, generator=g).to(device)
    _, _, expected = run(x, targets, 1.1, mask, backend, gh, gl)
    _, _, got = run(x, targets, 1.1, mask, backend, gh, gl, inplace=True)
    assert torch.equal(got, expected)


def test_inplace_backward_writes_into_logits(backend, device):
    leaf = torch.randn(3, 64, device=device, requires_grad=True)
    logits = leaf * 2.0
    logp, h = ak.logprobs_and_entropy(
        logits, torch.zeros(3, dtype=torch.long, device=device), backend=backend, inplace_backward=True
    )
    (logp.sum() + h.sum()).backward(retain_graph=True)
    assert torch.allclose(logits.detach() * 2.0, leaf.grad)  # logits now hold dL/dlogits


def test_inplace_backward_refuses_to_corrupt(backend, device):
    leaf = torch.randn(3, 64, device=device, requires_grad=True)
    targets = torch.zeros(3, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="leaf"):
        ak.logprobs_and_entropy(leaf, targets, backend=backend, inplace_backward=True)
    with pytest.raises(ValueError, match="share memory"):
        ak.logprobs_and_entropy((leaf[:1] * 1).expand(3, 64), targets, backend=backend, inplace_backward=True)
    # A second loss that saved the same logits (pow saves its input). When its backward runs after ours
    # (it was recorded first), autograd's version counter refuses the overwritten value...
    logits = leaf * 1.0
    other = (logits**2).sum()
    logp, _ = ak.logprobs_and_entropy(logits, targets, backend=backend, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (logp.sum() + other).backward()
    # ...and when it runs before ours, it read the intact logits and the gradient is exact.
    leaf.grad = None
    logits = leaf * 1.0
    logp, _ = ak.logprobs_and_entropy(logits, targets, backend=backend, inplace_backward=True)
    (logp.sum() + (logits**2).sum()).backward()
    expected = 2 * leaf.detach() - torch.softmax(leaf.detach(), -1)
    expected[:, 0] += 1
    assert torch.allclose(leaf.grad, expected, atol=1e-6)
