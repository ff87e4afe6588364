"""Launch parameters as a pure function of the problem size, so they can be checked without a GPU."""

from __future__ import annotations

from typing import NamedTuple

# 16-byte vector loads x 32 lanes x num_warps per block iteration. Defaults chosen from the
# Triton matmul-free reduction tutorials' rule of thumb (8 warps, 4 K-element blocks for 2-byte
# data); unmeasured on a GPU in this repository so far, see benchmarks/NOTES.md.
_FWD_WARPS = 8
_BWD_WARPS = 8
# Programs wanted per SM before a row is split across programs (fills the GPU at small N).
_PROGRAMS_PER_SM = 8
# A split never covers fewer than this many blocks: below it the merge costs more than it saves.
_MIN_BLOCKS_PER_SPLIT = 2
_MAX_SPLITS = 64


class LaunchConfig(NamedTuple):
    block_v: int  # columns loaded per loop iteration (power of two)
    num_warps: int
    num_stages: int
    splits: int  # programs per row
    split_len: int  # columns per program, a multiple of block_v


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def launch_config(n_rows: int, vocab: int, elem_size: int, num_sms: int, *, backward: bool = False) -> LaunchConfig:
    """Block, warps, stages and row splits for ``n_rows`` rows of ``vocab`` ``elem_size``-byte logits.

    ``num_sms`` is the GPU's multiprocessor count (1 under the CPU interpreter).
    """
    if n_rows < 0 or vocab < 0 or elem_size not in (2, 4, 8) or num_sms < 1:
        raise ValueError(f"launch_config: bad sizes n_rows={n_rows} vocab={vocab} elem_size={elem_size} num_sms={num_sms}")
    # 16 KiB of logits per iteration: 8 K bf16 or 4 K fp32 elements.
    block_v = min(16384 // elem_size, _next_pow2(max(vocab, 16)))
    num_warps = _BWD_WARPS if backward else _FWD_WARPS
    num_warps = min(num_warps, max(1, block_v // 256))
    n_blocks = -(-vocab // block_v) if vocab else 1
    wanted = -(-_PROGRAMS_PER_SM * num_sms // max(n_rows, 1))
    splits = max(1, min(wanted, n_blocks // _MIN_BLOCKS_PER_SPLIT, _MAX_SPLITS))
    blocks_per_split = -(-n_blocks // splits)
    splits = -(-n_blocks // blocks_per_split)  # no empty trailing split
    return LaunchConfig(block_v, num_warps, 1, splits, blocks_per_split * block_v)
