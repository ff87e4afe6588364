"""Float64 ground truth and the tolerance rule: a kernel's error may not exceed PyTorch's own error
for the same formula run in the input dtype, plus a small slack."""

import torch

SLACK = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}


def formula(x, targets, temperature, mask, grad_h=None, grad_logp=None):
    """``(logp, H, dx)`` from the plain PyTorch formula, computed in ``x``'s own dtype."""
    x = x.detach().clone().requires_grad_(True)
    z = x / temperature
    lse = torch.logsumexp(z, -1)
    z_finite = torch.where(z == float("-inf"), 0.0, z)  # the -inf entries contribute p = 0
    h = lse - (torch.softmax(z, -1) * z_finite).sum(-1)
    logp = None
    if targets is not None:
        y = targets.long().clamp(0, x.shape[-1] - 1)
        logp = z.gather(-1, y[..., None]).squeeze(-1) - lse
        in_vocab = (targets >= 0) & (targets < x.shape[-1])
        logp = torch.where(in_vocab, logp, float("nan"))
    if mask is not None:
        h = torch.where(mask, h, 0.0)
        logp = None if logp is None else torch.where(mask, logp, 0.0)
    loss = 0.0
    if grad_h is not None:
        loss = loss + (h * grad_h.to(h.dtype)).sum()
    if grad_logp is not None:
        loss = loss + (logp * grad_logp.to(logp.dtype)).sum()
    dx = torch.autograd.grad(loss, x)[0] if torch.is_tensor(loss) else None
    return logp, h.detach(), dx


def truth(x, targets, temperature, mask, grad_h=None, grad_logp=None):
    return formula(x.double(), targets, temperature, mask, grad_h, grad_logp)


def max_err(a, b):
    """Max abs difference over finite entries; the non-finite entries must match exactly."""
    a, b = a.double(), b.double()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN pattern differs"
    assert torch.equal(torch.isinf(a), torch.isinf(b)) and torch.equal(a[torch.isinf(a)], b[torch.isinf(b)]), (
        "inf pattern differs"
    )
    finite = torch.isfinite(a)
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def assert_within_rule(got, exact, baseline, dtype, what):
    """``got`` no further from ``exact`` than ``baseline`` (PyTorch in ``dtype``) is, plus the slack."""
    err, allowed = max_err(got, exact), max_err(baseline, exact) + SLACK[dtype]
    assert err <= allowed, f"{what}: error {err:.3g} > PyTorch's {allowed - SLACK[dtype]:.3g} + slack {SLACK[dtype]}"


def realistic_logits(shape, dtype, generator, std=None):
    """Logits with a realistic spread: per-row std in [2, 8], some rows peaked, some flat."""
    rows = int(torch.tensor(shape[:-1]).prod()) if len(shape) > 1 else 1
    v = shape[-1]
    stds = torch.empty(rows, 1).uniform_(2.0, 8.0, generator=generator) if std is None else torch.full((rows, 1), std)
    x = torch.randn(rows, v, generator=generator) * stds
    if rows >= 3:
        x[0] = 0.01 * torch.randn(v, generator=generator)  # nearly flat
        x[1, torch.randint(v, (1,), generator=generator)] += 40.0  # peaked
    return x.reshape(shape).to(dtype)
