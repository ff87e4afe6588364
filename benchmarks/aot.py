"""Compile the package's Triton kernels for a GPU, on a machine without one, and read what the compiler made.

The launchers run on CPU stand-in tensors with each kernel's ``run`` swapped for a recorder, so every launch
is captured with exactly the arguments, flags and launch parameters the runtime would use. Each is then
compiled with ``triton.compile`` for ``GPUTarget("cuda", cc, 32)`` through the kernel's own argument binder
(the runtime's specialisation: 16-byte aligned pointers, integers divisible by 16, ``None`` arguments), and
the ``ptxas``/``cuobjdump`` shipped in the triton wheel give the cubin's registers, spills and SASS.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

import aer_kernels

# Compute capability -> SM count of the card it stands for (the launch table depends on it).
TARGETS = {90: 132, 80: 108, 100: 148}  # H100/H200, A100, B200
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def package_kernels() -> dict[str, JITFunction]:
    """Every public ``triton.jit`` kernel of ``aer_kernels``, by name (``_``-prefixed ones are device helpers)."""
    found = {}
    for info in pkgutil.iter_modules(aer_kernels.__path__):
        module = importlib.import_module(f"aer_kernels.{info.name}")
        for name, obj in vars(module).items():
            fn = _innermost(obj)
            if isinstance(fn, JITFunction) and not name.startswith("_") and fn.__module__ == module.__name__:
                found[name] = fn
    return found


def _innermost(obj):
    """The ``JITFunction`` under ``triton.heuristics`` / ``autotune`` wrappers."""
    while not isinstance(obj, JITFunction) and hasattr(obj, "fn"):
        obj = obj.fn
    return obj


@dataclass(frozen=True)
class Launch:
    kernel: JITFunction
    grid: tuple
    args: tuple
    kwargs: dict = field(hash=False)
    case: str

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def constexprs(self) -> dict:
        return {p.name: self.kwargs[p.name] for p in self.kernel.params if p.is_constexpr and p.name in self.kwargs}


@contextlib.contextmanager
def recording(case: list[str], num_sms: int):
    """Record (instead of run) every kernel launch of the package; ``case[0]`` labels the launches."""
    from aer_kernels import _triton
    from aer_kernels._validate import interpreter_enabled

    if interpreter_enabled():  # the kernels are interpreted functions: recording would run them instead
        raise RuntimeError("compiling ahead of time needs the real compiler: unset TRITON_INTERPRET")
    launches: list[Launch] = []
    kernels = package_kernels().values()

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            launches.append(Launch(kernel, tuple(grid), args, kwargs, case[0]))

        return run

    saved_sms = _triton._num_sms
    _triton._num_sms = lambda device: num_sms
    for kernel in kernels:
        kernel.run = recorder(kernel)
    try:
        yield launches
    finally:
        for kernel in kernels:
            del kernel.run
        _triton._num_sms = saved_sms


@dataclass
class Compiled:
    launch: Launch
    arch: int
    regs: int
    spill_bytes: int  # local memory per thread (spills and stack): 0 in a healthy kernel
    shared: int
    ttgir: str
    ptx: str
    sass: str

    @cached_property
    def loops(self) -> list[Loop]:
        return find_loops(self.sass)

    def offset_types(self, pointer: str) -> set[str]:
        """Types of the offsets added straight to the kernel argument ``pointer`` (e.g. ``{"i64"}``)."""
        return set(re.findall(rf"tt\.addptr %{pointer}, %\w+ : [^,]+, (\w+)", self.ttgir))

    def main_loop(self) -> Loop:
        """The loop that streams the logits: the first (in code order) that computes an exp."""
        return min((loop for loop in self.loops if loop.count("MUFU.EX2")), key=lambda loop: loop.start)


def compile_launch(launch: Launch, arch: int) -> Compiled:
    """Compile one recorded launch for ``sm_<arch>`` exactly as the runtime would specialise it."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    out = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(out.asm["cubin"])
        f.flush()
        usage = _cuobjdump("-res-usage", f.name)
        sass = _cuobjdump("-sass", f.name)
    fields = dict(re.findall(r"(\w+):(\d+)", usage.split("Function", 1)[-1]))
    return Compiled(
        launch,
        arch,
        int(fields["REG"]),
        int(fields["LOCAL"]) + int(fields["STACK"]),
        out.metadata.shared,
        out.asm["ttgir"],
        out.asm["ptx"],
        sass,
    )


def _cuobjdump(flag: str, path: str) -> str:
    return subprocess.run(
        [os.path.join(_BIN, "cuobjdump"), flag, path], check=True, capture_output=True, text=True
    ).stdout


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


