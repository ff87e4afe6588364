"""The Triton kernels on a CUDA GPU, at real sizes, against float64.

Accuracy follows the tolerance rule of numerics.py: on random logits with a realistic spread, the kernels'
error may be no worse than that of the same PyTorch formula run in the logits' dtype, plus a slack (fp32 1e-5,
fp16 1e-3, bf16 1e-2); gradient errors are taken relative to the largest true gradient. Memory: forward at
most 16 bytes a row, backward the gradient buffer only, in-place backward nothing.
"""

import pytest
import torch

import aer_kernels as ak

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SLACK = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OPS = ["entropy", "logprobs_and_entropy"]
# On an H100/H200: many programs per row, two, and one (see _config.launch_config); then rows that do not
# start on a 16-byte boundary (GPT-2's vocabulary), read by the peeled-edge path.
SHAPES = [(8, 151936), (1024, 128256), (4096, 32000), (2048, 50257)]
TRUTH_ROWS = 128  # float64 rows per chunk: [128, 151936] float64 is 156 MB
ALLOC_SLACK = 4096  # the caching allocator rounds each block up to 512 bytes


def _ids(value):
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value).replace("torch.", "")


def _logits(n, v, dtype, seed=0):
    """Rows with std in [2, 8]; every 8th row peaked (one logit 30 above the rest), every 8th+1 flat."""
    gen = torch.Generator("cuda").manual_seed(seed)
    std = torch.empty(n, 1, device="cuda").uniform_(2.0, 8.0, generator=gen)
    std[1::8] = 0.05
    x = torch.empty(n, v, device="cuda", dtype=dtype)
    step = max(1, (1 << 26) // v)
    for i in range(0, n, step):
        chunk = torch.randn(min(step, n - i), v, device="cuda", generator=gen) * std[i : i + step]
        rows = torch.arange(i, i + len(chunk), device="cuda")
        peaked = rows % 8 == 0
        chunk[peaked, (rows * 7919 % v)[peaked]] = chunk.amax(-1)[peaked] + 30.0
        x[i : i + len(chunk)] = chunk
    return x


def _targets(n, v, seed=1):
    return torch.randint(0, v, (n,), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))


def _row_grads(op, n, seed=2):
    gen = torch.Generator("cuda").manual_seed(seed)
    return tuple(torch.randn(n, device="cuda", generator=gen) for _ in range(1 if op == "entropy" else 2))


def _formula(op, z, y):
    """The PyTorch math, in ``z``'s dtype: ``H`` and, for the log-prob op, ``logp`` first."""
    h = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    if op == "entropy":
        return (h,)
    return torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1), h


def _kernel(op, x, y, **kwargs):
    if op == "entropy":
        return (ak.entropy(x, **kwargs),)
    return ak.logprobs_and_entropy(x, y, **kwargs)


def _truth_outputs(op, x, y, temperature=1.0):
    parts = [
        _formula(op, x[i : i + TRUTH_ROWS].double() / temperature, y[i : i + TRUTH_ROWS])
        for i in range(0, len(x), TRUTH_ROWS)
    ]
    return tuple(torch.cat(p) for p in zip(*parts))


def _truth_grad(op, x, y, grads, temperature=1.0):
    out = torch.empty(x.shape, device="cuda", dtype=torch.float64)
    for i in range(0, len(x), TRUTH_ROWS):
        z = x[i : i + TRUTH_ROWS].double().requires_grad_(True)
        outs = _formula(op, z / temperature, y[i : i + TRUTH_ROWS])
        (out[i : i + TRUTH_ROWS],) = torch.autograd.grad(outs, z, tuple(g[i : i + TRUTH_ROWS].double() for g in grads))
    return out


def _dtype_grad(op, x, y, grads, temperature=1.0):
    z = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_formula(op, z / temperature, y), z, grads)
    return g


def _assert_no_worse(got, truth, pytorch, dtype, what, relative=False):
    scale = truth.abs().max().item() if relative else 1.0
    err = (got.double() - truth).abs().max().item() / scale
    bound = (pytorch.double() - truth).abs().max().item() / scale + SLACK[dtype]
    assert err <= bound, f"{what}: error {err:.3g} > PyTorch's own {dtype} error + slack = {bound:.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_forward_against_float64(dtype, op, shape):
    n, v = shape
    x, y = _logits(n, v, dtype), _targets(n, v)
    got = _kernel(op, x, y)
    truth = _truth_outputs(op, x, y)
    pytorch = _formula(op, x, y)
    for name, g, t, p in zip(("logp", "H") if op != "entropy" else ("H",), got, truth, pytorch):
        assert g.dtype == torch.float32 and g.shape == (n,)
        _assert_no_worse(g, t, p, dtype, f"{op} {name} {dtype} {n}x{v}")


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
    truth = _truth_grad(op, x, y, grads, temperature)
    pytorch = _dtype_grad(op, x, y, grads, temperature)
    _assert_no_worse(got, truth, pytorch, dtype, f"{op} gradient {dtype} {n}x{v}", relative=True)


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
    for o, t, p in zip(outs, _truth_outputs(op, xr, yr), _formula(op, xr, yr)):
        _assert_no_worse(o[rows], t, p, torch.bfloat16, f"{op} outputs at rows near 2**31 elements")
    _assert_no_worse(
        grad[rows],
        _truth_grad(op, xr, yr, gr),
        _dtype_grad(op, xr, yr, gr),
        torch.bfloat16,
        f"{op} gradient at rows near 2**31 elements",
        relative=True,
    )


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
    for name, g, t, p in zip(("logp", "H"), outs, _truth_outputs(op, x, y), _formula(op, x, y)):
        _assert_no_worse(g.detach(), t, p, dtype, f"vocab-parallel {name} {dtype} {n}x{v}")
    _assert_no_worse(
        grad,
        _truth_grad(op, x, y, grads),
        _dtype_grad(op, x, y, grads),
        dtype,
        f"vocab-parallel gradient {dtype} {n}x{v}",
        relative=True,
    )


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
