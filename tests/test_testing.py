"""aer_kernels.testing: the tolerance rule fails what it must, the formula is the entropy, the data is seeded."""

import pytest
import torch
from torch.distributions import Categorical

from aer_kernels import testing
from aer_kernels.testing import (
    SLACK,
    assert_close_to_truth,
    check_close_to_truth,
    formula,
    max_error,
    random_row_grads,
    random_targets,
    realistic_logits,
    truth,
)


def _entropy_case(dtype=torch.float32):
    x = realistic_logits((6, 300), dtype, torch.Generator().manual_seed(0))
    (_, exact, _), (_, baseline, _) = truth(x), formula(x)
    return exact, baseline


def test_a_result_outside_the_rule_fails_naming_it():
    exact, baseline = _entropy_case()
    allowed = max_error(baseline, exact) + SLACK[torch.float32]
    assert_close_to_truth(baseline.float(), exact, baseline, torch.float32, "H")  # PyTorch's own error passes
    assert_close_to_truth(exact + 0.9 * allowed, exact, baseline, torch.float32, "H")
    off = exact.clone()
    off[3] += 2 * allowed
    with pytest.raises(AssertionError, match=r"^H of the test row: error .* > PyTorch's own torch.float32 error"):
        assert_close_to_truth(off, exact, baseline, torch.float32, "H of the test row")
    assert check_close_to_truth(off, exact, baseline, torch.float32, "H").startswith("H: error")
    assert check_close_to_truth(exact, exact, baseline, torch.float32, "H") is None


def test_the_slack_depends_on_the_dtype():
    exact, baseline = _entropy_case(torch.bfloat16)
    got = exact + max_error(baseline, exact) + 0.5 * SLACK[torch.bfloat16]
    assert check_close_to_truth(got, exact, baseline, torch.bfloat16, "H") is None
    assert check_close_to_truth(got, exact, baseline, torch.float32, "H") is not None


def test_relative_errors_are_scaled_by_the_largest_truth():
    exact = torch.tensor([1e3, -2e3, 5.0], dtype=torch.float64)
    got = exact + torch.tensor([0.0, 1e-2, 0.0], dtype=torch.float64)  # 5e-6 of the largest |truth|
    assert check_close_to_truth(got, exact, exact, torch.float32, "dx") is not None
    assert check_close_to_truth(got, exact, exact, torch.float32, "dx", relative=True) is None


@pytest.mark.parametrize("where", ["got", "truth"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_pattern_mismatch_fails(where, bad):
    exact, baseline = _entropy_case()
    got = exact.clone()
    (got if where == "got" else exact)[2] = bad
    with pytest.raises(AssertionError, match=r"H: (NaN|inf) pattern differs"):
        assert_close_to_truth(got, exact, baseline, torch.float32, "H")


def test_nan_in_nan_out_passes():
    x = realistic_logits((4, 50), torch.float32, torch.Generator().manual_seed(1))
    x[1, 7] = float("nan")
    (_, exact, _), (_, baseline, _) = truth(x), formula(x)
    assert torch.isnan(exact[1]) and torch.isfinite(exact[[0, 2, 3]]).all()
    assert_close_to_truth(baseline, exact, baseline, torch.float32, "H")
    with pytest.raises(AssertionError, match="NaN pattern differs"):
        assert_close_to_truth(torch.nan_to_num(baseline), exact, baseline, torch.float32, "H")


def test_a_wrong_shape_fails():
    exact, baseline = _entropy_case()
    assert "shape (5,), expected (6,)" in check_close_to_truth(exact[:5], exact, baseline, torch.float32, "H")


def test_formula_is_the_categorical_entropy_and_log_prob():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 11, generator=g, dtype=torch.float64) * 3
    x[0, 1, 4] = float("-inf")  # masked vocabulary: probability 0
    targets = torch.randint(11, (3, 4), generator=g)
    temperature = 0.7
    logp, h, dx = formula(x, targets, temperature)
    dist = Categorical(logits=x / temperature)
    torch.testing.assert_close(h, dist.entropy(), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, dist.log_prob(targets), rtol=0, atol=1e-12)
    assert dx is None


def test_formula_gradient_masks_and_out_of_range_targets():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)
    targets = torch.tensor([2, -1, 9, 4])
    mask = torch.tensor([True, True, True, False])
    grad_h, grad_logp = torch.randn(2, 4, generator=g, dtype=torch.float64)
    logp, h, dx = formula(x, targets, 1.3, mask, grad_h, grad_logp)
    assert torch.isnan(logp[1:3]).all() and logp[3] == 0 and h[3] == 0 and (dx[3] == 0).all()
    leaf = x.clone().requires_grad_(True)
    dist = Categorical(logits=leaf[0] / 1.3)
    (dist.entropy() * grad_h[0] + dist.log_prob(targets[0]) * grad_logp[0]).backward()
    torch.testing.assert_close(dx[0], leaf.grad[0], rtol=0, atol=1e-12)


