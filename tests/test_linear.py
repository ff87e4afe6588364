"""linear_logprobs_and_entropy / linear_entropy against float64 and against the op on materialised logits (the
tolerance rule of aer_kernels.testing), invariant to how the workspace chunks tokens and slices the vocabulary, within a
measured memory bound, with the edge rows, argument errors, autocast, torch.compile and opcheck."""

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import aer_kernels as ak
from aer_kernels.testing import SLACK, assert_close_to_truth, formula, max_error
from benchmarks.memory import AllocationTracker

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TEMPERATURES = [1.0, 0.7, 1.6]
GEMMS = ("aten.mm.out", "aten.addmm.out", "aten.mm.default", "aten.addmm_.default")


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Many small ops: on a shared CPU a second OpenMP thread makes each of them wait for milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logit_bytes(dtype, backend):
    """Workspace bytes per logit, as the docstring states: the logit, plus two fp32 (float64 for float64)
    temporaries on the reference backend."""
    scratch = 2 * (8 if dtype == torch.float64 else 4) if backend == "reference" else 0
    return dtype.itemsize + scratch


def problem(lead, d, vocab, seed, *, sliced=False, bias=True, device="cpu"):
    """fp32 ``hidden [*lead, d]`` (a ``[:, :-1]`` view when ``sliced``), weight, bias, targets, mask, upstream grads,
    on ``device``. Logits with per-row std in [2, 8], one row nearly flat, one peaked; 20% of the rows masked."""
    g = torch.Generator().manual_seed(seed)
    full = (*lead[:-1], lead[-1] + 1) if sliced else lead
    base = torch.randn(*full, d, generator=g) * torch.empty(*full, 1).uniform_(0.5, 2.0, generator=g)
    base.view(-1, d)[0] *= 0.002  # nearly flat
    base.view(-1, d)[1] *= 4.0  # peaked
    base = base.to(device)
    hidden = base[:, :-1] if sliced else base
    weight = torch.randn(vocab, d, generator=g) * (4.0 / math.sqrt(d))
    b = torch.randn(vocab, generator=g) if bias else None
    targets = torch.randint(0, vocab, lead, generator=g)
    mask = torch.rand(lead, generator=g) > 0.2
    grad_h, grad_logp = torch.randn(2, *lead, generator=g)
    return (hidden, *(None if t is None else t.to(device) for t in (weight, b, targets, mask, grad_h, grad_logp)))


def through_logits(hidden, weight, bias, targets, temperature, mask, grad_h, grad_logp, dtype):
    """``(logp, H, [dh, dW, db])`` of the plain PyTorch formula on ``F.linear``'s logits, all in ``dtype``."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in (hidden, weight, bias)]
    x = F.linear(*leaves)
    logp, h, dx = formula(x, targets, temperature, mask, grad_h, grad_logp if targets is not None else None)
    grads = torch.autograd.grad(x, [t for t in leaves if t is not None], dx)
    return logp, h, list(grads)


def materialised_op(hidden, weight, bias, targets, temperature, mask, grad_h, grad_logp, dtype, backend):
    """The library's op on materialised logits: ``logprobs_and_entropy(F.linear(...))``."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in (hidden, weight, bias)]
    x = F.linear(*leaves)
    logp, h = ak.logprobs_and_entropy(x, targets, temperature=temperature, mask=mask, backend=backend)
    torch.autograd.backward([logp, h], [grad_logp, grad_h])
    return logp.detach(), h.detach(), [t.grad for t in leaves if t is not None]


