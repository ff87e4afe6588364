"""Large-magnitude logits and the ignore-index pattern: the cases peers' test suites (Liger-Kernel, TRL) check.

Log-probs and gradients are computed relative to the row max, so they keep PyTorch's own precision
(``torch.log_softmax``, ``F.cross_entropy``) however large the logits, where ``z_y - lse`` would cancel.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import aer_kernels as ak

SCALES = [(1.0, 1e4), (10.0, 0.0), (100.0, 0.0), (1000.0, 0.0)]  # (std, shift) of fp32 logits


def test_huge_equal_logits_keep_their_log_prob(backend, device):
    x = torch.tensor([[1e30, 1e30]], device=device)
    logp, h = ak.logprobs_and_entropy(x, torch.tensor([0], device=device), backend=backend)
    assert logp.item() == pytest.approx(-math.log(2), abs=1e-7) and h.item() == pytest.approx(math.log(2), abs=1e-7)


@pytest.mark.parametrize("std, shift", SCALES)
def test_log_probs_and_gradients_at_pytorch_precision(backend, device, std, shift):
    """Errors against float64 no worse than twice PyTorch's best fp32 ops' (plus 1e-8), at every scale."""
    g = torch.Generator().manual_seed(int(std))
    x = (torch.randn(16, 1000, generator=g) * std + shift).to(device)
    y = torch.randint(1000, (16,), generator=g).to(device)

    x64 = x.double().requires_grad_(True)
    logp64 = torch.log_softmax(x64, -1).gather(-1, y[:, None]).squeeze(-1)
    (dlogp64,) = torch.autograd.grad(logp64.sum(), x64)
    x64 = x.double().requires_grad_(True)
    h64 = torch.logsumexp(x64, -1) - (torch.softmax(x64, -1) * x64).sum(-1)
    (dh64,) = torch.autograd.grad(h64.sum(), x64)

    torch_logp = torch.log_softmax(x, -1).gather(-1, y[:, None]).squeeze(-1)
    xc = x.clone().requires_grad_(True)
    (dce,) = torch.autograd.grad(F.cross_entropy(xc, y, reduction="sum"), xc)

    xa = x.clone().requires_grad_(True)
    logp, h = ak.logprobs_and_entropy(xa, y, backend=backend)
    (dlogp,) = torch.autograd.grad(logp.sum(), xa, retain_graph=True)
    (dh,) = torch.autograd.grad(h.sum(), xa)

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(logp, logp64) <= 2 * err(torch_logp, logp64) + 1e-8
    assert err(dlogp, dlogp64) <= 2 * err(-dce, dlogp64) + 1e-8
    assert err(dh, dh64) <= 1e-6 * dh64.abs().max().item() + 1e-9  # ~2e-7 relative: the fp32 rounding of p
    assert err(h, h64) <= 1e-6


@pytest.mark.parametrize("use_mask", [False, True])
def test_ignore_index_rows_get_zero_gradient(backend, device, use_mask):
    """HF/Liger code excludes rows with ``ignore_index=-100`` by a zero upstream gradient: no NaN may leak."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 300, generator=g) * 3).to(device).requires_grad_(True)
    t = torch.randint(300, (6,), generator=g).to(device)
    t[:3] = -100
    keep = t != -100
    logp, h = ak.logprobs_and_entropy(x, t, mask=keep if use_mask else None, backend=backend)
    loss = -torch.where(keep, logp, 0.0).sum() - 0.01 * torch.where(keep, h, 0.0).sum()
    loss.backward()
    assert (x.grad[:3] == 0).all() and torch.isfinite(x.grad).all()
    expected = torch.func.grad(lambda z: F.cross_entropy(z, t, ignore_index=-100, reduction="sum"))(x.detach())
    x64 = x.detach().double().requires_grad_(True)
    h64 = torch.logsumexp(x64, -1) - (torch.softmax(x64, -1) * x64).sum(-1)
    (dh64,) = torch.autograd.grad(h64[3:].sum(), x64)
    assert torch.allclose(x.grad.double(), expected.double() - 0.01 * dh64, atol=1e-6)


def test_nonzero_gradient_into_an_undefined_log_prob_is_nan(backend, device):
    """Where the caller did not exclude an out-of-range target, the row's gradient stays NaN: never plausible."""
    x = torch.randn(3, 50, device=device, requires_grad=True)
    logp, _ = ak.logprobs_and_entropy(x, torch.tensor([-100, 3, 50], device=device), backend=backend)
    logp.sum().backward()
    assert torch.isnan(x.grad[0]).all() and torch.isnan(x.grad[2]).all() and torch.isfinite(x.grad[1]).all()
