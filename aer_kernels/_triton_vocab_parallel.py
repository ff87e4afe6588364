"""Triton kernels for the per-row steps of the vocab-parallel combine (see ``vocab_parallel.py``); their
launchers, ``partials`` and ``combine``, are in ``_triton.py`` with the rest of the Triton backend.

Both are elementwise over rows: the partials kernel turns one shard's row statistics ``(m_r, log_s_r)``, ``H_r``
and ``logp_r`` into the rows of the tensor that is summed over ranks, the combine kernel turns the summed rows
into ``H``, ``logp`` and the global row statistics. One launch each instead of a dozen small PyTorch kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.heuristics({"HAS_TARGETS": lambda args: args["targets_ptr"] is not None})
@triton.jit
def vocab_parallel_partials_kernel(
    stats_ptr,  # [N, 2]: (m_r, log_s_r)
    h_ptr,
    logp_ptr,
    targets_ptr,
    row_max_ptr,  # [N]
    sums_ptr,  # [K, N]: a, a * (shift + e_rel_r), owned * (x_y - M) / T, owned
    N,
    V,
    inv_t,
    HAS_TARGETS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    in_range = rows < N
    m = tl.load(stats_ptr + rows * 2, mask=in_range, other=0.0)
    log_s = tl.load(stats_ptr + rows * 2 + 1, mask=in_range, other=float("-inf"))
    e_rel = log_s - tl.load(h_ptr + rows, mask=in_range, other=0.0)
    row_max = tl.load(row_max_ptr + rows, mask=in_range, other=0.0)
    empty = log_s == float("-inf")  # contributes nothing; a NaN still propagates
    shift = (m - tl.where(row_max == float("-inf"), 0.0, row_max)) * inv_t
    rel = shift + log_s
    a = tl.where(empty, 0.0, tl.exp(rel))
    tl.store(sums_ptr + rows, a, mask=in_range)
    tl.store(sums_ptr + N + rows, tl.where(empty, 0.0, a * (shift + e_rel)), mask=in_range)
    if HAS_TARGETS:
        y = tl.load(targets_ptr + rows, mask=in_range, other=-1).to(tl.int64)
        owned = (y >= 0) & (y < V)
        logp = tl.load(logp_ptr + rows, mask=in_range, other=0.0)
        z_rel = tl.where(empty, float("-inf"), logp + rel)  # (x_y - M) / T; an all -inf shard row has x_y = -inf
        tl.store(sums_ptr + 2 * N + rows, tl.where(owned, z_rel, 0.0), mask=in_range)
        tl.store(sums_ptr + 3 * N + rows, owned.to(tl.float32), mask=in_range)


@triton.heuristics(
    {
        "HAS_TARGETS": lambda args: args["logp_ptr"] is not None,
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
    }
)
@triton.jit
def vocab_parallel_combine_kernel(
    row_max_ptr,
    sums_ptr,
    mask_ptr,
    h_ptr,
    logp_ptr,  # [N] fp32
    stats_ptr,  # [N, 2] fp32
    N,
    HAS_TARGETS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    in_range = rows < N
    active = in_range
    if HAS_MASK:
        active = tl.load(mask_ptr + rows, mask=in_range, other=0) != 0
    row_max = tl.load(row_max_ptr + rows, mask=in_range, other=0.0)
    s = tl.load(sums_ptr + rows, mask=in_range, other=1.0)
    w = tl.load(sums_ptr + N + rows, mask=in_range, other=0.0)
    log_s = tl.log(s)
    e_rel = w / s
    tl.store(h_ptr + rows, tl.where(active, log_s - e_rel, 0.0), mask=in_range)
    tl.store(stats_ptr + rows * 2, tl.where(active & (row_max > float("-inf")), row_max, 0.0), mask=in_range)
    tl.store(stats_ptr + rows * 2 + 1, tl.where(active, log_s, 0.0), mask=in_range)
    if HAS_TARGETS:
        z_rel = tl.load(sums_ptr + 2 * N + rows, mask=in_range, other=0.0)
        owners = tl.load(sums_ptr + 3 * N + rows, mask=in_range, other=1.0)
        logp = tl.where(owners == 1.0, z_rel - log_s, float("nan"))
        tl.store(logp_ptr + rows, tl.where(active, logp, 0.0), mask=in_range)
