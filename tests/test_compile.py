"""The ops are torch.library custom ops: opcheck passes and torch.compile(fullgraph=True) traces them, one graph
for every temperature."""

import pytest
import torch

import aer_kernels as ak

SCHEDULE = [0.3 + 0.11 * i for i in range(12)]  # more values than Dynamo's recompile limit (8)


def loss_fn(backend):
    def loss(x, y, mask, temperature=0.8):
        logp, h = ak.logprobs_and_entropy(x, y, temperature=temperature, mask=mask, backend=backend)
        return (logp * 0.5 - 0.01 * h).sum() + ak.entropy(x, temperature=temperature, backend=backend).mean()

    return loss


def inputs(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 97, generator=g) * 3).to(device)
    y = torch.randint(97, (3, 4), generator=g).to(device)
    mask = (torch.rand(3, 4, generator=g) > 0.2).to(device)
    return x, y, mask


def loss_and_grad(fn, x, *args):
    leaf = x.clone().requires_grad_(True)
    loss = fn(leaf, *args)
    loss.backward()
    return loss.detach().clone(), leaf.grad


def test_fullgraph_compile_matches_eager(backend, device):
    compiler = "inductor" if backend == "reference" else "aot_eager"  # inductor's CPU build is slow: once
    x, y, mask = inputs(device)
    _, eager_grad = loss_and_grad(loss_fn(backend), x, y, mask)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn(backend), fullgraph=True, backend=compiler)
    _, compiled_grad = loss_and_grad(compiled, x, y, mask)
    assert torch.allclose(compiled_grad, eager_grad, atol=1e-6)


def test_temperature_schedule_does_not_recompile(backend, device):
    """Each temperature of a schedule runs through the same compiled graphs, with its own value."""
    compiler = "inductor" if backend == "reference" else "aot_eager"
    x, y, mask = inputs(device)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn(backend), fullgraph=True, backend=compiler)
    for t in SCHEDULE:
        eager_loss, eager_grad = loss_and_grad(loss_fn(backend), x, y, mask, t)
        compiled_loss, compiled_grad = loss_and_grad(compiled, x, y, mask, t)
        assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5), t
        assert torch.allclose(compiled_grad, eager_grad, atol=1e-6), t


def test_temperature_schedule_traces_at_most_twice():
    """Dynamo traces the first temperature as a constant, the second as a symbol that serves the rest."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, y, mask = inputs("cpu")
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn("reference"), fullgraph=True, backend=counting_backend)
    for t in SCHEDULE:
        loss_and_grad(compiled, x, y, mask, t)
    assert len(graphs) <= 2


@pytest.mark.cuda
def test_temperature_schedule_under_cuda_graphs():
    """mode="reduce-overhead" replays CUDA graphs: no replay may keep the temperature of the captured call."""
    x, y, mask = inputs("cuda")
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn("auto"), fullgraph=True, mode="reduce-overhead")
    for t in [0.5, 0.9, 1.3, 0.5, 0.9, 1.3]:
        eager_loss, eager_grad = loss_and_grad(loss_fn("auto"), x, y, mask, t)
        compiled_loss, compiled_grad = loss_and_grad(compiled, x, y, mask, t)
        assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5), t
        assert torch.allclose(compiled_grad, eager_grad, atol=1e-6), t


def test_opcheck(backend, device):
    x, y, mask = inputs(device)
    x = x.requires_grad_(True)
    t = torch.tensor(0.8, dtype=torch.float64)  # the temperature as torch.compile passes it
    forward, backward = torch.ops.aer_kernels.entropy_fwd.default, torch.ops.aer_kernels.entropy_bwd.default
    torch.library.opcheck(forward, (x, y, mask, 0.8, backend, False))
    torch.library.opcheck(forward, (x, None, None, 1.0, backend, False))
    torch.library.opcheck(forward, (x, y, mask, 1.0, backend, False, t))
    _logp, h, stats = torch.ops.aer_kernels.entropy_fwd(x.detach(), y, mask, 0.8, backend, False)
    g = torch.randn_like(h)
    torch.library.opcheck(backward, (x.detach(), y, mask, stats, h, g, g, 0.8, backend))
    torch.library.opcheck(backward, (x.detach(), y, mask, stats, h, g, g, 1.0, backend, t))
    assert torch.equal(torch.ops.aer_kernels.entropy_fwd(x.detach(), y, mask, 1.0, backend, False, t)[1], h)
