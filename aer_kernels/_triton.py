"""The Triton backend: the per-row entropy / log-prob kernels, forward and backward, and the launchers of the
backend's functions (``forward``, ``backward``, and ``partials``/``combine`` of the vocab-parallel combine, whose
kernels are in ``_triton_vocab_parallel.py``), with the reference backend's arguments.

Forward, one pass over the row. A program streams its columns in ``[UNROLL, WARPS, 32 * VEC]`` tiles: each
warp owns a slice of every tile and keeps its own running max ``m`` (in logit units, so ``x - m`` is exact
near the max, where a confident token's log-prob lives), so the loop needs no barrier; the warps merge once
per row. With ``d = (x - m) * log2(e) / T`` the lane accumulators hold ``s = sum 2^d`` and
``w = sum 2^d * d``, rescaled by ``2^((m_old - m_new) log2(e) / T)`` when ``m`` moves: one ``exp2`` per
element. Then, in nats, with ``log_s = ln2 * log2 s`` and ``e_rel = ln2 * w / s``:
``H = log_s - e_rel``, ``logp = (x_y - m) / T - log_s``, ``lse = m / T + log_s``, ``E = m / T + e_rel``.
A row split over several programs writes ``(m, s, w)`` partials that a small pass merges.

The per-row statistics kept for backward are ``(m, log_s)`` and ``H`` itself (``e_rel = log_s - H``), 12
bytes: relative to the row max, so the backward's ``p = exp((x - m) / T - log_s)`` and
``z - E = (x - m) / T - e_rel`` stay exact for huge logits, where ``z - lse`` would cancel.

Backward, one streaming pass: ``dx = (1/T) * (gL * (1[j=y] - p) - gH * p * (z - E))``.

Loads are 16-byte vectors: the main loop covers whole tiles from the first column whose address is a
multiple of 16 bytes, unmasked; the few columns before it and the ragged end run as one masked tile.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._config import LaunchConfig, launch_config
from ._layout import RowLayout
from ._triton_vocab_parallel import vocab_parallel_combine_kernel, vocab_parallel_partials_kernel

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Beyond this many nats below the max, exp underflows to 0 in fp32: clamping there keeps 0 * -inf out.
_FLOOR = tl.constexpr(-1.0e4)
# Rows per program of the elementwise vocab-parallel kernels.
_ROWS_PER_PROGRAM = 1024


@triton.jit
def _row_start(row, inner_size, outer_stride, inner_stride):
    row = row.to(tl.int64)  # N * V can exceed 2**31
    return (row // inner_size) * outer_stride + (row % inner_size) * inner_stride


@triton.jit
def _aligned_span(row_start, col_start, col_end, VEC: tl.constexpr, BLOCK: tl.constexpr):
    """``[a, b)``: whole tiles of ``[col_start, col_end)`` starting at a 16-byte aligned column."""
    head = ((VEC - (row_start + col_start) % VEC) % VEC).to(tl.int32)
    a = tl.minimum(col_start + head, col_end)
    b = a + (col_end - a) // BLOCK * BLOCK
    return a, b


@triton.jit
def _edge_columns(j, col_start, a, b):
    """Lane ``j`` of the edge tiles: the head ``[col_start, a)`` then the tail ``[b, ...)``."""
    head_len = a - col_start
    return tl.where(j < head_len, col_start + j, b + j - head_len)


@triton.jit
def _tile_offsets(UNROLL: tl.constexpr, WARPS: tl.constexpr, C: tl.constexpr):
    """``[UNROLL, WARPS, C]`` column offsets of one tile: warp ``w`` owns ``C`` contiguous columns per vector."""
    k = tl.arange(0, UNROLL)[:, None, None] * (WARPS * C)
    w = tl.arange(0, WARPS)[None, :, None] * C
    return k + w + tl.arange(0, C)[None, None, :]


@triton.jit
def _online_update(x, m, s, w, scale):
    """Fold a ``[UNROLL, WARPS, C]`` tile into each warp's running ``(m, s, w)`` (``[1, WARPS, 1|C]``)."""
    tile_max = tl.max(tl.max(x, axis=0, keep_dims=True), axis=2, keep_dims=True)  # in-thread, then one warp shuffle
    m_new = tl.maximum(m, tile_max)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf while the warp has seen only -inf
    shift = tl.where(m == float("-inf"), 0.0, (m - m_ref) * scale)
    alpha = tl.exp2(shift)
    d = (x - m_ref) * scale
    p = tl.exp2(d)  # the one exp per element; -inf lanes give 0
    # 0 * -inf must not be NaN: the clamp keeps -inf lanes at 0 while a NaN logit still reaches w through p.
    w = alpha * (w + s * shift) + tl.sum(p * tl.maximum(d, -3.0e38), axis=0, keep_dims=True)
    s = alpha * s + tl.sum(p, axis=0, keep_dims=True)
    return m_new, s, w


