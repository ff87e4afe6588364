"""``python -m benchmarks --ptx-report``: what the compiler makes of each kernel, without a GPU.

Per kernel and launch (the package's own launchers at representative shapes): registers, spilled bytes,
shared memory, the load width and the instruction mix of the main loop, and SASS instructions per logit.
``--dump-ir`` also writes the TTGIR, PTX and SASS of the headline launches.
"""

from __future__ import annotations

from pathlib import Path

from . import aot

HEADLINE = "8192x151936"


def _row(compiled: aot.Compiled) -> str:
    launch = compiled.launch
    flags = " ".join(f"{k}={v}" for k, v in launch.constexprs().items())
    head = (
        f"{launch.name:32s} {launch.case}\n    {flags}\n    regs={compiled.regs} spill_bytes={compiled.spill_bytes} "
        f"shared={compiled.shared}"
    )
    if "UNROLL" not in launch.kwargs:
        return head
    loop = compiled.main_loop()
    per_lane = aot.elements_per_iteration(launch)
    loads = {op for op in loop.ops if op.startswith("LDG")}
    mix = ", ".join(f"{k} {v}" for k, v in loop.mix().items())
    return (
        f"{head} loads={','.join(sorted(loads))} ex2/logit={loop.count('MUFU.EX2') / per_lane:.2f} "
        f"barriers={loop.count('BAR')} instructions/logit={len(loop.ops) / per_lane:.2f}\n    loop: {mix}"
    )


def report(arch: int = 90, everything: bool = False, dump_dir: Path | None = None) -> None:
    """Print the table for ``sm_<arch>``: the headline shape, or every representative launch."""
    launches = aot.representative_launches(aot.TARGETS.get(arch, 132))
    if not everything:
        launches = [
            launch
            for launch in launches
            if HEADLINE in launch.case
            or "vocab-parallel" in launch.case
            or ("64x151936" in launch.case and "bfloat16" in launch.case)
        ]
    print(f"sm_{arch}: {len(launches)} launch variant(s); `--ptx-report-all` for every representative shape\n")
    for launch in launches:
        compiled = aot.compile_launch(launch, arch)
        print(_row(compiled))
        if dump_dir is not None and HEADLINE in launch.case and "bfloat16" in launch.case:
            _dump(compiled, dump_dir)


def _dump(compiled: aot.Compiled, dump_dir: Path) -> None:
    launch = compiled.launch
    path = Path(dump_dir) / f"{launch.name}-sm{compiled.arch}-{'_'.join(launch.case.split()[1:])}.asm.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"// {launch.name}: {launch.case}\n// {launch.constexprs()}\n"
        + "".join(
            f"// ----- {name}\n{text}\n"
            for name, text in (("ttgir", compiled.ttgir), ("ptx", compiled.ptx), ("sass", compiled.sass))
        )
    )
