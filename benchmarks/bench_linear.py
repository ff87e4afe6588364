"""Log-probs and entropy from the hidden states and the LM-head weight: the fused op against the bare GEMMs of
the same run, the materialised logits, and the peers.

    python -m benchmarks.bench_linear                              # GPU: the six shapes below; CPU: two small ones
    python -m benchmarks --linear                                  # the same
    python -m benchmarks.bench_linear --shapes 8192x4096x151936 --workspaces-mib 128,256 --modes fwd+bwd

Methods, each timed fwd (inputs that need no gradient), bwd (one kept graph replayed) and fwd+bwd:

    gemms          the GEMMs the op cannot avoid, the ceiling: h @ W.T forward; the recomputed logits, dW and dh
                   backward (3 GEMMs); all 4 for fwd+bwd
    materialised   x = h @ W.T, then aer_kernels.logprobs_and_entropy(x): the [N, V] logits and their gradient
    fused_<M>MiB   aer_kernels.linear_logprobs_and_entropy(h, W, y, workspace_bytes=M MiB)
    verl           verl's linear_cross_entropy (log-prob and entropy; its Triton kernels need CUDA)
    liger          Liger's fused linear cross-entropy (a mean loss; it computes the gradient in its forward,
                   so fwd+bwd only)

Reported per row: median ms; TF/s = the bare GEMMs' FLOPs for that mode (2, 6, 8 x N·D·V) over the time, so
every method is measured against the same work; the ratio to the bare GEMMs of the same run (target <= 1.08);
the peak extra memory (the CUDA allocator's peak; on a CPU, the peak of the tensors the call allocates, from
memory.py). Every method is checked against float64 on the first rows before it is timed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import aer_kernels as ak
from aer_kernels.testing import check_close_to_truth

from . import results
from .data import make_row_grads
from .memory import peak_bytes
from .names import MODES
from .timing import median_ms, peak_extra_bytes

REPO = Path(__file__).resolve().parent.parent
GPU_SHAPES = [
    (8192, 4096, 151936),
    (8192, 3584, 152064),
    (16384, 2560, 151936),
    (8192, 8192, 128256),
    (2048, 4096, 151936),
    (65536, 4096, 151936),
]
CPU_SHAPES = [(256, 64, 4096), (512, 128, 8192)]
GPU_WORKSPACES_MIB = (128, 256, 512)
CPU_WORKSPACES_MIB = (1, 4)
GEMM_COUNT = {"fwd": 1, "bwd": 3, "fwd+bwd": 4}
CHECK_ROWS = 64
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPES.update(bfloat16=torch.bfloat16, float16=torch.float16, float32=torch.float32)  # python -m benchmarks names
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
WARMUP_MS, REP_MS = 10, 60


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable  # (h, W, y) -> outputs, differentiable with respect to h and W
    modes: tuple = MODES
    loss_only: bool = False  # outputs a scalar mean cross-entropy, not (logp, H)


def _fused(workspace_mib: int) -> Method:
    def run(h, w, y):
        return ak.linear_logprobs_and_entropy(h, w, y, workspace_bytes=workspace_mib << 20)

    return Method(f"fused_{workspace_mib}MiB", run)


def _materialised(h, w, y):
    return ak.logprobs_and_entropy(h @ w.t(), y)


def _verl() -> Method:
    fn = importlib.import_module("verl.utils.kernel.linear_cross_entropy").linear_cross_entropy
    return Method("verl", lambda h, w, y: tuple(fn(h, w, y, 1.0, "none")))  # (log-prob of y, entropy)


def _liger() -> Method:
    fn = importlib.import_module("liger_kernel.transformers.functional").liger_fused_linear_cross_entropy

    def run(h, w, y):
        out = fn(h, w, y)
        out = getattr(out, "loss", out)
        return (out[0] if isinstance(out, tuple) else out,)

    return Method("liger", run, modes=("fwd+bwd",), loss_only=True)


PEERS = {"verl": ("verl", _verl), "liger": ("liger_kernel", _liger)}


def build_methods(workspaces_mib, device: torch.device) -> tuple[list[Method], list[str]]:
    """The methods that can run here and one line per peer skipped, saying why."""
    methods = [Method("materialised", _materialised), *(_fused(m) for m in workspaces_mib)]
    skipped = []
    for name, (package, make) in PEERS.items():
        if device.type != "cuda":
            skipped.append(f"{name}: skipped (its Triton kernels need a CUDA GPU)")
            continue
        try:
            methods.append(make())
        except (ImportError, AttributeError) as exc:
            skipped.append(f"{name}: skipped ({package} not installed or without this entry point: {exc})")
    return methods, skipped


def _formula(h, w, y, grads, loss_only: bool, dtype: torch.dtype):
    """Outputs and ``dh`` of the plain PyTorch math, logits and GEMMs in ``dtype`` and the rest in fp32 (or
    float64). In float64 (the truth) ``W`` is converted a slice at a time: a float64 copy of it may not fit."""
    slices = [slice(i, i + 8192) for i in range(0, w.shape[0], 8192)] if dtype == torch.float64 else [slice(None)]
    hd = h.to(dtype)
    z = torch.cat([hd @ w[s].to(dtype).t() for s in slices], -1).requires_grad_(True)
    zf = z if dtype == torch.float64 else z.float()
    if loss_only:
        outs = (F.cross_entropy(zf, y),)
    else:
        lse = torch.logsumexp(zf, -1)
        outs = (zf.gather(-1, y[:, None]).squeeze(-1) - lse, lse - (torch.softmax(zf, -1) * zf).sum(-1))
    dz = torch.autograd.grad(outs, z, [g.to(zf.dtype) for g in grads[: len(outs)]])[0]
    dh = sum(dz[:, s] @ w[s].to(dtype) for s in slices)
    return [o.detach() for o in outs], dh


def check(method: Method, h, w, y) -> str | None:
    """None when the method's outputs and ``dh`` on the first rows pass the tolerance rule, else what failed."""
    h, y = h[:CHECK_ROWS], y[:CHECK_ROWS]
    grads = upstream(method, h.shape[0], h.device)
    exact = _formula(h, w, y, grads, method.loss_only, torch.float64)
    pytorch = _formula(h, w, y, grads, method.loss_only, h.dtype)
    hg = h.detach().requires_grad_(True)
    outs = method.run(hg, w, y)
    dh = torch.autograd.grad(outs, hg, grads[: len(outs)])[0]
    for what, got, e, b in [*zip(("out0", "out1"), outs, exact[0], pytorch[0]), ("dh", dh, exact[1], pytorch[1])]:
        # dh relative to its largest value, as the tests hold it: a GEMM product, recomputed logits in its input
        failed = check_close_to_truth(got, e, b, h.dtype, f"{method.name} {what}", relative=what == "dh")
        if failed:
            return failed
    return None


