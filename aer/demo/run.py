"""The whole demo: warm-start once, train every arm from it, write the summary, the table and the pictures."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

import aer

from . import plots, report
from .arms import all_arms
from .config import DemoConfig, quick
from .evaluate import evaluate, pass_at_k
from .tasks import SortingTasks
from .train import prompt_schedule, train_arm
from .warmstart import new_policy, warm_started_policy


def run_demo(config: DemoConfig, output_dir: Path) -> dict:
    """Runs all arms and writes ``summary.json``, ``entropy.png`` and ``accuracy.png`` into ``output_dir``;
    prints the table and the verdict; returns the summary.

    torch runs on ``config.threads`` CPU threads meanwhile (the numbers depend on it), then on as many as before.

    Args:
        config: the run's settings (``DemoConfig()``, or ``quick(DemoConfig())``).
        output_dir: created if missing; holds the outputs and ``cache/``, the warm-started weights.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, output_dir)
    finally:
        torch.set_num_threads(threads_before)


def _run(config: DemoConfig, output_dir: Path) -> dict:
    started = time.perf_counter()
    print(
        f"{config.steps} GRPO steps per arm on {config.device} with {config.threads} torch thread(s), seed "
        f"{config.seed}; {_target_ratio_note(config)}."
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    tasks = SortingTasks(config.tier_lengths, config.eval_per_tier, config.seed)
    tiers = [problem.tier for problem in tasks.held_out]
    initial_state = warm_started_policy(config, tasks, output_dir)

    device = torch.device(config.device)
    warm_model = new_policy(config).to(device)
    warm_model.load_state_dict(initial_state)
    warm_start = pass_at_k(
        evaluate(
            warm_model, tasks, k=config.pass_k, temperature=config.temperature, seed=config.seed + 4, device=device
        ),
        tiers,
        config.pass_k,
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
        "machine": {
            "device": config.device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "wall_seconds": time.perf_counter() - started,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    title = f"sorting tasks {config.tier_lengths}, seed {config.seed}"
    plots.save(plots.entropy_figure(summaries, title), output_dir / "entropy.png")
    plots.save(plots.accuracy_figure(summaries, config.pass_k, title), output_dir / "accuracy.png")

    tier_names = ", ".join(f"{name} = {what}" for name, what in summary["tiers"].items())
    print(
        f"\nHeld-out, {config.eval_per_tier} problems per tier ({tier_names}), {config.pass_k} samples each "
        f"at temperature {config.temperature:g}; entropy in nats; {_target_ratio_note(config)}. "
        f"{config.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), seed {config.seed}."
    )
    print(report.table(summaries, warm_start, config.pass_k))
    print()
    print("\n".join(verdict))
    print(
        f"\nWrote {output_dir}/summary.json, entropy.png, accuracy.png in {summary['wall_seconds']:.0f} s "
        f"on {_cpu_name()} ({os.cpu_count()} CPUs)."
    )
    return summary


def _target_ratio_note(config: DemoConfig) -> str:
    default = aer.AERConfig().target_ratio
    note = f"AER target ratio ρ = {config.aer_target_ratio:g}"
    if config.aer_target_ratio == default:
        return f"{note} (AER's default)"
    if config.aer_target_ratio == quick(DemoConfig()).aer_target_ratio:
        return f"{note}, not AER's default {default:g}: --quick's steps only reach the start of the collapse"
    return f"{note}, not AER's default {default:g}"


def _cpu_name() -> str:
    """The CPU model (the numbers are reproducible on the same one); platform.processor() is empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