def fused(hidden, weight, bias, targets, temperature, mask, grad_h, grad_logp, dtype, backend, trackers=None, **kw):
    """``(logp, H, [dh, dW, db])`` of the fused op; ``targets`` None: ``linear_entropy``. ``trackers``: a list that
    receives the forward's and the backward's ``AllocationTracker``."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in (hidden, weight, bias)]
    if hidden.dim() == 3 and not hidden.is_contiguous():
        leaves[0] = _as_sliced_leaf(hidden.detach().to(dtype))
    h_, w_, b_ = leaves
    common = dict(bias=b_, temperature=temperature, mask=mask, backend=backend, **kw)
    forward, backward = (AllocationTracker(), AllocationTracker()) if trackers is not None else (nullcontext(),) * 2
    with forward:
        if targets is None:
            logp, h = None, ak.linear_entropy(h_, w_, **common)
        else:
            logp, h = ak.linear_logprobs_and_entropy(h_, w_, targets, **common)
    with backward:
        if targets is None:
            h.backward(grad_h)
        else:
            torch.autograd.backward([logp, h], [grad_logp, grad_h])
    if trackers is not None:
        trackers += [forward, backward]
    return (None if logp is None else logp.detach()), h.detach(), [t.grad for t in leaves if t is not None]


def _as_sliced_leaf(hidden):
    """``hidden``'s values as a ``[:, :-1]`` view of a bigger tensor, itself a leaf that requires grad."""
    base = hidden.new_zeros(hidden.shape[0], hidden.shape[1] + 1, hidden.shape[2])
    base[:, :-1] = hidden
    return base[:, :-1].requires_grad_(True)


