"""The PyTorch backend (``backend="reference"``, and ``"auto"`` off CUDA): the Triton backend's functions in plain
PyTorch, with the same arguments and numerics.

``forward`` and ``backward`` are the per-row entropy / log-prob passes, ``partials`` and ``combine`` the per-row
steps of the vocab-parallel combine (see ``vocab_parallel.py``). Accumulation is fp32; float64 logits are
accumulated in float64, which lets ``torch.autograd.gradcheck`` verify the formulas. Rows are processed in chunks
of at most ``max(V, CHUNK_ELEMENTS)`` elements, so the extra memory of a call is bounded by about two fp32 buffers
of that size (32 MiB at V = 151 936), plus the outputs, whatever the number of rows.
"""

from __future__ import annotations

import torch

from ._layout import RowLayout
from ._validate import accumulation_dtype

CHUNK_ELEMENTS = 1 << 22
# Beyond this many nats below the max, exp underflows to 0 even in float64 (the Triton kernel uses the same).
_FLOOR = -1.0e4
_NEG_INF = float("-inf")


def _chunks(layout: RowLayout):
    """Yield ``(outer slice, inner slice, first flat row, row count)`` covering every row once."""
    inner = layout.inner_size
    if inner == 0:
        return
    outer = layout.n_rows // inner
    rows = max(1, CHUNK_ELEMENTS // max(layout.vocab, 1))
    if inner >= rows:
        for o in range(outer):
            for i in range(0, inner, rows):
                j = min(i + rows, inner)
                yield slice(o, o + 1), slice(i, j), o * inner + i, j - i
    else:
        per = max(1, rows // inner)
        for o in range(0, outer, per):
            p = min(o + per, outer)
            yield slice(o, p), slice(0, inner), o * inner, (p - o) * inner


def forward(logits, layout: RowLayout, targets, mask, temperature, h, logp, stats) -> None:
    """Fill ``h``, ``stats`` (``[N, 2]``: ``m, log_s``) and ``logp`` like the Triton forward kernel."""
    x3 = layout.as_3d(logits)
    acc = accumulation_dtype(logits.dtype)
    for so, si, r0, count in _chunks(layout):
        rows = slice(r0, r0 + count)
        x = x3[so, si].reshape(count, layout.vocab).to(acc, copy=True)  # [R, V], one buffer
        m = x.amax(dim=-1, keepdim=True)  # in logit units; NaN propagates
        m = torch.where(m == float("-inf"), 0.0, m)
        d = x.sub_(m).div_(temperature)  # z - m / T: exact near the max, where confident log-probs live
        p = torch.exp(d)  # the second and last [R, V] buffer
        s = p.sum(-1)
        log_s = torch.log(s)
        e_rel = p.mul_(d).nansum(-1).div_(s)  # nansum drops 0 * -inf; a NaN logit already made s NaN
        active = mask[rows] if mask is not None else None
        _store(h, rows, log_s - e_rel, active)
        _store(stats, rows, torch.stack((m.squeeze(-1), log_s), -1), active)
        if targets is not None:
            y = targets[rows].long()
            valid = (y >= 0) & (y < layout.vocab)
            d_y = d.gather(-1, y.clamp(0, layout.vocab - 1)[:, None]).squeeze(-1)
            _store(logp, rows, torch.where(valid, d_y - log_s, float("nan")), active)


def _store(out, rows, values, active) -> None:
    if active is not None:
        values = torch.where(active.view(-1, *(1,) * (values.dim() - 1)), values, 0.0)
    out[rows] = values


def backward(
    logits, layout: RowLayout, grad, grad_layout: RowLayout, targets, mask, stats, h, grad_h, grad_logp, temperature
) -> None:
    """Write the gradient into ``grad`` (possibly ``logits`` itself) like the Triton backward kernel."""
    x3 = layout.as_3d(logits)
    g3 = grad_layout.as_3d(grad)
    acc = accumulation_dtype(logits.dtype)
    for so, si, r0, count in _chunks(layout):
        rows = slice(r0, r0 + count)
        m, log_s = stats[rows].to(acc).unbind(-1)
        e_rel = log_s - h[rows].to(acc)
        gh = grad_h[rows].to(acc) if grad_h is not None else torch.zeros_like(m)
        gl = grad_logp[rows].to(acc) if grad_logp is not None else torch.zeros_like(m)
        # dx = p (c_0 + k_d zd) + gl / T 1[j = y] with zd = (x - m) / T and p = exp(zd - log_s). The floor keeps
        # -inf logits at p = 0 times a finite factor; a row with no distribution (log_s not finite) stays NaN.
        zd = x3[so, si].reshape(count, layout.vocab).to(acc, copy=True)  # [R, V]
        zd = zd.sub_(m[:, None]).div_(temperature).clamp_(min=_FLOOR)
        p = zd.sub(log_s[:, None]).exp_()  # the second [R, V] buffer
        g = zd.mul_((-gh / temperature)[:, None]).add_(((gh * e_rel - gl) / temperature)[:, None]).mul_(p)
        if grad_logp is not None:
            y = targets[rows].long()
            in_vocab = (y >= 0) & (y < layout.vocab)  # outside [0, V): no one-hot term
            one_hot = torch.where(in_vocab, gl / temperature, 0.0)
            g.scatter_add_(-1, y.clamp(0, layout.vocab - 1)[:, None], one_hot[:, None])
        if mask is not None:
            g.masked_fill_(~mask[rows, None], 0.0)
        g3[so, si].copy_(g.view(g3[so, si].shape))  # converts to the gradient dtype while copying


def _masked(values, mask):
    return values if mask is None else torch.where(mask, values, 0.0)


def partials(stats, h, logp, targets, row_max, vocab: int, temperature: float, sums) -> None:
    """Fill ``sums`` ([2, N], or [4, N] with ``targets``) from one shard's per-row statistics."""
    m, log_s = stats.unbind(-1)
    e_rel = log_s - h
    empty = log_s == _NEG_INF
    shift = (m - torch.where(row_max == _NEG_INF, 0.0, row_max)) / temperature
    rel = shift + log_s
    a = torch.where(empty, 0.0, torch.exp(rel))
    sums[0] = a
    sums[1] = torch.where(empty, 0.0, a * (shift + e_rel))
    if targets is not None:
        owned = (targets >= 0) & (targets < vocab)
        z_rel = torch.where(empty, _NEG_INF, logp + rel)  # (x_y - M) / T; an all -inf shard row has x_y = -inf
        sums[2] = torch.where(owned, z_rel, 0.0)
        sums[3] = owned


def combine(row_max, sums, mask, h, logp, stats) -> None:
    """Fill ``h``, ``stats`` (and ``logp`` when ``sums`` has 4 rows) from the summed partials."""
    log_s = torch.log(sums[0])
    e_rel = sums[1] / sums[0]
    h.copy_(_masked(log_s - e_rel, mask))
    m = torch.where(row_max == _NEG_INF, 0.0, row_max)
    stats.copy_(_masked(torch.stack((m, log_s), -1), None if mask is None else mask[:, None]))
    if sums.shape[0] == 4:
        logp.copy_(_masked(torch.where(sums[3] == 1, sums[2] - log_s, float("nan")), mask))
