"""Seeds × arms in parallel processes, then paired statistics across seeds, the table, the verdict and the plots.

Every seed is a replicate of the whole experiment: its own held-out problems, warm start, prompt stream and
sampling draws. Within a seed all arms share those, so an arm is compared with a baseline by the per-seed mean
difference over the same problems, ``D_s``; the verdict uses the spread of ``D_s`` across seeds, which holds
training noise, the choice of problems and evaluation sampling together.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

from .tasks import Countdown
from .train import Arm, Config, evaluate_warm_start, train, warm_start

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

METRICS = ("pass@1", "greedy", "pass@4", "pass@16")  # pass@k needs Config.eval_samples >= k
# The fixed baseline: near AER's mean α in a 300-step pilot (0.01 and 0.02 did about as well there; 0.05 drove
# the quick run's entropy to 2.9 nats and its accuracy to 0).
FIXED = 0.02
BASELINES = ("no-entropy", f"fixed-{FIXED:g}")
# One GRPO step on one thread, warm start and evaluation included, for the estimate printed up front: 0.11 s
# in `make demo` on an idle 2-core AMD EPYC, 0.27 s in the README's study on the same machine shared with other jobs.
SECONDS_PER_STEP = 0.12
FINAL_WINDOW = 20  # steps averaged for the final entropy


def arms(target_ratios: tuple[float, ...], uniform_ratio: float | None) -> list[Arm]:
    """No entropy term, a fixed coefficient, AER at each ρ, and AER with uniform weighting at ``uniform_ratio``."""
    compared = [Arm(BASELINES[0]), Arm(BASELINES[1], coefficient=FIXED)]
    compared += [Arm(f"aer-{rho:g}", target_ratio=rho) for rho in target_ratios]
    if uniform_ratio is not None:
        compared.append(Arm(f"aer-uniform-{uniform_ratio:g}", target_ratio=uniform_ratio, weighting="uniform"))
    return compared


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` right of ``n`` samples (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def problem_scores(result: dict, metric: str, n: int) -> list[float]:
    """One score per held-out problem: unbiased pass@k from ``result["correct"]``, or the greedy answer's 0/1."""
    if metric == "greedy":
        return [float(g) for g in result["greedy"]]
    k = int(metric.removeprefix("pass@"))
    return [pass_at_k(n, c, k) for c in result["correct"]]


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """Mean and ``sd / √len`` (sample sd; NaN for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def verdict(per_seed_differences: list[float]) -> tuple[float, float, str]:
    """``(mean, standard error, outcome)`` of the per-seed mean differences: "better" / "worse" only when the mean
    lies beyond 2 standard errors of 0; with one seed the training noise is unmeasured and the outcome is "n/a"."""
    mean, error = mean_and_standard_error(per_seed_differences)
    if math.isnan(error):
        return mean, error, "n/a (1 seed)"
    if mean > 2 * error:
        return mean, error, "better"
    if mean < -2 * error:
        return mean, error, "worse"
    return mean, error, "no clear difference"


def summarise(results: dict[int, dict[str, dict]], n: int) -> dict:
    """Per arm, each metric's mean over seeds ± standard error across seeds; per (AER arm, baseline, metric)
    the paired per-seed differences and their verdict.

    Args:
        results: ``results[seed][arm name]``, ``train``'s return (``"warm-start"`` included, without a log).
        n: samples per problem.
    """
    seeds = sorted(results)
    names = list(results[seeds[0]])

    def seed_mean(seed: int, name: str, metric: str) -> float:
        scores = problem_scores(results[seed][name], metric, n)
        return sum(scores) / len(scores)

    def hardest(seed: int, name: str) -> float:
        result = results[seed][name]
        hard = [p == max(result["tiers"]) for p in result["tiers"]]
        scores = [s for s, h in zip(problem_scores(result, "pass@16", n), hard) if h]
        return sum(scores) / len(scores)

    table = {}
    for name in names:
        row = {metric: mean_and_standard_error([seed_mean(s, name, metric) for s in seeds]) for metric in METRICS}
        row["hard pass@16"] = mean_and_standard_error([hardest(s, name) for s in seeds])
        if "entropy" in results[seeds[0]][name]:
            row["final entropy"] = mean_and_standard_error(
                [sum(results[s][name]["entropy"][-FINAL_WINDOW:]) / FINAL_WINDOW for s in seeds]
            )
        table[name] = row
    comparisons = []
    for name in (name for name in names if name.startswith("aer")):
        for baseline in (b for b in BASELINES if b in names):
            for metric in METRICS:
                differences = [seed_mean(s, name, metric) - seed_mean(s, baseline, metric) for s in seeds]
                mean, error, outcome = verdict(differences)
                comparisons.append(
                    {"arm": name, "baseline": baseline, "metric": metric, "mean": mean, "standard_error": error}
                    | {"per_seed": differences, "outcome": outcome}
                )
    return {"seeds": seeds, "table": table, "comparisons": comparisons}


def _warm_start_job(config: Config, output_dir: Path, on_step: Callable[[], None]) -> tuple[int, str, dict]:
    tasks = Countdown(config.tiers, config.eval_per_tier, config.seed)
    result = evaluate_warm_start(config, warm_start(config, tasks, output_dir), tasks)
    return config.seed, "warm-start", result | {"tiers": [p.tier for p in tasks.held_out]}


def _arm_job(config: Config, arm: Arm, output_dir: Path, on_step: Callable[[], None]) -> tuple[int, str, dict]:
    tasks = Countdown(config.tiers, config.eval_per_tier, config.seed)
    result = train(config, arm, warm_start(config, tasks, output_dir), tasks, on_step)
    return config.seed, arm.name, result | {"tiers": [p.tier for p in tasks.held_out]}


def estimate_seconds(config: Config, runs: int, seeds: int, jobs: int) -> float:
    """Rough wall time from ``SECONDS_PER_STEP``: warm starts count as steps too."""
    steps = runs * config.steps + seeds * config.warm_start_steps / 3
    return steps * SECONDS_PER_STEP / min(jobs, runs)


def run(config: Config, arm_list: list[Arm], seeds: list[int], jobs: int, output_dir: Path) -> dict:
    """Every arm on every seed, ``jobs`` processes at a time with ``config.threads`` torch threads each (``jobs``
    1: in this process); the warm starts first, one per seed. Returns ``results[seed][arm name]``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    configs = [replace(config, seed=seed) for seed in seeds]
    phases = [
        [(_warm_start_job, (c, output_dir)) for c in configs],
        [(_arm_job, (c, arm, output_dir)) for c in configs for arm in arm_list],
    ]
    results: dict[int, dict[str, dict]] = {seed: {} for seed in seeds}
    with tqdm(total=len(phases[1]) * config.steps, unit="step", desc="GRPO steps", mininterval=2) as bar:
        if jobs == 1:
            threads_before = torch.get_num_threads()
            torch.set_num_threads(config.threads)
            try:
                for job, args in phases[0] + phases[1]:
                    seed, name, result = job(*args, partial(bar.update, 1))
                    results[seed][name] = result
            finally:
                torch.set_num_threads(threads_before)
            return results
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
        with (
            context.Manager() as manager,
            ProcessPoolExecutor(jobs, context, initializer=torch.set_num_threads, initargs=(config.threads,)) as pool,
        ):
            progress = manager.Queue()  # workers put 1 per GRPO step
            for phase in phases:
                futures = [pool.submit(job, *args, partial(progress.put, 1)) for job, args in phase]
                while not all(f.done() for f in futures):
                    bar.update(_drain(progress))
                for future in futures:
                    seed, name, result = future.result()
                    results[seed][name] = result
            bar.update(_drain(progress))
    return results


