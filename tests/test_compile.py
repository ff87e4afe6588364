"""The ops are torch.library custom ops: opcheck passes and torch.compile(fullgraph=True) traces them."""

import pytest
import torch

import aer_kernels as ak


def loss_fn(backend):
    def loss(x, y, mask):
        logp, h = ak.logprobs_and_entropy(x, y, temperature=0.8, mask=mask, backend=backend)
        return (logp * 0.5 - 0.01 * h).sum() + ak.entropy(x, backend=backend).mean()

    return loss


def inputs(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 97, generator=g) * 3).to(device)
    y = torch.randint(97, (3, 4), generator=g).to(device)
    mask = (torch.rand(3, 4, generator=g) > 0.2).to(device)
    return x, y, mask


def test_fullgraph_compile_matches_eager(backend, device):
    compiler = "inductor" if backend == "reference" else "aot_eager"  # inductor's CPU build is slow: once
    x, y, mask = inputs(device)
    eager_x = x.clone().requires_grad_(True)
    loss_fn(backend)(eager_x, y, mask).backward()
    compiled_x = x.clone().requires_grad_(True)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn(backend), fullgraph=True, backend=compiler)
    compiled(compiled_x, y, mask).backward()
    assert torch.allclose(compiled_x.grad, eager_x.grad, atol=1e-6)


def test_opcheck(backend, device):
    x, y, mask = inputs(device)
    x = x.requires_grad_(True)
    torch.library.opcheck(torch.ops.aer_kernels.forward.default, (x, y, mask, 0.8, backend, False))
    torch.library.opcheck(torch.ops.aer_kernels.forward.default, (x, None, None, 1.0, backend, False))
    h, logp, stats = torch.ops.aer_kernels.forward(x.detach(), y, mask, 0.8, backend, False)
    g = torch.randn_like(h)
    torch.library.opcheck(torch.ops.aer_kernels.backward.default, (x.detach(), y, mask, stats, h, g, g, 0.8, backend))