@triton.jit
def _merge(m_k, s_k, w_k, scale):
    """Merge ``[K]`` partials ``(m, s, w)`` into one, relative to the merged max (a partial of only -inf adds 0)."""
    m = tl.max(m_k, axis=0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    shift_k = tl.where(m_k == float("-inf"), 0.0, (m_k - m_ref) * scale)
    a_k = tl.exp2(shift_k)
    return m, tl.sum(a_k * s_k, axis=0), tl.sum(a_k * (w_k + s_k * shift_k), axis=0)


@triton.jit
def _load_target_logit(row, active, x_row, targets_ptr, V):
    """``(x_y, y in [0, V))``; an out-of-range target is never read."""
    y = tl.load(targets_ptr + row).to(tl.int64)
    valid = (y >= 0) & (y < V)
    return tl.load(x_row + y, mask=valid & active, other=0.0).to(tl.float32), valid


@triton.jit
def _write_row(row, m, s, w, active, x_y, y_valid, h_ptr, logp_ptr, stats_ptr, inv_t, HAS_TARGETS: tl.constexpr):
    """Final per-row outputs from the merged ``(m, s, w)``; masked rows get 0."""
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    log_s = LN2 * tl.log2(s)
    e_rel = LN2 * (w / s)
    tl.store(h_ptr + row, tl.where(active, log_s - e_rel, 0.0))
    stats = stats_ptr + row.to(tl.int64) * 2
    tl.store(stats, tl.where(active, m_ref, 0.0))
    tl.store(stats + 1, tl.where(active, log_s, 0.0))
    if HAS_TARGETS:
        logp = tl.where(y_valid, (x_y - m_ref) * inv_t - log_s, float("nan"))
        tl.store(logp_ptr + row, tl.where(active, logp, 0.0))


@triton.heuristics(
    {
        "HAS_TARGETS": lambda args: args["targets_ptr"] is not None,
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
        "SPLIT": lambda args: args["part_ptr"] is not None,
    }
)
@triton.jit
def entropy_fwd_kernel(
    x_ptr,
    targets_ptr,
    mask_ptr,
    h_ptr,
    logp_ptr,  # [N] fp32
    stats_ptr,  # [N, 2] fp32: (m, log_s)
    part_ptr,  # [N, splits, 3] fp32 partials (m, s, w) when the row is split
    V,
    inner_size,
    outer_stride,
    inner_stride,
    inv_t,  # 1 / T, a runtime value: no recompile per temperature
    split_len,
    HAS_TARGETS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr,
    VEC: tl.constexpr,
    UNROLL: tl.constexpr,
    WARPS: tl.constexpr,
):
    C: tl.constexpr = 32 * VEC
    BLOCK: tl.constexpr = UNROLL * WARPS * C
    row = tl.program_id(0)
    split = tl.program_id(1)
    row_start = _row_start(row, inner_size, outer_stride, inner_stride)
    x_row = x_ptr + row_start
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

    offs = _tile_offsets(UNROLL, WARPS, C)
    m = tl.full([1, WARPS, 1], float("-inf"), tl.float32)
    s = tl.zeros([1, WARPS, C], tl.float32)
    w = tl.zeros([1, WARPS, C], tl.float32)
    a, b = _aligned_span(row_start, col_start, col_end, VEC, BLOCK)
    x_main = x_ptr + tl.multiple_of(row_start + a, VEC)
    for off in range(0, b - a, BLOCK):
        x = tl.load(x_main + off + offs).to(tl.float32)  # [UNROLL, WARPS, C], unmasked 16-byte vectors
        m, s, w = _online_update(x, m, s, w, scale)
    n_edge = (a - col_start) + (col_end - b)
    for j0 in range(0, n_edge, BLOCK):
        j = j0 + offs
        x = tl.load(x_row + _edge_columns(j, col_start, a, b), mask=j < n_edge, other=float("-inf")).to(tl.float32)
        m, s, w = _online_update(x, m, s, w, scale)

    # The warps merge once per row: [1, WARPS, 1|C] -> [WARPS] -> scalars.
    m, s, w = _merge(
        tl.max(tl.max(m, axis=2), axis=0), tl.sum(tl.sum(s, axis=2), axis=0), tl.sum(tl.sum(w, axis=2), axis=0), scale
    )
    if SPLIT:
        part = part_ptr + (row.to(tl.int64) * tl.num_programs(1) + split) * 3
        tl.store(part, m)
        tl.store(part + 1, s)
        tl.store(part + 2, w)
    else:
        _write_row(row, m, s, w, active, x_y, y_valid, h_ptr, logp_ptr, stats_ptr, inv_t, HAS_TARGETS)


@triton.heuristics(
    {
        "HAS_TARGETS": lambda args: args["targets_ptr"] is not None,
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
    }
)
@triton.jit
def entropy_merge_kernel(
    x_ptr,
    targets_ptr,
    mask_ptr,
    h_ptr,
    logp_ptr,
    stats_ptr,
    part_ptr,
    V,
    inner_size,
    outer_stride,
    inner_stride,
    inv_t,
    n_splits,
    HAS_TARGETS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + _row_start(row, inner_size, outer_stride, inner_stride)
    active = True
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
    k = tl.arange(0, BLOCK_S)
    part = part_ptr + row.to(tl.int64) * n_splits * 3 + k * 3
    valid = k < n_splits
    m_k = tl.load(part, mask=valid, other=float("-inf"))  # [BLOCK_S]
    s_k = tl.load(part + 1, mask=valid, other=0.0)
    w_k = tl.load(part + 2, mask=valid, other=0.0)
    m, s, w = _merge(m_k, s_k, w_k, inv_t * LOG2E)
    x_y, y_valid = 0.0, False
    if HAS_TARGETS:
        x_y, y_valid = _load_target_logit(row, active, x_row, targets_ptr, V)
    _write_row(row, m, s, w, active, x_y, y_valid, h_ptr, logp_ptr, stats_ptr, inv_t, HAS_TARGETS)


@triton.jit
def _grad_tile(x, cols, m, inv_t, c_p, c_0, k_d, y, gl_t):
    """``dx`` of a tile: ``p (c_0 + k_d zd) + gl_t 1[col = y]``,
    with ``zd = (x - m) / T`` and ``p = 2^(zd log2e - c_p)``."""
    zd = tl.maximum((x - m) * inv_t, _FLOOR)  # -inf logits: p = 0 times a finite factor; NaN still reaches p
    p = tl.exp2(zd * LOG2E - c_p)
    g = p * (c_0 + k_d * zd)
    return tl.where(cols == y, g + gl_t, g)


@triton.heuristics(
    {
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
        "HAS_GH": lambda args: args["gh_ptr"] is not None,
        "HAS_GL": lambda args: args["gl_ptr"] is not None,
        # The gradient's rows start at the same offset modulo a vector as the logits' (always true in place).
        "DX_ALIGNED": lambda args: all(
            (args[f"x_{k}_stride"] - args[f"dx_{k}_stride"]) % args["VEC"] == 0 for k in ("outer", "inner")
        ),
    }
)
@triton.jit
def entropy_bwd_kernel(
    x_ptr,
    dx_ptr,
    targets_ptr,
    mask_ptr,
    stats_ptr,  # [N, 2] fp32 (m, log_s) of the forward
    h_ptr,  # [N] fp32 entropy of the forward
    gh_ptr,
    gl_ptr,  # [N] upstream gradients of H and logp
    V,
    inner_size,
    x_outer_stride,
    x_inner_stride,
    dx_outer_stride,
    dx_inner_stride,
    inv_t,
    split_len,
    HAS_MASK: tl.constexpr,
    HAS_GH: tl.constexpr,
    HAS_GL: tl.constexpr,
    DX_ALIGNED: tl.constexpr,
    VEC: tl.constexpr,
    UNROLL: tl.constexpr,
    WARPS: tl.constexpr,
):
    BLOCK: tl.constexpr = UNROLL * WARPS * 32 * VEC
    row = tl.program_id(0)
    split = tl.program_id(1)
    x_start = _row_start(row, inner_size, x_outer_stride, x_inner_stride)
    dx_start = _row_start(row, inner_size, dx_outer_stride, dx_inner_stride)
    active = True
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
    stats = stats_ptr + row.to(tl.int64) * 2
    m = tl.load(stats)
    log_s = tl.load(stats + 1)
    e_rel = log_s - tl.load(h_ptr + row)
    gh = 0.0
    gl = 0.0
    y = -1
    if HAS_GH:
        gh = tl.load(gh_ptr + row).to(tl.float32)
    if HAS_GL:
        gl = tl.load(gl_ptr + row).to(tl.float32)
        y64 = tl.load(targets_ptr + row).to(tl.int64)
        y = tl.where((y64 >= 0) & (y64 < V), y64, -1).to(tl.int32)  # outside [0, V): no one-hot term
    # Per-row constants: p = 2^(zd log2e - c_p) and dx = p (c_0 + k_d zd) + gl_t 1[j = y], zd = (x - m) / T.
    c_p = log_s * LOG2E
    c_0 = (gh * e_rel - gl) * inv_t
    k_d = -gh * inv_t
    gl_t = gl * inv_t
    if HAS_MASK:  # a masked row reads nothing and writes zeros
        c_0, k_d, gl_t = tl.where(active, c_0, 0.0), tl.where(active, k_d, 0.0), tl.where(active, gl_t, 0.0)

    col_start = split * split_len
    col_end = tl.minimum(col_start + split_len, V)
    cols_tile = tl.arange(0, BLOCK)
    a, b = _aligned_span(x_start, col_start, col_end, VEC, BLOCK)
    x_main = x_ptr + tl.multiple_of(x_start + a, VEC)
    if DX_ALIGNED:
        dx_main = dx_ptr + tl.multiple_of(dx_start + a, VEC)
    else:
        dx_main = dx_ptr + (dx_start + a)
    main_len = b - a
    if HAS_MASK:  # a masked row reads nothing: its main span is written with zeros by a loop of its own
        zeros = tl.zeros([BLOCK], dx_ptr.dtype.element_ty)
        for off in range(0, tl.where(active, 0, main_len), BLOCK):
            tl.store(dx_main + off + cols_tile, zeros)
        main_len = tl.where(active, main_len, 0)
    for off in range(0, main_len, BLOCK):
        x = tl.load(x_main + off + cols_tile).to(tl.float32)  # [BLOCK], unmasked 16-byte vectors
        g = _grad_tile(x, cols_tile, m, inv_t, c_p, c_0, k_d, y - (a + off), gl_t)  # y relative: no per-lane add
        tl.store(dx_main + off + cols_tile, g.to(dx_ptr.dtype.element_ty))
    n_edge = (a - col_start) + (col_end - b)
    n_read = n_edge
    if HAS_MASK:
        n_read = tl.where(active, n_edge, 0)  # not `in_edge & active`: the interpreter turns that into uint8
    for j0 in range(0, n_edge, BLOCK):
        j = j0 + cols_tile
        cols = _edge_columns(j, col_start, a, b)
        in_edge = j < n_edge
        x = tl.load(x_ptr + x_start + cols, mask=j < n_read, other=0.0).to(tl.float32)
        g = _grad_tile(x, cols, m, inv_t, c_p, c_0, k_d, y, gl_t)
        tl.store(dx_ptr + dx_start + cols, g.to(dx_ptr.dtype.element_ty), mask=in_edge)


def on_device_of(t: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _as_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.view(torch.uint8)


def forward(
    logits: torch.Tensor,
    layout: RowLayout,
    targets,
    mask,
    temperature: float,
    h,
    logp,
    stats,
    config: LaunchConfig | None = None,
) -> None:
    """Fill ``h``, ``stats`` (``[N, 2]``: ``m, log_s``) and, when ``targets``, ``logp``, per row."""
    n, v = layout.n_rows, layout.vocab
    if n == 0:
        return
    cfg = config or launch_config(n, v, logits.element_size(), _num_sms(logits.device))
    rows = dict(
        V=v,
        inner_size=layout.inner_size,
        outer_stride=layout.outer_stride,
        inner_stride=layout.inner_stride,
        inv_t=1.0 / temperature,
    )
    part = torch.empty((n, cfg.splits, 3), device=logits.device, dtype=torch.float32) if cfg.splits > 1 else None
    with on_device_of(logits):
        entropy_fwd_kernel[(n, cfg.splits)](
            x_ptr=logits,
            targets_ptr=targets,
            mask_ptr=_as_bytes(mask),
            h_ptr=h,
            logp_ptr=logp,
            stats_ptr=stats,
            part_ptr=part,
            **rows,
            split_len=cfg.split_len,
            VEC=cfg.vec,
            UNROLL=cfg.unroll,
            WARPS=cfg.num_warps,
            num_warps=cfg.num_warps,
        )
        if part is not None:
            entropy_merge_kernel[(n,)](
                x_ptr=logits,
                targets_ptr=targets,
                mask_ptr=_as_bytes(mask),
                h_ptr=h,
                logp_ptr=logp,
                stats_ptr=stats,
                part_ptr=part,
                **rows,
                n_splits=cfg.splits,
                BLOCK_S=triton.next_power_of_2(cfg.splits),
                num_warps=1,
            )


def backward(
    logits: torch.Tensor,
    layout: RowLayout,
    grad: torch.Tensor,
    grad_layout: RowLayout,
    targets,
    mask,
    stats,
    h,
    grad_h,
    grad_logp,
    temperature: float,
    config: LaunchConfig | None = None,
) -> None:
    """Write the logits' gradient into ``grad`` (which may be ``logits`` itself)."""
    n, v = layout.n_rows, layout.vocab
    if n == 0:
        return
    cfg = config or launch_config(n, v, logits.element_size(), _num_sms(logits.device))
    with on_device_of(logits):
        entropy_bwd_kernel[(n, cfg.splits)](
            x_ptr=logits,
            dx_ptr=grad,
            targets_ptr=targets if grad_logp is not None else None,
            mask_ptr=_as_bytes(mask),
            stats_ptr=stats,
            h_ptr=h,
            gh_ptr=grad_h,
            gl_ptr=grad_logp,
            V=v,
            inner_size=layout.inner_size,
            x_outer_stride=layout.outer_stride,
            x_inner_stride=layout.inner_stride,
            dx_outer_stride=grad_layout.outer_stride,
            dx_inner_stride=grad_layout.inner_stride,
            inv_t=1.0 / temperature,
            split_len=cfg.split_len,
            VEC=cfg.vec,
            UNROLL=cfg.unroll,
            WARPS=cfg.num_warps,
            num_warps=cfg.num_warps,
        )


def partials(stats, h, logp, targets, row_max, vocab: int, temperature: float, sums) -> None:
    """Fill ``sums`` ([2, N], or [4, N] with ``targets``) from one shard's per-row statistics."""
    n = stats.shape[0]
    if n == 0:
        return
    with on_device_of(stats):
        vocab_parallel_partials_kernel[(triton.cdiv(n, _ROWS_PER_PROGRAM),)](
            stats_ptr=stats,
            h_ptr=h,
            logp_ptr=logp if targets is not None else None,
            targets_ptr=targets,
            row_max_ptr=row_max,
            sums_ptr=sums,
            N=n,
            V=vocab,
            inv_t=1.0 / temperature,
            BLOCK=_ROWS_PER_PROGRAM,
        )


def combine(row_max, sums, mask, h, logp, stats) -> None:
    """Fill ``h``, ``stats`` (and ``logp`` when ``sums`` has 4 rows) from the summed partials."""
    n = row_max.numel()
    if n == 0:
        return
    with on_device_of(row_max):
        vocab_parallel_combine_kernel[(triton.cdiv(n, _ROWS_PER_PROGRAM),)](
            row_max_ptr=row_max,
            sums_ptr=sums,
            mask_ptr=_as_bytes(mask),
            h_ptr=h,
            logp_ptr=logp if sums.shape[0] == 4 else None,
            stats_ptr=stats,
            N=n,
            BLOCK=_ROWS_PER_PROGRAM,
        )
