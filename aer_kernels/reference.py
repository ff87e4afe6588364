"""The pure-PyTorch implementation: the CPU path and the test oracle.

Same functions, arguments and numerics as the Triton kernels (fp32 accumulation; float64 logits
are accumulated in float64, which lets ``torch.autograd.gradcheck`` verify the formulas). Rows are
processed in chunks of at most ``max(V, CHUNK_ELEMENTS)`` elements, so the extra memory of a call
is bounded by about two fp32 buffers of that size (32 MiB at V = 151 936), plus the outputs,
whatever the number of rows.
"""

from __future__ import annotations

import torch

from ._layout import RowLayout

CHUNK_ELEMENTS = 1 << 22


def entropy(logits, *, temperature=1.0, mask=None):
    """``H = logsumexp(x / T) - (softmax(x / T) * x / T).sum(-1)`` computed in row chunks."""
    from .entropy import entropy as _entropy

    return _entropy(logits, temperature=temperature, mask=mask, backend="reference")


def logprobs_and_entropy(logits, targets, *, temperature=1.0, mask=None, inplace_backward=False):
    """``(log_softmax(x / T).gather(-1, y), H)`` computed in row chunks."""
    from .entropy import logprobs_and_entropy as _logprobs_and_entropy

    return _logprobs_and_entropy(logits, targets, temperature=temperature, mask=mask,
                                 backend="reference", inplace_backward=inplace_backward)


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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for every logits dtype but float64, which keeps float64 (the dtype of the per-row outputs too)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(logits, layout: RowLayout, targets, mask, temperature, h, logp, lse, e) -> None:
    """Fill ``h``, ``lse``, ``e`` (and ``logp``) like the Triton forward kernel."""
    x3 = layout.as_3d(logits)
    acc = accumulation_dtype(logits.dtype)
    for so, si, r0, count in _chunks(layout):
        rows = slice(r0, r0 + count)
        z = x3[so, si].reshape(count, layout.vocab).to(acc, copy=True).div_(temperature)  # [R, V], one buffer
        m = z.amax(dim=-1, keepdim=True)  # NaN propagates
        m_ref = torch.where(m == float("-inf"), 0.0, m)
        d = z.sub_(m_ref)
        p = torch.exp(d)  # the second and last [R, V] buffer
        s = p.sum(-1)
        w = p.mul_(d).nansum(-1)  # drops 0 * -inf; a NaN logit already made s NaN
        m_ref = m_ref.squeeze(-1)
        row_lse = m_ref + torch.log(s)
        row_h = torch.log(s) - w / s
        row_e = m_ref + w / s
        active = mask[rows] if mask is not None else None
        _store(h, rows, row_h, active)
        _store(lse, rows, row_lse, active)
        _store(e, rows, row_e, active)
        if targets is not None:
            y = targets[rows].long()
            valid = (y >= 0) & (y < layout.vocab)
            z_y = (d.gather(-1, y.clamp(0, layout.vocab - 1)[:, None]).squeeze(-1) + m_ref)
            row_logp = torch.where(valid, z_y - row_lse, float("nan"))
            _store(logp, rows, row_logp, active)


def _store(out, rows, values, active) -> None:
    out[rows] = values if active is None else torch.where(active, values, 0.0)


def backward(logits, layout: RowLayout, grad, grad_layout: RowLayout, targets, mask, lse, e,
             grad_h, grad_logp, temperature) -> None:
    """Write the gradient into ``grad`` (possibly ``logits`` itself) like the Triton backward kernel."""
    x3 = layout.as_3d(logits)
    g3 = grad_layout.as_3d(grad)
    acc = accumulation_dtype(logits.dtype)
    for so, si, r0, count in _chunks(layout):
        rows = slice(r0, r0 + count)
        z = x3[so, si].reshape(count, layout.vocab).to(acc, copy=True).div_(temperature)  # [R, V]
        row_lse = lse[rows, None].to(acc)
        # -inf logits get gradient 0 (not 0 * inf) unless the row has no distribution (lse not finite).
        zero = (z == float("-inf")) & torch.isfinite(row_lse)
        p = torch.exp(z - row_lse)  # the second [R, V] buffer
        g = z.sub_(e[rows, None].to(acc)).mul_(-grad_h[rows, None].to(acc)) if grad_h is not None else z.zero_()
        if grad_logp is not None:
            g.sub_(grad_logp[rows, None].to(acc))
        g = g.mul_(p).masked_fill_(zero, 0.0)
        if grad_logp is not None:
            y = targets[rows].long()
            in_vocab = (y >= 0) & (y < layout.vocab)  # outside [0, V): no one-hot term
            one_hot = torch.where(in_vocab, grad_logp[rows].to(acc), 0.0)
            g.scatter_add_(-1, y.clamp(0, layout.vocab - 1)[:, None], one_hot[:, None])
        g.div_(temperature)
        if mask is not None:
            g.masked_fill_(~mask[rows, None], 0.0)
        g3[so, si].copy_(g.view(g3[so, si].shape))  # converts to the gradient dtype while copying
