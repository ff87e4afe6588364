"""Hold an entropy / log-prob implementation to the library's tolerance rule, on the library's test data.

The rule: compute a float64 ground truth with ``truth``; an implementation's error against it may be no
worse than the error of the same PyTorch formula run in the input dtype (``formula``), plus a small slack
(``SLACK``). Non-finite entries must match the truth exactly: NaN in gives NaN out.

    import torch
    import aer_kernels as ak
    from aer_kernels.testing import assert_close_to_truth, formula, realistic_logits, truth

    x = realistic_logits((64, 32000), torch.bfloat16, torch.Generator().manual_seed(0))
    _, h_exact, _ = truth(x)
    _, h_torch, _ = formula(x)
    assert_close_to_truth(ak.entropy(x), h_exact, h_torch, x.dtype, "H")

Only torch is imported: the module works on any machine, with or without Triton or a GPU.
"""

from __future__ import annotations

import math
import numbers

import torch

SLACK = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}
_TRUTH_ELEMENTS = 1 << 24  # float64 elements per chunk of rows: the formula holds a few such tensors at once
_DATA_ELEMENTS = 1 << 24  # fp32 elements generated on the CPU per chunk of rows before the move
_PATTERN_ROWS = 32  # one flat and one peaked row in each 32: a batch of 3 to 32 rows has one of each
_FLAT_STD, _PEAK = 0.01, 40.0