@dataclass
class Loop:
    start: int
    end: int
    ops: list[str]  # mnemonics, e.g. "LDG.E.128.CONSTANT", "MUFU.EX2"

    def count(self, prefix: str) -> int:
        return sum(op.startswith(prefix) for op in self.ops)

    def mix(self) -> dict[str, int]:
        """Instructions by class: the first word of the mnemonic (FFMA, MUFU, LDG, ...)."""
        out: dict[str, int] = {}
        for op in self.ops:
            key = op.split(".")[0]
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def find_loops(sass: str) -> list[Loop]:
    """Innermost-first list of the loops of a SASS listing: a branch back to an earlier address closes one."""
    lines = [(int(a, 16), op, rest) for a, op, rest in _SASS_LINE.findall(sass)]
    loops = []
    for addr, op, rest in lines:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            loops.append(Loop(start, addr, [o for a, o, _ in lines if start <= a <= addr and o != "NOP"]))
    return sorted(loops, key=lambda loop: loop.end - loop.start)


def elements_per_iteration(launch: Launch) -> int:
    """Logits one thread handles per main-loop iteration."""
    kw = launch.kwargs
    return kw["UNROLL"] * kw["VEC"]


# Representative shapes: the headline, rows too few to fill the GPU (split rows), a vocabulary whose rows
# are not 16-byte aligned (GPT-2's 50 257), the largest and smallest vocabularies, and a tiny ragged one.
SHAPES = [(8192, 151936), (64, 151936), (8192, 50257), (8192, 262144), (65536, 32000), (8192, 1), (4, 4097)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def representative_launches(num_sms: int, shapes=SHAPES, dtypes=DTYPES) -> list[Launch]:
    """Every distinct launch the package makes for ``shapes`` x ``dtypes`` x every flag combination.

    The stand-in tensors are CPU ``torch.empty`` buffers that nothing reads: the recorder launches nothing.
    """
    from itertools import product

    from aer_kernels import _triton
    from aer_kernels._layout import row_layout

    case = [""]
    with recording(case, num_sms) as launches:
        for dtype, (n, v) in product(dtypes, shapes):
            rows, stats, mask = torch.empty(n), torch.empty(n, 2), torch.empty(n, dtype=torch.bool)
            targets = torch.empty(n, dtype=torch.int64)
            views = {"contiguous": torch.empty(n, v, dtype=dtype)}
            if n % 2 == 0:  # logits[:, :-1] of a [2, n/2 + 1, V] tensor: rows addressed by two strides
                views["sliced"] = torch.empty(2, n // 2 + 1, v, dtype=dtype)[:, :-1]
            for (view, x), has_targets, has_mask in product(views.items(), (False, True), (False, True)):
                case[0] = f"forward {view} {n}x{v} {str(dtype)[6:]} targets={has_targets} mask={has_mask}"
                _triton.forward(
                    x,
                    row_layout(x),
                    targets if has_targets else None,
                    mask if has_mask else None,
                    1.0,
                    rows,
                    rows if has_targets else None,
                    stats,
                )
            grads = [("grad_h", True, False), ("grad_logp", False, True), ("both", True, True)]
            for (view, x), (what, gh, gl), has_mask, inplace in product(
                views.items(), grads, (False, True), (False, True)
            ):
                case[0] = (
                    f"backward {view} {n}x{v} {str(dtype)[6:]} {what} mask={has_mask} "
                    f"{'in place' if inplace else 'new buffer'}"
                )
                layout = row_layout(x)
                grad, grad_layout = (x, layout) if inplace else (torch.empty(x.shape, dtype=dtype), layout.contiguous())
                _triton.backward(
                    x,
                    layout,
                    grad,
                    grad_layout,
                    targets if gl else None,
                    mask if has_mask else None,
                    stats,
                    rows,
                    rows if gh else None,
                    rows if gl else None,
                    1.0,
                )
        n = 8192
        rows, stats, mask, targets = (
            torch.empty(n),
            torch.empty(n, 2),
            torch.empty(n, dtype=torch.bool),
            torch.empty(n, dtype=torch.int64),
        )
        for has_targets, has_mask in product((False, True), (False, True)):
            case[0] = f"vocab-parallel {n} rows targets={has_targets} mask={has_mask}"
            sums = torch.empty(4 if has_targets else 2, n)
            _triton.partials(stats, rows, rows, targets if has_targets else None, rows, 75968, 1.0, sums)
            _triton.combine(rows, sums, mask if has_mask else None, rows, rows if has_targets else None, stats)
    return _distinct(launches)


def _distinct(launches: list[Launch]) -> list[Launch]:
    """One launch per compiled variant (same kernel, specialisation and options), the first case seen."""
    backend = make_backend(GPUTarget("cuda", 90, 32))
    seen: dict[tuple, Launch] = {}
    for launch in launches:
        binder = create_function_from_signature(launch.kernel.signature, launch.kernel.params, backend)
        _, specialization, options = binder(*launch.args, **launch.kwargs)
        seen.setdefault((launch.name, str(specialization), str(sorted(options.items()))), launch)
    return list(seen.values())
