"""The minimal bytes each (op, mode) must move: the floor every GB/s figure is measured against."""

from __future__ import annotations

from .names import VOCAB_PARALLEL_OP

# Per-row bytes besides the logits, either way: fp32 H (+ fp32 logp and its int64 target) forward;
# fp32 gH (+ fp32 gL and the target) backward. The vocab-parallel op is charged the single-GPU op's bytes:
# the same work, so its GB/s reads directly as the fraction of the single op's speed it keeps.
_ROW = {"entropy": 4, "logprobs_and_entropy": 4 + 4 + 8, VOCAB_PARALLEL_OP: 4 + 4 + 8}


def minimal_bytes(op: str, mode: str, n: int, v: int, elem_size: int) -> int:
    logits = n * v * elem_size
    fwd = logits + n * _ROW[op]  # I/O: read x once + O(N) outputs
    bwd = 2 * logits + n * _ROW[op]  # I/O: read x once + write dx once + O(N) upstream gradients
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def copy_bytes(n: int, v: int, elem_size: int) -> int:
    return 2 * n * v * elem_size  # I/O: read x + write its copy


def read_bytes(n: int, v: int, elem_size: int) -> int:
    return n * v * elem_size  # I/O: read x


def gbps(n_bytes: int, ms: float) -> float:
    return n_bytes / (ms * 1e-3) / 1e9
