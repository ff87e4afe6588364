"""``summary.json``, the printed table and the verdict, all computed from the arms' logs."""

from __future__ import annotations

import math

from .arms import AdaptiveCoefficient, FixedCoefficient
from .config import DemoConfig
from .evaluate import pass_at_k
from .train import ArmLog

FINAL_WINDOW = 0.1  # "final" entropy: mean over the last 10% of steps (one step's batch is noisy)


def final_entropy(entropy: list[float]) -> float:
    """Mean of the last ``FINAL_WINDOW`` of the steps' entropies (at least one step).

    Args:
        entropy: one arm's token-mean rollout entropy per step.
    """
    window = max(1, round(FINAL_WINDOW * len(entropy)))
    return sum(entropy[-window:]) / window


def arm_summary(arm: FixedCoefficient | AdaptiveCoefficient, log: ArmLog, tiers: list[int], k: int) -> dict:
    """Every figure of one arm: entropies, final held-out pass@1 / pass@k, and the per-step history.

    Args:
        arm: the arm that ran.
        log: its per-step log from ``train_arm``.
        tiers: the tier of each held-out problem, in ``tasks.held_out`` order.
        k: the k of pass@k.
    """
    summary = {
        "steps": len(log.entropy),
        "initial_entropy": log.entropy[0],
        "final_entropy": final_entropy(log.entropy),
        "final_coefficient": log.coefficient[-1],
        **pass_at_k(log.eval_correct[-1], tiers, k),
        "history": {
            "entropy": log.entropy,
            "coefficient": log.coefficient,
            "reward": log.reward,
            "eval_steps": log.eval_steps,
            "eval": [pass_at_k(correct, tiers, k) for correct in log.eval_correct],
            "eval_standard_error": [standard_errors(correct, k) for correct in log.eval_correct],
        },
    }
    if isinstance(arm, AdaptiveCoefficient):
        summary["target_ratio"] = arm.controller.config.target_ratio
        summary["anchored_initial_entropy"] = arm.initial_entropy
        summary["target_entropy"] = arm.target_entropy
        summary["final_entropy_over_target"] = summary["final_entropy"] / arm.target_entropy
    return summary


def _problem_scores(correct: list[int], k: int, metric: str) -> list[float]:
    """Per held-out problem with ``c`` of ``k`` samples correct: ``c / k`` for pass@1, ``1[c > 0]`` for pass@k."""
    return [c / k if metric == "pass@1" else float(c > 0) for c in correct]


def _mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def standard_errors(correct: list[int], k: int) -> dict[str, float]:
    """Standard error over the held-out problems of one arm's pass@1 and pass@k (all tiers), for error bars.

    Args:
        correct: per held-out problem, how many of its ``k`` samples were right.
        k: samples per problem.
    """
    return {
        metric: _mean_and_standard_error(_problem_scores(correct, k, metric))[1] for metric in ("pass@1", f"pass@{k}")
    }


def _paired_difference(a: list[int], b: list[int], k: int, metric: str) -> tuple[float, float]:
    """Mean over problems of ``score_a - score_b`` and its standard error (paired: the same problems and
    sampling seeds, so it is tighter than the two arms' own standard errors combined)."""
    return _mean_and_standard_error(
        [x - y for x, y in zip(_problem_scores(a, k, metric), _problem_scores(b, k, metric))]
    )


def verdict(logs: dict[str, ArmLog], config: DemoConfig, contender: str = "aer") -> list[str]:
    """One line per (baseline, metric): AER's held-out difference with its paired standard error, called a win or
    a loss only beyond 2 standard errors; then an overall line.

    Args:
        logs: every arm's log, by name; arms whose name does not start with "aer" are the baselines.
        config: the run's settings (for pass_k).
        contender: the arm compared with each baseline.
    """
    lines, not_beaten = [], []
    for baseline in (name for name in logs if not name.startswith("aer")):
        for metric in ("pass@1", f"pass@{config.pass_k}"):
            diff, error = _paired_difference(
                logs[contender].eval_correct[-1], logs[baseline].eval_correct[-1], config.pass_k, metric
            )
            outcome = "better" if diff > 2 * error else "worse" if diff < -2 * error else "no clear difference"
            lines.append(f"{contender} vs {baseline:<12} {metric:<7} {diff:+.3f} ± {error:.3f}  {outcome}")
            if metric == "pass@1" and outcome != "better":
                not_beaten.append(baseline)
    if not_beaten:
        lines.append(f"Verdict: AER does NOT beat {', '.join(not_beaten)} on held-out pass@1 in this run.")
    else:
        lines.append("Verdict: AER beats no entropy and both fixed coefficients on held-out pass@1 in this run.")
    return lines


def table(summaries: dict[str, dict], warm_start: dict, k: int) -> str:
    """Per arm: first-step and final entropy, final entropy / target (AER), held-out pass@1 and pass@k.

    Args:
        summaries: ``arm_summary`` per arm name, in row order.
        warm_start: ``pass_at_k`` of the warm-started policy, the first row.
        k: the k of pass@k.
    """
    tiers = list(warm_start["pass@1"])  # tier1, tier2, ..., all
    labels = [tier.replace("tier", "t") for tier in tiers]
    header = (
        f"{'arm':<13}{'H_init':>7}{'H_final':>8}{'H/H*':>6}{'coef':>7}  "
        + " ".join(f"{'p@1 ' + label:>8}" for label in labels)
        + "  "
        + " ".join(f"{f'p@{k} ' + label:>8}" for label in labels)
    )
    rows = [header, "-" * len(header)]

    def scores(summary: dict) -> str:
        return (
            " ".join(f"{summary['pass@1'][t]:>8.3f}" for t in tiers)
            + "  "
            + " ".join(f"{summary[f'pass@{k}'][t]:>8.3f}" for t in tiers)
        )

    rows.append(f"{'warm-start':<13}{'':>7}{'':>8}{'':>6}{'':>7}  " + scores(warm_start))
    for name, s in summaries.items():
        ratio = f"{s['final_entropy_over_target']:>6.2f}" if "target_entropy" in s else f"{'-':>6}"
        rows.append(
            f"{name:<13}{s['initial_entropy']:>7.3f}{s['final_entropy']:>8.3f}{ratio}"
            f"{s['final_coefficient']:>7.3f}  " + scores(s)
        )
    return "\n".join(rows)