def _drain(progress: queue.Queue) -> int:
    """Steps reported since the last call, waiting up to half a second for the first."""
    count = 0
    with contextlib.suppress(queue.Empty):
        count += progress.get(timeout=0.5)
        while True:
            count += progress.get_nowait()
    return count


def machine(config: Config) -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):  # /proc/cpuinfo: Linux only
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": config.device}


def markdown(summary: dict, n: int) -> str:
    """The table of arms (mean ± standard error across seeds) and the table of paired differences."""
    seeds = summary["seeds"]
    columns = [*METRICS, "hard pass@16", "final entropy"]
    lines = [
        f"Held-out means over {len(seeds)} seed(s) {seeds}, ± 1 standard error across seeds; pass@k unbiased from "
        f"n = {n} samples at T = 1; greedy = argmax decoding; hard = the 4-number tier.",
        "",
        "| arm | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in summary["table"].items():
        cells = [_plus_minus(*row[c]) if c in row else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences, arm − baseline: mean over seeds of the per-seed mean difference over the same problems "
        "± its standard error across seeds; per-seed values in brackets. better/worse: beyond 2 standard errors.",
        "",
        "| arm − baseline | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    rows: dict[str, dict[str, dict]] = {}
    for c in summary["comparisons"]:
        rows.setdefault(f"{c['arm']} − {c['baseline']}", {})[c["metric"]] = c
    for label, by_metric in rows.items():
        cells = [
            f"{_plus_minus(c['mean'], c['standard_error'], signed=True)} {c['outcome']} "
            f"[{' '.join(f'{d:+.3f}' for d in c['per_seed'])}]"
            for c in (by_metric[m] for m in METRICS)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plus_minus(mean: float, error: float, signed: bool = False) -> str:
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if math.isnan(error) else f"{text} ± {error:.3f}"


def verdict_lines(summary: dict) -> list[str]:
    """One line per AER arm: the metrics on which it is better or worse than each baseline."""
    lines = []
    for arm in dict.fromkeys(c["arm"] for c in summary["comparisons"]):
        for baseline in dict.fromkeys(c["baseline"] for c in summary["comparisons"]):
            mine = [c for c in summary["comparisons"] if c["arm"] == arm and c["baseline"] == baseline]
            better = [c["metric"] for c in mine if c["outcome"] == "better"]
            worse = [c["metric"] for c in mine if c["outcome"] == "worse"]
            if mine[0]["outcome"].startswith("n/a"):
                text = "one seed cannot tell (training noise unmeasured): run --study"
            else:
                text = f"better on {', '.join(better) or 'nothing'}; worse on {', '.join(worse) or 'nothing'}"
            lines.append(f"Verdict: {arm} vs {baseline}: {text}.")
    return lines


def study_figure(summary: dict, path: Path) -> None:
    """pass@1 (x) against pass@16 (y), one point per arm, ± 1 standard error across seeds both ways."""
    figure, axis = plt.subplots(figsize=(7, 5.5))
    for index, (name, row) in enumerate(summary["table"].items()):
        (x, dx), (y, dy) = row["pass@1"], row["pass@16"]
        marker = "s" if name.startswith("aer") else "o"
        axis.errorbar(
            x, y, xerr=_zero_if_nan(dx), yerr=_zero_if_nan(dy), fmt=marker, color=f"C{index}", capsize=3, label=name
        )
    axis.legend(fontsize=8)
    axis.set_xlabel("held-out pass@1 (T = 1)")
    axis.set_ylabel("held-out pass@16")
    axis.set_title(f"countdown, {len(summary['seeds'])} seed(s): mean ± 1 SE across seeds", fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def entropy_figure(seed_results: dict[str, dict], title: str, path: Path) -> None:
    """One seed: each arm's rollout entropy per step (10-step mean) with AER's targets, and α per step below."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for index, (name, result) in enumerate((n, r) for n, r in seed_results.items() if "entropy" in r):
        entropy = result["entropy"]
        smooth = [sum(entropy[max(0, i - 9) : i + 1]) / (i + 1 - max(0, i - 9)) for i in range(len(entropy))]
        top.plot(smooth, color=f"C{index + 1}", linewidth=1.6, label=name)
        if result["target_entropy"] is not None:
            top.axhline(result["target_entropy"], color=f"C{index + 1}", linestyle=":", linewidth=1)
        bottom.plot(result["coefficient"], color=f"C{index + 1}", linewidth=1.4, label=name)
    top.set_ylabel("rollout entropy, nats\n(10-step mean; dotted: AER targets)")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("GRPO step")
    bottom.set_ylabel("coefficient (AER: α)")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(config: Config, results: dict, jobs: int, output_dir: Path, seconds: float) -> dict:
    """Writes ``study.json`` (the tables, settings and machine), ``runs.json`` (every run's per-step log and
    per-problem counts), ``study.md``, ``study.png`` and ``entropy.png`` (the first seed); prints the table and the
    verdict; returns study.json's content with ``"results"``, runs.json's, added."""
    summary = summarise(results, config.eval_samples)
    text = markdown(summary, config.eval_samples)
    lines = verdict_lines(summary)
    settings = asdict(replace(config, seed=summary["seeds"][0]))
    settings.pop("seed")
    record = summary | {"config": settings, "jobs": jobs, "machine": machine(config), "wall_seconds": seconds}
    (output_dir / "study.json").write_text(json.dumps(record, indent=1))
    record["results"] = {str(seed): by_arm for seed, by_arm in results.items()}
    (output_dir / "runs.json").write_text(json.dumps(record["results"]))  # per step and per problem
    (output_dir / "study.md").write_text(text + "\n\n" + "\n".join(lines) + "\n")
    study_figure(summary, output_dir / "study.png")
    first = summary["seeds"][0]
    entropy_figure(results[first], f"countdown, seed {first}", output_dir / "entropy.png")
    print(text, "", *lines, sep="\n")
    return record
