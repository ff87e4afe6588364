"""Launch-parameter sweep of the aer_kernels forward and backward kernels at the target shapes.

Calls the internal launchers with explicit ``LaunchConfig``s, checks each config's output on a few
rows against float64, and reports the fastest next to what ``launch_config`` picks today. A staged
search (warps x unroll, i.e. bytes in flight per program, then row splits for the two best) keeps it
to minutes; ``budget_s`` cuts it short, keeping what was measured.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

from aer_kernels import _triton, testing
from aer_kernels._config import LaunchConfig, launch_config, make_config
from aer_kernels._layout import row_layout

from . import results
from .byte_model import gbps, minimal_bytes
from .check import check_rows
from .data import make_logits, make_row_grads
from .methods import DTYPE_NAMES
from .suite import bench_device, environment, measure_ceilings
from .timing import median_ms

SWEEP_SHAPES = list(results.HEADLINE_SHAPES)
WARPS = (2, 4, 8, 16)
UNROLLS = (1, 2, 4, 8)
SPLITS = (1, 2, 4, 8, 16, 32)


class _Shape:
    """One shape's buffers, float64 truth on the checked rows, and a timer for either kernel."""

    def __init__(self, n: int, v: int, dtype: torch.dtype, device: torch.device):
        self.n, self.v, self.device = n, v, device
        self.x = make_logits(n, v, dtype, device)
        self.layout = row_layout(self.x)
        self.h, self.stats = torch.empty(n, device=device), torch.empty(n, 2, device=device)
        (self.gh,) = make_row_grads(n, 1, device)
        self.grad = torch.empty_like(self.x)
        self.idx = torch.tensor(check_rows(n), device=device)
        # Each candidate is held to the tests' rule on the checked rows: float64 truth, PyTorch in the dtype.
        rows, gh = self.x[self.idx], self.gh[self.idx]
        _, self.h64, self.g64 = testing.truth(rows, grad_h=gh)
        _, self.h_pytorch, self.g_pytorch = testing.formula(rows, None, 1.0, None, grad_h=gh)
        _triton.forward(self.x, self.layout, None, None, 1.0, self.h, None, self.stats)  # for the backward

    def launcher(self, kernel: str, cfg: LaunchConfig):
        if kernel == "fwd":
            h, stats = torch.empty_like(self.h), torch.empty_like(self.stats)
            return lambda: _triton.forward(self.x, self.layout, None, None, 1.0, h, None, stats, config=cfg), h
        return (
            lambda: _triton.backward(
                self.x,
                self.layout,
                self.grad,
                self.layout,
                None,
                None,
                self.stats,
                self.h,
                self.gh,
                None,
                1.0,
                config=cfg,
            ),
            self.grad,
        )

    def error(self, kernel: str, out: torch.Tensor) -> str | None:
        if kernel == "fwd":
            return testing.check_close_to_truth(out[self.idx], self.h64, self.h_pytorch, self.x.dtype, "H")
        return testing.check_close_to_truth(
            out[self.idx], self.g64, self.g_pytorch, self.x.dtype, "gradient", relative=True
        )


def _measure(shape: _Shape, kernel: str, cfg: LaunchConfig, copy_gbps: float) -> dict:
    row = {
        "kernel": kernel,
        "N": shape.n,
        "V": shape.v,
        "dtype": DTYPE_NAMES[shape.x.dtype],
        **cfg._asdict(),
        "block_v": cfg.block_v,
    }
    try:
        run, out = shape.launcher(kernel, cfg)
        run()
        failed = shape.error(kernel, out)
        if failed:
            return {**row, "error": failed}
        ms = median_ms(run, shape.device, warmup_ms=5, rep_ms=25)
    except Exception as exc:  # a config the compiler refuses (shared memory, registers) is a result too
        return {**row, "error": f"{type(exc).__name__}: {str(exc).strip()[:160]}"}
    mode = "fwd" if kernel == "fwd" else "bwd"
    rate = gbps(minimal_bytes("entropy", mode, shape.n, shape.v, shape.x.element_size()), ms)
    return {**row, "ms": ms, "gbps": rate, "pct_copy": 100.0 * rate / copy_gbps}


def _staged_candidates(default: LaunchConfig, n: int, v: int, elem_size: int, num_sms: int, best):
    """Yield configs stage by stage; ``best(k)`` gives the k fastest measured so far."""
    for warps, unroll in itertools.product(WARPS, UNROLLS):
        yield make_config(v, elem_size, warps, unroll, default.splits)
    splits = SPLITS if n < 8 * num_sms else SPLITS[:2]  # more programs per row only help when rows are few
    for cfg in best(2):
        for s in splits:
            yield make_config(v, elem_size, cfg.num_warps, cfg.unroll, s)


def run(shapes, dtype: torch.dtype, output_dir: Path, repo: Path, budget_s: float | None = None) -> Path | None:
    from aer_kernels._validate import interpreter_enabled

    device = bench_device()
    if device.type != "cuda" and not interpreter_enabled():
        print(
            "sweep: the launch sweep times the Triton kernels and needs a CUDA GPU "
            "(TRITON_INTERPRET=1 runs it on a CPU as a dry run, timings meaningless)"
        )
        return None
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    doc = environment(device, repo)
    doc.update(num_sms=num_sms, results=[], default=[], best=[])
    path = results.results_path(output_dir, doc, prefix="sweep-")
    start = time.perf_counter()

    def over() -> bool:
        return budget_s is not None and time.perf_counter() - start > budget_s

    try:
        for n, v in shapes:
            if over():
                break
            shape = _Shape(n, v, dtype, device)
            copy_gbps = measure_ceilings(shape.x, device)["copy_gbps"]
            for kernel in ("fwd", "bwd"):
                default = launch_config(n, v, shape.x.element_size(), num_sms)
                measured: dict[LaunchConfig, dict] = {default: _measure(shape, kernel, default, copy_gbps)}

                def best(k, measured=measured):
                    ok = sorted((r["ms"], cfg) for cfg, r in measured.items() if "ms" in r)
                    return [cfg for _, cfg in ok[:k]]

                for cfg in _staged_candidates(default, n, v, shape.x.element_size(), num_sms, best):
                    if over():
                        print(f"sweep: time budget of {budget_s:.0f} s spent")
                        break
                    if cfg not in measured:
                        measured[cfg] = _measure(shape, kernel, cfg, copy_gbps)
                doc["results"] += measured.values()
                doc["default"].append(measured[default])
                if best(1):
                    doc["best"].append(measured[best(1)[0]])
                _report(kernel, n, v, measured, default, best)
            del shape
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.write(path, doc)
    finally:
        results.write(path, doc)
        print(f"wrote {path}")
    return path


def _fmt(cfg: LaunchConfig, row: dict) -> str:
    what = (
        f"warps={cfg.num_warps} unroll={cfg.unroll} block_v={cfg.block_v} splits={cfg.splits} split_len={cfg.split_len}"
    )
    if "ms" not in row:
        return f"{what}: {row['error']}"
    return f"{what}: {row['ms']:.4f} ms, {row['gbps']:.0f} GB/s, {row['pct_copy']:.1f}% of copy"


def _report(kernel, n, v, measured, default, best) -> None:
    print(f"sweep {kernel} {n} x {v}: {len(measured)} configs")
    failed = [(cfg, r) for cfg, r in measured.items() if "ms" not in r]
    for cfg, row in failed:
        print(f"  failed   {_fmt(cfg, row)}")
    print(f"  default  {_fmt(default, measured[default])}")
    for cfg in best(3):
        print(f"  best     {_fmt(cfg, measured[cfg])}")
