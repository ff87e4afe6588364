"""vocab_parallel_linear_logprobs_and_entropy on 2 and 3 gloo ranks holding unequal (one empty) shards of the LM-head
weight: every rank gets the single-process op's outputs, its shard's slice of the single-process dW and db, and
the full dh; without the reduction the ranks' partial dh sum to it."""

import pytest
import torch
import torch.distributed as dist
from gloo_workers import gloo_group, kernel_device, run_workers

import aer_kernels as ak

TIMEOUT_S = 120
TEMPERATURE = 0.8
# Rows of the weight per rank, by world size; in the world of three, a two-rank layout runs on the sub-group of
# ranks 0 and 1 (a group other than the default one).
LAYOUTS = {3: [[9, 1, 6], [7, 0, 9], [1, 12]], 2: [[5, 11], [0, 9]]}
LEAD, WIDTH = (2, 5), 8
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


def starts(widths):
    return [sum(widths[:r]) for r in range(len(widths))]


def problem(vocab, dtype, seed):
    """A sliced ``[B, T, D]`` hidden, the full weight and bias, global targets, mask, upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(LEAD[0], LEAD[1] + 1, WIDTH, generator=g) * 1.5
    weight = torch.randn(vocab, WIDTH, generator=g)
    bias = torch.randn(vocab, generator=g)
    bias[vocab // 2] = float("-inf")
    targets = torch.randint(0, vocab, LEAD, generator=g)
    mask = torch.rand(LEAD, generator=g) > 0.2
    grad_h, grad_logp = torch.randn(2, *LEAD, generator=g)
    return base.to(dtype), weight.to(dtype), bias.to(dtype), targets, mask, grad_h, grad_logp


def run(fn, base, weight, bias, targets, mask, grad_h, grad_logp, **kw):
    """``(logp, H, dh, dW, db)`` of ``fn`` on leaves made from the inputs (hidden a ``[:, :-1]`` view)."""
    hidden_base = base.clone().requires_grad_(True)
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    logp, h = fn(hidden_base[:, :-1], w, targets, bias=b, temperature=TEMPERATURE, mask=mask, **kw)
    torch.autograd.backward([logp, h], [grad_logp, grad_h])
    return logp.detach(), h.detach(), hidden_base.grad[:, :-1], w.grad, b.grad


def assert_same_on_every_rank(t, group):
    copies = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(copies, t.contiguous(), group=group)
    for c in copies:
        torch.testing.assert_close(c, t, rtol=0, atol=0, equal_nan=True)


def check_layout(widths, dtype, backend, device, group, rank):
    inputs = [t.to(device) for t in problem(sum(widths), dtype, seed=len(widths) * 5 + widths[0])]
    base, weight, bias, targets, mask, grad_h, grad_logp = inputs
    start, stop = starts(widths)[rank], starts(widths)[rank] + widths[rank]
    kw = dict(backend=backend, workspace_bytes=4 * 16 * 24)  # several chunks and slices on every shard
    single = run(ak.linear_logprobs_and_entropy, *inputs, **kw)

    def shard_op(reduce):
        def op(hidden, w, y, *, bias, **rest):
            return ak.vocab_parallel_linear_logprobs_and_entropy(
                hidden, w, y, vocab_start=start, group=group, reduce_hidden_grad=reduce, bias=bias, **rest
            )

        return op

    sharded = (base, weight[start:stop], bias[start:stop], targets, mask, grad_h, grad_logp)
    logp, h, dh, dw, db = run(shard_op(True), *sharded, **kw)
    what = f"widths={widths} rank={rank} {dtype} {backend}"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close((logp, h), single[:2], **tol, equal_nan=True, msg=lambda m: f"{what}: {m}")
    assert dw.shape == (widths[rank], WIDTH) and db.shape == (widths[rank],)
    torch.testing.assert_close(
        (dw, db), (single[3][start:stop], single[4][start:stop]), **tol, msg=lambda m: f"dW, db {what}: {m}"
    )
    torch.testing.assert_close(dh, single[2], **tol, msg=lambda m: f"dh {what}: {m}")
    for t in (logp, h, dh):
        assert_same_on_every_rank(t, group)

    partial_dh = run(shard_op(False), *sharded, **kw)[2].contiguous()
    dist.all_reduce(partial_dh, group=group)
    torch.testing.assert_close(partial_dh, single[2], **tol, msg=lambda m: f"summed partial dh {what}: {m}")


def worker(rank, port, world, backend, dtypes):
    device = kernel_device(backend)
    with gloo_group(rank, port, world, TIMEOUT_S):
        pair = dist.new_group([0, 1]) if world > 2 else None
        for widths in LAYOUTS[world]:
            on_pair = len(widths) < world
            if on_pair and rank >= len(widths):
                continue
            for dtype in dtypes:
                check_layout(widths, dtype, backend, device, pair if on_pair else None, rank)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_shards_match_single_process_reference(world):
    run_workers(worker, world, world, "reference", [torch.float64, torch.float32], timeout_s=TIMEOUT_S)


@pytest.mark.distributed
@pytest.mark.interpreter
def test_shards_match_single_process_triton():
    run_workers(worker, 3, 3, "triton", [torch.float32], timeout_s=TIMEOUT_S)


def test_world_of_one_without_init_equals_single_process():
    assert not dist.is_initialized()
    inputs = problem(13, torch.float64, seed=3)
    single = run(ak.linear_logprobs_and_entropy, *inputs, backend="reference")

    def op(hidden, w, y, **kw):
        return ak.vocab_parallel_linear_logprobs_and_entropy(hidden, w, y, vocab_start=0, **kw)

    torch.testing.assert_close(run(op, *inputs, backend="reference"), single, rtol=1e-12, atol=1e-12, equal_nan=True)


BAD = [
    (dict(vocab_start=-1), ValueError, "vocab_start must be >= 0"),
    (dict(vocab_start=2.0), TypeError, "vocab_start must be a Python int"),
    (dict(reduce_hidden_grad=1), TypeError, "reduce_hidden_grad must be True or False"),
    (dict(group=object()), ValueError, "group: torch.distributed is not initialised"),
    (dict(weight=torch.zeros(0, WIDTH, dtype=torch.float64)), ValueError, "vocabulary .* is empty"),
    (dict(targets=None), TypeError, "targets must be a torch.Tensor"),
    (dict(check_agreement="yes"), TypeError, "check_agreement must be True, False or None"),
]


@pytest.mark.parametrize("override, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused(override, error, message):
    base, weight, _bias, targets, *_ = problem(13, torch.float64, seed=4)
    args = {
        **dict(weight=weight, targets=targets, vocab_start=0, group=None, bias=None, backend="reference"),
        **override,
    }
    weight, targets = args.pop("weight"), args.pop("targets")
    with pytest.raises(error, match=message):
        ak.vocab_parallel_linear_logprobs_and_entropy(base[:, :-1], weight, targets, **args)
