"""aer.integrations.verl against verl's own ppo_loss / agg_loss (verl installed without its heavy dependencies)."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed (make setup installs it without its heavy dependencies)")
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig
from verl.workers.utils.losses import ppo_loss as verl_ppo_loss
from verl.workers.utils.padding import response_to_nested

from aer import AERConfig
from aer.integrations.verl import COEFFICIENTS_KEY, AERDriver, group_accuracy, ppo_loss

LOSS_AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
PROMPT_LENS = [3, 2, 4, 2]
RESPONSE_LENS = [4, 2, 3, 1]
# This rank's micro-batch as one of two data-parallel ranks: global counts larger than its own.
GLOBAL = {"dp_size": 2, "batch_num_tokens": 23, "global_batch_size": 10}
LOCAL = {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None}


def nested(tensors):
    return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)


def micro_batch(coefficients=None, counts=LOCAL, seed=0):
    """A verl micro-batch in the engine's no-padding layout, and a model output with log-probs and entropy."""
    gen = torch.Generator().manual_seed(seed)
    data = TensorDict(
        {
            "prompts": nested([torch.randint(0, 10, (n,), generator=gen) for n in PROMPT_LENS]),
            "responses": nested([torch.randint(0, 10, (n,), generator=gen) for n in RESPONSE_LENS]),
            "response_mask": nested([torch.ones(n, dtype=torch.int64) for n in RESPONSE_LENS]),
            "old_log_probs": nested([-torch.rand(n, generator=gen) for n in RESPONSE_LENS]),
            "advantages": nested([torch.full((n,), i - 1.5) for i, n in enumerate(RESPONSE_LENS)]),
        },
        batch_size=len(RESPONSE_LENS),
    )
    if coefficients is not None:
        data[COEFFICIENTS_KEY] = nested([torch.full((n,), float(c)) for c, n in zip(coefficients, RESPONSE_LENS)])
    tu.assign_non_tensor(data, **counts)
    total = sum(PROMPT_LENS) + sum(RESPONSE_LENS)
    log_probs = (-torch.rand(total, generator=gen)).requires_grad_()
    entropy = (2 * torch.rand(total, generator=gen)).requires_grad_()
    offsets = torch.tensor([0, *np.cumsum(np.add(PROMPT_LENS, RESPONSE_LENS))])
    output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(log_probs, offsets),
        "entropy": torch.nested.nested_tensor_from_jagged(entropy, offsets),
    }
    return data, output, log_probs, entropy


def actor(mode="token-mean", entropy_coeff=0.0):
    return ActorConfig(
        strategy="fsdp", rollout_n=2, ppo_micro_batch_size_per_gpu=2, loss_agg_mode=mode, entropy_coeff=entropy_coeff
    )


def loss_and_grads(loss_fn, config, data, output, log_probs, entropy):
    loss, metrics = loss_fn(config, output, data)
    loss.backward()
    return loss.detach(), log_probs.grad.clone(), entropy.grad.clone(), metrics


@pytest.mark.parametrize("counts", [LOCAL, GLOBAL], ids=["one-rank", "two-ranks"])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_uniform_coefficients_equal_entropy_coeff(mode, counts):
    c = 0.3
    reference = loss_and_grads(verl_ppo_loss, actor(mode, entropy_coeff=c), *micro_batch(counts=counts))
    ours = loss_and_grads(ppo_loss, actor(mode), *micro_batch([c] * 4, counts=counts))
    for theirs, mine in zip(reference[:3], ours[:3]):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    assert reference[2].abs().sum() > 0  # the entropy term has a gradient
    without = loss_and_grads(verl_ppo_loss, actor(mode), *micro_batch(counts=counts))
    assert not torch.allclose(without[0], ours[0])
    assert ours[3]["actor/aer_entropy_bonus"].aggregation == ours[3]["actor/pg_loss"].aggregation


def test_without_coefficients_it_is_verls_ppo_loss():
    config = actor("seq-mean-token-mean", entropy_coeff=0.05)
    reference = loss_and_grads(verl_ppo_loss, config, *micro_batch())
    ours = loss_and_grads(ppo_loss, config, *micro_batch())
    for theirs, mine in zip(reference[:3], ours[:3]):
        assert torch.equal(mine, theirs)
    assert "actor/aer_entropy_bonus" not in ours[3]


def test_each_response_gets_its_own_coefficient():
    coefficients = [0.5, -1.0, 0.0, 2.0]
    plain = loss_and_grads(verl_ppo_loss, actor(), *micro_batch())
    ours = loss_and_grads(ppo_loss, actor(), *micro_batch(coefficients))
    _, _, _, entropy = micro_batch()
    # Response i's token t sits at flat position (start of sequence i) + prompt_len_i + t - 1 (verl's shift).
    starts = np.cumsum([0, *np.add(PROMPT_LENS, RESPONSE_LENS)])
    positions = [list(range(s + p - 1, s + p - 1 + r)) for s, p, r in zip(starts, PROMPT_LENS, RESPONSE_LENS)]
    tokens = sum(RESPONSE_LENS)
    bonus = sum(c * entropy[pos].sum() for c, pos in zip(coefficients, positions)) / tokens  # token-mean
    torch.testing.assert_close(ours[0], plain[0] - bonus.detach(), rtol=1e-6, atol=1e-7)
    expected = plain[2].clone()
    for c, pos in zip(coefficients, positions):
        expected[pos] -= c / tokens
    torch.testing.assert_close(ours[2], expected)


