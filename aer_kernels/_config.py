"""Launch parameters as a pure function of the problem size, so they can be checked without a GPU."""

from __future__ import annotations

from typing import NamedTuple

# A program streams its row(s) in tiles of ``unroll x num_warps x 32 lanes x vec`` elements: each lane loads
# ``unroll`` 16-byte vectors per iteration. 8 warps x 4 vectors is 16 KiB of logits in flight per program at
# 64 registers a thread (forward, sm_90, from the compile report: python -m benchmarks --ptx-report); not yet
# tuned on a GPU, see benchmarks/NOTES.md.
_WARPS = 8
_UNROLL = 4
# Programs wanted per SM before a row is split across programs (fills the GPU at small N).
_PROGRAMS_PER_SM = 8
# A split never covers fewer than this many tiles: below it the merge costs more than it saves.
_MIN_BLOCKS_PER_SPLIT = 2
_MAX_SPLITS = 64
LANES = 32


class LaunchConfig(NamedTuple):
    vec: int  # elements per 16-byte vector load
    unroll: int  # vectors per lane per loop iteration
    num_warps: int
    splits: int  # programs per row
    split_len: int  # columns per program, a multiple of block_v

    @property
    def block_v(self) -> int:
        """Columns per loop iteration."""
        return self.unroll * self.num_warps * LANES * self.vec


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def make_config(vocab: int, elem_size: int, num_warps: int, unroll: int, splits: int) -> LaunchConfig:
    """A valid config: at most ``splits`` programs per row, each covering a whole number of tiles."""
    vec = 16 // elem_size
    block_v = unroll * num_warps * LANES * vec
    n_blocks = max(1, -(-vocab // block_v))
    blocks_per_split = -(-n_blocks // max(1, min(splits, n_blocks)))
    return LaunchConfig(vec, unroll, num_warps, -(-n_blocks // blocks_per_split), blocks_per_split * block_v)


def launch_config(n_rows: int, vocab: int, elem_size: int, num_sms: int) -> LaunchConfig:
    """Vector width, unroll, warps and row splits for ``n_rows`` rows of ``vocab`` ``elem_size``-byte logits.

    ``num_sms`` is the GPU's multiprocessor count (1 under the CPU interpreter). Forward and backward share it.
    """
    if n_rows < 0 or vocab < 0 or elem_size not in (2, 4) or num_sms < 1:
        raise ValueError(
            f"launch_config: bad sizes n_rows={n_rows} vocab={vocab} elem_size={elem_size} num_sms={num_sms}"
        )
    vectors = _next_pow2(max(1, -(-vocab // (LANES * (16 // elem_size)))))  # 16-byte vectors per lane row
    num_warps = min(_WARPS, vectors)
    unroll = min(_UNROLL, vectors // num_warps)
    block_v = unroll * num_warps * LANES * (16 // elem_size)
    n_blocks = max(1, -(-vocab // block_v))
    wanted = -(-_PROGRAMS_PER_SM * num_sms // max(n_rows, 1))
    splits = max(1, min(wanted, n_blocks // _MIN_BLOCKS_PER_SPLIT, _MAX_SPLITS))
    return make_config(vocab, elem_size, num_warps, unroll, splits)
