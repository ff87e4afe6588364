"""Exact log-probs and entropy when the vocabulary is sharded over a process group (Megatron-style LM head).

Rank ``r`` holds the logits of vocabulary ids ``[v_r, v_r + V_r)``; its kernel pass over its shard gives per
row the shard's max ``m_r`` (logit units), ``log_s_r`` and ``H_r`` (so ``e_rel_r = log_s_r - H_r``: its
``lse`` and ``E`` relative to ``m_r / T``) and, when it holds the target, ``logp_r = z_y - lse_r``. With the
global max ``M = max_r m_r`` (all-reduce MAX) and ``rel_r = (m_r - M) / T + log_s_r`` (= ``lse_r - M / T``), one
all-reduce SUM of the stacked rows

    S = Σ_r exp(rel_r)      W = Σ_r exp(rel_r) ((m_r - M) / T + e_rel_r)
    Z = Σ_{r holds y} (logp_r + rel_r)      C = #{r holds y}

gives the global row statistics, in the single-GPU form (relative to ``M``):

    log_s = log S      e_rel = W / S      H = log_s - e_rel      logp = Z - log_s  (NaN unless C = 1)

``m_r - M`` is exact near the max, so huge logits do not cancel. A shard whose row is all ``-inf``
(``log_s_r = -inf``), or that is empty, contributes nothing; it is dropped by a select, not a multiply,
so a NaN (``+inf`` or NaN logits) still makes the row NaN on every rank.
Communicated per row: 4 bytes (MAX) + 16 bytes (SUM), 8 for the entropy alone; never ``[N, V]`` data.

Backward needs no communication: ``dx_j = (1/T)[gL (1[j=y] - p_j) - gH p_j (z_j - E)]`` involves only the
shard's own logits and the global row statistics: the single-GPU backward with the target shifted by
``-v_r`` (outside ``[0, V_r)``: no one-hot term on this shard).

``combine_shards`` takes a shard's statistics however they were computed: the fused LM-head op (``linear.py``)
forms them chunk by chunk from the hidden states. Nothing checks by default that the ranks called alike (it needs
a host sync); ``check_agreement=True`` or ``AER_KERNELS_CHECK_AGREEMENT=1`` does, with one small all-gather.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import Tensor

from ._backends import backend_module
from ._layout import with_row_layout
from ._ops import undefined_logp_grad
from ._validate import accumulation_dtype, check_logits, check_row_tensor, check_temperature, resolve_backend
from .entropy import entropy_bwd, entropy_fwd

_NEG_INF = float("-inf")
AGREEMENT_ENV = "AER_KERNELS_CHECK_AGREEMENT"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.custom_op("aer_kernels::vocab_parallel_partials", mutates_args=())
def _partials(
    stats: Tensor,
    h: Tensor,
    logp: Tensor,
    targets: Tensor | None,
    row_max: Tensor,
    vocab: int,
    temperature: float,
    backend: str,
) -> Tensor:
    """``[S, W]`` (entropy) or ``[S, W, Z, C]`` rows of one shard, to be summed over ranks."""
    sums = stats.new_empty((2 if targets is None else 4, stats.shape[0]))
    backend_module(backend).partials(stats, h, logp, targets, row_max, vocab, temperature, sums)
    return sums


@_partials.register_fake
def _(stats, h, logp, targets, row_max, vocab, temperature, backend):
    return stats.new_empty((2 if targets is None else 4, stats.shape[0]))


@torch.library.custom_op("aer_kernels::vocab_parallel_combine", mutates_args=())
def _combine(row_max: Tensor, sums: Tensor, mask: Tensor | None, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, H, stats)`` per row from the global max and the summed partials; masked rows get 0."""
    logp, h, stats = _combine_outputs(row_max, sums)
    backend_module(backend).combine(row_max, sums, mask, h, logp, stats)
    return logp, h, stats


