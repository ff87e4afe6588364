"""The Triton kernels on a CUDA GPU, at real sizes, against float64.

Accuracy follows the tolerance rule of aer_kernels.testing: on random logits with a realistic spread, the
kernels' error may be no worse than that of the same PyTorch formula run in the logits' dtype, plus a slack
(fp32 1e-5, fp16 1e-3, bf16 1e-2); gradient errors are taken relative to the largest true gradient. Memory:
forward at most 16 bytes a row, backward the gradient buffer only, in-place backward nothing.
"""

import functools

import pytest
import torch

import aer_kernels as ak
from aer_kernels.testing import (
    assert_close_to_truth,
    formula,
    random_row_grads,
    random_targets,
    realistic_logits,
    truth,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OPS = ["entropy", "logprobs_and_entropy"]
NAMES = {"entropy": ("H",), "logprobs_and_entropy": ("logp", "H")}
# On an H100/H200: many programs per row, two, and one (see _config.launch_config); then rows that do not
# start on a 16-byte boundary (GPT-2's vocabulary), read by the peeled-edge path.
SHAPES = [(8, 151936), (1024, 128256), (4096, 32000), (2048, 50257)]
ALLOC_SLACK = 4096  # the caching allocator rounds each block up to 512 bytes


def _ids(value):
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value).replace("torch.", "")


@functools.cache
def _drawn_logits(n, v, dtype, seed):
    """Drawn once on the CPU (single-threaded: about 80 M logits/s on one core), kept in host
    memory: the tests share shapes."""
    return realistic_logits((n, v), dtype, torch.Generator().manual_seed(seed))


def _logits(n, v, dtype, seed=0):
    """A fresh GPU copy: tests make it a leaf or write gradients into it."""
    return _drawn_logits(n, v, dtype, seed).to("cuda")


def _targets(n, v, seed=1):
    return random_targets((n,), v, torch.Generator().manual_seed(seed), device="cuda")


def _row_grads(op, n, seed=2):
    return random_row_grads((n,), len(NAMES[op]), torch.Generator().manual_seed(seed), device="cuda")


def _kernel(op, x, y, **kwargs):
    if op == "entropy":
        return (ak.entropy(x, **kwargs),)
    return ak.logprobs_and_entropy(x, y, **kwargs)


def _pytorch(fn, op, x, y, grads=None, temperature=1.0):
    """The op's outputs and, given their upstream ``grads``, the logits' gradient, by ``truth`` or ``formula``."""
    if op == "entropy":
        targets, grad_logp, grad_h = None, None, (grads or (None,))[0]
    else:
        targets, (grad_logp, grad_h) = y, (grads or (None, None))
    logp, h, dx = fn(x, targets, temperature, None, grad_h, grad_logp)
    return ((h,) if op == "entropy" else (logp, h)), dx


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_forward_against_float64(dtype, op, shape):
    n, v = shape
    x, y = _logits(n, v, dtype), _targets(n, v)
    got = _kernel(op, x, y)
    (exact, _), (pytorch, _) = _pytorch(truth, op, x, y), _pytorch(formula, op, x, y)
    for name, g, t, p in zip(NAMES[op], got, exact, pytorch):
        assert g.dtype == torch.float32 and g.shape == (n,)
        assert_close_to_truth(g, t, p, dtype, f"{op} {name} {dtype} {n}x{v}")


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:], ids=_ids)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_backward_against_float64(dtype, op, shape):
    n, v = shape
    temperature = 0.7
    x, y, grads = _logits(n, v, dtype), _targets(n, v), _row_grads(op, n)
    xg = x.detach().requires_grad_(True)
    (got,) = torch.autograd.grad(_kernel(op, xg, y, temperature=temperature), xg, grads)
    assert got.dtype == dtype
    _, exact = _pytorch(truth, op, x, y, grads, temperature)
    _, pytorch = _pytorch(formula, op, x, y, grads, temperature)
    assert_close_to_truth(got, exact, pytorch, dtype, f"{op} gradient {dtype} {n}x{v}", relative=True)


