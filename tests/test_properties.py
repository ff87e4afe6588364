"""The kernels' numerical invariants as property tests over random shapes, spreads, dtypes and masked vocab."""

import math

import torch
from conftest import INTERPRETER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aer_kernels as ak

EXAMPLES = 20 if INTERPRETER else 60


@st.composite
def rows(draw):
    n = draw(st.integers(1, 4))
    v = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    std = draw(st.floats(0.05, 30.0))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    masked_frac = draw(st.sampled_from([0.0, 0.3, 0.9]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g) * std + draw(st.floats(-1e3, 1e3))
    x[torch.rand(n, v, generator=g) < masked_frac] = float("-inf")
    x[:, torch.randint(v, (1,), generator=g)] = x.amax().clamp(min=0) if v else 0  # a finite entry per row
    x = x.to(dtype)
    y = torch.randint(v, (n,), generator=g)
    return x, y, draw(st.floats(0.2, 3.0))


def _prop_settings(f):
    return settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))(f)


@_prop_settings
@given(case=rows())
def test_entropy_bounds_and_logp_sign(backend, device, case):
    x, y, temperature = case
    logp, h = ak.logprobs_and_entropy(x.to(device), y.to(device), temperature=temperature, backend=backend)
    n_finite = torch.isfinite(x.float()).sum(-1).double()
    assert (h >= -1e-6).all()
    assert (h.double() <= n_finite.log() + 1e-4 * n_finite.log().clamp(min=1)).all()
    assert (logp <= 1e-6).all()
    assert torch.isfinite(h).all()


@_prop_settings
@given(case=rows())
def test_gradient_rows_sum_to_zero(backend, device, case):
    x, y, temperature = case
    x32 = x.float().to(device).requires_grad_(True)  # fp32 gradient: sums not drowned by rounding
    logp, h = ak.logprobs_and_entropy(x32, y.to(device), temperature=temperature, backend=backend)
    (d_h,) = torch.autograd.grad(h.sum(), x32, retain_graph=True)
    (d_logp,) = torch.autograd.grad(logp.sum(), x32)
    # p = exp(z - lse) is recomputed in fp32: each p carries the rounding of z - lse, ~eps * |z|.
    z = x.float() / temperature
    finite = torch.isfinite(z)
    mag = torch.where(finite, z.abs(), 0).amax(-1).clamp(min=1.0).to(device)
    spread = (torch.where(finite, z, -1e30).amax(-1) - torch.where(finite, z, 1e30).amin(-1)).clamp(min=1.0).to(device)
    rounding = 8 * torch.finfo(torch.float32).eps * mag
    assert (d_h.sum(-1).abs() <= 1e-5 * d_h.abs().sum(-1).clamp(min=1.0) + rounding * spread / temperature).all()
    assert (d_logp.sum(-1).abs() <= 1e-5 + rounding / temperature).all()
    assert math.isfinite(d_h.abs().max().item()) and math.isfinite(d_logp.abs().max().item())
