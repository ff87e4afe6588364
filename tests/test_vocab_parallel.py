"""Vocab-parallel log-probs and entropy: each gloo rank, holding a vocabulary shard, gets the single-process
result on the concatenated logits (float64 truth, the tolerance rule of aer_kernels.testing) and its shard's
gradient."""

import pytest
import torch
import torch.distributed as dist
from gloo_workers import gloo_group, kernel_device, run_workers

import aer_kernels as ak
from aer_kernels.testing import assert_close_to_truth, formula, realistic_logits, truth

WORLD = 3
TIMEOUT_S = 90
TEMPERATURE = 0.7
# Shard widths per rank, uneven; two-rank layouts run on the sub-group of ranks 0 and 1.
LAYOUTS = [[9, 1, 6], [7, 0, 9], [1, 12]]
ROWS = (2, 5)  # [B, T]
MASKED_ROWS = (2, 7)
SHARD_ALL_NEG_INF_ROW = 3  # all -inf in shard 0, whose target it holds: logp = -inf
TARGET_NEG_INF_ROW = 4
HUGE_ROW = 6  # logits around 40 (z ~ 60): nothing may cancel
REFERENCE_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def starts(widths):
    return [sum(widths[:r]) for r in range(len(widths))]


def problem(widths, dtype, seed):
    """Full logits [B, T, V], global targets (one shard after another), mask, upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    vocab, n = sum(widths), ROWS[0] * ROWS[1]
    x = realistic_logits((n, vocab), torch.float32, g)
    x[torch.rand(n, vocab, generator=g) < 0.15] = float("-inf")
    holders = [r for r, w in enumerate(widths) if w]
    shard = [holders[i % len(holders)] for i in range(n)]
    shard[SHARD_ALL_NEG_INF_ROW] = 0
    lo, width = torch.tensor(starts(widths))[shard], torch.tensor(widths)[shard]
    targets = lo + (torch.rand(n, generator=g) * width).long()
    x[SHARD_ALL_NEG_INF_ROW, : widths[0]] = float("-inf")
    x[TARGET_NEG_INF_ROW, targets[TARGET_NEG_INF_ROW]] = float("-inf")
    x[HUGE_ROW] += 40.0
    mask = torch.ones(n, dtype=torch.bool)
    mask[list(MASKED_ROWS)] = False
    targets[MASKED_ROWS[1]] = -1  # ignored in a masked row
    grad_h, grad_logp = torch.randn(2, n, generator=g)
    return (
        x.to(dtype).reshape(*ROWS, vocab),
        targets.reshape(ROWS),
        mask.reshape(ROWS),
        grad_h.reshape(ROWS),
        grad_logp.reshape(ROWS),
    )


def shard_run(x, targets, start, stop, group, mask, backend, grad_h, grad_logp):
    """This rank's ``(logp, H, d shard)`` through the public API; ``targets`` None: entropy alone."""
    local = x[..., start:stop].detach().clone().requires_grad_(True)
    kw = dict(group=group, temperature=TEMPERATURE, mask=mask, backend=backend)
    if targets is None:
        logp, h = None, ak.vocab_parallel_entropy(local, **kw)
        h.backward(grad_h)
    else:
        logp, h = ak.vocab_parallel_logprobs_and_entropy(local, targets, vocab_start=start, **kw)
        torch.autograd.backward([h, logp], [grad_h, grad_logp])
    return logp, h, local.grad


def assert_same_on_every_rank(t, group):
    copies = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(copies, t, group=group)
    for c in copies:
        torch.testing.assert_close(c, t, rtol=0, atol=0, equal_nan=True)