@pytest.mark.parametrize("op", OPS)
def test_int64_offsets_past_2_31_elements(op):
    n, v = 16384, 151936  # N * V = 2.49e9 > 2**31: int32 row offsets would wrap
    x, y, grads = _logits(n, v, torch.bfloat16), _targets(n, v), _row_grads(op, n)
    y[-3:] = v - 1  # the target logit at the very end of the storage
    xg = x.detach().requires_grad_(True)
    outs = _kernel(op, xg, y)
    (grad,) = torch.autograd.grad(outs, xg, grads)
    assert all(torch.isfinite(o).all() for o in outs)
    rows = torch.cat([torch.arange(4, device="cuda"), torch.arange(n - 60, n, device="cuda")])
    xr, yr, gr = x[rows], y[rows], tuple(g[rows] for g in grads)
    (exact, exact_dx), (pytorch, pytorch_dx) = _pytorch(truth, op, xr, yr, gr), _pytorch(formula, op, xr, yr, gr)
    for o, t, p in zip(outs, exact, pytorch):
        assert_close_to_truth(o[rows], t, p, torch.bfloat16, f"{op} outputs at rows near 2**31 elements")
    what = f"{op} gradient at rows near 2**31 elements"
    assert_close_to_truth(grad[rows], exact_dx, pytorch_dx, torch.bfloat16, what, relative=True)


def _peak_extra(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, out


@pytest.mark.parametrize("op", OPS)
def test_forward_extra_memory_at_most_16_bytes_a_row(op):
    n, v = 8192, 151936
    x, y = _logits(n, v, torch.bfloat16), _targets(n, v)
    _kernel(op, x, y)  # compile outside the measurement
    extra, _ = _peak_extra(lambda: _kernel(op, x, y))
    assert extra <= 16 * n + ALLOC_SLACK, f"{op} forward: {extra} extra bytes for {n} rows"


@pytest.mark.parametrize("op", OPS)
def test_backward_extra_memory_is_the_gradient_buffer(op):
    n, v = 8192, 151936
    x, y, grads = _logits(n, v, torch.bfloat16), _targets(n, v), _row_grads(op, n)
    xg = x.requires_grad_(True)
    outs = _kernel(op, xg, y)
    extra, _ = _peak_extra(lambda: torch.autograd.grad(outs, xg, grads))
    assert extra <= x.numel() * x.element_size() + (1 << 20), f"{op} backward: {extra} extra bytes"


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_vocab_parallel_world_of_one_against_float64(dtype):
    """The vocab-parallel partials and combine kernels without a process group, on a real-size shard."""
    op, (n, v) = "logprobs_and_entropy", SHAPES[1]
    x, y, grads = _logits(n, v, dtype), _targets(n, v), _row_grads(op, n)
    xg = x.detach().requires_grad_(True)
    outs = ak.vocab_parallel_logprobs_and_entropy(xg, y, vocab_start=0)
    (grad,) = torch.autograd.grad(outs, xg, grads)
    (exact, exact_dx), (pytorch, pytorch_dx) = _pytorch(truth, op, x, y, grads), _pytorch(formula, op, x, y, grads)
    for name, g, t, p in zip(NAMES[op], outs, exact, pytorch):
        assert_close_to_truth(g, t, p, dtype, f"vocab-parallel {name} {dtype} {n}x{v}")
    what = f"vocab-parallel gradient {dtype} {n}x{v}"
    assert_close_to_truth(grad, exact_dx, pytorch_dx, dtype, what, relative=True)


def test_inplace_backward_allocates_no_gradient_buffer():
    n, v = 8192, 151936
    x, y, grads = _logits(n, v, torch.bfloat16), _targets(n, v), _row_grads("logprobs_and_entropy", n)
    leaf = x.requires_grad_(True)
    logits = leaf.view(n, v)  # a non-leaf, as a model's output is
    (expected,) = torch.autograd.grad(ak.logprobs_and_entropy(logits, y), logits, grads)
    outs = ak.logprobs_and_entropy(logits, y, inplace_backward=True)
    extra, (grad,) = _peak_extra(lambda: torch.autograd.grad(outs, logits, grads))
    assert extra <= 1 << 20, f"in-place backward: {extra} extra bytes"
    assert grad.data_ptr() == leaf.data_ptr()
    assert torch.equal(grad, expected)
