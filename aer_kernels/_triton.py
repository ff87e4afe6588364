"""Triton kernels for per-row entropy / log-prob, forward and backward, and their launchers.

Forward, one pass over the row. Per block of columns, one scalar block max moves the running max ``m``
(in logit units, so ``x - m`` is exact near the max, where a confident token's log-prob lives); with
``d = (x - m) * log2(e) / T`` the lane accumulators hold ``s = sum 2^d`` and ``w = sum 2^d * d``
(relative to ``m``, so huge logits do not cancel), rescaled by ``2^((m_old - m_new) log2(e) / T)`` when
``m`` moves: one ``exp2`` per element. Then, in nats, ``lse = m / T + ln2 * log2 s``,
``E = m / T + ln2 * w / s``, ``H = ln2 * (log2 s - w / s)``, ``logp = (x_y - m) / T - ln2 * log2 s``.
A row split over several programs writes ``(m, s, w)`` partials that a small pass merges.

Backward, one streaming pass: ``dx = (1/T) * (gL * (1[j=y] - p) - gH * p * (z - E))`` with
``z = x / T`` and ``p = exp(z - lse)`` recomputed from the saved ``lse`` and ``E``.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._config import LaunchConfig, launch_config
from ._layout import RowLayout

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _row_start(row, inner_size, outer_stride, inner_stride):
    row = row.to(tl.int64)  # N * V can exceed 2**31
    return (row // inner_size) * outer_stride + (row % inner_size) * inner_stride


@triton.jit
def _rescale_reference(m):
    """The rescaling reference: the running max, or 0 while it is still -inf (avoids -inf - -inf)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _load_target_logit(row, active, x_row, targets_ptr, V):
    """``(x_y, y in [0, V))``; an out-of-range target is never read."""
    y = tl.load(targets_ptr + row).to(tl.int64)
    valid = (y >= 0) & (y < V)
    return tl.load(x_row + y, mask=valid & active, other=0.0).to(tl.float32), valid


@triton.jit
def _write_row(row, m, s, w, active, x_y, y_valid, h_ptr, logp_ptr, lse_ptr, e_ptr, inv_t,
               HAS_TARGETS: tl.constexpr):
    """Final per-row outputs from the merged ``(m, s, w)``; masked rows get 0."""
    m_ref = _rescale_reference(m)
    log_s = LN2 * tl.log2(s)
    w_over_s = LN2 * (w / s)
    lse = m_ref * inv_t + log_s
    tl.store(h_ptr + row, tl.where(active, log_s - w_over_s, 0.0))
    tl.store(lse_ptr + row, tl.where(active, lse, 0.0))
    tl.store(e_ptr + row, tl.where(active, m_ref * inv_t + w_over_s, 0.0))
    if HAS_TARGETS:
        logp = tl.where(y_valid, (x_y - m_ref) * inv_t - log_s, float("nan"))
        tl.store(logp_ptr + row, tl.where(active, logp, 0.0))


