"""Every Triton kernel compiles for real GPUs, checked on a CPU: what the interpreter cannot see.

The launches are recorded from the package's own launchers (so flags, launch parameters and argument
specialisation are the runtime's), compiled ahead of time for sm_90 / sm_80 (and sm_100 where this triton
supports it) with the ptxas shipped in the triton wheel, and the SASS of the main loops is read.
"""

import functools
import os
import re

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter replaces the compiler: nothing to compile here
    pytest.skip(
        "the ahead-of-time compile runs in the plain session, not under TRITON_INTERPRET=1", allow_module_level=True
    )
pytest.importorskip("triton", reason="the ahead-of-time compile needs the triton package (Linux)")
from benchmarks import aot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HEADLINE = "8192x151936"
# SASS instructions per logit in the main loop at the default launch parameters. The design that reads
# each logit once (16-byte loads, one exp2, a per-warp running max) compiles to ~10.3-12.4 (forward) and
# ~13.1-13.6 (backward) on sm_90; the previous kernels, with a block-wide max, took 13.7 and ~17.
MAX_INSTRUCTIONS_PER_LOGIT = {"forward": 13.0, "backward": 14.0}


@functools.cache
def launches(num_sms: int = aot.TARGETS[90]) -> tuple[aot.Launch, ...]:
    return tuple(aot.representative_launches(num_sms))


def _pick(*, kernel: str, case: str = "", dtypes=("bfloat16",)) -> list[aot.Launch]:
    """The recorded launches of ``kernel`` whose case description contains every word of ``case``."""
    words = case.split()
    return [
        launch
        for launch in launches()
        if launch.name == kernel
        and all(w in launch.case.split() for w in words)
        and any(d in launch.case for d in dtypes)
    ]


def _supported(arch: int) -> bool:
    try:
        aot.compile_launch(_pick(kernel="vocab_parallel_combine_kernel", dtypes=("",))[0], arch)
    except Exception:  # this triton has no backend for the architecture
        return False
    return True


ALL_DTYPES = ("float32", "float16", "bfloat16")
# Every flag combination at the headline shape, each dtype's defaults, split rows, unaligned rows (V = 50 257),
# a sliced [B, T, V] view, a tiny ragged vocabulary, and the vocab-parallel kernels.
SM90_LAUNCHES = [
    *_pick(kernel="entropy_fwd_kernel", case=f"contiguous {HEADLINE}"),
    *_pick(kernel="entropy_bwd_kernel", case=f"contiguous {HEADLINE}"),
    *_pick(
        kernel="entropy_fwd_kernel",
        case=f"contiguous {HEADLINE} targets=True mask=False",
        dtypes=("float32", "float16"),
    ),
    *_pick(
        kernel="entropy_bwd_kernel", case=f"contiguous {HEADLINE} both mask=False new", dtypes=("float32", "float16")
    ),
    *_pick(kernel="entropy_fwd_kernel", case="64x151936", dtypes=ALL_DTYPES),
    *_pick(kernel="entropy_merge_kernel", dtypes=ALL_DTYPES),
    *_pick(kernel="entropy_fwd_kernel", case="contiguous 8192x50257 targets=True mask=True"),
    *_pick(kernel="entropy_bwd_kernel", case="contiguous 8192x50257 both mask=True"),
    *_pick(kernel="entropy_fwd_kernel", case=f"sliced {HEADLINE} targets=True mask=False"),
    *_pick(kernel="entropy_bwd_kernel", case=f"sliced {HEADLINE} both mask=False"),
    *_pick(kernel="entropy_fwd_kernel", case="4x4097 targets=True mask=True", dtypes=ALL_DTYPES),
    *_pick(kernel="entropy_bwd_kernel", case="4x4097 both mask=True new", dtypes=ALL_DTYPES),
    *_pick(kernel="vocab_parallel_partials_kernel", dtypes=("",)),
    *_pick(kernel="vocab_parallel_combine_kernel", dtypes=("",)),
]
# The kernels a training step runs, at the headline shape, on the other architectures.
OTHER_ARCH_LAUNCHES = [
    *_pick(kernel="entropy_fwd_kernel", case=f"contiguous {HEADLINE} targets=True mask=True"),
    *_pick(kernel="entropy_bwd_kernel", case=f"contiguous {HEADLINE} both mask=True new"),
    *_pick(kernel="entropy_merge_kernel", case="targets=True mask=True"),
    *_pick(kernel="vocab_parallel_partials_kernel", case="targets=True mask=False", dtypes=("",)),
    *_pick(kernel="vocab_parallel_combine_kernel", case="targets=True mask=True", dtypes=("",)),
]


