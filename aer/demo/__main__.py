"""``python -m aer.demo [--quick] [--output-dir DIR] [--device cpu|cuda] [--seed N] [--steps N] [--threads N]``"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .config import DemoConfig, quick

REPRODUCIBILITY = (
    "Reproducibility: on CPU, the same seed, --threads and torch version on the same CPU type give the same "
    "numbers, to the last digit. Another thread count, torch version or CPU type adds floating-point numbers in "
    "another order: the last digits differ at first, and after a few hundred steps of sampling so can the table. "
    "With --device cuda nothing is promised beyond the same GPU model, and that is not tested."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line, with the defaults and the ``--quick`` settings read from the configuration.

    Args:
        None.
    """
    default, fast = DemoConfig(), quick(DemoConfig())
    parser = argparse.ArgumentParser(
        prog="python -m aer.demo",
        epilog=REPRODUCIBILITY,
        description="GRPO on sorting tasks: no entropy term, fixed coefficients and "
        "AER, compared on held-out accuracy.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smaller run, about a minute on 2 CPU cores: {fast.steps} steps at lr {fast.lr:g}, "
        f"{fast.eval_per_tier} held-out problems per tier, and AER target ratio ρ = {fast.aer_target_ratio:g} "
        f"instead of AER's default {default.aer_target_ratio:g} (so few steps only reach the start of the "
        f"entropy collapse; ρ = {fast.aer_target_ratio:g} puts the target where it crosses)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("demo_output"),
        help="where summary.json, entropy.png, accuracy.png and the warm-start cache go (default: demo_output)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=default.device,
        help=f"where GRPO runs (default: {default.device}); the warm-start always runs on CPU",
    )
    parser.add_argument("--seed", type=int, default=default.seed, help=f"(default: {default.seed})")
    parser.add_argument(
        "--steps",
        type=_positive_int,
        help=f"GRPO steps per arm (default: {default.steps}, or {fast.steps} with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=default.threads,
        help=f"torch CPU threads (default: {default.threads}); the numbers depend on it, see Reproducibility below",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and run the demo.

    Args:
        argv: the arguments after ``python -m aer.demo``; ``--help`` lists them.
    """
    from .run import run_demo  # after parsing, so --help answers without loading torch

    args = parser().parse_args(argv)
    config = replace(DemoConfig(), seed=args.seed, device=args.device, threads=args.threads)
    if args.quick:
        config = quick(config)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    run_demo(config, args.output_dir)


if __name__ == "__main__":
    main()