@triton.jit
def entropy_fwd_kernel(
    x_ptr, targets_ptr, mask_ptr,
    h_ptr, logp_ptr, lse_ptr, e_ptr,  # [N] fp32
    part_ptr,  # [N, splits, 3] fp32 partials (m, s, w), used when SPLIT
    V, inner_size, outer_stride, inner_stride,
    inv_t,  # 1 / T, a runtime value: no recompile per temperature
    split_len,
    HAS_TARGETS: tl.constexpr, HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    x_row = x_ptr + _row_start(row, inner_size, outer_stride, inner_stride)
    scale = inv_t * LOG2E
    active = True
    col_start = split * split_len
    col_end = tl.minimum(col_start + split_len, V)
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
        col_end = tl.where(active, col_end, col_start)  # masked rows read nothing
    x_y, y_valid = 0.0, False
    if HAS_TARGETS and not SPLIT:
        x_y, y_valid = _load_target_logit(row, active, x_row, targets_ptr, V)  # in flight during the loop

    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    w = tl.zeros([BLOCK_V], tl.float32)
    for start in range(col_start, col_end, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + cols, mask=cols < col_end, other=float("-inf")).to(tl.float32)  # [BLOCK_V]
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_ref = _rescale_reference(m_new)
        shift = tl.where(m == float("-inf"), 0.0, (m - m_ref) * scale)
        alpha = tl.exp2((m - m_ref) * scale)
        d = (x - m_ref) * scale
        p = tl.exp2(d)  # the one exp per element; -inf and padding lanes give 0
        w = alpha * (w + s * shift) + p * tl.where(p > 0.0, d, 0.0)  # 0 * -inf must not be NaN
        s = alpha * s + p
        m = m_new

    s_row = tl.sum(s, axis=0)
    w_row = tl.sum(w, axis=0)
    if SPLIT:
        part = part_ptr + (row.to(tl.int64) * tl.num_programs(1) + split) * 3
        tl.store(part, m)
        tl.store(part + 1, s_row)
        tl.store(part + 2, w_row)
    else:
        _write_row(row, m, s_row, w_row, active, x_y, y_valid, h_ptr, logp_ptr, lse_ptr, e_ptr, inv_t, HAS_TARGETS)


@triton.jit
def entropy_merge_kernel(
    x_ptr, targets_ptr, mask_ptr, h_ptr, logp_ptr, lse_ptr, e_ptr, part_ptr,
    V, inner_size, outer_stride, inner_stride, inv_t, n_splits,
    HAS_TARGETS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + _row_start(row, inner_size, outer_stride, inner_stride)
    scale = inv_t * LOG2E
    active = True
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
    k = tl.arange(0, BLOCK_S)
    part = part_ptr + row.to(tl.int64) * n_splits * 3 + k * 3
    valid = k < n_splits
    m_k = tl.load(part, mask=valid, other=float("-inf"))  # [BLOCK_S]
    s_k = tl.load(part + 1, mask=valid, other=0.0)
    w_k = tl.load(part + 2, mask=valid, other=0.0)
    m = tl.max(m_k, axis=0)
    m_ref = _rescale_reference(m)
    a_k = tl.exp2((m_k - m_ref) * scale)
    shift_k = tl.where(m_k == float("-inf"), 0.0, (m_k - m_ref) * scale)
    s = tl.sum(a_k * s_k, axis=0)
    w = tl.sum(a_k * (w_k + s_k * shift_k), axis=0)
    x_y, y_valid = 0.0, False
    if HAS_TARGETS:
        x_y, y_valid = _load_target_logit(row, active, x_row, targets_ptr, V)
    _write_row(row, m, s, w, active, x_y, y_valid, h_ptr, logp_ptr, lse_ptr, e_ptr, inv_t, HAS_TARGETS)


@triton.jit
def entropy_bwd_kernel(
    x_ptr, dx_ptr, targets_ptr, mask_ptr, lse_ptr, e_ptr, gh_ptr, gl_ptr,
    V, inner_size, x_outer_stride, x_inner_stride, dx_outer_stride, dx_inner_stride,
    inv_t, split_len,
    HAS_MASK: tl.constexpr, HAS_GH: tl.constexpr, HAS_GL: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    x_row = x_ptr + _row_start(row, inner_size, x_outer_stride, x_inner_stride)
    dx_row = dx_ptr + _row_start(row, inner_size, dx_outer_stride, dx_inner_stride)
    active = True
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
    lse = tl.load(lse_ptr + row)
    e = tl.load(e_ptr + row)
    # -inf logits get gradient 0 (not 0 * inf), unless the row has no distribution (all -inf, +inf or
    # NaN logits: lse is -inf or NaN), whose gradient stays NaN: compare against NaN, which matches nothing.
    row_ok = (lse > float("-inf")) & (lse < float("inf"))
    zero_at = tl.where(row_ok, float("-inf"), float("nan"))
    gh = 0.0
    gl = 0.0
    y = -1
    if HAS_GH:
        gh = tl.load(gh_ptr + row).to(tl.float32)
    if HAS_GL:
        gl = tl.load(gl_ptr + row).to(tl.float32)
        y = tl.load(targets_ptr + row).to(tl.int64)  # outside [0, V): no one-hot term

    col_start = split * split_len
    col_end = tl.minimum(col_start + split_len, V)
    read_end = col_end
    if HAS_MASK:
        read_end = tl.where(active, col_end, col_start)  # masked rows read nothing, write zeros
    for start in range(col_start, col_end, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_row = cols < col_end
        x = tl.load(x_row + cols, mask=cols < read_end, other=0.0).to(tl.float32)  # [BLOCK_V]
        z = x * inv_t
        p = tl.exp2((z - lse) * LOG2E)
        g = -gl - gh * (z - e)
        g = tl.where(x == zero_at, 0.0, p * g)
        g = tl.where(cols == y, g + gl, g) * inv_t
        g = tl.where(active, g, 0.0)
        tl.store(dx_row + cols, g.to(dx_ptr.dtype.element_ty), mask=in_row)


def on_device_of(t: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _mask_arg(mask: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    return dummy if mask is None else mask.view(torch.uint8)


def forward(logits: torch.Tensor, layout: RowLayout, targets, mask, temperature: float,
            h, logp, lse, e, config: LaunchConfig | None = None) -> None:
    """Fill ``h``, ``lse``, ``e`` (and ``logp`` when ``targets``) for each row of ``logits``."""
    n, v = layout.n_rows, layout.vocab
    if n == 0:
        return
    cfg = config or launch_config(n, v, logits.element_size(), _num_sms(logits.device))
    dummy = h
    row_args = (v, layout.inner_size, layout.outer_stride, layout.inner_stride, 1.0 / temperature)
    split = cfg.splits > 1
    part = torch.empty((n, cfg.splits, 3), device=logits.device, dtype=torch.float32) if split else dummy
    with on_device_of(logits):
        entropy_fwd_kernel[(n, cfg.splits)](
            logits, targets if targets is not None else dummy, _mask_arg(mask, dummy),
            h, logp if logp is not None else dummy, lse, e, part,
            *row_args, cfg.split_len,
            HAS_TARGETS=targets is not None, HAS_MASK=mask is not None, SPLIT=split, BLOCK_V=cfg.block_v,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if split:
            entropy_merge_kernel[(n,)](
                logits, targets if targets is not None else dummy, _mask_arg(mask, dummy),
                h, logp if logp is not None else dummy, lse, e, part, *row_args, cfg.splits,
                HAS_TARGETS=targets is not None, HAS_MASK=mask is not None,
                BLOCK_S=triton.next_power_of_2(cfg.splits), num_warps=1,
            )


def backward(logits: torch.Tensor, layout: RowLayout, grad: torch.Tensor, grad_layout: RowLayout,
             targets, mask, lse, e, grad_h, grad_logp, temperature: float,
             config: LaunchConfig | None = None) -> None:
    """Write the logits' gradient into ``grad`` (which may be ``logits`` itself)."""
    n, v = layout.n_rows, layout.vocab
    if n == 0:
        return
    cfg = config or launch_config(n, v, logits.element_size(), _num_sms(logits.device), backward=True)
    dummy = lse
    with on_device_of(logits):
        entropy_bwd_kernel[(n, cfg.splits)](
            logits, grad, targets if targets is not None else dummy, _mask_arg(mask, dummy), lse, e,
            grad_h if grad_h is not None else dummy, grad_logp if grad_logp is not None else dummy,
            v, layout.inner_size, layout.outer_stride, layout.inner_stride,
            grad_layout.outer_stride, grad_layout.inner_stride,
            1.0 / temperature, cfg.split_len,
            HAS_MASK=mask is not None, HAS_GH=grad_h is not None, HAS_GL=grad_logp is not None, BLOCK_V=cfg.block_v,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
