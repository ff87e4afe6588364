"""The demo: its verifier and statistics on small exact cases, and the quick run end to end."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from aer.demo import study
from aer.demo.__main__ import main
from aer.demo.tasks import EOS, FIRST_NUMBER, MINUS, OPERATIONS, PLUS, SEP, TIMES, Countdown, Problem, draw, reward
from aer.demo.train import Arm, Config, quick

SYMBOL = {PLUS: "+", MINUS: "-", TIMES: "*"}


def right_answers(numbers: tuple[int, ...], target: int) -> set[tuple[int, ...]]:
    """Every right response, built the other way round: each ordered choice of distinct positions among the
    numbers, each choice of operations, kept when Python's left-to-right evaluation of the string hits target."""
    answers = set()
    for size in range(1, len(numbers) + 1):
        for positions in itertools.permutations(range(len(numbers)), size):
            for ops in itertools.product(OPERATIONS, repeat=size - 1):
                text = str(numbers[positions[0]])
                for op, position in zip(ops, positions[1:]):
                    text = f"({text}){SYMBOL[op]}{numbers[position]}"
                if eval(text) == target:  # digits and operators built above
                    tokens = [FIRST_NUMBER + numbers[positions[0]]]
                    for op, position in zip(ops, positions[1:]):
                        tokens += [op, FIRST_NUMBER + numbers[position]]
                    answers.add((*tokens, EOS))
    return answers


@pytest.mark.parametrize(
    "numbers, target, alphabet_numbers",
    [
        ((2, 3), 6, range(10)),  # 2×3 and 3×2; 2+3, a lone 6 (not given) and 3-2 are wrong
        ((2, 3), 1, range(10)),  # 3-2 only, not 2-3
        ((2, 2, 3), 7, (2, 3, 4)),  # a repeated number may be used as often as it is given, no more
        ((4, 1, 5), 0, (1, 4, 5, 6)),  # several answers reach 0
    ],
)
def test_verifier_accepts_exactly_the_right_answers_among_all_short_responses(numbers, target, alphabet_numbers):
    problem = Problem(numbers, target, demonstration=())
    alphabet = [FIRST_NUMBER + n for n in alphabet_numbers] + [*OPERATIONS, EOS, SEP]
    accepted = {
        response
        for length in range(1, 2 * len(numbers) + 1)
        for response in itertools.product(alphabet, repeat=length)
        if reward(problem, list(response)) == 1.0
    }
    expected = right_answers(numbers, target)
    assert expected and accepted == expected


def test_drawn_problems_are_solved_by_their_demonstration_and_keep_targets_in_range():
    generator = torch.Generator().manual_seed(0)
    for tier in (2, 3, 4):
        for _ in range(200):
            problem = draw(tier, generator)
            assert problem.tier == tier and 0 <= problem.target <= 99
            assert reward(problem, [*problem.demonstration, EOS]) == 1.0
            assert reward(problem, list(problem.demonstration)) == 0.0  # no EOS: not an answer
            assert Counter(problem.demonstration[::2]) == Counter(FIRST_NUMBER + n for n in problem.numbers)


def test_training_stream_never_draws_a_held_out_problem():
    tasks = Countdown((2,), per_tier=40, seed=0)  # 2-number problems repeat often: the stream must skip them
    held_out = {(p.numbers, p.target) for p in tasks.held_out}
    drawn = tasks.sample(2000, torch.Generator().manual_seed(1))
    assert len({(p.numbers, p.target) for p in drawn}) > 100
    assert not held_out & {(p.numbers, p.target) for p in drawn}


@pytest.mark.parametrize("n", range(1, 7))
def test_unbiased_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_right_one(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            assert study.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets), abs=1e-12)


def test_pass_at_k_by_hand_and_bad_input():
    assert study.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    assert study.pass_at_k(32, 0, 16) == 0.0 and study.pass_at_k(32, 17, 16) == 1.0
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 5), (4, 2, 0)]:
        with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
            study.pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "differences, outcome",
    [
        ([0.5, 1.5], "no clear difference"),  # mean 1.0 is exactly 2 standard errors (0.5): not beyond
        ([0.6, 1.5], "better"),
        ([-0.2, -0.21, -0.19], "worse"),
        ([0.3, -0.1, 0.1], "no clear difference"),
        ([0.1, 0.1], "better"),  # no spread at all
        ([0.4], "n/a (1 seed)"),
    ],
)
def test_verdict_needs_the_mean_beyond_two_standard_errors_across_seeds(differences, outcome):
    mean, error, got = study.verdict(differences)
    assert got == outcome
    assert mean == pytest.approx(sum(differences) / len(differences))
    if len(differences) > 1:
        spread = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
        assert error == pytest.approx(math.sqrt(spread / len(differences)))


