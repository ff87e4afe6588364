"""The whole demo: warm-start once, train every arm from it, write the summary, the table and the pictures."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import plots, report
from .arms import all_arms
from .config import DemoConfig
from .evaluate import evaluate, pass_at_k
from .tasks import SortingTasks
from .train import prompt_schedule, train_arm
from .warmstart import new_policy, warm_started_policy


def run_demo(config: DemoConfig, output_dir: Path) -> dict:
    """Runs all arms and writes ``summary.json``, ``entropy.png`` and ``accuracy.png`` into ``output_dir``;
    prints the table and the verdict; returns the summary."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    tasks = SortingTasks(config.tier_lengths, config.eval_per_tier, config.seed)
    tiers = [problem.tier for problem in tasks.held_out]
    initial_state = warm_started_policy(config, tasks, output_dir)

    device = torch.device(config.device)
    warm_model = new_policy(config).to(device)
    warm_model.load_state_dict(initial_state)
    warm_start = pass_at_k(
        evaluate(warm_model, tasks, k=config.pass_k, temperature=config.temperature, seed=config.seed + 4,
                 device=device),
        tiers, config.pass_k,
    )

    schedule = prompt_schedule(config, tasks)
    arms = all_arms(config)
    logs = {arm.name: train_arm(arm, config, tasks, initial_state, schedule) for arm in arms}
    summaries = {arm.name: report.arm_summary(arm, logs[arm.name], tiers, config.pass_k) for arm in arms}
    verdict = report.verdict(logs, config)

    summary = {
        "arms": summaries,
        "warm_start": warm_start,
        "verdict": verdict,
        "tiers": {f"tier{t + 1}": f"sort {length} symbols" for t, length in enumerate(config.tier_lengths)},
        "config": asdict(config),
        "machine": {"device": config.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.processor()},
        "wall_seconds": time.perf_counter() - started,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    title = f"sorting tasks {config.tier_lengths}, seed {config.seed}"
    plots.plot_entropy(summaries, output_dir / "entropy.png", title)
    plots.plot_accuracy(summaries, output_dir / "accuracy.png", config.pass_k, title)

    tier_names = ", ".join(f"{name} = {what}" for name, what in summary["tiers"].items())
    print(f"\nHeld-out, {config.eval_per_tier} problems per tier ({tier_names}), {config.pass_k} samples each "
          f"at temperature {config.temperature:g}; entropy in nats. {config.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.")
    print(report.table(summaries, warm_start, config.pass_k))
    print()
    print("\n".join(verdict))
    print(f"\nWrote {output_dir}/summary.json, entropy.png, accuracy.png in {summary['wall_seconds']:.0f} s.")
    return summary
