"""group_accuracy, entropy_stats and entropy_bonus against values and gradients computed by hand."""

import math

import pytest
import torch

from aer import entropy_bonus, entropy_stats, group_accuracy

# Three responses: 3 tokens, 2 tokens, none. The 9s sit under the mask and must not count.
H = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
COEF = torch.tensor([0.5, -1.0, 2.0])


def test_group_accuracy_from_flat_and_grouped_rewards():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    acc = group_accuracy(rewards, group_size=4)
    assert acc.dtype == torch.float32 and acc.tolist() == [0.75, 0.0, 1.0]
    assert torch.equal(group_accuracy(rewards.view(3, 4), group_size=4), acc)


def test_group_accuracy_success_threshold():
    rewards = torch.tensor([[0.5, 0.49, 1.0, -1.0]])
    assert group_accuracy(rewards, group_size=4).tolist() == [0.5]  # r >= 0.5 is correct
    assert group_accuracy(rewards, group_size=4, success_threshold=0.0).tolist() == [0.75]
    assert group_accuracy(rewards.int(), group_size=4, success_threshold=1).tolist() == [0.25]


@pytest.mark.parametrize(
    "rewards, group_size, name",
    [
        (torch.zeros(10), 4, "group_size"),
        (torch.zeros(3, 4), 3, "group_size"),
        (torch.zeros(2, 2, 2), 2, "rewards"),
        (torch.zeros(4), 0, "group_size"),
        ([1.0, 0.0], 2, "rewards"),
    ],
)
def test_group_accuracy_validates_arguments(rewards, group_size, name):
    with pytest.raises(ValueError, match=name):
        group_accuracy(rewards, group_size=group_size)


def test_group_accuracy_by_group_ids_in_any_order_and_group_size():
    # Prompt 7: 2 of 3 correct; prompt 2: 0 of 1; prompt 5: 1 of 4 (one NaN reward, not correct).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, math.nan, 0.2, 0.0])
    ids = torch.tensor([7, 5, 2, 7, 5, 5, 7, 5])
    acc = group_accuracy(rewards, group_ids=ids)
    assert acc.dtype == torch.float32
    assert acc.tolist() == pytest.approx([0.0, 0.25, 2 / 3])  # ascending ids: 2, 5, 7
    _, inverse = torch.unique(ids, return_inverse=True)
    assert acc[inverse].tolist() == pytest.approx([2 / 3, 0.25, 0.0, 2 / 3, 0.25, 0.25, 2 / 3, 0.25])


def test_group_accuracy_by_group_ids_matches_group_size_on_prompt_major_input():
    rewards = torch.rand(5 * 4)
    ids = torch.arange(5).repeat_interleave(4)
    assert torch.equal(group_accuracy(rewards, group_ids=ids), group_accuracy(rewards, group_size=4))
    permutation = torch.randperm(20)
    assert torch.equal(
        group_accuracy(rewards[permutation], group_ids=ids[permutation]), group_accuracy(rewards, group_size=4)
    )


def test_group_accuracy_by_group_ids_success_threshold_and_empty_batch():
    rewards = torch.tensor([0.5, 0.49, 1.0, -1.0])
    ids = torch.zeros(4, dtype=torch.int64)
    assert group_accuracy(rewards, group_ids=ids, success_threshold=0.0).tolist() == [0.75]
    assert group_accuracy(torch.zeros(0), group_ids=torch.zeros(0, dtype=torch.int64)).shape == (0,)


