"""Autograd beyond one backward: a graph of the gradient can be built, but not differentiated again."""

import pytest
import torch

import aer_kernels as ak

DOUBLE_BACKWARD = r"aer_kernels::entropy_bwd .* double backward is not supported"


def setup(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 41, generator=g) * 3).to(device)
    y = torch.randint(41, (3,), generator=g).to(device)
    return x, y


@pytest.mark.parametrize("output", ["entropy", "logp"])
def test_double_backward_names_the_op(backend, device, output):
    x, y = setup(device)
    x = x.requires_grad_(True)
    logp, h = ak.logprobs_and_entropy(x, y, temperature=0.7, backend=backend)
    (grad,) = torch.autograd.grad((h if output == "entropy" else logp).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=DOUBLE_BACKWARD):
        grad.pow(2).sum().backward()


def test_create_graph_gives_the_first_order_gradient(backend, device):
    """create_graph=True (say, for a penalty on another term) leaves this op's gradient unchanged."""
    x, y = setup(device)
    x = x.requires_grad_(True)
    logp, h = ak.logprobs_and_entropy(x, y, temperature=0.7, backend=backend)
    plain = torch.autograd.grad((logp - h).sum(), x, retain_graph=True)[0]
    graphed = torch.autograd.grad((logp - h).sum(), x, create_graph=True)[0]
    assert graphed.requires_grad
    assert torch.equal(graphed.detach(), plain)


def test_inplace_backward_refuses_create_graph(backend, device):
    """The in-place gradient is the logits' own storage, with the logits' history: it cannot enter a graph."""
    x, y = setup(device)
    leaf = x.requires_grad_(True)
    logits = leaf * 1.0
    logp, h = ak.logprobs_and_entropy(logits, y, backend=backend, inplace_backward=True)
    with pytest.raises(RuntimeError, match="create_graph=True needs inplace_backward=False"):
        torch.autograd.grad((logp + h).sum(), leaf, create_graph=True)
