"""The benchmark run: per shape, the copy and read ceilings, then every method x op x mode, checked, then timed."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from . import bench_vocab_parallel, results
from .byte_model import copy_bytes, gbps, minimal_bytes, read_bytes
from .check import check_backward, check_forward
from .data import make_logits, make_targets
from .methods import DTYPE_NAMES, build_methods
from .plot import plot
from .timing import median_ms, peak_extra_bytes

GPU_GRID = [(n, v) for n in (2048, 8192, 32768) for v in (32000, 128256, 151936)]
GPU_SHAPES = list(dict.fromkeys([*results.HEADLINE_SHAPES, *GPU_GRID]))  # headline first: a budget cut keeps them
GPU_QUICK = [(2048, 151936), (8192, 151936)]
CPU_SHAPES = [(64, 1000), (256, 1000), (64, 32000), (256, 32000)]
CPU_QUICK = [(64, 1000), (256, 1000)]
# do_bench windows (ms): long enough for a stable median, short enough for the whole grid in minutes.
WARMUP_MS, REP_MS = 10, 60


def default_shapes(device: torch.device, quick: bool) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return GPU_QUICK if quick else GPU_SHAPES
    return CPU_QUICK if quick else CPU_SHAPES


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device, repo: Path) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return results.new_document(name, torch.__version__, triton_version, repo)


def make_case(method, op: str, mode: str, x: torch.Tensor, y: torch.Tensor, grads):
    """A no-argument callable doing one (op, mode) of ``method``; bwd replays a kept graph."""
    if mode == "fwd":
        return lambda: method.run(op, x, y)
    xg = (x.clone() if method.mutates_input else x.detach()).requires_grad_(True)
    if mode == "bwd":
        outs = method.run(op, xg, y)
        return lambda: torch.autograd.grad(outs, xg, grads, retain_graph=True)[0]
    return lambda: torch.autograd.grad(method.run(op, xg, y), xg, grads)[0]


def _free(device: torch.device, collect: bool = False) -> None:
    """Return cached GPU memory; ``collect`` after a failure, whose traceback keeps tensors in a cycle."""
    if collect:
        gc.collect()  # 0.2 s with torch loaded: not after every case
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _failure(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def measure_ceilings(x: torch.Tensor, device: torch.device) -> dict:
    n, v = x.shape
    out = torch.empty_like(x)
    copy_ms = median_ms(lambda: out.copy_(x), device, warmup_ms=WARMUP_MS, rep_ms=REP_MS)
    read_ms = median_ms(lambda: x.amax(-1), device, warmup_ms=WARMUP_MS, rep_ms=REP_MS)
    es = x.element_size()
    return {
        "N": n,
        "V": v,
        "dtype": DTYPE_NAMES[x.dtype],
        "copy_ms": copy_ms,
        "copy_gbps": gbps(copy_bytes(n, v, es), copy_ms),
        "read_ms": read_ms,
        "read_gbps": gbps(read_bytes(n, v, es), read_ms),
    }


def _print_row(row: dict) -> None:
    peak = "" if row["peak_extra_bytes"] is None else f"  peak +{row['peak_extra_bytes'] / 2**20:.1f} MiB"
    print(
        f"  {row['op']:<35} {row['mode']:<7} {row['method']:<13} {row['N']:>6} x {row['V']:<6} "
        f"{row['ms']:9.3f} ms {row['gbps']:8.1f} GB/s {row['pct_copy']:6.1f}% copy{peak}",
        flush=True,
    )


def bench_method(method, op: str, modes, x, y, device, copy_gbps: float) -> list[dict]:
    """Rows for the modes of ``method`` that pass the correctness check; skips are printed."""
    n, v = x.shape
    wanted = [m for m in modes if m in method.modes]
    if not wanted or op not in method.ops:
        return []
    tag = f"  {op:<35} {method.name}"
    if method.max_elements is not None and x.numel() > method.max_elements:
        print(f"{tag}: skipped at {n} x {v} (N*V > {method.max_elements}, past what it can address)")
        return []
    grads = method.upstream(op, n, device)
    passed = []
    for group, check in (
        (["fwd"], lambda: check_forward(method, op, x, y)),
        (["bwd", "fwd+bwd"], lambda: check_backward(method, op, x, y, grads)),
    ):
        todo = [m for m in wanted if m in group]
        if not todo:
            continue
        try:
            failed = check()
            why = "FAILED THE CORRECTNESS CHECK"
        except Exception as exc:  # a peer or a baseline that cannot run here (out of memory) must not end the run
            failed, why = _failure(exc), "could not run"
        _free(device, collect=bool(failed))
        if failed:
            print(f"{tag} {'/'.join(todo)}: SKIPPED, {why}: {failed}", flush=True)
        else:
            passed += todo
    rows = []
    for mode in passed:
        try:
            case = make_case(method, op, mode, x, y, grads)
            ms = median_ms(case, device, warmup_ms=WARMUP_MS, rep_ms=REP_MS)
            peak = peak_extra_bytes(case, device)
        except Exception as exc:
            print(f"{tag} {mode}: skipped ({_failure(exc)})", flush=True)
            case = None
            _free(device, collect=True)
            continue
        case = None
        _free(device)
        rate = gbps(minimal_bytes(op, mode, n, v, x.element_size()), ms)
        row = {
            "op": op,
            "mode": mode,
            "method": method.name,
            "N": n,
            "V": v,
            "dtype": DTYPE_NAMES[x.dtype],
            "ms": ms,
            "gbps": rate,
            "pct_copy": 100.0 * rate / copy_gbps,
            "peak_extra_bytes": peak,
        }
        _print_row(row)
        rows.append(row)
    return rows


def run(
    shapes, ops, modes, method_names, dtype: torch.dtype, output_dir: Path, repo: Path, budget_s: float | None = None
) -> Path:
    """Benchmark every shape, writing ``<card>-<date>.json`` after each and the PNG at the end."""
    device = bench_device()
    start = time.perf_counter()
    methods, skipped = build_methods(method_names, dtype, device)
    doc = environment(device, repo)
    path = results.results_path(output_dir, doc)
    print(f"device {doc['device']}, torch {doc['torch']}, triton {doc['triton']}, commit {doc['commit']}")
    if device.type == "cpu":
        # CPU shapes are tiny: a thread pool spinning on a shared machine would dominate every figure.
        torch.set_num_threads(1)
        print(
            "no CUDA GPU: aer_kernels runs its PyTorch reference path (or the Triton interpreter under "
            "TRITON_INTERPRET=1); these are CPU figures, kernel figures need a GPU"
        )
    for line in skipped:
        print(line)

    def over_budget(what: str) -> bool:
        if budget_s is None or time.perf_counter() - start <= budget_s:
            return False
        print(f"time budget of {budget_s:.0f} s spent: not measured: {what}")
        return True

    try:
        for k, (n, v) in enumerate(shapes):
            if over_budget(", ".join(f"{a}x{b}" for a, b in shapes[k:])):
                break
            x = make_logits(n, v, dtype, device)
            y = make_targets(n, v, device)
            ceiling = measure_ceilings(x, device)
            doc["ceilings"].append(ceiling)
            print(
                f"{n} x {v} {DTYPE_NAMES[dtype]}: copy {ceiling['copy_ms']:.3f} ms = {ceiling['copy_gbps']:.1f} GB/s,"
                f" read (amax) {ceiling['read_ms']:.3f} ms = {ceiling['read_gbps']:.1f} GB/s",
                flush=True,
            )
            shape_rows = []
            for i, method in enumerate(methods):
                if over_budget(f"{', '.join(m.name for m in methods[i:])} at {n}x{v}, and later shapes"):
                    break
                for op in ops:
                    new_rows = bench_method(method, op, modes, x, y, device, ceiling["copy_gbps"])
                    doc["rows"] += new_rows
                    shape_rows += new_rows
                results.write(path, doc)
            for (name, _, _, mode), ratio in bench_vocab_parallel.ratios(shape_rows).items():
                print(
                    f"  {name} {mode}: {bench_vocab_parallel.OP} costs {ratio:.3f}x "
                    f"{bench_vocab_parallel.SINGLE_OP} (world size 1)"
                )
            del x, y
            _free(device)
    finally:
        if doc["ceilings"]:
            doc["copy_gbps"] = max(doc["ceilings"], key=lambda c: c["N"] * c["V"])["copy_gbps"]
        results.write(path, doc)
        try:
            png = plot(doc, path.with_suffix(".png"))
        except Exception as exc:  # an old matplotlib must not cost the results file
            png = None
            print(f"plot: failed ({_failure(exc)})")
        print(f"wrote {path}" + (f" and {png}" if png else ""))
    return path
