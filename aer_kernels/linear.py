"""Log-probs and entropy straight from the hidden states and the LM-head weight: no ``[N, V]`` logits.

``x = hidden @ weight.T + bias`` exists only a piece at a time, in one workspace allocated per call:

- Forward, token chunks: ``C`` rows of logits (``torch.mm``/``addmm``), then the backend's row kernels
  write ``H``, ``logp`` and the row statistics ``(m, log_s)`` of those rows into views of the ``[N]`` outputs.
- Backward, vocabulary slices ``[v0, v1)``: the logits ``g = hidden @ weight[v0:v1].T (+ bias)`` are recomputed,
  the row backward kernel overwrites them with ``dL/dx`` from the global row statistics (targets shifted by
  ``-v0``; one outside the slice gets no one-hot term), then::

      dW[v0:v1] = gᵀ hidden          written once
      dh       += g weight[v0:v1]    into an fp32 accumulator [N, D]
      db[v0:v1] = Σ_rows g

Memory besides the inputs and the returned tensors: the workspace (``workspace_bytes``, default 256 MiB; on the
reference backend each logit also counts the two fp32 temporaries of its row kernels), plus ``4·N·D`` for the
``dh`` accumulator in the backward, and one ``[N, D]`` product at a time where the GEMM cannot add into fp32 in
place (CPUs, torch versions without ``addmm(..., out_dtype=torch.float32)`` on an fp32 input). Saved for
backward: the inputs themselves (no copies) and 12 bytes a row.
Slicing the vocabulary keeps the accumulator at ``N·D`` instead of ``V·D``. The GEMMs are torch's on every
backend; ``backend`` picks the row kernels. No host syncs and no atomics: the same inputs give bitwise the same
outputs.

Tensor parallel (vocabulary-sharded ``weight``): each rank's forward gives its shard's statistics, combined by
the vocab-parallel all-reduces (20 bytes a row); its backward gives its exact ``dW``, ``db`` and a partial ``dh``,
all-reduced in fp32 when ``reduce_hidden_grad``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
from torch import Tensor

from ._backends import backend_module
from ._layout import RowLayout, row_layout, with_row_layout
from ._ops import OP_TAGS, failed_call_outputs, row_outputs, temperature_args, temperature_value, undefined_logp_grad
from ._validate import accumulation_dtype, check_row_tensor, check_temperature, resolve_backend, shape_text
from .vocab_parallel import (
    agreement_requested,
    check_agreement_of_ranks,
    check_vocab_start,
    combine_shards,
    empty_shard_statistics,
    group_world_size,
)

DEFAULT_WORKSPACE_BYTES = 256 << 20
_HALF_ACCUMULATOR_BYTES = 8  # per weight element of a slice: an fp32 dW sum plus one fp32 (or narrower) product


def _evenly_strided(layout: RowLayout) -> bool:
    """Whether all rows are one ``[N, D]`` matrix with a single row stride."""
    return layout.n_rows <= layout.inner_size or layout.outer_stride == layout.inner_size * layout.inner_stride


class _HiddenRows:
    """The rows of ``hidden [..., D]`` as 2-D blocks for ``torch.mm``, without copying ``hidden``.

    Evenly strided rows (any contiguous tensor, a row slice) are one block; a sliced ``[B, T, D]`` view such as
    ``hidden[:, :-1]`` is one block per leading index.
    """

    def __init__(self, hidden: Tensor):
        layout = row_layout(hidden)  # the logits' two-stride row decomposition, applied to [..., D]
        self.n, self.inner, width = layout.n_rows, layout.inner_size, hidden.shape[-1]
        self.h3 = layout.as_3d(hidden)
        self.flat = (
            hidden.as_strided((self.n, width), (layout.inner_stride, 1), hidden.storage_offset())
            if _evenly_strided(layout)
            else None
        )

    def blocks(self, r0: int, r1: int):
        """``(a, b, rows)``: ``rows`` is ``hidden``'s rows ``[r0 + a, r0 + b)`` as ``[b - a, D]``; together they
        cover ``[r0, r1)`` in order."""
        if self.flat is not None:
            yield 0, r1 - r0, self.flat[r0:r1]
            return
        r = r0
        while r < r1:
            outer, i = divmod(r, self.inner)
            j = min(self.inner, i + r1 - r)
            yield r - r0, r - r0 + j - i, self.h3[outer, i:j]
            r += j - i


def _logit_bytes(dtype: torch.dtype, backend: str) -> int:
    """Workspace bytes per logit: the logit, and on the reference backend its row kernels' two fp32 copies."""
    scratch = 2 * accumulation_dtype(dtype).itemsize if backend == "reference" else 0
    return dtype.itemsize + scratch