def _id(launch: aot.Launch) -> str:
    return f"{launch.name}[{launch.case}]"


def test_every_kernel_of_the_package_is_launched_and_compiled():
    """A kernel added later cannot be forgotten: the recorded launches cover every triton.jit kernel."""
    kernels = set(aot.package_kernels())
    assert kernels >= {"entropy_fwd_kernel", "entropy_bwd_kernel", "entropy_merge_kernel"}
    assert {launch.name for launch in launches()} == kernels
    assert {launch.name for launch in SM90_LAUNCHES} == kernels
    assert {launch.name for launch in OTHER_ARCH_LAUNCHES} == kernels


def test_launch_grids_fit_the_hardware_limits():
    """Grid dim 0 holds at most 2**31 - 1 programs, dims 1 and 2 at most 65 535 (the interpreter has no limit)."""
    extreme = aot.representative_launches(
        aot.TARGETS[100], shapes=[(1, 2**30), (2**20, 1), (3, 262144)], dtypes=(torch.bfloat16,)
    )
    for launch in (*launches(), *extreme):
        grid = launch.grid + (1,) * (3 - len(launch.grid))
        assert grid[0] < 2**31 and grid[1] <= 65535 and grid[2] <= 65535, (_id(launch), grid)


@pytest.mark.parametrize("launch", SM90_LAUNCHES, ids=_id)
def test_compiles_for_sm90(launch):
    _check(aot.compile_launch(launch, 90))


@pytest.mark.parametrize("arch", [80, 100])
def test_compiles_for_other_architectures(arch):
    if arch == 100 and not _supported(100):
        pytest.skip("this triton has no sm_100 backend")
    for launch in OTHER_ARCH_LAUNCHES:
        _check(aot.compile_launch(launch, arch))


def _check(compiled: aot.Compiled) -> None:
    launch = compiled.launch
    what = f"{_id(launch)} on sm_{compiled.arch}"
    assert compiled.spill_bytes == 0, f"{what}: {compiled.spill_bytes} bytes of local memory (register spills)"
    assert not re.search(r"\bf64\b", compiled.ttgir), f"{what}: a Python float promoted arithmetic to fp64"
    if launch.name in ("entropy_fwd_kernel", "entropy_bwd_kernel"):
        _check_streaming_loop(compiled, what)
        for pointer in ("x_ptr", "dx_ptr") if launch.name == "entropy_bwd_kernel" else ("x_ptr",):
            assert compiled.offset_types(pointer) == {"i64"}, f"{what}: row offsets into {pointer} must be int64"


def _check_streaming_loop(compiled: aot.Compiled, what: str) -> None:
    """16-byte loads only, one exp2 per logit, no barrier, a bounded instruction count per logit."""
    launch = compiled.launch
    loop = compiled.main_loop()
    per_lane = aot.elements_per_iteration(launch)
    unroll = launch.kwargs["UNROLL"]
    assert loop.count("LDG") == loop.count("LDG.E.128") == unroll, (
        f"{what}: loads are not 16-byte vectors\n{loop.mix()}"
    )
    assert per_lane <= loop.count("MUFU.EX2") <= per_lane + 1, f"{what}: not one exp2 per logit\n{loop.mix()}"
    kind = "forward" if launch.name == "entropy_fwd_kernel" else "backward"
    # A gradient whose rows are not aligned like the logits' (odd V and a sliced view) is stored element-wise
    # through a layout change in shared memory: slower, and the only case with a barrier in the loop.
    if kind == "forward" or launch.kwargs["DX_ALIGNED"]:
        assert loop.count("BAR") == 0, f"{what}: a barrier inside the main loop"
    per_logit = len(loop.ops) / per_lane
    if kind == "backward" and not launch.kwargs["DX_ALIGNED"]:
        return
    assert per_logit <= MAX_INSTRUCTIONS_PER_LOGIT[kind], (
        f"{what}: {per_logit:.2f} instructions per logit\n{loop.mix()}"
    )
    if kind == "backward" and launch.kwargs["DX_ALIGNED"]:
        assert loop.count("STG") == loop.count("STG.E.128") == unroll, f"{what}: stores are not 16-byte vectors"


def test_the_loop_reader_finds_the_loop_it_is_shown():
    """The SASS parser on a hand-written listing: a loop is the span a backward branch closes."""
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   MUFU.EX2 R5, R5 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   EXIT ;
    """
    (loop,) = aot.find_loops(sass)
    assert loop.ops == ["LDG.E.128", "MUFU.EX2", "BRA"] and loop.count("LDG.E.128") == 1
    assert re.fullmatch(r"\{'LDG': 1, 'MUFU': 1, 'BRA': 1\}", str(loop.mix()))