def upstream(method: Method, n: int, device) -> tuple:
    return (torch.ones((), device=device),) if method.loss_only else make_row_grads(n, 2, device)


def gemm_case(mode: str, h, w) -> Callable:
    """The bare GEMMs of ``mode``: what any implementation of the op must compute."""

    def forward():
        return torch.mm(h, w.t())

    def backward():
        x = torch.mm(h, w.t())  # the recomputed logits, standing in for their gradient
        return torch.mm(x.t(), h), torch.mm(x, w)

    return {"fwd": forward, "bwd": backward, "fwd+bwd": lambda: (forward(), backward())}[mode]


def method_case(method: Method, mode: str, h, w, y, grads) -> Callable:
    if mode == "fwd":
        return lambda: method.run(h, w, y)
    hg, wg = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
    if mode == "bwd":
        outs = method.run(hg, wg, y)
        return lambda: torch.autograd.grad(outs, (hg, wg), grads[: len(outs)], retain_graph=True)
    return lambda: torch.autograd.grad(method.run(hg, wg, y), (hg, wg), grads)


def _measure(case: Callable, device: torch.device) -> tuple[float, int]:
    ms = median_ms(case, device, warmup_ms=WARMUP_MS, rep_ms=REP_MS)
    peak = peak_extra_bytes(case, device) if device.type == "cuda" else peak_bytes(case)
    return ms, peak


def _row(name, mode, n, d, v, dtype, ms, peak, gemm_ms) -> dict:
    flops = 2 * GEMM_COUNT[mode] * n * d * v
    return {
        "method": name,
        "mode": mode,
        "N": n,
        "D": d,
        "V": v,
        "dtype": dtype,
        "ms": ms,
        "tflops": flops / ms / 1e9,
        "vs_gemms": ms / gemm_ms,
        "peak_extra_bytes": peak,
    }


def _print_row(r: dict) -> None:
    print(
        f"  {r['method']:<14} {r['mode']:<8} {r['N']:>6} x {r['D']:<5} x {r['V']:<7} {r['ms']:10.3f} ms "
        f"{r['tflops']:8.2f} TF/s {r['vs_gemms']:7.3f}x gemms  peak +{r['peak_extra_bytes'] / 2**20:9.1f} MiB",
        flush=True,
    )


