"""The vocab-parallel combine's per-row steps, as Triton kernels against the same math in PyTorch, eager and
compiled: what a rank runs besides its shard's pass and the two all-reduces (``partials`` from the shard's row
statistics, then ``combine`` from the reduced sums), O(N) work that the number of kernel launches decides.

    python -m benchmarks.bench_combine                 # GPU: 8192 and 65536 rows; CPU: 8192 rows, PyTorch only
    python -m benchmarks.bench_combine --rows 8192,32768

Every method's outputs are checked against eager PyTorch before it is timed; ``ops`` counts the aten calls of
one eager step (on a GPU, one kernel launch each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aer_kernels import reference

from . import results
from .timing import median_ms

REPO = Path(__file__).resolve().parent.parent
SHARD_VOCAB = 18992  # 151 936 over 8 ranks
TEMPERATURE = 0.9


def inputs(n: int, device: torch.device, seed: int = 0) -> dict:
    """One shard's row statistics as its forward leaves them, a global row max and the targets (an eighth of
    them in this shard)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, generator=g) * 3 + 10
    log_s = torch.rand(n, generator=g) * 5
    h = log_s - torch.rand(n, generator=g) * 2
    logp = -torch.rand(n, generator=g) * 8
    targets = torch.randint(-7 * SHARD_VOCAB, SHARD_VOCAB, (n,), generator=g)
    row_max = m + torch.rand(n, generator=g) * 2
    cpu = dict(stats=torch.stack((m, log_s), -1), h=h, logp=logp, targets=targets, row_max=row_max)
    return {k: v.to(device) for k, v in cpu.items()}


def step(backend, x: dict, out: dict) -> None:
    """One rank's partials then combine; the all-reduce between them is left out (the sums stand for it)."""
    backend.partials(x["stats"], x["h"], x["logp"], x["targets"], x["row_max"], SHARD_VOCAB, TEMPERATURE, out["sums"])
    backend.combine(x["row_max"], out["sums"], None, out["h"], out["logp"], out["stats"])


def outputs(n: int, device: torch.device) -> dict:
    return dict(
        sums=torch.empty(4, n, device=device),
        h=torch.empty(n, device=device),
        logp=torch.empty(n, device=device),
        stats=torch.empty(n, 2, device=device),
    )


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def eager_op_count(x: dict) -> int:
    out = outputs(x["h"].numel(), x["h"].device)
    with _CountOps() as counter:
        step(reference, x, out)
    return counter.count


def methods(device: torch.device) -> dict:
    compiled = torch.compile(lambda x, out: step(reference, x, out), dynamic=False)
    found = {"torch": lambda x, out: step(reference, x, out), "torch_compile": compiled}
    if device.type == "cuda":
        from aer_kernels import _triton

        found["triton"] = lambda x, out: step(_triton, x, out)
    return found


def run(rows: list[int], device: torch.device, output_dir: Path | None) -> list[dict]:
    doc = results.new_document(
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch.__version__, None, REPO
    )
    print(f"device {doc['device']}, torch {doc['torch']}, commit {doc['commit']}")
    try:
        for n in rows:
            x = inputs(n, device)
            expected = outputs(n, device)
            step(reference, x, expected)
            ops = eager_op_count(x)
            for name, fn in methods(device).items():
                out = outputs(n, device)
                fn(x, out)
                for key in ("h", "logp", "stats"):
                    torch.testing.assert_close(out[key], expected[key], rtol=1e-5, atol=1e-5, equal_nan=True)
                ms = median_ms(lambda fn=fn, x=x, out=out: fn(x, out), device)
                doc["rows"].append(dict(method=name, N=n, ms=ms, eager_ops=ops if name == "torch" else None))
                print(f"  N={n:6d} {name:14s} {ms * 1e3:9.1f} us" + (f"  ({ops} aten ops)" if name == "torch" else ""))
    finally:
        if output_dir is not None:
            path = results.results_path(output_dir, doc, prefix="combine-")
            results.write(path, doc)
            print(f"wrote {path}")
    return doc["rows"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_combine", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda t: [int(s) for s in t.split(",")], help="comma-separated row counts")
    p.add_argument("--output-dir", type=Path, default=None, help="write combine-<card>-<date>.json here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
        print("no CUDA GPU: PyTorch eager and compiled only (the Triton kernels need a GPU to be timed)")
    run(args.rows or ([8192, 65536] if device.type == "cuda" else [8192]), device, args.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
