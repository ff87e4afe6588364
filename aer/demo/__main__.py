"""``python -m aer.demo [--quick] [--output-dir DIR] [--device cpu|cuda] [--seed N] [--steps N]``"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .config import DemoConfig, quick
from .run import run_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute on 2 CPU cores")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="GRPO steps per arm (default: 300, or 50 with --quick)")
    args = parser.parse_args(argv)
    config = replace(DemoConfig(), seed=args.seed, device=args.device)
    if args.quick:
        config = quick(config)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    run_demo(config, args.output_dir)


if __name__ == "__main__":
    main()