def _combine_outputs(row_max: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = row_max.numel()
    return row_max.new_empty(n if sums.shape[0] == 4 else 0), row_max.new_empty(n), row_max.new_empty((n, 2))


@_combine.register_fake
def _(row_max, sums, mask, backend):
    return _combine_outputs(row_max, sums)


def empty_shard_statistics(n: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """``(stats, H, logp)`` of a shard holding no vocabulary ids: no probability mass (``log_s = -inf``)."""
    acc = dict(device=device, dtype=accumulation_dtype(dtype))
    return torch.tensor([0.0, _NEG_INF], **acc).repeat(n, 1), torch.zeros(n, **acc), torch.zeros(n, **acc)


def combine_shards(
    stats_r: Tensor,
    h_r: Tensor,
    logp_r: Tensor,
    local_targets: Tensor | None,
    vocab: int,
    mask: Tensor | None,
    temperature: float,
    backend: str,
    group,
    world_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Global ``(logp, H, stats)`` per row from this shard's ``(stats_r, H_r, logp_r)`` (``[N, 2]``, ``[N]``,
    ``[N]``; however they were computed): the all-reduce MAX, the partials, the all-reduce SUM, the combine."""
    row_max = torch.where(stats_r[:, 1] == _NEG_INF, _NEG_INF, stats_r[:, 0])  # a shard of only -inf: no max
    if world_size > 1:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    sums = torch.ops.aer_kernels.vocab_parallel_partials(
        stats_r, h_r, logp_r, local_targets, row_max, vocab, temperature, backend
    )
    if world_size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return torch.ops.aer_kernels.vocab_parallel_combine(row_max, sums, mask, backend)


def _global_forward(logits, local_targets, mask, temperature, backend, group, world_size):
    """Global ``(logp, H, stats)`` per row: one kernel pass on the shard, then the combine."""
    n, vocab = math.prod(logits.shape[:-1]), logits.shape[-1]
    if vocab:
        logp_r, h_r, stats_r = entropy_fwd(logits, local_targets, mask, temperature, backend, False)
    else:
        stats_r, h_r, logp_r = empty_shard_statistics(n, logits.dtype, logits.device)
    return combine_shards(stats_r, h_r, logp_r, local_targets, vocab, mask, temperature, backend, group, world_size)


class _VocabParallel(torch.autograd.Function):
    """Flat ``(logp, H)`` of the shard's rows; the gradient is the shard's own, computed without communication."""

    @staticmethod
    def forward(ctx, logits, local_targets, mask, temperature, backend, group, world_size):
        logp, h, stats = _global_forward(logits, local_targets, mask, temperature, backend, group, world_size)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
        ctx.save_for_backward(logits, local_targets, mask, stats, h, logp)
        ctx.temperature, ctx.backend = temperature, backend
        return logp, h

    @staticmethod
    def backward(ctx, grad_logp, grad_h):
        logits, local_targets, mask, stats, h, logp = ctx.saved_tensors
        if grad_h is None and grad_logp is None:
            return (None,) * 7
        if logits.shape[-1] == 0:
            return (torch.zeros_like(logits),) + (None,) * 6
        if grad_logp is not None:
            # logp is NaN where no single shard holds the target (outside the global vocabulary): so is its
            # gradient, as on one GPU. A row NaN for any other reason has no distribution: its gradient is NaN anyway.
            grad_logp = undefined_logp_grad(grad_logp, ~torch.isnan(logp))
        grad = entropy_bwd(
            logits,
            local_targets if grad_logp is not None else None,
            mask,
            stats,
            h,
            grad_h,
            grad_logp,
            ctx.temperature,
            ctx.backend,
        )
        return (grad,) + (None,) * 6


def group_world_size(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group: torch.distributed is not initialised; leave group=None for a single process")
        return 1
    size = dist.get_world_size(group)
    if size < 1:
        raise ValueError(f"group: this rank (global rank {dist.get_rank()}) is not a member of the given group")
    return size


def agreement_requested(check_agreement) -> bool:
    """The ``check_agreement`` argument, or ``AER_KERNELS_CHECK_AGREEMENT=1`` in the environment when it is None."""
    if check_agreement is None:
        return os.environ.get(AGREEMENT_ENV, "0") == "1"
    if not isinstance(check_agreement, bool):
        raise TypeError(f"check_agreement must be True, False or None, got {type(check_agreement).__name__}")
    return check_agreement


def _encode(value) -> float:
    return float(_DTYPES.index(value) if isinstance(value, torch.dtype) and value in _DTYPES else value)


def _decode(example, code: float):
    if isinstance(example, torch.dtype):
        return _DTYPES[int(code)] if int(code) < len(_DTYPES) else "another dtype"
    return type(example)(code)


def check_agreement_of_ranks(group, world_size: int, device, fields: dict, shard: tuple[int, int] | None) -> None:
    """Raise the same ValueError on every rank of ``group`` when the ranks disagree on one of ``fields``
    (name -> int, float, bool or dtype) or when their ``shard`` ranges ``[start, stop)`` do not tile the
    vocabulary from 0 without gap or overlap.

    One all-gather of ``len(fields) + 2`` float64 per rank, read on the host: a sync, hence opt-in. Without it,
    ranks with different row counts or dtypes fail inside the collectives (gloo aborts the processes).
    """
    if torch.compiler.is_compiling():
        raise ValueError("check_agreement reads the gathered values on the host: call without torch.compile")
    start, stop = shard if shard is not None else (0, 0)
    mine = torch.tensor([*map(_encode, fields.values()), start, stop], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine, group=group)
    table = torch.stack(gathered).tolist()  # [rank][field]
    for k, (name, example) in enumerate(fields.items()):
        if len({row[k] for row in table}) > 1:
            values = ", ".join(f"rank {r}: {_decode(example, row[k])}" for r, row in enumerate(table))
            raise ValueError(f"ranks of the group disagree on {name} ({values}); every rank must pass the same")
    if shard is not None:
        _check_tiling([(int(row[-2]), int(row[-1])) for row in table])


def _check_tiling(shards: list[tuple[int, int]]) -> None:
    """Non-empty ``[start, stop)`` per rank must tile ``[0, V)`` in some order."""
    held = sorted((start, stop, r) for r, (start, stop) in enumerate(shards) if stop > start)
    covered = 0
    for start, stop, r in held:
        if start != covered:
            what = "no rank holds" if start > covered else f"rank {r} also holds"
            ids = f"[{covered}, {start})" if start > covered else f"[{start}, {min(stop, covered)})"
            raise ValueError(
                f"vocabulary shards must tile [0, V) without gap or overlap: {what} ids {ids} "
                f"(shards [vocab_start, vocab_start + V_local) by rank: {shards})"
            )
        covered = stop


def check_vocab_start(vocab_start) -> None:
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int):
        raise TypeError(
            f"vocab_start must be a Python int (the shard's first global token id), got {type(vocab_start).__name__}"
        )
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")


def _check_shard(local_logits, world_size: int) -> None:
    """An empty shard is legal when other ranks hold the vocabulary; a world of one needs a non-empty one."""
    empty_shard = isinstance(local_logits, Tensor) and local_logits.dim() > 0 and local_logits.shape[-1] == 0
    if world_size == 1 or not empty_shard:
        check_logits(local_logits)
    elif not local_logits.is_floating_point():
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {local_logits.dtype}")


def _run(local_logits, targets, vocab_start, group, temperature, mask, backend, check_agreement):
    world_size = group_world_size(group)
    _check_shard(local_logits, world_size)
    if targets is not None:
        check_vocab_start(vocab_start)
        check_row_tensor("targets", targets, local_logits, kind="int")
    if mask is not None:
        check_row_tensor("mask", mask, local_logits, kind="bool")
    temperature = check_temperature(temperature)
    backend = resolve_backend(backend, local_logits)
    lead = local_logits.shape[:-1]
    if agreement_requested(check_agreement) and world_size > 1:
        fields = {
            "the row count": math.prod(lead),
            "the logits dtype": local_logits.dtype,
            "temperature": float(temperature),
            "whether targets are given": targets is not None,
            "whether a mask is given": mask is not None,
        }
        shard = None if targets is None else (vocab_start, vocab_start + local_logits.shape[-1])
        check_agreement_of_ranks(group, world_size, local_logits.device, fields, shard)

    local_targets = None if targets is None else (targets.to(torch.int64) - vocab_start).reshape(-1).contiguous()
    flat_mask = None if mask is None else mask.reshape(-1).contiguous()
    logp, h = _VocabParallel.apply(
        with_row_layout(local_logits), local_targets, flat_mask, temperature, backend, group, world_size
    )
    return (logp.view(lead) if targets is not None else None), h.view(lead)


def vocab_parallel_logprobs_and_entropy(
    local_logits: Tensor,
    targets: Tensor,
    *,
    vocab_start: int,
    group=None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    backend: str = "auto",
    check_agreement: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """``(logp, H)`` of the full-vocabulary softmax, from this rank's shard ``local_logits`` ``[..., V_local]``.

    Equals ``logprobs_and_entropy(torch.cat(shards, -1), targets, ...)`` on every rank of ``group`` (default:
    the world; a single process when ``torch.distributed`` is not initialised). Both outputs fp32 with shape
    ``local_logits.shape[:-1]``, both differentiable: each rank gets the gradient of its own shard.

    Every rank must call with the same ``targets``, ``mask``, ``temperature`` and row count, and the shards must
    tile the vocabulary without overlap. By default that is not checked (it needs a host sync): a target held by
    no shard, or by two, gives ``logp`` NaN on that row; other mismatches give wrong values or a collective error
    (gloo aborts the processes). ``check_agreement=True`` checks it first.

    Args:
        local_logits: ``[..., V_local]`` float32, float16 or bfloat16 (float64 on the reference path) logits of
            the global ids ``[vocab_start, vocab_start + V_local)``; an empty shard (``V_local = 0``) is legal when
            other ranks hold the vocabulary.
        targets: integer global token ids, shape ``local_logits.shape[:-1]``, the same on every rank.
        vocab_start: the shard's first global token id, a Python int >= 0.
        group: the process group holding the shards (default None: the world; a single process when
            ``torch.distributed`` is not initialised).
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``local_logits.shape[:-1]``; False rows output 0 and get gradient 0.
        backend: ``"auto"`` (default): Triton for CUDA logits of a kernel dtype when triton is installed, the
            PyTorch reference path otherwise; ``"triton"`` or ``"reference"``. It picks the row kernels; the
            collectives are ``torch.distributed``'s.
        check_agreement: True: one all-gather of a few numbers per rank first, raising the same ValueError on
            every rank when the row counts, dtypes, temperatures, or the presence of a mask differ, or the shards
            do not tile ``[0, V)``. None (default): True when ``AER_KERNELS_CHECK_AGREEMENT=1`` is set.
            Not under ``torch.compile``.

    Returns:
        ``(logp, H)``, both float32 (float64 for float64 logits) with shape ``local_logits.shape[:-1]``, the
        same on every rank.
    """
    if targets is None:
        raise TypeError(
            "targets must be a torch.Tensor of global token ids; use vocab_parallel_entropy() for entropy alone"
        )
    return _run(local_logits, targets, vocab_start, group, temperature, mask, backend, check_agreement)


def vocab_parallel_entropy(
    local_logits: Tensor,
    *,
    group=None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    backend: str = "auto",
    check_agreement: bool | None = None,
) -> Tensor:
    """Entropy (nats, fp32) of the full-vocabulary softmax, from this rank's shard ``[..., V_local]``.

    Equals ``entropy(torch.cat(shards, -1), ...)`` on every rank of ``group``; differentiable (each rank gets
    the gradient of its own shard). Same requirements as ``vocab_parallel_logprobs_and_entropy``.

    Args:
        local_logits: ``[..., V_local]`` float32, float16 or bfloat16 (float64 on the reference path) logits of
            this rank's vocabulary shard (shards in any order); an empty shard (``V_local = 0``) is legal when
            other ranks hold the vocabulary.
        group: the process group holding the shards (default None: the world; a single process when
            ``torch.distributed`` is not initialised).
        temperature: ``T``, a Python float in ``[1e-30, 1e30]`` (default 1.0), as for ``entropy``.
        mask: optional bool tensor of shape ``local_logits.shape[:-1]``; False rows output 0 and get gradient 0.
        backend: ``"auto"`` (default): Triton for CUDA logits of a kernel dtype when triton is installed, the
            PyTorch reference path otherwise; ``"triton"`` or ``"reference"``.
        check_agreement: as for ``vocab_parallel_logprobs_and_entropy``, except that the shards' tiling is not
            checked (without ``vocab_start`` they carry no position).

    Returns:
        ``H``, float32 (float64 for float64 logits) with shape ``local_logits.shape[:-1]``, the same on every rank.
    """
    return _run(local_logits, None, 0, group, temperature, mask, backend, check_agreement)[1]