def test_summary_pairs_arms_within_each_seed():
    # n = 16 samples; 2 seeds × 2 problems. pass@1 per problem = c / 16.
    def result(correct, greedy):
        return {"correct": correct, "greedy": greedy, "tiers": [2, 3], "entropy": [1.0] * 20}

    results = {
        0: {"no-entropy": result([0, 16], [0, 1]), "aer-0.5": result([8, 16], [1, 1])},
        1: {"no-entropy": result([8, 8], [0, 0]), "aer-0.5": result([8, 8], [0, 1])},
    }
    summary = study.summarise(results, n=16)
    pass1 = next(c for c in summary["comparisons"] if c["metric"] == "pass@1")
    assert (pass1["arm"], pass1["baseline"]) == ("aer-0.5", "no-entropy")
    assert pass1["per_seed"] == pytest.approx([0.25, 0.0])  # seed 0: (0.5 - 0) / 2; seed 1: no change
    assert pass1["mean"] == pytest.approx(0.125) and pass1["standard_error"] == pytest.approx(0.125)
    greedy = next(c for c in summary["comparisons"] if c["metric"] == "greedy")
    assert greedy["per_seed"] == pytest.approx([0.5, 0.5]) and greedy["outcome"] == "better"
    assert summary["table"]["aer-0.5"]["pass@1"] == pytest.approx((0.625, 0.125))  # seeds 0.75 and 0.5
    assert summary["table"]["no-entropy"]["hard pass@16"] == (1.0, 0.0)  # problem 2 (tier 3): 16 of 16, 8 of 16


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        record = main(["--quick", "--jobs", "1", "--output-dir", str(output_dir)])
    return output_dir, record, printed.getvalue()


def test_quick_run_writes_its_files_and_runs_every_arm_the_same_steps(quick_run):
    output_dir, record, printed = quick_run
    for picture in ("study.png", "entropy.png"):
        assert (output_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((output_dir / "study.json").read_text())["seeds"] == [0]
    assert json.loads((output_dir / "runs.json").read_text()) == record["results"]
    assert (output_dir / "study.md").read_text().startswith("Held-out means over 1 seed(s) [0]")
    runs = record["results"]["0"]
    assert list(runs) == ["warm-start", "no-entropy", "fixed-0.02", "aer-0.5", "aer-uniform-0.5"]
    steps = quick(Config()).steps
    for name, run in runs.items():
        held_out = 3 * quick(Config()).eval_per_tier
        assert len(run["correct"]) == len(run["greedy"]) == len(run["tiers"]) == held_out, name
        if name != "warm-start":
            assert len(run["entropy"]) == len(run["coefficient"]) == len(run["reward"]) == steps, name
    # The same warm start and the same first batch: every arm measured the same first entropy.
    assert len({run["entropy"][0] for name, run in runs.items() if name != "warm-start"}) == 1
    assert "Verdict: aer-0.5 vs no-entropy: one seed cannot tell" in printed


def test_quick_run_aer_anchors_its_target_and_fixed_arms_stay_fixed(quick_run):
    _, record, _ = quick_run
    runs = record["results"]["0"]
    for name in ("aer-0.5", "aer-uniform-0.5"):
        assert runs[name]["target_entropy"] == pytest.approx(0.5 * runs[name]["entropy"][0], rel=1e-9)
        assert runs[name]["coefficient"][:2] == [0.0, 0.0]  # anchoring step, then α starts from 0
    assert set(runs["fixed-0.02"]["coefficient"]) == {0.02}
    assert set(runs["no-entropy"]["coefficient"]) == {0.0}


def test_quick_run_scores_are_probabilities_ordered_in_k(quick_run):
    _, record, _ = quick_run
    for name, row in record["table"].items():
        means = [row[metric][0] for metric in ("pass@1", "pass@4", "pass@16")]
        assert 0.0 <= means[0] <= means[1] <= means[2] <= 1.0, name


TINY = replace(quick(Config()), warm_start_steps=3, steps=2, eval_per_tier=2)


def test_same_numbers_in_this_process_and_in_worker_processes(tmp_path):
    """Every run sets its own seeds and thread count, so --jobs does not change a digit; this process's
    thread count is restored."""
    before = torch.get_num_threads()
    arms = [Arm("no-entropy"), Arm("aer-0.5", target_ratio=0.5)]
    try:
        torch.set_num_threads(2)
        with contextlib.redirect_stderr(io.StringIO()):
            alone = study.run(TINY, arms, [0, 1], 1, tmp_path / "alone")
            assert torch.get_num_threads() == 2
            pooled = study.run(TINY, arms, [0, 1], 2, tmp_path / "pooled")
    finally:
        torch.set_num_threads(before)
    assert TINY.threads == 1 and alone == pooled


def test_warm_start_cache_is_not_shared_between_thread_counts(tmp_path):
    with contextlib.redirect_stderr(io.StringIO()):
        for threads in (1, 2):
            study.run(replace(TINY, threads=threads), [Arm("no-entropy")], [0], 1, tmp_path)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_help_documents_the_modes_and_reproducibility(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--study" in text and "--target-ratios" in text and "--jobs" in text
    assert "the same seed, --threads and torch build give the same numbers" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got 0"),
        (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
        (["--target-ratio", "0"], "argument --target-ratio: must be a number > 0, got 0"),
        (["--study", "--target-ratios", "0.7", "-1"], "argument --target-ratios: must be a number > 0, got -1"),
        (["--quick", "--study"], "argument --study: not allowed with argument --quick"),
        (["--target-ratios", "0.6"], "argument --target-ratios: only with --study"),
    ],
)
def test_command_line_rejects_bad_input_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
