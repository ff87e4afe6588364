"""The pure-PyTorch implementation: the CPU path, with the Triton kernels' arguments and numerics.

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
# Beyond this many nats below the max, exp underflows to 0 even in float64 (the Triton kernel uses the same).
_FLOOR = -1.0e4


def entropy(logits, *, temperature=1.0, mask=None):
    """``H = logsumexp(x / T) - (softmax(x / T) * x / T).sum(-1)`` computed in row chunks."""
    from .entropy import entropy as _entropy

    return _entropy(logits, temperature=temperature, mask=mask, backend="reference")


def logprobs_and_entropy(logits, targets, *, temperature=1.0, mask=None, inplace_backward=False):
    """``(log_softmax(x / T).gather(-1, y), H)`` computed in row chunks."""
    from .entropy import logprobs_and_entropy as _logprobs_and_entropy

    return _logprobs_and_entropy(
        logits, targets, temperature=temperature, mask=mask, backend="reference", inplace_backward=inplace_backward
    )


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