def assert_all_within_rule(got, exact, baseline, dtype, what):
    """The rule on the outputs; on the gradients relative to the largest true gradient, as the benchmark's gate
    has it: they are GEMM products whose size grows with the data, and the backward's logits, recomputed by a
    GEMM of another shape than the forward's, may round differently (another BLAS kernel), by the GEMM's own
    relative error."""
    for name, g, e, b in zip(("logp", "H"), got[:2], exact[:2], baseline[:2]):
        if e is not None:
            assert_close_to_truth(g, e, b, dtype, f"{name} {what}")
    for name, g, e, b in zip(("d hidden", "d weight", "d bias"), got[2], exact[2], baseline[2]):
        assert g.dtype == dtype, f"{name} {what}: gradient dtype {g.dtype}"
        assert_close_to_truth(g, e, b, dtype, f"{name} {what}", relative=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64_and_materialised_logits(backend, device, dtype):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem(
        (3, 9), 24, 300, seed=1, sliced=True, device=device
    )
    # A small workspace: several token chunks forward, several vocabulary slices backward.
    workspace = 4 * 300 * logit_bytes(dtype, backend)
    for temperature in TEMPERATURES if backend == "reference" else TEMPERATURES[1:2]:  # the interpreter is slow
        args = (hidden, weight, bias, targets, temperature, mask, grad_h, grad_logp)
        got = fused(*args, dtype, backend, workspace_bytes=workspace)
        exact = through_logits(*args, torch.float64)
        what = f"{dtype} T={temperature} {backend}"
        assert_all_within_rule(got, exact, through_logits(*args, dtype), dtype, f"vs PyTorch, {what}")
        assert_all_within_rule(got, exact, materialised_op(*args, dtype, backend), dtype, f"vs materialised, {what}")
        assert got[0].dtype == got[1].dtype == torch.float32 and got[1].shape == (3, 9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_alone_and_without_bias(backend, device, dtype):
    hidden, weight, _, _, mask, grad_h, _ = problem((40,), 16, 130, seed=2, bias=False, device=device)
    args = (hidden, weight, None, None, 1.3, mask, grad_h, None)
    got = fused(*args, dtype, backend, workspace_bytes=7 * 130 * logit_bytes(dtype, backend))
    assert got[0] is None
    assert_all_within_rule(
        got,
        through_logits(*args, torch.float64),
        through_logits(*args, dtype),
        dtype,
        f"entropy alone {dtype} {backend}",
    )


def test_gradcheck_float64_with_chunks_and_slices():
    hidden, weight, bias, targets, mask, _, _ = problem((2, 5), 6, 11, seed=3, sliced=True)
    leaves = [t.detach().double().requires_grad_(True) for t in (hidden, weight, bias)]
    workspace = 3 * 11 * logit_bytes(torch.float64, "reference")  # 3-row chunks, 3-column slices

    def outputs(h, w, b):
        logp, ent = ak.linear_logprobs_and_entropy(
            h, w, targets, bias=b, temperature=0.8, mask=mask, workspace_bytes=workspace, backend="reference"
        )
        return logp, ent

    assert torch.autograd.gradcheck(outputs, leaves)


N_ROWS, VOCAB, WIDTH = 48, 37, 8  # V prime: ragged last slices


def _chunking_cases(dtype, backend):
    """``(workspace, forward rows per chunk, backward columns per slice)``: one chunk and one slice; ragged chunks of
    7 rows and slices of 5 columns; 2 and 2; one row and one column (``Vc = 1``)."""
    row, column = VOCAB * logit_bytes(dtype, backend), N_ROWS * logit_bytes(dtype, backend)
    return [
        (None, N_ROWS, VOCAB),
        (7 * row, 7, 7 * row // column),
        (2 * column, 2 * column // row, 2),
        (column, column // row, 1),
    ]


def test_results_do_not_depend_on_chunks_or_slices(backend, device):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((N_ROWS,), WIDTH, VOCAB, seed=4, device=device)
    # The Triton kernels take no float64; the interpreter runs a program per row and slice: two cases there.
    for dtype in (torch.float64, torch.float32) if backend == "reference" else (torch.float32,):
        args = (hidden, weight, bias, targets, 0.9, mask, grad_h, grad_logp, dtype, backend)
        runs = []
        cases = _chunking_cases(dtype, backend)
        for workspace, rows, columns in cases if backend == "reference" else cases[:2]:
            trackers = []
            runs.append(fused(*args, workspace_bytes=workspace, trackers=trackers))
            logits_rows, slice_widths = (
                [
                    c.shapes[0][k]
                    for c in t.calls
                    if c.op in ("aten.mm.out", "aten.addmm.out") and c.shapes[0][1 - k] == (VOCAB, N_ROWS)[k]
                ]
                for k, t in enumerate(trackers)
            )
            assert logits_rows == [rows] * (N_ROWS // rows) + ([N_ROWS % rows] if N_ROWS % rows else [])
            assert slice_widths == [columns] * (VOCAB // columns) + ([VOCAB % columns] if VOCAB % columns else [])
        first = runs[0]
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
        for other in runs[1:]:
            torch.testing.assert_close(other[:2], first[:2], **tol)
            if dtype == torch.float64:
                torch.testing.assert_close(other[2], first[2], **tol)
        if dtype != torch.float64:  # fp32 slices' recomputed logits round by their GEMM's shape: each within the rule
            exact, baseline = through_logits(*args[:-2], torch.float64), through_logits(*args[:-2], dtype)
            for run, (workspace, *_) in zip(runs, cases):
                assert_all_within_rule(run, exact, baseline, dtype, f"workspace {workspace}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sliced_hidden_matches_its_contiguous_copy(backend, device, dtype):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem(
        (4, 6), WIDTH, VOCAB, seed=5, sliced=True, device=device
    )
    assert not hidden.is_contiguous()
    args = (weight, bias, targets, 1.0, mask, grad_h, grad_logp, dtype, backend)
    workspace = 5 * VOCAB * logit_bytes(dtype, backend) + 8 * WIDTH * VOCAB  # chunks cross sequence boundaries
    sliced = fused(hidden, *args, workspace_bytes=workspace)
    contiguous = fused(hidden.contiguous(), *args, workspace_bytes=workspace)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(sliced[:2], contiguous[:2], **tol)
    torch.testing.assert_close(sliced[2], contiguous[2], **tol)


@pytest.mark.parametrize("on", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_hidden_gradient_does_not_degrade_with_more_vocabulary_slices(dtype, on):
    """``dh`` sums one GEMM per slice; summed in the inputs' 16-bit dtype its error would grow with the slices
    (measured: bf16 +31% at 64 slices, fp16 +28% at 512). Enough rows that forward chunks stay GEMMs."""
    n, d, vocab = 4096, 32, 4096
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) * (4.0 / math.sqrt(d))
    targets = torch.randint(0, vocab, (n,), generator=g)
    grad_h, grad_logp = torch.randn(2, n, generator=g)
    args = [t.to(on) for t in (hidden, weight)] + [None, targets.to(on), 1.0, None, grad_h.to(on), grad_logp.to(on)]
    exact = through_logits(*args, torch.float64)[2][0]
    pytorch = max_error(through_logits(*args, dtype)[2][0], exact)
    backend = "reference" if on == "cpu" else "triton"
    errors = {}
    for slices in (1, 64, 512):
        workspace = n * (vocab // slices) * logit_bytes(dtype, backend)
        dh = fused(*args, dtype, backend, workspace_bytes=workspace)[2][0]
        errors[slices] = max_error(dh, exact)
    if dtype != torch.float32:  # fp32 has no wider running sum to test; its narrow slices' GEMMs round their own way
        assert max(errors.values()) <= 1.1 * errors[1], errors
    scale = exact.abs().max().item()
    assert max(errors.values()) <= pytorch + SLACK[dtype] * scale, (errors, pytorch, scale)


@pytest.mark.parametrize("sliced", [False, True], ids=["contiguous", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_memory_stays_within_the_workspace(backend, device, dtype, sliced):
    """Every tensor the op allocates, forward and backward, is at most the workspace, the ``[N, D]`` accumulator or
    a returned gradient; the peak is the workspace plus ``O(N·D + N + V)``, far below the materialised logits."""
    lead, d, vocab, workspace = (2, 16), 16, 8000, 128 << 10  # few rows: the interpreter runs a program per row
    n = math.prod(lead)
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem(
        lead, d, vocab, seed=7, sliced=sliced, device=device
    )
    args = (hidden, weight, bias, targets, 1.0, mask, grad_h, grad_logp, dtype, backend)
    trackers = []
    fused(*args, workspace_bytes=workspace, trackers=trackers)
    forward, backward = trackers
    elt = dtype.itemsize
    per_row = 1024  # outputs, row statistics, flat targets and mask, the Triton kernels' split partials
    returned = vocab * d * elt + vocab * elt + n * d * elt
    assert all(a.nbytes <= workspace for a in forward.allocations), forward.allocations
    assert forward.peak_bytes <= workspace + per_row * n
    gradients = {tuple(weight.shape), (n, d), tuple(hidden.shape)}  # dW, the fp32 dh accumulator, dh
    assert all(a.nbytes <= workspace or a.shape in gradients for a in backward.allocations), backward.allocations
    assert backward.peak_bytes <= workspace + returned + (4 + elt) * n * d + per_row * n + 4 * vocab

    materialised = AllocationTracker()
    with materialised:
        materialised_op(*args)
    assert materialised.peak_bytes >= 2 * n * vocab * elt  # the logits and their gradient
    assert backward.peak_bytes < materialised.peak_bytes / 2


def test_hidden_is_never_copied():
    """A sliced ``[B, T, D]`` view goes into the GEMMs as it is: nothing of hidden's size is allocated forward, and
    backward allocates one ``[N, D]`` tensor, the fp32 accumulator that becomes the gradient."""
    lead, d, vocab = (4, 16), 64, 40
    hidden, weight, bias, targets, _mask, grad_h, grad_logp = problem(lead, d, vocab, seed=8, sliced=True)
    leaf = _as_sliced_leaf(hidden)
    size = leaf.numel() * leaf.element_size()
    with AllocationTracker() as forward:
        logp, h = ak.linear_logprobs_and_entropy(
            leaf, weight, targets, bias=bias, workspace_bytes=12 * vocab * 12, backend="reference"
        )
    with AllocationTracker() as backward:
        torch.autograd.backward([logp, h], [grad_logp, grad_h])
    assert not [a for a in forward.allocations if a.nbytes >= size]
    assert [a.shape for a in backward.allocations if a.nbytes >= size] == [(math.prod(lead), d)]


def _compare_to_materialised(got, reference, what):
    for name, a, b in zip(("logp", "H"), got[:2], reference[:2]):
        assert max_error(a, b) <= 1e-5, f"{name} {what}"
    for name, a, b in zip(("d hidden", "d weight", "d bias"), got[2], reference[2]):
        assert max_error(a, b) <= 1e-4, f"{name} {what}"


def test_out_of_range_targets_give_nan_only_where_a_gradient_flows(backend, device):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((3, 6), 8, 50, seed=9, device=device)
    targets[0, 2], targets[1, 3], targets[2, 4] = 50, -100, 77
    mask[0, 2] = mask[1, 3] = True
    mask[2, 4] = False  # masked: outputs 0, no NaN, whatever the target
    quiet = grad_logp.clone()
    quiet[0, 2] = quiet[1, 3] = 0.0  # the ignore_index pattern: zero upstream gradient, zero gradient
    for upstream, nan_rows in ((quiet, False), (grad_logp, True)):
        args = (hidden, weight, bias, targets, 0.8, mask, grad_h, upstream, torch.float32, backend)
        got = fused(*args, workspace_bytes=5 * 50 * logit_bytes(torch.float32, backend))
        logp, h, (dh, dw, db) = got
        assert torch.isnan(logp[0, 2]) and torch.isnan(logp[1, 3]) and logp[2, 4] == 0
        assert torch.isfinite(h).all() and torch.isfinite(logp[mask & (targets >= 0) & (targets < 50)]).all()
        assert torch.isnan(dh[0, 2]).all() == nan_rows and torch.isfinite(dh[2]).all()
        assert torch.isnan(dw).all() == nan_rows and torch.isnan(db).all() == nan_rows
        if not nan_rows:
            assert torch.isfinite(dh).all() and torch.isfinite(dw).all()
        _compare_to_materialised(got, materialised_op(*args), f"out-of-range targets, NaN rows {nan_rows}")


def test_neg_inf_bias_entries_and_rows_without_a_distribution(backend, device):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((30,), 8, 64, seed=10, device=device)
    bias[::5] = float("-inf")
    targets[3] = 10  # a -inf logit: logp = -inf, finite gradient
    mask[3] = True
    args = (hidden, weight, bias, targets, 1.0, mask, grad_h, grad_logp)
    workspace = 4 * 64 * logit_bytes(torch.float32, backend)
    got = fused(*args, torch.float32, backend, workspace_bytes=workspace)
    assert got[0][3] == float("-inf") and all(torch.isfinite(g).all() for g in got[2])
    assert_all_within_rule(
        got,
        through_logits(*args, torch.float64),
        through_logits(*args, torch.float32),
        torch.float32,
        f"-inf bias {backend}",
    )

    hidden[5, 0] = float("inf")  # that row's logits hold +-inf: no distribution
    all_neg_inf = torch.full_like(bias, float("-inf"))
    for b, nan_rows in ((bias, [5]), (all_neg_inf, list(range(30)))):
        args = (hidden, weight, b, targets, 1.0, mask, grad_h, grad_logp, torch.float32, backend)
        logp, h, _ = fused(*args, workspace_bytes=workspace)
        undefined = torch.zeros(30, dtype=torch.bool, device=device)
        undefined[nan_rows] = True
        undefined &= mask
        assert torch.equal(torch.isnan(h), undefined) and torch.equal(torch.isnan(logp), undefined)
        assert (h[~mask] == 0).all() and (logp[~mask] == 0).all()


def test_fully_masked_rows_and_no_rows(backend, device):
    hidden, weight, bias, targets, _, grad_h, grad_logp = problem((12,), 8, 20, seed=11, device=device)
    none = torch.zeros(12, dtype=torch.bool, device=device)
    logp, h, grads = fused(hidden, weight, bias, targets, 1.0, none, grad_h, grad_logp, torch.float32, backend)
    assert (logp == 0).all() and (h == 0).all() and all((g == 0).all() for g in grads)
    empty = fused(hidden[:0], weight, bias, targets[:0], 1.0, None, grad_h[:0], grad_logp[:0], torch.float32, backend)
    assert empty[0].shape == empty[1].shape == (0,) and empty[2][0].shape == (0, 8)
    assert (empty[2][1] == 0).all() and (empty[2][2] == 0).all()


def test_bitwise_deterministic(backend, device):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem(
        (3, 7), 16, 90, seed=12, sliced=True, device=device
    )
    args = (hidden, weight, bias, targets, 0.9, mask, grad_h, grad_logp, torch.bfloat16, backend)
    workspace = 4 * 90 * logit_bytes(torch.bfloat16, backend) + 8 * 16 * 90
    first, second = (fused(*args, workspace_bytes=workspace) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)


def test_upstream_gradients_as_expanded_or_strided_views(backend, device):
    hidden, weight, bias, targets, mask, _, _ = problem((3, 5), 8, 40, seed=13, device=device)
    expanded = torch.tensor(0.3, device=device).expand(3, 5)
    strided = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)).to(device)[:, ::2]
    views = fused(hidden, weight, bias, targets, 1.0, mask, expanded, strided, torch.float32, backend)
    dense = fused(
        hidden, weight, bias, targets, 1.0, mask, expanded.contiguous(), strided.contiguous(), torch.float32, backend
    )
    torch.testing.assert_close(views, dense, rtol=0, atol=0)


NEEDS = {
    "hidden": (True, False, False),
    "weight": (False, True, False),
    "bias": (False, False, True),
    "frozen head": (True, False, False),
    "all": (True, True, True),
}


@pytest.mark.parametrize("case", list(NEEDS))
def test_only_required_gradients_are_computed(case):
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((24,), 8, 30, seed=14)
    full = fused(hidden, weight, bias, targets, 1.0, mask, grad_h, grad_logp, torch.float32, "reference")[2]
    leaves = [t.clone().requires_grad_(need) for t, need in zip((hidden, weight, bias), NEEDS[case])]
    logp, h = ak.linear_logprobs_and_entropy(
        leaves[0], leaves[1], targets, bias=leaves[2], mask=mask, backend="reference"
    )
    with AllocationTracker() as backward:
        torch.autograd.backward([logp, h], [grad_logp, grad_h])
    for leaf, need, expected in zip(leaves, NEEDS[case], full):
        assert (leaf.grad is not None) == need
        if need:
            torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)
    weight_gemms = [c for c in backward.calls if c.op == "aten.mm.out" and c.shapes[0] == (30, 8)]
    hidden_gemms = [c for c in backward.calls if c.op == "aten.addmm_.default" and c.shapes[0] == (24, 8)]
    assert bool(weight_gemms) == NEEDS[case][1] and bool(hidden_gemms) == NEEDS[case][0]


def test_unused_output_costs_no_term_and_tied_embeddings_sum():
    torch.manual_seed(15)
    embedding = torch.nn.Embedding(30, 8)
    tokens = torch.randint(0, 30, (2, 9))

    def run(fused_op):
        embedding.zero_grad()
        hidden = torch.tanh(embedding(tokens[:, :-1]))
        if fused_op:
            _logp, h = ak.linear_logprobs_and_entropy(hidden, embedding.weight, tokens[:, 1:], backend="reference")
        else:
            _logp, h = ak.logprobs_and_entropy(F.linear(hidden, embedding.weight), tokens[:, 1:], backend="reference")
        (h.sum() * 0.5).backward()  # logp unused
        return embedding.weight.grad.clone()

    torch.testing.assert_close(run(True), run(False), rtol=1e-5, atol=1e-6)
    hidden = torch.tanh(embedding(tokens[:, :-1])).detach().requires_grad_(True)
    entropy_only = ak.linear_entropy(hidden, embedding.weight.detach(), backend="reference")
    _logp, h = ak.linear_logprobs_and_entropy(hidden, embedding.weight.detach(), tokens[:, 1:], backend="reference")
    a = torch.autograd.grad(entropy_only.sum(), hidden)[0]
    b = torch.autograd.grad(h.sum(), hidden)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_autocast_casts_inputs_like_f_linear():
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((4, 5), 8, 33, seed=16)
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.linear(*leaves).dtype == torch.bfloat16
        logp, h = ak.linear_logprobs_and_entropy(
            leaves[0], leaves[1], targets, bias=leaves[2], mask=mask, backend="reference"
        )
    torch.autograd.backward([logp, h], [grad_logp, grad_h])
    cast = fused(hidden, weight, bias, targets, 1.0, mask, grad_h, grad_logp, torch.bfloat16, "reference")
    torch.testing.assert_close((logp, h), cast[:2], rtol=0, atol=0)
    for leaf, expected in zip(leaves, cast[2]):
        assert leaf.grad.dtype == torch.float32
        torch.testing.assert_close(leaf.grad, expected.float(), rtol=0, atol=0)


def test_compiles_with_fullgraph():
    """The forward graph (with the autograd formula) is traced whole; the backward runs the compiled graph's."""
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((3, 4), 8, 21, seed=17, sliced=True)

    def outputs(h, w, b):
        logp, ent = ak.linear_logprobs_and_entropy(
            h, w, targets, bias=b, temperature=0.7, mask=mask, workspace_bytes=5 * 21 * 12, backend="reference"
        )
        return logp, ent, ak.linear_entropy(h, w, bias=b, temperature=0.7, backend="reference")

    def outputs_and_grads(fn):
        leaves = [
            _as_sliced_leaf(hidden.detach()),
            weight.clone().requires_grad_(True),
            bias.clone().requires_grad_(True),
        ]
        outs = fn(*leaves)
        torch.autograd.backward(outs, [grad_logp, grad_h, grad_h])
        return [o.detach() for o in outs] + [t.grad for t in leaves]

    torch._dynamo.reset()
    compiled = torch.compile(outputs, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(outputs_and_grads(compiled), outputs_and_grads(outputs), rtol=0, atol=0)


def test_temperature_schedule_runs_one_graph():
    """Dynamo traces the first temperature as a constant and the second as a graph input serving every later one;
    each value is used (the outputs match eager at every step)."""
    hidden, weight, _bias, targets, mask, grad_h, grad_logp = problem((3, 4), 8, 21, seed=22)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def loss(h, w, t):
        logp, ent = ak.linear_logprobs_and_entropy(h, w, targets, temperature=t, mask=mask, backend="reference")
        return (logp * grad_logp + ent * grad_h).sum()

    def loss_and_grads(fn, t):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        value = fn(h, w, t)
        value.backward()
        return value.detach(), h.grad, w.grad

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=counting_backend)
    for t in [0.3 + 0.11 * i for i in range(12)]:  # more values than Dynamo's recompile limit (8)
        torch.testing.assert_close(loss_and_grads(compiled, t), loss_and_grads(loss, t), rtol=1e-6, atol=1e-6)
    assert len(graphs) <= 2


def test_argument_error_under_compile_is_raised_when_the_compiled_code_runs():
    hidden, weight, _, targets, *_ = problem((5,), 4, 9, seed=23)
    compiled = torch.compile(
        lambda h, w, y: ak.linear_logprobs_and_entropy(h, w, y, temperature=0.0), fullgraph=True, backend="aot_eager"
    )
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        compiled(hidden, weight, targets)


def test_opcheck():
    hidden, weight, bias, targets, mask, grad_h, grad_logp = problem((10,), 4, 13, seed=18)
    targets, mask = targets.contiguous(), mask.contiguous()
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    t = torch.tensor(0.8, dtype=torch.float64)  # the temperature as torch.compile passes it
    forward, backward = torch.ops.aer_kernels.linear_fwd.default, torch.ops.aer_kernels.linear_bwd.default
    args = (*leaves, targets, mask, 0.8, "reference", 3 * 13 * 12)
    torch.library.opcheck(forward, args)
    torch.library.opcheck(forward, (*args[:5], 1.0, "reference", 3 * 13 * 12, t))
    _, h, stats = torch.ops.aer_kernels.linear_fwd(*args)
    assert torch.equal(torch.ops.aer_kernels.linear_fwd(*args[:5], 1.0, "reference", 3 * 13 * 12, t)[1], h)
    back = (
        hidden,
        weight,
        bias,
        targets,
        mask,
        stats.detach(),
        h.detach(),
        grad_h,
        grad_logp,
        0.8,
        "reference",
        3 * 13 * 12,
        True,
        True,
        False,
    )
    torch.library.opcheck(backward, back)
    torch.library.opcheck(backward, (*back[:9], 1.0, *back[10:], t))


def _good():
    g = torch.Generator().manual_seed(19)
    return dict(
        hidden=torch.randn(2, 3, 4, generator=g),
        weight=torch.randn(5, 4, generator=g),
        targets=torch.randint(0, 5, (2, 3), generator=g),
        bias=None,
        mask=torch.ones(2, 3, dtype=torch.bool),
        temperature=1.0,
        workspace_bytes=None,
        backend="reference",
    )


BAD = [
    (dict(hidden=torch.zeros(2, 3, 4, dtype=torch.long)), TypeError, "hidden must be float"),
    (dict(hidden=torch.zeros(())), ValueError, "hidden must have shape"),
    (dict(hidden=torch.zeros(2, 3, 0)), ValueError, "hidden must have shape"),
    (dict(weight=torch.zeros(5, 3)), ValueError, "weight must have shape \\[V, D\\] with D = hidden.shape\\[-1\\] = 4"),
    (dict(weight=torch.zeros(20)), ValueError, "weight must have shape"),
    (dict(weight=torch.zeros(0, 4)), ValueError, "vocabulary .* is empty"),
    (dict(weight=torch.zeros(5, 4, dtype=torch.bfloat16)), TypeError, "weight is torch.bfloat16 but hidden is"),
    (dict(weight=torch.zeros(5, 4, device="meta")), ValueError, "weight is on meta"),
    (dict(bias=torch.zeros(4)), ValueError, "bias must have shape \\[V\\]"),
    (dict(bias=torch.zeros(5, dtype=torch.float16)), TypeError, "bias is torch.float16"),
    (dict(bias=torch.zeros(5, dtype=torch.long)), TypeError, "bias must be float"),
    (dict(targets=None), TypeError, "targets must be a torch.Tensor"),
    (dict(targets=torch.zeros(2, 4, dtype=torch.long)), ValueError, "targets must have shape hidden.shape"),
    (dict(targets=torch.zeros(2, 3)), TypeError, "targets must be an integer tensor"),
    (dict(targets=torch.zeros(2, 3, dtype=torch.long, device="meta")), ValueError, "targets is on meta"),
    (dict(mask=torch.ones(2, 3, dtype=torch.int32)), TypeError, "mask must be a bool tensor"),
    (dict(mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask must have shape"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite positive number"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite positive number"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(workspace_bytes=5 * 12 - 1), ValueError, "workspace_bytes=59 holds less than one row"),
    (dict(workspace_bytes=1.0e9), TypeError, "workspace_bytes must be a Python int"),
    (dict(workspace_bytes=True), TypeError, "workspace_bytes must be a Python int"),
]


@pytest.mark.parametrize("override, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_before_any_work(override, error, message):
    args = {**_good(), **override}
    hidden, weight, targets = args.pop("hidden"), args.pop("weight"), args.pop("targets")
    with AllocationTracker() as tracker, pytest.raises(error, match=message):
        ak.linear_logprobs_and_entropy(hidden, weight, targets, **args)
    assert tracker.allocations == [] and not [c for c in tracker.calls if c.op in GEMMS]


def test_workspace_must_hold_one_vocabulary_column():
    args = _good()
    rows = 6 * logit_bytes(torch.float32, "reference")  # N = 6 rows > V = 5
    with pytest.raises(ValueError, match=f"workspace_bytes={rows - 1} holds less than .* one vocabulary column"):
        ak.linear_logprobs_and_entropy(
            args["hidden"], args["weight"], args["targets"], workspace_bytes=rows - 1, backend="reference"
        )
    ak.linear_logprobs_and_entropy(
        args["hidden"], args["weight"], args["targets"], workspace_bytes=rows, backend="reference"
    )


def test_double_backward_is_refused_clearly():
    hidden, weight, _bias, targets, *_ = problem((6,), 4, 9, seed=20)
    hidden.requires_grad_(True)
    _logp, h = ak.linear_logprobs_and_entropy(hidden, weight, targets, backend="reference")
    (dh,) = torch.autograd.grad(h.sum(), hidden, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward is not supported"):
        dh.sum().backward()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_peak_memory_within_the_bound(dtype):
    """The CUDA allocator's peak over forward + backward: the workspace, the fp32 ``[N, D]`` accumulator, at most
    one ``[N, D]`` fp32 product, the returned gradients and ``O(N)``; the materialised path's is far above."""
    n, d, vocab, workspace = 4096, 1024, 32000, 32 << 20
    g = torch.Generator(device="cuda").manual_seed(21)
    hidden = torch.randn(n, d, device="cuda", generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(vocab, d, device="cuda", generator=g) * 0.05).to(dtype).requires_grad_(True)
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=g)

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        logp, h = fn()
        grads = torch.autograd.grad((logp - 0.01 * h).sum(), (hidden, weight))
        torch.cuda.synchronize()
        del grads
        return torch.cuda.max_memory_allocated() - before

    fused_peak = peak(lambda: ak.linear_logprobs_and_entropy(hidden, weight, targets, workspace_bytes=workspace))
    materialised_peak = peak(lambda: ak.logprobs_and_entropy(hidden @ weight.t(), targets))
    returned = (n * d + vocab * d) * dtype.itemsize
    assert fused_peak <= workspace + 8 * n * d + returned + 1024 * n, fused_peak
    assert materialised_peak >= 2 * n * vocab * dtype.itemsize > 2 * fused_peak