def test_truth_is_the_formula_in_float64_chunk_by_chunk(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = realistic_logits((3, 5, 40), torch.bfloat16, g)
    targets = random_targets((3, 5), 40, g)
    grad_h, grad_logp = random_row_grads((3, 5), 2, g)
    whole = formula(x.double(), targets, 0.9, None, grad_h, grad_logp)
    monkeypatch.setattr(testing, "_TRUTH_ELEMENTS", 100)  # two rows of 40 per chunk
    chunked = truth(x, targets, 0.9, None, grad_h, grad_logp)
    for a, b in zip(chunked, whole):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_realistic_logits_are_seeded_and_spread():
    x = realistic_logits((70, 1000), torch.float32, torch.Generator().manual_seed(5))
    assert torch.equal(x, realistic_logits((70, 1000), torch.float32, torch.Generator().manual_seed(5)))
    flat, peaked = torch.arange(70) % 32 == 0, torch.arange(70) % 32 == 1
    assert (x[flat].std(-1) < 0.02).all()
    others = x[~flat & ~peaked].std(-1)
    assert (others > 1.8).all() and (others < 8.5).all() and others.max() - others.min() > 4.0


def test_peaked_rows_hold_one_raised_logit():
    x = realistic_logits((40, 1000), torch.float32, torch.Generator().manual_seed(6), std=2.0)
    height = x.amax(-1) - x.median(-1).values
    peaked = torch.arange(40) % 32 == 1
    assert (height[peaked] > 30).all() and (height[~peaked] < 15).all()


def test_small_batches_stay_realistic():
    x = realistic_logits((2, 500), torch.float32, torch.Generator().manual_seed(7))
    assert (x.std(-1) > 1.8).all()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: check_close_to_truth(torch.ones(2), torch.ones(2), torch.ones(2), torch.int32, "H"),
            ValueError,
            "dtype",
        ),
        (
            lambda: check_close_to_truth(torch.ones(2), torch.ones(2), torch.ones(3), torch.float32, "H"),
            ValueError,
            "baseline",
        ),
        (lambda: check_close_to_truth([1.0], torch.ones(1), torch.ones(1), torch.float32, "H"), TypeError, "got"),
        (lambda: formula(torch.ones(2, 3), torch.ones(2)), TypeError, "targets"),
        (lambda: formula(torch.ones(2, 3), torch.ones(3, dtype=torch.long)), ValueError, "targets"),
        (lambda: formula(torch.ones(2, 3), None, 1.0, None, None, torch.ones(2)), ValueError, "grad_logp"),
        (lambda: formula(torch.ones(2, 3), temperature=0.0), ValueError, "temperature"),
        (lambda: truth(torch.ones(2, 3, dtype=torch.long)), TypeError, "x must be"),
        (lambda: realistic_logits((2, 3), torch.float32, 0), TypeError, "generator"),
        (lambda: realistic_logits((2, 0), torch.float32, torch.Generator()), ValueError, "shape"),
        (lambda: realistic_logits((2, 3), torch.long, torch.Generator()), TypeError, "dtype"),
        (lambda: random_targets((2,), 0, torch.Generator()), ValueError, "vocab"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
