"""``python -m benchmarks``: time aer_kernels against PyTorch and its peers, write JSON + PNG, print the table.

python -m benchmarks                       # default shapes, every method, op and mode
python -m benchmarks --quick               # two shapes
python -m benchmarks --shapes 8192x151936 --methods aer_kernels,torch_compile --modes fwd
python -m benchmarks --sweep               # launch-parameter sweep of the kernels (GPU)
python -m benchmarks --ptx-report          # registers, spills, loads, instruction mix (no GPU needed)
python -m benchmarks --dump-ir             # also write the TTGIR/PTX/SASS of the headline launches
python -m benchmarks --readme-table        # Markdown table from the newest results file
python -m benchmarks --linear              # the fused LM-head op instead (benchmarks/bench_linear.py)
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .names import METHOD_NAMES, MODES, OPS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "fp32": "float32",
    "float32": "float32",
}


def _shape(text: str) -> tuple[int, int]:
    try:
        n, v = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxV, e.g. 8192x151936") from None
    if n < 1 or v < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs N >= 1 and V >= 1")
    return n, v


def _list(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
        return items

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="two shapes only (GPU: N in {2048, 8192} x 151936)")
    p.add_argument(
        "--shapes",
        type=lambda t: [_shape(s) for s in t.split(",") if s.strip()],
        help="comma-separated NxV, e.g. 8192x151936,2048x151936",
    )
    p.add_argument("--methods", type=_list(METHOD_NAMES), help=f"comma-separated: {', '.join(METHOD_NAMES)}")
    p.add_argument("--ops", type=_list(OPS), default=list(OPS))
    p.add_argument("--modes", type=_list(MODES), default=list(MODES))
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--budget-s", type=float, help="stop starting new shapes after this many seconds")
    p.add_argument("--sweep", action="store_true", help="sweep LaunchConfig candidates for the kernels (GPU)")
    p.add_argument("--sweep-budget-s", type=float, help="stop the sweep after this many seconds")
    p.add_argument(
        "--ptx-report",
        action="store_true",
        help="compile the kernels for --arch and print registers, spills and the main loops' SASS mix",
    )
    p.add_argument("--ptx-report-all", action="store_true", help="the report for every representative shape")
    p.add_argument("--arch", type=int, default=90, help="compute capability for the report: 80, 90, 100")
    p.add_argument("--dump-ir", action="store_true", help="the report, plus TTGIR/PTX/SASS files in --output-dir")
    p.add_argument("--readme-table", action="store_true", help="print a Markdown table of the newest results")
    p.add_argument(
        "--linear",
        action="store_true",
        help="the fused LM-head op at its default shapes, results in OUTPUT_DIR/linear "
        "(python -m benchmarks.bench_linear --help for its own options)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme_table:
        import json

        from .results import newest, readme_table

        path = newest(args.output_dir)
        if path is None:
            print(f"no results file in {args.output_dir}; run python -m benchmarks first", file=sys.stderr)
            return 1
        print(readme_table(json.loads(path.read_text())))
        return 0
    if args.ptx_report or args.ptx_report_all or args.dump_ir:
        from .ptx_report import report

        report(args.arch, args.ptx_report_all, args.output_dir if args.dump_ir else None)
        return 0
    # A `timeout` stop still writes the results gathered so far (the runs write in `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.linear:
        from . import bench_linear

        budget = ["--budget-s", str(args.budget_s)] if args.budget_s is not None else []
        return bench_linear.main(["--dtype", args.dtype, "--output-dir", str(args.output_dir / "linear"), *budget])
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    if args.sweep:
        from . import sweep

        sweep.run(args.shapes or sweep.SWEEP_SHAPES, dtype, args.output_dir, REPO, args.sweep_budget_s)
        return 0
    from . import suite
    from .methods import default_method_names

    device = suite.bench_device()
    shapes = args.shapes or suite.default_shapes(device, args.quick)
    methods = args.methods or default_method_names(dtype, device)
    suite.run(shapes, args.ops, args.modes, methods, dtype, args.output_dir, REPO, args.budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