@pytest.mark.parametrize(
    "rewards, kwargs, message",
    [
        (torch.zeros(4), {}, "exactly one of group_size .* or group_ids .*, got neither"),
        (torch.zeros(4), {"group_size": 2, "group_ids": torch.zeros(4, dtype=torch.int64)}, "got both"),
        (torch.zeros(2, 2), {"group_ids": torch.zeros(4, dtype=torch.int64)}, "rewards"),
        (torch.zeros(4), {"group_ids": torch.zeros(3, dtype=torch.int64)}, "group_ids"),
        (torch.zeros(4), {"group_ids": torch.zeros(4)}, "group_ids"),
        (torch.zeros(4), {"group_ids": torch.zeros(4, dtype=torch.bool)}, "group_ids"),
        (torch.zeros(4), {"group_ids": [0, 0, 1, 1]}, "group_ids"),
        ([1.0, 0.0], {"group_ids": torch.zeros(2, dtype=torch.int64)}, "rewards"),
    ],
)
def test_group_accuracy_by_group_ids_validates_arguments(rewards, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_accuracy(rewards, **kwargs)


def test_entropy_stats_are_masked_sum_and_count_as_0d_fp64():
    h = H.clone().requires_grad_()
    total, count = entropy_stats(h, MASK)
    assert total.shape == () and count.shape == ()
    assert total.dtype == count.dtype == torch.float64
    assert (total.item(), count.item()) == (15.0, 5.0)
    assert not total.requires_grad


def test_entropy_stats_ignore_nan_under_the_mask():
    h = H.clone()
    h[~MASK] = math.nan
    assert entropy_stats(h, MASK.float())[0].item() == 15.0


@pytest.mark.parametrize(
    "entropy, mask, name",
    [(H, MASK[:, :3], "mask"), (H[0], MASK[0], "entropy"), (H.long(), MASK, "entropy")],
)
def test_entropy_stats_validate_shapes(entropy, mask, name):
    with pytest.raises(ValueError, match=name):
        entropy_stats(entropy, mask)


# Per response Σ_t H·m = 6, 9, 0 over n = 3, 2, 0 tokens; two responses have tokens.
CASES = {
    # -(0.5·6 - 1·9) / 5
    "token-mean": (1.2, [[-0.1] * 3 + [0.0], [0.2] * 2 + [0.0] * 2, [0.0] * 4]),
    # -(0.5·6/3 - 1·9/2) / 2
    "seq-mean-token-mean": (1.75, [[-1 / 12] * 3 + [0.0], [0.25] * 2 + [0.0] * 2, [0.0] * 4]),
    # -(0.5·6 - 1·9) / 2
    "seq-mean-token-sum": (3.0, [[-0.25] * 3 + [0.0], [0.5] * 2 + [0.0] * 2, [0.0] * 4]),
}


@pytest.mark.parametrize("reduction", list(CASES))
def test_entropy_bonus_value_and_gradient(reduction):
    value, grad = CASES[reduction]
    h = H.clone().requires_grad_()
    coef = COEF.clone().requires_grad_()
    loss = entropy_bonus(h, coef, MASK, reduction=reduction)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(value, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(h.grad, torch.tensor(grad), rtol=1e-6, atol=1e-7)
    assert coef.grad is None  # λ is detached


def test_entropy_bonus_default_reduction_is_token_mean():
    assert entropy_bonus(H, COEF, MASK).item() == pytest.approx(1.2, rel=1e-6)


@pytest.mark.parametrize("reduction", list(CASES))
def test_entropy_bonus_ignores_nan_under_the_mask(reduction):
    h = H.clone()
    h[~MASK] = math.nan
    h.requires_grad_()
    loss = entropy_bonus(h, COEF, MASK.float(), reduction=reduction)
    loss.backward()
    assert loss.item() == pytest.approx(CASES[reduction][0], rel=1e-6)
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("reduction", list(CASES))
def test_entropy_bonus_of_an_empty_batch_is_zero(reduction):
    assert entropy_bonus(H, COEF, torch.zeros_like(MASK), reduction=reduction).item() == 0.0


def test_entropy_bonus_low_precision_input_gives_fp32_loss_and_input_dtype_gradient():
    h = H.to(torch.bfloat16).requires_grad_()
    loss = entropy_bonus(h, COEF, MASK)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(1.2, rel=1e-6)


def test_entropy_bonus_raises_entropy_under_gradient_descent():
    logits = torch.zeros(2, 3, 5)
    logits[..., 0] = 4.0  # peaked: low entropy
    logits.requires_grad_()
    mask = torch.ones(2, 3)

    def entropy(x):
        return -(x.softmax(-1) * x.log_softmax(-1)).sum(-1)

    before = entropy(logits).mean().item()
    entropy_bonus(entropy(logits), torch.full((2,), 1.0), mask).backward()
    with torch.no_grad():
        after = entropy(logits - 1.0 * logits.grad).mean().item()
    assert after > before


@pytest.mark.parametrize(
    "coef, mask, reduction, name",
    [
        (COEF[:2], MASK, "token-mean", "coef"),
        (COEF.view(3, 1), MASK, "token-mean", "coef"),
        (0.5, MASK, "token-mean", "coef"),
        (COEF, MASK[:2], "token-mean", "mask"),
        (COEF, MASK, "mean", "reduction"),
    ],
)
def test_entropy_bonus_validates_arguments(coef, mask, reduction, name):
    with pytest.raises(ValueError, match=name):
        entropy_bonus(H, coef, mask, reduction=reduction)