def formula(
    x: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    grad_h: torch.Tensor | None = None,
    grad_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``(logp, H, dx)`` of the plain PyTorch formula, computed in ``x``'s own dtype.

    Args:
        x: logits ``[..., V]``, any float dtype. ``-inf`` entries are masked vocabulary (probability 0).
        targets: integer ids of shape ``x.shape[:-1]``, or None (then ``logp`` is None). An id outside
            ``[0, V)`` gives ``logp = NaN``.
        temperature: the logits are divided by it; a finite positive number.
        mask: bool of shape ``x.shape[:-1]``, or None; False rows output 0 and get gradient 0.
        grad_h, grad_logp: upstream gradients of ``H`` and ``logp`` (shape ``x.shape[:-1]``); ``dx`` is the
            gradient of ``sum(H * grad_h) + sum(logp * grad_logp)`` with respect to ``x``, None when both are None.

    Returns:
        ``(logp, H, dx)`` in ``x``'s dtype: ``logp`` and ``H`` of shape ``x.shape[:-1]``, ``dx`` of ``x``'s shape.
    """
    _check_formula_args(x, targets, temperature, mask, grad_h, grad_logp)
    wants_grad = grad_h is not None or grad_logp is not None
    with torch.enable_grad():
        x = x.detach().requires_grad_(wants_grad)
        z = x / temperature
        lse = torch.logsumexp(z, -1)
        z_finite = torch.where(z == float("-inf"), 0.0, z)  # the -inf entries contribute p = 0, not 0 * -inf
        h = lse - (torch.softmax(z, -1) * z_finite).sum(-1)
        logp = None
        if targets is not None:
            vocab = x.shape[-1]
            y = targets.long().clamp(0, vocab - 1)
            logp = z.gather(-1, y[..., None]).squeeze(-1) - lse
            logp = torch.where((targets >= 0) & (targets < vocab), logp, float("nan"))
        if mask is not None:
            h = torch.where(mask, h, 0.0)
            logp = None if logp is None else torch.where(mask, logp, 0.0)
        dx = None
        if wants_grad:
            loss = sum((o * g.to(o.dtype)).sum() for o, g in ((h, grad_h), (logp, grad_logp)) if g is not None)
            (dx,) = torch.autograd.grad(loss, x)
    return (None if logp is None else logp.detach()), h.detach(), dx


def truth(
    x: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    grad_h: torch.Tensor | None = None,
    grad_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``formula`` in float64 (the ground truth), a chunk of rows at a time so big inputs fit.

    Args:
        x, targets, temperature, mask, grad_h, grad_logp: as for ``formula``.

    Returns:
        ``(logp, H, dx)`` as from ``formula``, float64 whatever ``x``'s dtype.
    """
    _check_formula_args(x, targets, temperature, mask, grad_h, grad_logp)
    lead, vocab = x.shape[:-1], x.shape[-1]
    rows, step = lead.numel(), max(1, _TRUTH_ELEMENTS // max(1, vocab))
    if rows <= step:
        return formula(x.double(), targets, temperature, mask, grad_h, grad_logp)
    flat = [None if t is None else t.reshape(rows) for t in (targets, mask, grad_h, grad_logp)]
    x = x.reshape(rows, vocab)
    parts = []
    for i in range(0, rows, step):
        y, m, gh, gl = (None if t is None else t[i : i + step] for t in flat)
        parts.append(formula(x[i : i + step].double(), y, temperature, m, gh, gl))
    logp, h, dx = (None if p[0] is None else torch.cat(p) for p in zip(*parts))
    return (None if logp is None else logp.view(lead)), h.view(lead), (None if dx is None else dx.view(*lead, vocab))


def _check_formula_args(x, targets, temperature, mask, grad_h, grad_logp):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a float tensor [..., V], got {_describe(x)}")
    lead = tuple(x.shape[:-1])
    for name, t in (("targets", targets), ("mask", mask), ("grad_h", grad_h), ("grad_logp", grad_logp)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != lead):
            raise ValueError(f"{name} must be a tensor of shape x.shape[:-1] = {lead}, got {_describe(t)}")
    if targets is not None and (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool):
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if grad_logp is not None and targets is None:
        raise ValueError("grad_logp needs targets: without them there is no logp")
    if not _is_real(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")


def check_close_to_truth(
    got: torch.Tensor,
    truth: torch.Tensor,
    baseline: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    *,
    relative: bool = False,
) -> str | None:
    """None when ``got`` holds to the tolerance rule, else the failure, as text that starts with ``what``.

    Args:
        got: the result under test.
        truth: the float64 ground truth (``truth``), same shape as ``got``.
        baseline: the same result from the PyTorch formula in the input dtype (``formula``).
        dtype: the input dtype, which sets the slack (a key of ``SLACK``).
        what: names the result in the failure text.
        relative: errors divided by the largest finite ``|truth|`` (for gradients, whose scale varies).

    Returns:
        None when ``got`` holds to the rule; else one line: the shape, the non-finite pattern or the error that
        fails, against PyTorch's own error plus the slack.
    """
    for name, t in (("got", got), ("truth", truth), ("baseline", baseline)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {_describe(t)}")
    if baseline.shape != truth.shape:
        raise ValueError(f"baseline must have truth's shape {tuple(truth.shape)}, got {tuple(baseline.shape)}")
    if dtype not in SLACK:
        raise ValueError(f"dtype must be one of {', '.join(map(str, SLACK))}, got {dtype!r}")
    if got.shape != truth.shape:
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(truth.shape)}"
    truth = truth.detach().double()
    got, baseline = (t.detach().to(truth.device, torch.float64) for t in (got, baseline))
    for name, t in (("", got), ("PyTorch's baseline: ", baseline)):
        mismatch = _nonfinite_mismatch(t, truth)
        if mismatch:
            return f"{what}: {name}{mismatch}"
    finite = torch.isfinite(truth)
    scale = (truth[finite].abs().max().item() or 1.0) if relative and finite.any() else 1.0
    err, base = _finite_max_abs(got, truth) / scale, _finite_max_abs(baseline, truth) / scale
    if err <= base + SLACK[dtype]:
        return None
    scaled = f" (errors relative to max |truth| = {scale:.3g})" if relative else ""
    return f"{what}: error {err:.3g} > PyTorch's own {dtype} error {base:.3g} + slack {SLACK[dtype]:g}{scaled}"


def assert_close_to_truth(
    got: torch.Tensor,
    truth: torch.Tensor,
    baseline: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    *,
    relative: bool = False,
) -> None:
    """Raise AssertionError unless ``got`` holds to the tolerance rule.

    Args:
        got, truth, baseline, dtype, what, relative: as for ``check_close_to_truth``.

    Raises:
        AssertionError: with ``check_close_to_truth``'s failure text.
    """
    failure = check_close_to_truth(got, truth, baseline, dtype, what, relative=relative)
    if failure is not None:
        raise AssertionError(failure)


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the finite entries; AssertionError when the non-finite entries differ.

    Args:
        got, expected: tensors of one shape, any float dtypes.

    Returns:
        The largest ``|got - expected|`` where ``expected`` is finite, as a Python float (0.0 if nowhere).
    """
    for name, t in (("got", got), ("expected", expected)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {_describe(t)}")
    if got.shape != expected.shape:
        raise ValueError(f"got has shape {tuple(got.shape)}, expected has {tuple(expected.shape)}")
    got, expected = got.detach().double(), expected.detach().double().to(got.device)
    mismatch = _nonfinite_mismatch(got, expected)
    if mismatch:
        raise AssertionError(mismatch)
    return _finite_max_abs(got, expected)


def _nonfinite_mismatch(a: torch.Tensor, b: torch.Tensor) -> str | None:
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return f"NaN pattern differs ({int(torch.isnan(a).sum())} NaN, expected {int(torch.isnan(b).sum())})"
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    if not (torch.equal(inf_a, inf_b) and torch.equal(a[inf_a], b[inf_b])):
        return "inf pattern differs"
    return None


def _finite_max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def realistic_logits(
    shape,
    dtype: torch.dtype,
    generator: torch.Generator,
    *,
    std: float | None = None,
    device=None,
) -> torch.Tensor:
    """Logits with a realistic spread: each row normal with a std drawn from [2, 8]; with 3 rows or more, row 0
    and every 32nd after it nearly flat (std 0.01), row 1 and every 32nd after it peaked (one logit raised by 40).

    Drawn on the CPU, a chunk of rows at a time, then moved: every device sees the same numbers for a seed.

    Args:
        shape: ``(..., V)`` with ``V >= 1``.
        dtype: a float dtype of the result.
        generator: a CPU ``torch.Generator``; its state advances.
        std: one std for every row instead of the drawn ones (the flat and peaked rows stay).
        device: where the result lives (default CPU).

    Returns:
        A ``dtype`` tensor of ``shape`` on ``device``.
    """
    shape = _check_shape(shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"shape must end in a vocabulary size >= 1, got {shape}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a float torch.dtype, got {dtype!r}")
    _check_generator(generator)
    if std is not None and not (_is_real(std) and math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a finite positive number or None, got {std!r}")
    rows, vocab = math.prod(shape[:-1]), shape[-1]
    if std is None:
        stds = torch.empty(rows, 1).uniform_(2.0, 8.0, generator=generator)
    else:
        stds = torch.full((rows, 1), float(std))
    out = torch.empty(rows, vocab, dtype=dtype, device=device)
    step = max(1, _DATA_ELEMENTS // vocab)
    for i in range(0, rows, step):
        chunk = torch.randn(min(step, rows - i), vocab, generator=generator).mul_(stds[i : i + step])
        if rows >= 3:  # fewer rows stay all realistic
            phase = torch.arange(i, i + len(chunk)) % _PATTERN_ROWS
            flat, peaked = phase == 0, phase == 1
            chunk[flat] = _FLAT_STD * torch.randn(int(flat.sum()), vocab, generator=generator)
            chunk[peaked, torch.randint(vocab, (int(peaked.sum()),), generator=generator)] += _PEAK
        out[i : i + len(chunk)] = chunk.to(dtype).to(out.device)
    return out.view(shape)


def random_targets(shape, vocab: int, generator: torch.Generator, *, device=None) -> torch.Tensor:
    """int64 ids uniform in ``[0, vocab)``, drawn on the CPU and moved to ``device``.

    Args:
        shape: the logits' leading shape.
        vocab: the vocabulary size, >= 1.
        generator: a CPU ``torch.Generator``; its state advances.
        device: where the result lives (default CPU).

    Returns:
        An int64 tensor of ``shape`` on ``device``.
    """
    shape = _check_shape(shape)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"vocab must be an int >= 1, got {vocab!r}")
    _check_generator(generator)
    return torch.randint(0, vocab, shape, generator=generator).to(device)


def random_row_grads(shape, count: int, generator: torch.Generator, *, device=None) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 standard-normal upstream gradients of one per-row output each, drawn on the CPU and moved.

    Args:
        shape: the per-row outputs' shape (the logits' leading shape).
        count: how many gradients, >= 0.
        generator: a CPU ``torch.Generator``; its state advances.
        device: where the results live (default CPU).

    Returns:
        A tuple of ``count`` float32 tensors of ``shape`` on ``device``.
    """
    shape = _check_shape(shape)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    _check_generator(generator)
    return tuple(torch.randn(shape, generator=generator).to(device) for _ in range(count))


def _check_shape(shape) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    return dims


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator (the data is drawn on the CPU), got {generator!r}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