def _column_extra_bytes(rows: _HiddenRows, dtype: torch.dtype, width: int) -> int:
    """Workspace bytes per vocabulary column besides its logits: a sliced ``hidden`` needs one ``dW`` GEMM per
    block, summed in fp32 (in ``dW`` itself when it is fp32 or float64)."""
    if rows.flat is not None or accumulation_dtype(dtype) == dtype:
        return 0
    return _HALF_ACCUMULATOR_BYTES * width


def _chunk_rows(workspace_bytes: int, n: int, vocab: int, logit_bytes: int) -> int:
    return max(1, min(n, workspace_bytes // (vocab * logit_bytes)))


def _slice_width(workspace_bytes: int, n: int, vocab: int, logit_bytes: int, extra: int) -> int:
    return max(1, min(vocab, workspace_bytes // (n * logit_bytes + extra)))


def _logits_into(out: Tensor, rows: _HiddenRows, r0: int, r1: int, weight: Tensor, bias: Tensor | None) -> None:
    """``out [r1 - r0, Vc] = hidden[r0:r1] @ weight.T (+ bias)``, written in place."""
    for a, b, block in rows.blocks(r0, r1):
        if bias is None:
            torch.mm(block, weight.t(), out=out[a:b])
        else:
            torch.addmm(bias, block, weight.t(), out=out[a:b])


@functools.cache
def _fp32_accumulation(device_type: str, dtype: torch.dtype) -> str:
    """How a product of ``dtype`` matrices is added into an fp32 tensor here: ``"addmm"`` (the GEMM reads and
    writes the fp32 sum in place: CUDA, torch versions whose ``addmm`` takes ``out_dtype`` with an fp32 input),
    ``"mm"`` (an fp32 product, then an add) or ``"rounded"`` (the product in ``dtype``, then an add)."""
    if device_type != "cuda":
        return "rounded"
    one, acc = torch.ones(1, 1, dtype=dtype, device=device_type), torch.zeros(1, 1, device=device_type)
    for way, probe in (
        ("addmm", lambda: torch.addmm(acc, one, one, out_dtype=torch.float32, out=acc)),
        ("mm", lambda: torch.mm(one, one, out_dtype=torch.float32)),
    ):
        try:
            probe()  # the dtype checks run on the host: an unsupported form raises here, without a sync
        except (TypeError, RuntimeError):
            continue
        return way
    return "rounded"


def _add_product(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` with ``acc`` in the accumulation dtype; never a running sum in bf16/fp16."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    way = _fp32_accumulation(a.device.type, a.dtype)
    if way == "addmm":
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    elif way == "mm":
        acc.add_(torch.mm(a, b, out_dtype=acc.dtype))
    else:
        acc.add_(torch.mm(a, b))  # the product rounded once to the inputs' dtype, the running sum fp32


def _weight_grad_into(out: Tensor, grad: Tensor, rows: _HiddenRows, scratch: Tensor | None) -> None:
    """``out [Vc, D] = gradᵀ hidden``, written once: one GEMM, or the blocks of a sliced view summed in fp32."""
    if rows.flat is not None:
        torch.mm(grad.t(), rows.flat, out=out)
        return
    total = out if scratch is None else scratch[: out.shape[0]]
    total.zero_()
    for a, b, block in rows.blocks(0, rows.n):
        _add_product(total, grad[a:b].t(), block)
    if total is not out:
        out.copy_(total)


def _forward_rows(hidden, weight, bias, targets, mask, temperature, backend, workspace_bytes, h, logp, stats):
    rows = _HiddenRows(hidden)
    n, vocab = rows.n, weight.shape[0]
    chunk = _chunk_rows(workspace_bytes, n, vocab, _logit_bytes(hidden.dtype, backend))
    workspace = torch.empty(min(chunk, n) * vocab, dtype=hidden.dtype, device=hidden.device)
    kernels = backend_module(backend)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        x = workspace[: (r1 - r0) * vocab].view(r1 - r0, vocab)
        _logits_into(x, rows, r0, r1, weight, bias)
        kernels.forward(
            x,
            row_layout(x),
            None if targets is None else targets[r0:r1],
            None if mask is None else mask[r0:r1],
            temperature,
            h[r0:r1],
            None if targets is None else logp[r0:r1],
            stats[r0:r1],
        )


@torch.library.custom_op("aer_kernels::linear_fwd", mutates_args=(), tags=OP_TAGS)
def _linear_fwd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor | None,
    mask: Tensor | None,
    temperature: float,
    backend: str,
    workspace_bytes: int,
    temperature_tensor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, H, stats)`` of ``hidden @ weight.T + bias`` per row (flat ``[N]`` or ``[0]``, ``[N]``, ``[N, 2]``);
    ``temperature_tensor``, when given, carries T instead of ``temperature`` (see ``_ops.py``)."""
    logp, h, stats = row_outputs(hidden, targets is not None)
    temperature = temperature_value(temperature, temperature_tensor)
    with torch.autocast(hidden.device.type, enabled=False):
        _forward_rows(hidden, weight, bias, targets, mask, temperature, backend, workspace_bytes, h, logp, stats)
    return logp, h, stats


@_linear_fwd.register_fake
def _(hidden, weight, bias, targets, mask, temperature, backend, workspace_bytes, temperature_tensor=None):
    return row_outputs(hidden, targets is not None)


def _backward_slices(
    hidden,
    weight,
    bias,
    targets,
    mask,
    stats,
    h,
    grad_h,
    grad_logp,
    temperature,
    backend,
    workspace_bytes,
    dh: Tensor | None,
    dw: Tensor | None,
    db: Tensor | None,
) -> None:
    """Fill the gradients that are not None, one vocabulary slice of recomputed logits at a time."""
    rows = _HiddenRows(hidden)
    n, (vocab, width) = rows.n, weight.shape
    extra = _column_extra_bytes(rows, weight.dtype, width) if dw is not None else 0
    cols = _slice_width(workspace_bytes, n, vocab, _logit_bytes(hidden.dtype, backend), extra)
    workspace = torch.empty(n * cols, dtype=hidden.dtype, device=hidden.device)
    scratch = torch.empty((cols, width), dtype=torch.float32, device=hidden.device) if extra else None
    kernels = backend_module(backend)
    grad_h = None if grad_h is None else grad_h.contiguous()  # expanded or strided upstream gradients
    grad_logp = None if grad_logp is None else grad_logp.contiguous()
    for v0 in range(0, vocab, cols):
        v1 = min(vocab, v0 + cols)
        g = workspace[: n * (v1 - v0)].view(n, v1 - v0)
        w = weight[v0:v1]
        _logits_into(g, rows, 0, n, w, None if bias is None else bias[v0:v1])
        layout = row_layout(g)
        shifted = None if grad_logp is None else targets - v0  # outside [0, v1 - v0): no one-hot term here
        kernels.backward(g, layout, g, layout, shifted, mask, stats, h, grad_h, grad_logp, temperature)
        if dw is not None:
            _weight_grad_into(dw[v0:v1], g, rows, scratch)
        if dh is not None:
            _add_product(dh, g, w)
        if db is not None:
            db[v0:v1] = g.sum(0, dtype=accumulation_dtype(hidden.dtype))


def _backward_outputs(
    hidden, weight, bias, need_hidden: bool, need_weight: bool, need_bias: bool, filled: bool = False
):
    """``(dh, dW, db)``: ``dh`` the zeroed fp32 ``[N, D]`` accumulator; ``dW``, ``db`` zeros, or uninitialised when
    ``filled`` (every slice will write its rows); an unneeded gradient is an empty placeholder."""
    device = hidden.device
    n = math.prod(hidden.shape[:-1])
    fresh = torch.empty if filled else torch.zeros
    bias_dtype = hidden.dtype if bias is None else bias.dtype
    return (
        torch.zeros(
            (n, hidden.shape[-1]) if need_hidden else (0,), dtype=accumulation_dtype(hidden.dtype), device=device
        ),
        fresh(weight.shape if need_weight else (0,), dtype=weight.dtype, device=device),
        fresh(weight.shape[:1] if need_bias else (0,), dtype=bias_dtype, device=device),
    )


@torch.library.custom_op("aer_kernels::linear_bwd", mutates_args=(), tags=OP_TAGS)
def _linear_bwd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor | None,
    mask: Tensor | None,
    stats: Tensor,
    h: Tensor,
    grad_h: Tensor | None,
    grad_logp: Tensor | None,
    temperature: float,
    backend: str,
    workspace_bytes: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    temperature_tensor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dh [N, D] fp32, dW, db)`` from the forward's ``stats`` and ``h``; unneeded ones are empty."""
    temperature = temperature_value(temperature, temperature_tensor)
    work = h.numel() > 0 and (grad_h is not None or grad_logp is not None)
    dh, dw, db = _backward_outputs(hidden, weight, bias, need_hidden, need_weight, need_bias, filled=work)
    wanted = [g if need else None for g, need in ((dh, need_hidden), (dw, need_weight), (db, need_bias))]
    if work and any(g is not None for g in wanted):
        with torch.autocast(hidden.device.type, enabled=False):
            _backward_slices(
                hidden,
                weight,
                bias,
                targets,
                mask,
                stats,
                h,
                grad_h,
                grad_logp,
                temperature,
                backend,
                workspace_bytes,
                *wanted,
            )
    return dh, dw, db


@_linear_bwd.register_fake
def _(
    hidden,
    weight,
    bias,
    targets,
    mask,
    stats,
    h,
    grad_h,
    grad_logp,
    temperature,
    backend,
    workspace_bytes,
    need_hidden,
    need_weight,
    need_bias,
    temperature_tensor=None,
):
    return _backward_outputs(hidden, weight, bias, need_hidden, need_weight, need_bias)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "aer_kernels::linear_bwd (the gradient of linear_logprobs_and_entropy / linear_entropy) has no gradient "
        "of its own: double backward is not supported. For second-order terms, differentiate the PyTorch "
        "expression on F.linear(hidden, weight, bias) instead"
    )


torch.library.register_autograd("aer_kernels::linear_bwd", _no_double_backward)


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, mask, temperature, backend, workspace_bytes, temperature_tensor = inputs
    _, h, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
    ctx.save_for_backward(hidden, weight, bias, targets, mask, stats, h, temperature_tensor)
    ctx.settings = (temperature, backend, workspace_bytes)


def _autograd_backward(ctx, grad_logp, grad_h, _grad_stats):
    hidden, weight, bias, targets, mask, stats, h, temperature_tensor = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if targets is None:
        grad_logp = None  # logp is the empty placeholder
    if (grad_h is None and grad_logp is None) or not any(needs):
        return (None,) * 9
    if grad_logp is not None:
        grad_logp = undefined_logp_grad(grad_logp, (targets >= 0) & (targets < weight.shape[0]))
    dh, dw, db = torch.ops.aer_kernels.linear_bwd(
        hidden, weight, bias, targets, mask, stats, h, grad_h, grad_logp, *ctx.settings, *needs, temperature_tensor
    )
    return (
        dh.to(hidden.dtype).view(hidden.shape) if needs[0] else None,
        dw if needs[1] else None,
        db if needs[2] else None,
    ) + (None,) * 6


torch.library.register_autograd("aer_kernels::linear_fwd", _autograd_backward, setup_context=_setup_context)


def _check_float_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def _check_shapes(hidden, weight, bias, empty_vocab_ok: bool) -> None:
    _check_float_tensor("hidden", hidden)
    if hidden.dim() == 0 or hidden.shape[-1] == 0:
        raise ValueError(f"hidden must have shape [..., D] with D >= 1, got {shape_text(hidden.shape)}")
    _check_float_tensor("weight", weight)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape [V, D] with D = hidden.shape[-1] = {hidden.shape[-1]} (the "
            f"nn.Linear / lm_head.weight layout), got {shape_text(weight.shape)}"
        )
    if weight.shape[0] == 0 and not empty_vocab_ok:
        raise ValueError(f"weight: the vocabulary (first) dim is empty, shape {shape_text(weight.shape)}")
    if bias is not None:
        _check_float_tensor("bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"bias must have shape [V] = {shape_text(weight.shape[:1])}, got {shape_text(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")


def _autocast_dtype(t: Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in: the autocast dtype for eligible floats, else the tensor's own."""
    device_type = t.device.type
    if t.dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


def _check_dtypes(hidden, weight, bias) -> torch.dtype:
    dtype = _autocast_dtype(hidden)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and _autocast_dtype(t) != dtype:
            raise TypeError(
                f"{name} is {t.dtype} but hidden is {hidden.dtype}: pass one dtype, as F.linear needs "
                "(or run under autocast)"
            )
    return dtype


def _check_workspace(
    workspace_bytes, rows: int, weight: Tensor, dtype: torch.dtype, backend: str, hidden: Tensor
) -> int:
    if workspace_bytes is None:
        workspace_bytes = DEFAULT_WORKSPACE_BYTES
    elif isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int):
        raise TypeError(f"workspace_bytes must be a Python int or None, got {type(workspace_bytes).__name__}")
    vocab, width = weight.shape
    per_logit = _logit_bytes(dtype, backend)
    layout = row_layout(hidden)
    sliced = layout is not None and not _evenly_strided(layout)
    column = rows * per_logit + (
        _HALF_ACCUMULATOR_BYTES * width if sliced and accumulation_dtype(dtype) != dtype else 0
    )
    needed = max(vocab * per_logit, column if vocab else 0)
    if workspace_bytes < needed:
        raise ValueError(
            f"workspace_bytes={workspace_bytes} holds less than one row of logits (V={vocab} x {per_logit} B) or "
            f"one vocabulary column (N={rows} x {per_logit} B plus its dW sum): at least {needed} bytes are needed "
            f"({dtype}, backend {backend!r})"
        )
    return workspace_bytes


def _prepare(hidden, weight, bias, targets, mask, temperature, workspace_bytes, backend, empty_vocab_ok=False):
    """Checked, autocast arguments: ``(hidden, weight, bias, flat targets, flat mask, T, backend, workspace)``."""
    _check_shapes(hidden, weight, bias, empty_vocab_ok)
    if targets is not None:
        check_row_tensor("targets", targets, hidden, kind="int", of="hidden")
    if mask is not None:
        check_row_tensor("mask", mask, hidden, kind="bool", of="hidden")
    temperature = check_temperature(temperature)
    backend = resolve_backend(backend, hidden)
    dtype = _check_dtypes(hidden, weight, bias)
    rows = math.prod(hidden.shape[:-1])
    workspace_bytes = _check_workspace(workspace_bytes, rows, weight, dtype, backend, hidden)
    hidden, weight, bias = (None if t is None else t.to(dtype) for t in (hidden, weight, bias))
    if not (weight.stride(-1) == 1 or weight.stride(0) == 1):
        weight = weight.contiguous()  # neither row- nor column-major: torch.mm would copy it on every call
    flat = [None if t is None else t.reshape(-1).contiguous() for t in (targets, mask)]
    return with_row_layout(hidden), weight, bias, *flat, temperature, backend, workspace_bytes


def _run(hidden, weight, targets, bias, temperature, mask, workspace_bytes, backend, *, with_targets: bool):
    """``(logp, H)``, ``logp`` None without targets. Under torch.compile an argument error is raised when the
    compiled code runs, and the temperature is a graph input (one graph for every T): see ``_ops.py``."""
    try:
        if with_targets and targets is None:
            raise TypeError("targets must be a torch.Tensor of token ids; use linear_entropy() for entropy alone")
        *args, temperature, backend, workspace_bytes = _prepare(
            hidden, weight, bias, targets, mask, temperature, workspace_bytes, backend
        )
    except (TypeError, ValueError, RuntimeError) as err:
        if not torch.compiler.is_compiling():
            raise
        return failed_call_outputs(err, hidden)
    lead = hidden.shape[:-1]
    temperature, temperature_tensor = temperature_args(temperature)
    logp, h, _ = _linear_fwd(*args, temperature, backend, workspace_bytes, temperature_tensor)
    return (logp.view(lead) if targets is not None else None), h.view(lead)


def linear_logprobs_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    workspace_bytes: int | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``(logp, H)`` of ``logprobs_and_entropy(F.linear(hidden, weight, bias), targets, ...)``, without the logits.

    Both fp32 with shape ``hidden.shape[:-1]``, both differentiable with respect to ``hidden``, ``weight`` and
    ``bias`` (gradients in each one's dtype; only those required are computed); either may be left unused.
    Memory: one workspace of ``workspace_bytes``, plus an fp32 ``[N, D]`` accumulator in the backward, instead of
    the ``[N, V]`` logits and their gradient. ``hidden`` may be a sliced view (``hidden[:, :-1]``): it is not
    copied. A target outside ``[0, V)`` gives ``logp`` NaN, and a NaN gradient only where a nonzero upstream
    gradient flows into it.

    Args:
        hidden: ``[..., D]`` hidden states, float32, float16 or bfloat16 (float64 on the reference backend).
        weight: ``[V, D]`` LM-head weight (``lm_head.weight``; tied embeddings work), hidden's dtype and device
            (under autocast: the dtype ``F.linear`` would compute in).
        targets: integer token ids, shape ``hidden.shape[:-1]``; one outside ``[0, V)`` gives ``logp`` NaN.
        bias: optional ``[V]`` bias; ``-inf`` entries mask those tokens out.
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``hidden.shape[:-1]``; False rows output 0 and get gradient 0.
        workspace_bytes: a Python int, the memory for logits chunks (default None: 256 MiB); it must hold one
            row of ``V`` logits and one column of ``N``. On the reference backend a logit counts
            ``element size + 8`` bytes.
        backend: ``"auto"`` (default): Triton row kernels for CUDA tensors when triton is installed, the PyTorch
            reference path otherwise; ``"triton"`` or ``"reference"``. The GEMMs are torch's in every case.

    Returns:
        ``(logp, H)``, both float32 (float64 for float64 inputs) with shape ``hidden.shape[:-1]``.
    """
    return _run(hidden, weight, targets, bias, temperature, mask, workspace_bytes, backend, with_targets=True)


def linear_entropy(
    hidden: Tensor,
    weight: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    workspace_bytes: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """``entropy(F.linear(hidden, weight, bias), ...)`` without the logits: fp32, shape ``hidden.shape[:-1]``.

    Differentiable; same memory and arguments as ``linear_logprobs_and_entropy``.

    Args:
        hidden: ``[..., D]`` hidden states, float32, float16 or bfloat16 (float64 on the reference backend).
        weight: ``[V, D]`` LM-head weight, hidden's dtype and device (under autocast: the dtype
            ``F.linear`` would compute in).
        bias: optional ``[V]`` bias; ``-inf`` entries mask those tokens out.
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``hidden.shape[:-1]``; False rows output 0 and get gradient 0.
        workspace_bytes: a Python int, the memory for logits chunks (default None: 256 MiB), as for
            ``linear_logprobs_and_entropy``.
        backend: ``"auto"`` (default): Triton row kernels for CUDA tensors when triton is installed, the PyTorch
            reference path otherwise; ``"triton"`` or ``"reference"``. The GEMMs are torch's in every case.

    Returns:
        ``H``, float32 (float64 for float64 inputs) with shape ``hidden.shape[:-1]``.
    """
    return _run(hidden, weight, None, bias, temperature, mask, workspace_bytes, backend, with_targets=False)[1]


class _VocabParallelLinear(torch.autograd.Function):
    """Flat ``(logp, H)`` of the global softmax; backward: this shard's exact ``dW``, ``db`` and ``dh``, the latter
    summed over the group when ``reduce_hidden_grad``."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        local_targets,
        mask,
        temperature,
        backend,
        workspace_bytes,
        group,
        world_size,
        reduce_hidden_grad,
    ):
        vocab = weight.shape[0]
        if vocab:
            logp_r, h_r, stats_r = torch.ops.aer_kernels.linear_fwd(
                hidden, weight, bias, local_targets, mask, temperature, backend, workspace_bytes
            )
        else:
            stats_r, h_r, logp_r = empty_shard_statistics(local_targets.numel(), hidden.dtype, hidden.device)
        logp, h, stats = combine_shards(
            stats_r, h_r, logp_r, local_targets, vocab, mask, temperature, backend, group, world_size
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, local_targets, mask, stats, h, logp)
        ctx.settings = (temperature, backend, workspace_bytes)
        ctx.group, ctx.world_size, ctx.reduce_hidden_grad = group, world_size, reduce_hidden_grad
        return logp, h

    @staticmethod
    def backward(ctx, grad_logp, grad_h):
        hidden, weight, bias, local_targets, mask, stats, h, logp = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if grad_h is None and grad_logp is None:
            return (None,) * 11
        if grad_logp is not None:
            # NaN where no single shard holds the target, as on one GPU (see vocab_parallel.py).
            grad_logp = undefined_logp_grad(grad_logp, ~torch.isnan(logp))
        if weight.shape[0]:
            dh, dw, db = torch.ops.aer_kernels.linear_bwd(
                hidden, weight, bias, local_targets, mask, stats, h, grad_h, grad_logp, *ctx.settings, *needs
            )
        else:  # an empty shard: nothing of its own to add
            dh, dw, db = _backward_outputs(hidden, weight, bias, *needs)
        if needs[0] and ctx.reduce_hidden_grad and ctx.world_size > 1:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.group)
        return (
            dh.to(hidden.dtype).view(hidden.shape) if needs[0] else None,
            dw if needs[1] else None,
            db if needs[2] else None,
        ) + (None,) * 8


def vocab_parallel_linear_logprobs_and_entropy(
    hidden: Tensor,
    weight_shard: Tensor,
    targets: Tensor,
    *,
    vocab_start: int,
    group=None,
    reduce_hidden_grad: bool = True,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    workspace_bytes: int | None = None,
    backend: str = "auto",
    check_agreement: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """``(logp, H)`` of the full-vocabulary softmax when each rank holds rows ``[vocab_start, vocab_start + V_r)``
    of the LM-head weight (Megatron's vocab-parallel head), without any rank forming its logits.

    Equals ``linear_logprobs_and_entropy(hidden, torch.cat(shards), targets, ...)`` on every rank of ``group``.
    The forward adds two all-reduces of 20 bytes a row. Backward: each rank gets its shard's exact ``dW`` (and
    ``db``) and a partial ``dh``; ``reduce_hidden_grad=True`` sums ``dh`` over ``group`` (in fp32) so every rank
    gets the full one. Pass False when ``hidden`` arrives through a region whose backward already reduces
    (Megatron's copy-to-tensor-parallel region, a sequence-parallel gather): reducing twice, or not at all, is
    the classic bug of this op. Shards may be unequal or empty.

    Args:
        hidden: ``[..., D]`` hidden states, float32, float16 or bfloat16, the same on every rank.
        weight_shard: ``[V_r, D]`` this rank's rows of the LM-head weight (``V_r = 0`` is legal in a group).
        targets: integer global token ids, shape ``hidden.shape[:-1]``, the same on every rank.
        vocab_start: the global id of ``weight_shard``'s first row, a Python int >= 0.
        group: the process group holding the shards (default None: the world; a single process when
            ``torch.distributed`` is not initialised).
        reduce_hidden_grad: default True: sum the hidden states' gradient over ``group`` (see above).
        bias: optional ``[V_r]`` shard of the bias.
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``hidden.shape[:-1]``; False rows output 0 and get gradient 0.
        workspace_bytes: this rank's memory for logits chunks (default None: 256 MiB), as for
            ``linear_logprobs_and_entropy``.
        backend: ``"auto"`` (default): Triton row kernels for CUDA tensors when triton is installed, the PyTorch
            reference path otherwise; ``"triton"`` or ``"reference"``. GEMMs and collectives are torch's.
        check_agreement: True: one all-gather of a few numbers first, raising the same ValueError on every rank
            when ranks disagree (rows, dtype, hidden size, temperature, mask, ``reduce_hidden_grad``) or the shards
            do not tile ``[0, V)``. None (default): True when ``AER_KERNELS_CHECK_AGREEMENT=1``. Not under
            ``torch.compile``.

    Returns:
        ``(logp, H)``, both float32 (float64 for float64 inputs) with shape ``hidden.shape[:-1]``, the same on
        every rank.
    """
    if targets is None:
        raise TypeError("targets must be a torch.Tensor of global token ids")
    world_size = group_world_size(group)
    check_vocab_start(vocab_start)
    if not isinstance(reduce_hidden_grad, bool):
        raise TypeError(f"reduce_hidden_grad must be True or False, got {type(reduce_hidden_grad).__name__}")
    hidden, weight, bias, local_targets, flat_mask, temperature, backend, workspace_bytes = _prepare(
        hidden, weight_shard, bias, targets, mask, temperature, workspace_bytes, backend, empty_vocab_ok=world_size > 1
    )
    lead = hidden.shape[:-1]
    if agreement_requested(check_agreement) and world_size > 1:
        fields = {
            "the row count": math.prod(lead),
            "the hidden size": hidden.shape[-1],
            "the dtype": hidden.dtype,
            "temperature": float(temperature),
            "whether a mask is given": mask is not None,
            "reduce_hidden_grad": reduce_hidden_grad,
            "whether hidden needs a gradient": hidden.requires_grad and torch.is_grad_enabled(),
        }
        check_agreement_of_ranks(group, world_size, hidden.device, fields, (vocab_start, vocab_start + weight.shape[0]))
    local_targets = local_targets.to(torch.int64) - vocab_start
    logp, h = _VocabParallelLinear.apply(
        hidden,
        weight,
        bias,
        local_targets,
        flat_mask,
        temperature,
        backend,
        workspace_bytes,
        group,
        world_size,
        reduce_hidden_grad,
    )
    return logp.view(lead), h.view(lead)
