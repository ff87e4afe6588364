"""The opt-in agreement check of the vocab-parallel ops: ranks called with different row counts, dtypes,
temperatures, masks or overlapping shards get the same ValueError on every rank (without it, gloo aborts the
processes), and ranks that agree get the unchecked results."""

import os

import pytest
import torch
from gloo_workers import gloo_group, run_workers

import aer_kernels as ak

WORLD = 3
TIMEOUT_S = 90
WIDTHS = [5, 0, 7]  # vocabulary ids per rank; rank 1 holds none
VOCAB, ROWS, HIDDEN = sum(WIDTHS), 6, 4


def shard(rank):
    start = sum(WIDTHS[:rank])
    return start, start + WIDTHS[rank]


def logits_call(rank, *, rows=ROWS, dtype=torch.float32, temperature=1.0, mask=False, vocab_start=None, **kw):
    """The logits op on this rank's shard; keyword overrides make this rank disagree."""
    start, stop = shard(rank)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, VOCAB, generator=g)[:, start:stop].to(dtype)
    targets = torch.randint(0, VOCAB, (rows,), generator=g)
    return ak.vocab_parallel_logprobs_and_entropy(
        x,
        targets,
        vocab_start=start if vocab_start is None else vocab_start,
        temperature=temperature,
        mask=torch.ones(rows, dtype=torch.bool) if mask else None,
        backend="reference",
        **kw,
    )


def linear_call(rank, *, hidden_size=HIDDEN, reduce_hidden_grad=True, **kw):
    start, stop = shard(rank)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(ROWS, hidden_size, generator=g, requires_grad=True)
    weight = torch.randn(VOCAB, hidden_size, generator=g)[start:stop]
    targets = torch.randint(0, VOCAB, (ROWS,), generator=g)
    return ak.vocab_parallel_linear_logprobs_and_entropy(
        hidden, weight, targets, vocab_start=start, reduce_hidden_grad=reduce_hidden_grad, backend="reference", **kw
    )


# (which call, what rank 2 passes differently, the error every rank must raise)
MISMATCHES = [
    (logits_call, dict(rows=ROWS + 1), "disagree on the row count .*rank 2: 7"),
    (logits_call, dict(dtype=torch.bfloat16), "disagree on the logits dtype .*rank 2: torch.bfloat16"),
    (logits_call, dict(temperature=0.5), "disagree on temperature"),
    (logits_call, dict(mask=True), "disagree on whether a mask is given"),
    (logits_call, dict(vocab_start=4), "without gap or overlap: rank 2 also holds ids \\[4, 5\\)"),
    (logits_call, dict(vocab_start=6), "without gap or overlap: no rank holds ids \\[5, 6\\)"),
    (linear_call, dict(hidden_size=HIDDEN + 1), "disagree on the hidden size"),
    (linear_call, dict(reduce_hidden_grad=False), "disagree on reduce_hidden_grad"),
]


def worker(rank, port):
    with gloo_group(rank, port, WORLD, TIMEOUT_S):
        for call, override, message in MISMATCHES:
            with pytest.raises(ValueError, match=message):
                call(rank, check_agreement=True, **(override if rank == 2 else {}))
        os.environ["AER_KERNELS_CHECK_AGREEMENT"] = "1"  # the environment turns it on when the argument is None
        with pytest.raises(ValueError, match="disagree on the row count"):
            logits_call(rank, rows=ROWS + (rank == 0))
        for call in (logits_call, linear_call):  # agreeing ranks: the same results as without the check
            checked, unchecked = call(rank), call(rank, check_agreement=False)
            torch.testing.assert_close(checked, unchecked, rtol=0, atol=0, equal_nan=True)


@pytest.mark.distributed
def test_disagreeing_ranks_all_raise_the_same_error():
    run_workers(worker, WORLD, timeout_s=TIMEOUT_S)


def test_world_of_one_has_nothing_to_check():
    logp, h = logits_call(0, check_agreement=True, vocab_start=0)
    assert logp.shape == h.shape == (ROWS,)