def check_layout(widths, dtype, backend, device, group, rank):
    x, targets, mask, grad_h, grad_logp = (t.to(device) for t in problem(widths, dtype, seed=len(widths) * 7 + 1))
    start, stop = starts(widths)[rank], starts(widths)[rank] + widths[rank]
    what = f"widths={widths} rank={rank} {dtype} {backend}"
    for use_targets in (True, False):
        y, gl = (targets, grad_logp) if use_targets else (None, None)
        logp, h, dx = shard_run(x, y, start, stop, group, mask, backend, grad_h, gl)
        t_logp, t_h, t_dx = truth(x, y, TEMPERATURE, mask, grad_h, gl)
        b_logp, b_h, b_dx = formula(x, y, TEMPERATURE, mask, grad_h, gl)
        assert h.dtype == torch.float32 or dtype == torch.float64
        assert dx.dtype == dtype and dx.shape == (*ROWS, widths[rank])
        assert_close_to_truth(h, t_h, b_h, dtype, f"H {what}")
        assert_close_to_truth(dx, t_dx[..., start:stop], b_dx[..., start:stop], dtype, f"d shard {what}")
        assert_same_on_every_rank(h, group)
        if use_targets:
            assert_close_to_truth(logp, t_logp, b_logp, dtype, f"logp {what}")
            assert_same_on_every_rank(logp, group)


def check_undefined_rows(backend, device, rank):
    """Rows without a distribution or a target held by one shard are NaN on every rank, like on one GPU."""
    widths = LAYOUTS[0]
    x, targets, mask, grad_h, grad_logp = (t.to(device).flatten(0, 1) for t in problem(widths, torch.float32, 3))
    x[0, 12], x[1, 9], x[2] = float("nan"), float("inf"), float("-inf")
    targets[3], targets[4] = sum(widths), -1
    targets[7], mask[:] = 0, True
    x[5, 0], mask[5] = float("nan"), False
    start, stop = starts(widths)[rank], starts(widths)[rank] + widths[rank]
    logp, h, dx = shard_run(x, targets, start, stop, None, mask, backend, grad_h, grad_logp)
    assert torch.isnan(h[:3]).all() and torch.isfinite(h[3:]).all()
    assert torch.isnan(logp[:5]).all() and not torch.isnan(logp[5:]).any()
    assert torch.isnan(dx[:3]).all() and (dx[5] == 0).all() and not torch.isnan(dx[6:]).any()
    # A target outside the vocabulary with a nonzero upstream gradient: the row's gradient is NaN (as on one GPU).
    assert torch.isnan(dx[3:5]).all()
    rows = slice(6, None)
    t_logp, _t_h, t_dx = truth(x[rows], targets[rows], TEMPERATURE, mask[rows], grad_h[rows], grad_logp[rows])
    b_logp, _b_h, b_dx = formula(x[rows], targets[rows], TEMPERATURE, mask[rows], grad_h[rows], grad_logp[rows])
    assert_close_to_truth(logp[rows], t_logp, b_logp, torch.float32, "logp, defined rows")
    assert_close_to_truth(dx[rows], t_dx[:, start:stop], b_dx[:, start:stop], torch.float32, "d shard, defined rows")

    # Shard 2 claims one id too early: id 9 is held twice, the last id by nobody.
    claimed = start - (rank == 2)
    x, targets = x[6:], torch.tensor([9, 9, sum(widths) - 1, 0], device=device)
    logp, _ = ak.vocab_parallel_logprobs_and_entropy(x[:, start:stop], targets, vocab_start=claimed, backend=backend)
    assert torch.isnan(logp[:3]).all() and not torch.isnan(logp[3])


def check_compiles(rank):
    """``torch.compile(fullgraph=True)`` traces through the ops and both collectives, forward and backward."""
    widths = LAYOUTS[0]
    x, targets, mask, grad_h, grad_logp = problem(widths, torch.float32, 5)
    start = starts(widths)[rank]
    local = x[..., start : start + widths[rank]].clone().requires_grad_(True)

    def outputs_and_grad(fn):
        logp, h = fn(local, targets, vocab_start=start, temperature=TEMPERATURE, mask=mask)
        return logp, h, torch.autograd.grad([logp, h], local, [grad_logp, grad_h])[0]

    compiled = torch.compile(ak.vocab_parallel_logprobs_and_entropy, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        outputs_and_grad(compiled),
        outputs_and_grad(ak.vocab_parallel_logprobs_and_entropy),
        rtol=0,
        atol=0,
        equal_nan=True,
    )


