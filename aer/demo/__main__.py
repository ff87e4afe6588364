"""``python -m aer.demo [--quick | --study] ...``: ``--help`` lists the options."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from .train import Config, quick

DEFAULT_RATIO = 0.5  # AER's default, and the study's choice: see the README's demo section
STUDY_RATIOS = (0.5, 0.6, 0.7, 0.8)
STUDY_SEEDS = 5
DEMO_SEEDS = 3  # the fewest that measure training noise; --quick runs 1
REPRODUCIBILITY = (
    "Reproducibility: on CPU, the same seed, --threads and torch build give the same numbers to the last digit, "
    "whatever --jobs (every run is its own process, or runs alone). Another thread count, torch build or CPU type "
    "adds floating-point numbers in another order, and after some steps of sampling the table can differ. "
    "With --device cuda nothing is promised beyond the same GPU model, and that is not tested."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line, its defaults read from ``Config``."""
    default, fast = Config(), quick(Config())
    parser = argparse.ArgumentParser(
        prog="python -m aer.demo",
        epilog=REPRODUCIBILITY,
        description="GRPO on countdown problems: no entropy term, a fixed coefficient and AER, compared on "
        "held-out pass@k; --study repeats that over seeds and target ratios and says whether the difference holds.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"a small run of the same pipeline for the tests: {fast.steps} steps, {fast.eval_per_tier} held-out "
        f"problems per tier, {fast.warm_start_steps} warm-start steps",
    )
    mode.add_argument(
        "--study",
        action="store_true",
        help=f"the experiment: every arm, AER at each --target-ratios, on --seeds seeds (default {STUDY_SEEDS} here), "
        f"--jobs processes at a time; writes study.md/.json/.png (default ratios {STUDY_RATIOS})",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        help=f"number of seeds, counting up from --seed (default: {DEMO_SEEDS}; {STUDY_SEEDS} with --study, 1 with "
        "--quick); each is a replicate of the whole experiment: its own problems, warm start and training draws",
    )
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default: 0)")
    parser.add_argument(
        "--target-ratio",
        type=_ratio,
        default=DEFAULT_RATIO,
        help=f"AER's ρ (target = ρ × initial entropy) in the run and of the uniform-weighting arm in the study "
        f"(default: {DEFAULT_RATIO})",
    )
    parser.add_argument(
        "--target-ratios",
        type=_ratio,
        nargs="+",
        help=f"with --study: the ρ values swept (default: {' '.join(map(str, STUDY_RATIOS))})",
    )
    parser.add_argument("--jobs", type=_positive_int, default=2, help="processes at a time (default: 2)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=default.threads,
        help=f"torch CPU threads per process (default: {default.threads}); the numbers depend on it",
    )
    parser.add_argument("--steps", type=_positive_int, help=f"GRPO steps per run (default: {default.steps})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where GRPO runs (default: cpu)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("demo_output"),
        help="where study.md, study.json, runs.json, study.png, entropy.png and the warm-start cache go "
        "(default: demo_output)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default: the command line), run, write and print the results; returns the JSON record."""
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.target_ratios and not args.study:
        command_line.error("argument --target-ratios: only with --study (a single run uses --target-ratio)")
    from . import study  # after parsing, so --help answers without loading torch

    config = replace(Config(), device=args.device, threads=args.threads)
    config = quick(config) if args.quick else config
    config = replace(config, steps=args.steps) if args.steps else config
    default_seeds = STUDY_SEEDS if args.study else 1 if args.quick else DEMO_SEEDS
    seeds = list(range(args.seed, args.seed + (args.seeds or default_seeds)))
    ratios = tuple(args.target_ratios or STUDY_RATIOS) if args.study else (args.target_ratio,)
    arm_list = study.arms(ratios, args.target_ratio)
    runs = len(seeds) * len(arm_list)
    print(
        f"{runs} runs ({len(arm_list)} arms × {len(seeds)} seed(s)) of {config.steps} GRPO steps on countdown "
        f"{config.tiers}, {args.jobs} process(es) of {config.threads} torch thread(s) each, {config.device}: "
        f"about {study.estimate_seconds(config, runs, len(seeds), args.jobs) / 60:.0f} min on an idle 2-core CPU, "
        "longer on a busy one."
    )
    started = time.perf_counter()
    results = study.run(config, arm_list, seeds, args.jobs, args.output_dir)
    record = study.report(config, results, args.jobs, args.output_dir, time.perf_counter() - started)
    print(
        f"\nWrote study.md, study.json, runs.json, study.png, entropy.png into {args.output_dir}/ in "
        f"{record['wall_seconds']:.0f} s."
    )
    return record


if __name__ == "__main__":
    main()
