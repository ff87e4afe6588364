"""The two pictures: entropy and AER's α vs step, and held-out accuracy vs step with standard errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

SMOOTHING = 10  # steps in the trailing mean drawn over each arm's raw per-step entropy
ENTROPY_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 4]
BASELINE = "no-entropy"
# An arm whose final held-out pass@1 falls below this fraction of its first one has collapsed: it is drawn,
# but the accuracy axes are scaled to the other arms, whose differences are the story.
COLLAPSED_BELOW = 0.5


def _trailing_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def _is_aer(summary: dict) -> bool:
    return "target_entropy" in summary


def save(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG and free it.

    Args:
        figure: from ``entropy_figure`` or ``accuracy_figure``.
        path: the file to write.
    """
    figure.savefig(path, dpi=120)
    plt.close(figure)


def entropy_figure(summaries: dict[str, dict], title: str) -> Figure:
    """Top: each arm's per-step entropy (faint) and its trailing mean, with the AER target(s). Bottom: AER's α
    per step, beside the fixed arms' constant coefficients.

    Args:
        summaries: ``report.arm_summary`` per arm name, in legend order.
        title: the figure's title.
    """
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for index, (name, summary) in enumerate(summaries.items()):
        colour = f"C{index}"
        history = summary["history"]
        top.plot(history["entropy"], color=colour, alpha=0.2, linewidth=0.7, zorder=1)
        # Until α first moves, the AER arms repeat no-entropy step for step: dashed and on top, all stay visible.
        style = {"linestyle": (0, (4, 2)), "zorder": 4} if name == BASELINE else {"zorder": 3}
        top.plot(
            _trailing_mean(history["entropy"], SMOOTHING),
            color=colour,
            linewidth=1.8,
            label=f"{name} ({SMOOTHING}-step mean)",
            **style,
        )
        if _is_aer(summary):
            bottom.plot(history["coefficient"], color=colour, linewidth=1.6, label=f"{name}: α")
        elif summary["final_coefficient"] > 0:
            bottom.axhline(
                summary["final_coefficient"], color=colour, linestyle=":", linewidth=1.2, label=f"{name}: fixed λ"
            )
    # AER arms anchor on the same first batch, so their targets usually coincide: one line per value.
    targets = {(s["target_entropy"], s["target_ratio"]) for s in summaries.values() if _is_aer(s)}
    for target, ratio in sorted(targets):
        top.axhline(
            target,
            color="black",
            linestyle=":",
            linewidth=1.4,
            zorder=2,
            label=f"AER target {ratio:g} × H0 = {target:.3f}",
        )
    top.set_yscale("log")
    drawn = [h for s in summaries.values() for h in s["history"]["entropy"] if h > 0] + [t for t, _ in targets]
    low, high = min(drawn) / 1.15, max(drawn) * 1.15
    top.set_yticks([tick for tick in ENTROPY_TICKS if low <= tick <= high])
    top.set_ylim(low, high)
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("token-mean entropy of the rollouts (nats)")
    top.set_title(title)
    top.legend(fontsize=8, loc="center right")
    top.grid(alpha=0.3, which="both")
    bottom.set_xlabel("GRPO step")
    bottom.set_ylabel("coefficient\n(AER: λ_i = α · w(acc))")
    bottom.set_ylim(bottom=0)
    bottom.legend(fontsize=8, loc="upper left", ncol=2)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _collapsed(summary: dict) -> bool:
    scores = [evaluation["pass@1"]["all"] for evaluation in summary["history"]["eval"]]
    return scores[-1] < COLLAPSED_BELOW * scores[0]


def accuracy_figure(summaries: dict[str, dict], k: int, title: str) -> Figure:
    """Held-out pass@1 and pass@k over all tiers vs step, ± 1 standard error over the problems; the y-axes fit
    the arms that did not collapse (see ``COLLAPSED_BELOW``).

    Args:
        summaries: ``report.arm_summary`` per arm name, in legend order.
        k: the k of pass@k.
        title: the figure's title.
    """
    metrics = ("pass@1", f"pass@{k}")
    scaled = [name for name, summary in summaries.items() if not _collapsed(summary)] or list(summaries)
    last_step = max(summary["history"]["eval_steps"][-1] for summary in summaries.values())
    spread = 0.012 * last_step  # side by side at each evaluation, so the error bars do not overlap
    figure, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharex=True)
    limits = {metric: [1.0, 0.0] for metric in metrics}
    for index, (name, summary) in enumerate(summaries.items()):
        history = summary["history"]
        steps = [step + (index - (len(summaries) - 1) / 2) * spread for step in history["eval_steps"]]
        label = name if name in scaled else f"{name} (collapsed, off scale: ends at {summary['pass@1']['all']:.3f})"
        for axis, metric in zip(axes, metrics):
            scores = [evaluation[metric]["all"] for evaluation in history["eval"]]
            errors = [standard_error[metric] for standard_error in history["eval_standard_error"]]
            axis.errorbar(
                steps,
                scores,
                yerr=errors,
                color=f"C{index}",
                marker="o",
                markersize=3,
                capsize=2,
                linewidth=1.4,
                elinewidth=0.9,
                label=label,
            )
            if name in scaled:
                limits[metric][0] = min(limits[metric][0], *(s - e for s, e in zip(scores, errors)))
                limits[metric][1] = max(limits[metric][1], *(s + e for s, e in zip(scores, errors)))
    for axis, metric in zip(axes, metrics):
        low, high = limits[metric]
        margin = 0.08 * (high - low) + 0.01
        axis.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
        axis.set_xlabel("GRPO step")
        axis.set_ylabel(f"held-out {metric}, all tiers")
        axis.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(
        f"{title}\nerror bars: ± 1 standard error over the held-out problems (the verdict's paired "
        "differences are tighter)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure
