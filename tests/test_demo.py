"""The end-to-end demo in its quick mode: what must hold whatever the learning dynamics."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import replace

import matplotlib.pyplot as plt
import pytest
import torch

from aer.demo import plots, report
from aer.demo.__main__ import main
from aer.demo.config import DemoConfig, quick
from aer.demo.run import run_demo

SEED = 0
ARMS = ("no-entropy", "fixed-0.05", "fixed-0.2", "aer", "aer-uniform")
SCORE_KEYS = ("tier1", "tier2", "tier3", "all")
# After its warm-up (until its 10-step mean entropy first reaches the target, α has nothing to do), the AER
# arm's 10-step mean entropy stays within BAND x target. Seed 0 on 1 thread showed [0.89, 0.99] in the quick run
# (the default run, not tested here, [0.78, 1.57]: once, α overshoots and entropy with it).
BAND = (0.75, 1.3)
WINDOW = 10


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    main(["--quick", "--seed", str(SEED), "--output-dir", str(output_dir)])
    return output_dir, json.loads((output_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A few steps of every arm, with what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = run_demo(TINY, tmp_path_factory.mktemp("tiny"))
    return summary, printed.getvalue()


TINY = replace(quick(DemoConfig(seed=SEED)), warm_start_steps=5, steps=3, eval_per_tier=2, eval_every=2)


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


def test_same_seed_same_result_whatever_threads_torch_had_before(tmp_path, tiny_run):
    """The run sets torch's thread count from its config (the numbers depend on it) and restores it after."""
    before = torch.get_num_threads()  # what the fixture's run started from
    other = 2 if before == 1 else 1
    try:
        torch.set_num_threads(other)
        with contextlib.redirect_stdout(io.StringIO()):
            again = run_demo(TINY, tmp_path / "again")
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    first = dict(tiny_run[0])
    for summary in (first, again):
        summary.pop("wall_seconds")
    assert again["machine"]["threads"] == TINY.threads == 1
    assert first == again


def test_warm_start_cache_is_not_shared_between_thread_counts(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        for threads in (1, 2):
            run_demo(replace(TINY, steps=1, threads=threads), tmp_path)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_printed_report_names_threads_and_target_ratio(tiny_run):
    _, printed = tiny_run
    assert f"with {TINY.threads} torch thread(s)" in printed
    assert f"{TINY.threads} thread(s), seed {SEED}." in printed  # beside the table
    assert printed.count("AER target ratio ρ = 0.75, not AER's default 0.5") == 2


def test_help_documents_quick_target_ratio_threads_and_reproducibility(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"AER target ratio ρ = {quick(DemoConfig()).aer_target_ratio:g} instead of AER's default 0.5" in text
    assert "--threads THREADS torch CPU threads (default: 1)" in text
    assert "the same seed, --threads and torch version on the same CPU type give the same numbers" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "must be an integer >= 1, got 0"),
        (["--steps", "0"], "must be an integer >= 1, got 0"),
        (["--threads", "two"], "invalid"),
    ],
)
def test_command_line_rejects_bad_counts(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert f"argument {argv[0]}: {message}" in capsys.readouterr().err


def test_standard_errors_by_hand():
    # pass@1 scores 1, 0, 0.5, 1: mean 0.625, sample variance 0.6875 / 3; pass@8 scores 1, 0, 1, 1: variance 0.25.
    got = report.standard_errors([8, 0, 4, 8], k=8)
    assert got == pytest.approx({"pass@1": math.sqrt(0.6875 / 3 / 4), "pass@8": math.sqrt(0.25 / 4)}, rel=1e-12)


def test_entropy_figure_shows_alpha_below_and_no_entropy_on_top(quick_run):
    _, summary = quick_run
    arms = summary["arms"]
    figure = plots.entropy_figure(arms, "title")
    try:
        top, bottom = figure.axes
        alpha = {line.get_label(): list(line.get_ydata()) for line in bottom.get_lines()}
        for name in ("aer", "aer-uniform"):
            assert alpha[f"{name}: α"] == arms[name]["history"]["coefficient"]
        smoothed = {line.get_label().split(" (")[0]: line for line in top.get_lines() if "mean" in line.get_label()}
        baseline = smoothed.pop("no-entropy")
        assert baseline.get_linestyle() == "--"
        assert all(baseline.get_zorder() > line.get_zorder() for line in smoothed.values())
    finally:
        plt.close(figure)


def fake_summary(pass1: list[float], standard_error: float) -> dict:
    """An arm's summary as far as the accuracy figure reads it: pass@8 is pass@1 + 0.2."""
    return {
        "pass@1": {"all": pass1[-1]},
        "history": {
            "eval_steps": [0, 50, 100],
            "eval": [{"pass@1": {"all": p}, "pass@8": {"all": p + 0.2}} for p in pass1],
            "eval_standard_error": [{"pass@1": standard_error, "pass@8": standard_error}] * 3,
        },
    }


def test_accuracy_axes_fit_the_arms_that_did_not_collapse_with_standard_errors():
    arms = {
        "steady": fake_summary([0.4, 0.45, 0.5], 0.03),
        "collapsed": fake_summary([0.4, 0.0, 0.0], 0.0),
        "aer": fake_summary([0.4, 0.5, 0.55], 0.02),
    }
    figure = plots.accuracy_figure(arms, 8, "title")
    try:
        for axis, shift in zip(figure.axes, (0.0, 0.2)):
            low, high = axis.get_ylim()
            assert 0.0 < low <= 0.37 + shift and 0.57 + shift <= high < 1.0  # the collapsed arm's 0 is off scale
            assert high - low < 0.4
            bars = [c for c in axis.containers if c.has_yerr]
            assert len(bars) == 3
            spans = [segment[1, 1] - segment[0, 1] for segment in bars[0].lines[2][0].get_segments()]
            assert spans == pytest.approx([0.06] * 3)  # ± 1 standard error
        labels = figure.legends[0].get_texts()
        assert [text.get_text().split(" ")[0] for text in labels] == list(arms)
        assert "off scale" in labels[1].get_text() and "off scale" not in labels[0].get_text()
    finally:
        plt.close(figure)


def test_summary_has_a_standard_error_per_evaluation(quick_run):
    _, summary = quick_run
    for name, arm in summary["arms"].items():
        errors = arm["history"]["eval_standard_error"]
        assert len(errors) == len(arm["history"]["eval"]), name
        assert all(0.0 <= e[metric] <= 0.5 for e in errors for metric in ("pass@1", "pass@8")), name