def worker(rank, port, backend, dtypes):
    device = kernel_device(backend)
    with gloo_group(rank, port, WORLD, TIMEOUT_S):
        pair = dist.new_group([0, 1])
        for widths in LAYOUTS:
            if len(widths) == 2 and rank == 2:
                with pytest.raises(ValueError, match="not a member"):
                    ak.vocab_parallel_entropy(torch.zeros(2, 3), group=pair)
                continue
            for dtype in dtypes:
                check_layout(widths, dtype, backend, device, pair if len(widths) == 2 else None, rank)
        check_undefined_rows(backend, device, rank)
        if backend == "reference":
            check_compiles(rank)


@pytest.mark.distributed
def test_shards_match_single_process_reference():
    run_workers(worker, WORLD, "reference", REFERENCE_DTYPES, timeout_s=TIMEOUT_S)


@pytest.mark.distributed
@pytest.mark.interpreter
def test_shards_match_single_process_triton():
    run_workers(worker, WORLD, "triton", TRITON_DTYPES, timeout_s=TIMEOUT_S)


def test_world_of_one_without_init_equals_single_process():
    assert not dist.is_initialized()
    x, targets, mask, grad_h, grad_logp = problem([16], torch.float32, 11)
    local, whole = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    logp, h = ak.vocab_parallel_logprobs_and_entropy(local, targets, vocab_start=0, temperature=TEMPERATURE, mask=mask)
    logp_1, h_1 = ak.logprobs_and_entropy(whole, targets, temperature=TEMPERATURE, mask=mask)
    torch.testing.assert_close((logp, h), (logp_1, h_1), rtol=0, atol=0, equal_nan=True)
    torch.autograd.backward([h, logp, h_1, logp_1], [grad_h, grad_logp, grad_h, grad_logp])
    t_dx, b_dx = (
        truth(x, targets, TEMPERATURE, mask, grad_h, grad_logp)[2],
        formula(x, targets, TEMPERATURE, mask, grad_h, grad_logp)[2],
    )
    assert_close_to_truth(local.grad, t_dx, b_dx, torch.float32, "d logits")


GOOD = dict(x=torch.randn(2, 3, 5), targets=torch.randint(0, 5, (2, 3)), mask=torch.ones(2, 3, dtype=torch.bool))
BAD_INPUTS = [
    (dict(vocab_start=-1), ValueError, "vocab_start must be >= 0"),
    (dict(vocab_start=1.0), TypeError, "vocab_start must be a Python int"),
    (dict(vocab_start=True), TypeError, "vocab_start must be a Python int"),
    (dict(vocab_start=torch.tensor(0)), TypeError, "vocab_start must be a Python int"),
    (dict(targets=torch.zeros(2, 4, dtype=torch.long)), ValueError, "targets must have shape"),
    (dict(targets=torch.zeros(2, 3)), TypeError, "targets must be an integer tensor"),
    (dict(targets=torch.zeros(2, 3, dtype=torch.long, device="meta")), ValueError, "targets is on meta"),
    (dict(targets=None), TypeError, "targets must be a torch.Tensor"),
    (dict(mask=torch.ones(2, 3, dtype=torch.int32)), TypeError, "mask must be a bool tensor"),
    (dict(mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask must have shape"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite positive number"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite positive number"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(group=object()), ValueError, "group: torch.distributed is not initialised"),
    (dict(x=torch.zeros(2, 3, 5, dtype=torch.long)), TypeError, "logits must be float32"),
    (dict(x=torch.zeros(2, 3, 0)), ValueError, "vocabulary .* is empty"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_is_refused_before_any_work(override, error, message):
    args = {**GOOD, "vocab_start": 0, "group": None, "temperature": 1.0, "backend": "reference", **override}
    x, targets = args.pop("x"), args.pop("targets")
    with pytest.raises(error, match=message):
        ak.vocab_parallel_logprobs_and_entropy(x, targets, **args)


def test_entropy_refuses_a_group_without_init():
    with pytest.raises(ValueError, match=r"group: torch\.distributed is not initialised"):
        ak.vocab_parallel_entropy(GOOD["x"], group=object())
