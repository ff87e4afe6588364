"""The compiler's output for the forward and backward kernels at the headline shape: TTGIR and PTX.

Reading it answers what timing alone cannot: are the loads 16-byte vectors (``ld.global.v4``), how
many registers, any spills, one ``ex2.approx`` per element.
"""

from __future__ import annotations

from pathlib import Path

import torch

import aer_kernels as ak
from aer_kernels import _triton

from .data import make_logits, make_row_grads

IR_SHAPE = (8192, 151936)
_SECTIONS = ("ttgir", "ptx")


def _compiled_variants(kernel) -> list:
    """Every compiled specialisation of a ``triton.jit`` function in this process (Triton 3.x caches)."""
    found = []
    for entry in getattr(kernel, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        found += [k for k in cache.values() if hasattr(k, "asm")]
    for cache in getattr(kernel, "cache", {}).values():  # older layout: device -> {key: kernel}
        found += [k for k in cache.values() if hasattr(k, "asm")]
    return list({id(k): k for k in found}.values())


def _describe(compiled) -> str:
    meta = getattr(compiled, "metadata", None)
    fields = {name: getattr(meta, name, None) for name in ("num_warps", "num_stages", "shared")}
    for name in ("n_regs", "n_spills"):
        fields[name] = getattr(compiled, name, None)
    return ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


def dump_ir(output_dir: Path, dtype: torch.dtype = torch.bfloat16) -> list[Path]:
    if not torch.cuda.is_available():
        print("dump-ir: the compiled kernels' TTGIR/PTX exist on a CUDA GPU only; nothing written")
        return []
    n, v = IR_SHAPE
    x = make_logits(n, v, dtype, torch.device("cuda")).requires_grad_(True)
    (gh,) = make_row_grads(n, 1, x.device)
    torch.autograd.grad(ak.entropy(x), x, gh)  # the default launch configs at the headline shape
    torch.cuda.synchronize()
    written = []
    for kernel in (_triton.entropy_fwd_kernel, _triton.entropy_bwd_kernel):
        name = kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel)
        variants = _compiled_variants(kernel)
        parts = [f"// {name} at {n} x {v} {dtype}: {len(variants)} compiled variant(s)"]
        for i, compiled in enumerate(variants):
            parts.append(f"// ===== variant {i}: {_describe(compiled)}")
            for section in _SECTIONS:
                text = compiled.asm.get(section)
                parts.append(f"// ----- {section}\n{text if isinstance(text, str) else '(not available)'}")
        path = Path(output_dir) / f"{name}.asm.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts) + "\n")
        print(f"dump-ir: wrote {path} ({len(variants)} variant(s))")
        written.append(path)
    return written
