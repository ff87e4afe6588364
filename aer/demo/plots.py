"""The two pictures: entropy vs step (AER targets as lines) and held-out accuracy vs step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

SMOOTHING = 10  # steps in the trailing mean drawn over each arm's raw per-step entropy
ENTROPY_TICKS = [0.05, 0.1, 0.2, 0.5, 1, 2, 4]


def _trailing_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot_entropy(summaries: dict[str, dict], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for index, (name, summary) in enumerate(summaries.items()):
        colour = f"C{index}"
        entropy = summary["history"]["entropy"]
        axes.plot(entropy, color=colour, alpha=0.25, linewidth=0.8)
        axes.plot(_trailing_mean(entropy, SMOOTHING), color=colour, linewidth=1.8,
                  label=f"{name} ({SMOOTHING}-step mean)")
    # AER arms anchor on the same first batch, so their targets usually coincide: one line per value.
    targets = {(s["target_entropy"], s["target_ratio"]) for s in summaries.values() if "target_entropy" in s}
    for target, ratio in sorted(targets):
        axes.axhline(target, color="black", linestyle="--", linewidth=1.2,
                     label=f"AER target {ratio:g} × H0 = {target:.3f}")
    axes.set_yscale("log")
    axes.set_yticks(ENTROPY_TICKS)
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("GRPO step")
    axes.set_ylabel("token-mean entropy of the rollouts (nats)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy(summaries: dict[str, dict], path: Path, k: int, title: str) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for index, (name, summary) in enumerate(summaries.items()):
        history = summary["history"]
        for axis, metric in zip(axes, ("pass@1", f"pass@{k}")):
            axis.plot(history["eval_steps"], [scores[metric]["all"] for scores in history["eval"]],
                      color=f"C{index}", marker="o", markersize=3, label=name)
    for axis, metric in zip(axes, ("pass@1", f"pass@{k}")):
        axis.set_xlabel("GRPO step")
        axis.set_ylabel(f"held-out {metric}, all tiers")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