def test_refuses_entropy_coeff_and_missing_entropy():
    data, output, *_ = micro_batch([0.1] * 4)
    with pytest.raises(ValueError, match="entropy_coeff must be 0"):
        ppo_loss(actor(entropy_coeff=0.01), output, data)
    del output["entropy"]
    with pytest.raises(ValueError, match="calculate_entropy=True"):
        ppo_loss(actor(), output, data)


UIDS = np.array(["b", "a", "pad", "c", "a", "b", "a", "b", "pad", "c"], dtype=object)
SCORES = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, math.nan, 0.0, 1.0, 0.0])
PADDING = [False, False, True, False, False, False, False, False, True, False]


def test_group_accuracy_by_uid_against_a_hand_count():
    # a: 0, 1, NaN -> 1/3; b: 1, 1, 0 -> 2/3; c: 0, 0 -> 0; padding rows belong to no group.
    acc = group_accuracy(SCORES, UIDS, is_padding=PADDING)
    expected = [2 / 3, 1 / 3, math.nan, 0.0, 1 / 3, 2 / 3, 1 / 3, 2 / 3, math.nan, 0.0]
    torch.testing.assert_close(acc, torch.tensor(expected), equal_nan=True)
    assert group_accuracy(SCORES, UIDS, is_padding=PADDING, success_threshold=0.0)[3].item() == 1.0


def test_padding_is_excluded_even_under_a_real_uid():
    uids = UIDS.copy()
    uids[2] = "c"  # a padding row that claims group c, with a score that would count as correct
    assert group_accuracy(SCORES, uids, is_padding=PADDING)[3].item() == 0.0
    assert group_accuracy(SCORES, uids)[3].item() == pytest.approx(1 / 3)  # without the flags it would count


@pytest.mark.parametrize(
    "scores, uids, is_padding, name",
    [
        (SCORES[:5], UIDS, None, "uids"),
        (SCORES.view(2, 5), UIDS, None, "scores"),
        (SCORES, "abcdefghij", None, "uids"),
        (SCORES, UIDS, PADDING[:3], "is_padding"),
        (SCORES, UIDS, [0] * 10, "is_padding"),
    ],
)
def test_group_accuracy_validates_arguments(scores, uids, is_padding, name):
    with pytest.raises(ValueError, match=name):
        group_accuracy(scores, uids, is_padding=is_padding)


def synthetic_rollout(seed):
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(10, 5, generator=gen)
    mask = (torch.arange(5) < torch.tensor([5, 3, 1, 4, 2, 5, 1, 3, 1, 2])[:, None]).long()
    entropy[2] = entropy[8] = 100.0  # padding rows: never read
    mask[8] = 1
    return entropy, mask


def test_driver_step_coefficients_and_one_update_per_step():
    config = AERConfig(weighting="linear", coef_init=0.2, coef_step=0.05, coef_max=1.0, target_ratio=2.0)
    driver = AERDriver(config)
    entropy, mask = synthetic_rollout(0)
    real = ~torch.tensor(PADDING)
    coefficients = driver.step(scores=SCORES, uids=UIDS, entropy=entropy, response_mask=mask, is_padding=PADDING)
    acc = torch.tensor([2 / 3, 1 / 3, 0.0, 0.0, 1 / 3, 2 / 3, 1 / 3, 2 / 3, 0.0, 0.0])
    torch.testing.assert_close(coefficients, torch.where(real, 0.2 * (1 - acc), 0.0))
    h0 = (entropy[real] * mask[real]).sum() / mask[real].sum()
    assert driver.controller.step == 1
    assert driver.controller.initial_entropy == pytest.approx(h0.item())
    assert driver.controller.coefficient == pytest.approx(0.2)  # anchoring step: α unchanged
    assert driver.controller.metrics()["aer/weight_mean"] == pytest.approx((1 - acc[real]).mean().item())

    entropy, mask = synthetic_rollout(1)
    coefficients = driver.step(scores=SCORES, uids=UIDS, entropy=entropy, response_mask=mask, is_padding=PADDING)
    torch.testing.assert_close(coefficients, torch.where(real, 0.2 * (1 - acc), 0.0))  # α of before this update
    assert driver.controller.step == 2
    assert driver.controller.coefficient == pytest.approx(0.25)  # below 2·H0: α rose by coef_step


def test_driver_coefficients_through_verls_batch_layout_into_the_loss():
    # The trainer's path: λ per sample -> per token like `advantages` (response_to_nested) -> ppo_loss.
    uids, scores = ["x", "y", "x", "y"], torch.tensor([1.0, 0.0, 0.0, 0.0])
    driver = AERDriver(AERConfig(weighting="linear", coef_init=0.4, coef_max=1.0))
    mask = (torch.arange(4) < torch.tensor(RESPONSE_LENS)[:, None]).long()
    coefficients = driver.step(scores=scores, uids=uids, entropy=torch.rand(4, 4), response_mask=mask)
    torch.testing.assert_close(coefficients, torch.tensor([0.2, 0.4, 0.2, 0.4]))
    data, output, log_probs, entropy = micro_batch()
    per_token = coefficients[:, None].expand(mask.shape).contiguous()
    data[COEFFICIENTS_KEY] = response_to_nested(per_token, data["response_mask"])
    ours = loss_and_grads(ppo_loss, actor(), data, output, log_probs, entropy)
    expected = loss_and_grads(ppo_loss, actor(), *micro_batch(coefficients.tolist()))
    torch.testing.assert_close(ours[0], expected[0])


def test_driver_step_validates_entropy():
    with pytest.raises(ValueError, match="entropy"):
        AERDriver().step(scores=SCORES, uids=UIDS, entropy=torch.rand(9, 5), response_mask=torch.ones(9, 5))