def inputs(n, d, v, dtype, device, seed=0):
    """Hidden states and a weight whose logits have a realistic spread (std ~4), targets."""
    gen = torch.Generator(device).manual_seed(seed)
    h = torch.randn(n, d, device=device, generator=gen).to(dtype)
    w = (torch.randn(v, d, device=device, generator=gen) * (4.0 / d**0.5)).to(dtype)
    y = torch.randint(0, v, (n,), device=device, generator=gen)
    return h, w, y


def run(shapes, modes, workspaces_mib, dtype: torch.dtype, output_dir: Path | None, budget_s=None) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods, skipped = build_methods(workspaces_mib, device)
    doc = results.new_document(
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch.__version__,
        _triton_version(),
        REPO,
    )
    print(f"device {doc['device']}, torch {doc['torch']}, triton {doc['triton']}, commit {doc['commit']}")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a thread pool spinning on a shared machine would dominate CPU figures
        print("no CUDA GPU: the reference row kernels and CPU GEMMs at small sizes; GPU figures need a GPU")
    for line in skipped:
        print(line)
    name = _NAMES[dtype]
    start = time.perf_counter()
    try:
        for n, d, v in shapes:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                print(f"time budget of {budget_s:.0f} s spent: {n}x{d}x{v} and later shapes not measured")
                break
            h, w, y = inputs(n, d, v, dtype, device)
            print(f"{n} x {d} x {v} {name}:")
            gemm_ms = {}
            for mode in modes:
                ms, peak = _measure(gemm_case(mode, h, w), device)
                gemm_ms[mode] = ms
                doc["rows"].append(_row("gemms", mode, n, d, v, name, ms, peak, ms))
                _print_row(doc["rows"][-1])
            for method in methods:
                failed = _safely(check, method, h, w, y)
                if failed:
                    print(f"  {method.name}: SKIPPED, {failed}", flush=True)
                    continue
                grads = upstream(method, n, device)
                for mode in (m for m in modes if m in method.modes):
                    try:
                        ms, peak = _measure(method_case(method, mode, h, w, y, grads), device)
                    except Exception as exc:  # out of memory where the materialised logits do not fit
                        print(f"  {method.name} {mode}: skipped ({_failure(exc)})", flush=True)
                        _free(device)
                        continue
                    doc["rows"].append(_row(method.name, mode, n, d, v, name, ms, peak, gemm_ms[mode]))
                    _print_row(doc["rows"][-1])
                    _free(device)
            del h, w, y
            _free(device)
    finally:
        if output_dir is not None:
            path = results.results_path(output_dir, doc, prefix="linear-")
            results.write(path, doc)
            print(f"wrote {path}")
    return doc["rows"]


def _failure(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def _safely(check_fn, *args) -> str | None:
    try:
        failed = check_fn(*args)
    except Exception as exc:  # a peer that cannot run here must not end the run
        return f"could not run: {_failure(exc)}"
    return f"FAILED THE CORRECTNESS CHECK: {failed}" if failed else None


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _shape(text: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxDxV, e.g. 8192x4096x151936") from None
    if min(n, d, v) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs N, D, V >= 1")
    return n, d, v


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of MiB") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more sizes >= 1 MiB")
    return values


def _modes(text: str) -> list[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values or set(values) - set(MODES):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(MODES)}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_linear",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shapes",
        type=lambda t: [_shape(s) for s in t.split(",") if s.strip()],
        help="comma-separated NxDxV (default: the six GPU shapes, or two small ones on a CPU)",
    )
    p.add_argument("--workspaces-mib", type=_ints, help="the fused op's workspaces (default 128,256,512; CPU 1,4)")
    p.add_argument("--modes", type=_modes, default=list(MODES))
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=REPO / "benchmarks" / "results" / "linear",
        help="where linear-<card>-<date>.json goes (apart from the entropy suite's results)",
    )
    p.add_argument("--budget-s", type=float, help="stop starting new shapes after this many seconds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    shapes = args.shapes or (GPU_SHAPES if on_gpu else CPU_SHAPES)
    workspaces = args.workspaces_mib or (GPU_WORKSPACES_MIB if on_gpu else CPU_WORKSPACES_MIB)
    run(shapes, args.modes, workspaces, _DTYPES[args.dtype], args.output_dir, args.budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
