"""The end-to-end demo in its quick mode: what must hold whatever the learning dynamics."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from aer.demo.__main__ import main
from aer.demo.config import DemoConfig, quick
from aer.demo.run import run_demo

SEED = 0
ARMS = ("no-entropy", "fixed-0.05", "fixed-0.2", "aer", "aer-uniform")
SCORE_KEYS = ("tier1", "tier2", "tier3", "all")
# After its warm-up (until its 10-step mean entropy first reaches the target, α has nothing to do), the AER
# arm's 10-step mean entropy stays within BAND x target. Seed 0 showed [0.84, 1.24] in the default run and
# [0.86, 0.99] in the quick run.
BAND = (0.75, 1.3)
WINDOW = 10


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    main(["--quick", "--seed", str(SEED), "--output-dir", str(output_dir)])
    return output_dir, json.loads((output_dir / "summary.json").read_text())


def trailing_means(values: list[float], window: int) -> list[float]:
    """Mean of each ``window`` consecutive values."""
    return [sum(values[i - window : i]) / window for i in range(window, len(values) + 1)]


def test_files_exist_and_parse(quick_run):
    output_dir, summary = quick_run
    for picture in ("entropy.png", "accuracy.png"):
        assert (output_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tuple(summary["arms"]) == ARMS
    for name, arm in summary["arms"].items():
        assert arm["initial_entropy"] > 0 and arm["final_entropy"] > 0, name
        for metric in ("pass@1", "pass@8"):
            assert set(arm[metric]) == set(SCORE_KEYS), (name, metric)
            assert all(0.0 <= arm[metric][key] <= 1.0 for key in SCORE_KEYS), (name, metric)
        assert ("target_entropy" in arm) == name.startswith("aer"), name
    assert summary["verdict"][-1].startswith("Verdict: AER")


def test_pass_at_1_never_exceeds_pass_at_8(quick_run):
    _, summary = quick_run
    for name, arm in summary["arms"].items():
        for key in SCORE_KEYS:
            assert arm["pass@1"][key] <= arm["pass@8"][key], (name, key)


def test_every_arm_ran_the_same_steps(quick_run):
    _, summary = quick_run
    steps = quick(DemoConfig()).steps
    for name, arm in summary["arms"].items():
        assert arm["steps"] == steps, name
        assert len(arm["history"]["entropy"]) == len(arm["history"]["coefficient"]) == steps, name
        assert arm["history"]["eval_steps"] == summary["arms"]["no-entropy"]["history"]["eval_steps"], name
    # Same warm-started policy and the same first batch: every arm measured the same initial entropy.
    assert len({arm["initial_entropy"] for arm in summary["arms"].values()}) == 1


@pytest.mark.parametrize("name", ["aer", "aer-uniform"])
def test_aer_target_is_anchored_on_the_measured_initial_entropy(quick_run, name):
    _, summary = quick_run
    arm = summary["arms"][name]
    assert arm["anchored_initial_entropy"] == pytest.approx(arm["history"]["entropy"][0], rel=1e-9)
    assert arm["target_entropy"] == pytest.approx(arm["target_ratio"] * arm["initial_entropy"], rel=1e-9)
    assert arm["target_ratio"] == quick(DemoConfig()).aer_target_ratio


def test_aer_holds_entropy_near_target_while_no_entropy_falls_below(quick_run):
    _, summary = quick_run
    aer = summary["arms"]["aer"]
    target = aer["target_entropy"]
    smoothed = trailing_means(aer["history"]["entropy"], WINDOW)
    warm_up = next((index for index, value in enumerate(smoothed) if value <= target), None)
    assert warm_up is not None, "the AER arm's entropy never came down to its target"
    ratios = [value / target for value in smoothed[warm_up:]]
    assert all(BAND[0] <= ratio <= BAND[1] for ratio in ratios), ratios
    assert summary["arms"]["no-entropy"]["final_entropy"] < target


def test_same_seed_same_result(tmp_path):
    tiny = replace(quick(DemoConfig(seed=SEED)), warm_start_steps=5, steps=3, eval_per_tier=2, eval_every=2)
    first = run_demo(tiny, tmp_path / "first")
    second = run_demo(tiny, tmp_path / "second")
    for summary in (first, second):
        summary.pop("wall_seconds")
    assert first == second
