"""Launch heuristics are a pure function: their invariants are checked without a GPU."""

import pytest

from aer_kernels._config import launch_config

SHAPES = [(1, 1), (3, 7), (2048, 151936), (8192, 151936), (32768, 128256), (65536, 32000), (4, 4097), (1, 10**6)]


@pytest.mark.parametrize("n_rows, vocab", SHAPES)
@pytest.mark.parametrize("elem_size", [2, 4])
@pytest.mark.parametrize("num_sms", [1, 132])
def test_config_covers_the_row_exactly_once(n_rows, vocab, elem_size, num_sms):
    cfg = launch_config(n_rows, vocab, elem_size, num_sms)
    assert cfg.vec * elem_size == 16  # 16-byte vector loads
    assert cfg.block_v & (cfg.block_v - 1) == 0 and cfg.block_v == cfg.unroll * cfg.num_warps * 32 * cfg.vec
    assert cfg.block_v * elem_size <= 16384  # bounded register footprint: at most 4 vectors a lane
    assert cfg.split_len % cfg.block_v == 0
    assert cfg.splits * cfg.split_len >= vocab  # every column is covered...
    assert (cfg.splits - 1) * cfg.split_len < vocab  # ...and no split is empty
    assert 1 <= cfg.num_warps <= 16 and cfg.splits <= 65535


def test_rows_split_only_when_too_few_to_fill_the_gpu():
    assert launch_config(8192, 151936, 2, 132).splits == 1
    assert launch_config(1, 7, 4, 132).block_v == 128  # a tiny vocabulary gets one warp, one vector a lane
    assert launch_config(256, 151936, 2, 132).splits > 1
    assert launch_config(1, 151936, 2, 132).splits >= launch_config(256, 151936, 2, 132).splits


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="launch_config"):
        launch_config(4, 100, 3, 1)


def test_only_flags_and_block_sizes_are_compile_time():
    """Temperature, sizes and strides are runtime arguments: no recompile per temperature or shape."""
    from aer_kernels import _triton

    kernels = (_triton.entropy_fwd_kernel, _triton.entropy_merge_kernel, _triton.entropy_bwd_kernel)
    launch_shape = {"VEC", "UNROLL", "WARPS", "BLOCK_S", "SPLIT", "DX_ALIGNED"}
    for kernel in (k.fn for k in kernels):
        constexprs = {p.name for p in kernel.params if p.is_constexpr}
        assert all(name.startswith("HAS_") or name in launch_shape for name in constexprs), constexprs
        assert "inv_t" in {p.name for p in kernel.params if not p.is_constexpr}
