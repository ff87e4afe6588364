"""Triton kernels for the per-row steps of the vocab-parallel combine (see ``vocab_parallel.py``).

Both are elementwise over rows: ``partials`` turns one shard's ``(lse_r, H_r, logp_r)`` into the rows
of the tensor that is summed over ranks, ``combine`` turns the summed rows into ``H``, ``logp``,
``lse`` and ``E``. One launch each instead of a dozen small PyTorch kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton import on_device_of

_BLOCK = 1024


@triton.jit
def vocab_parallel_partials_kernel(
    lse_ptr, h_ptr, logp_ptr, targets_ptr, row_max_ptr,  # [N]
    sums_ptr,  # [K, N]: a, a * (rel - H_r), owned * (z_y - M), owned
    N, V,
    HAS_TARGETS: tl.constexpr, BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    in_range = rows < N
    lse = tl.load(lse_ptr + rows, mask=in_range, other=float("-inf"))
    row_max = tl.load(row_max_ptr + rows, mask=in_range, other=0.0)
    h = tl.load(h_ptr + rows, mask=in_range, other=0.0)
    empty = lse == float("-inf")  # contributes nothing; a NaN lse still propagates
    rel = lse - row_max
    a = tl.where(empty, 0.0, tl.exp(rel))
    tl.store(sums_ptr + rows, a, mask=in_range)
    tl.store(sums_ptr + N + rows, tl.where(empty, 0.0, a * (rel - h)), mask=in_range)
    if HAS_TARGETS:
        y = tl.load(targets_ptr + rows, mask=in_range, other=-1).to(tl.int64)
        owned = (y >= 0) & (y < V)
        logp = tl.load(logp_ptr + rows, mask=in_range, other=0.0)
        z_rel = tl.where(empty, float("-inf"), logp + rel)  # z_y - M; an all -inf shard row has z_y = -inf
        tl.store(sums_ptr + 2 * N + rows, tl.where(owned, z_rel, 0.0), mask=in_range)
        tl.store(sums_ptr + 3 * N + rows, owned.to(tl.float32), mask=in_range)


@triton.jit
def vocab_parallel_combine_kernel(
    row_max_ptr, sums_ptr, mask_ptr,
    h_ptr, logp_ptr, lse_ptr, e_ptr,  # [N] fp32
    N,
    HAS_TARGETS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
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
    w_over_s = w / s
    tl.store(h_ptr + rows, tl.where(active, log_s - w_over_s, 0.0), mask=in_range)
    tl.store(lse_ptr + rows, tl.where(active, row_max + log_s, 0.0), mask=in_range)
    tl.store(e_ptr + rows, tl.where(active, row_max + w_over_s, 0.0), mask=in_range)
    if HAS_TARGETS:
        z_rel = tl.load(sums_ptr + 2 * N + rows, mask=in_range, other=0.0)
        owners = tl.load(sums_ptr + 3 * N + rows, mask=in_range, other=1.0)
        logp = tl.where(owners == 1.0, z_rel - log_s, float("nan"))
        tl.store(logp_ptr + rows, tl.where(active, logp, 0.0), mask=in_range)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


def partials(lse, h, logp, targets, row_max, vocab: int, sums) -> None:
    """Fill ``sums`` ([2, N], or [4, N] with ``targets``) from one shard's per-row statistics."""
    n = lse.numel()
    if n == 0:
        return
    with on_device_of(lse):
        vocab_parallel_partials_kernel[_grid(n)](
            lse, h, logp if targets is not None else lse, targets if targets is not None else lse, row_max,
            sums, n, vocab, HAS_TARGETS=targets is not None, BLOCK=_BLOCK,
        )


def combine(row_max, sums, mask, h, logp, lse, e) -> None:
    """Fill ``h``, ``lse``, ``e`` (and ``logp`` when ``sums`` has 4 rows) from the summed partials."""
    n = row_max.numel()
    if n == 0:
        return
    has_targets = sums.shape[0] == 4
    with on_device_of(row_max):
        vocab_parallel_combine_kernel[_grid(n)](
            row_max, sums, mask.view(torch.uint8) if mask is not None else row_max,
            h, logp if has_targets else h, lse, e, n,
            HAS_TARGETS=has_targets, HAS_MASK=mask is not None, BLOCK=_BLOCK,
        )
