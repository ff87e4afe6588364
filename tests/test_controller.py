"""AERConfig validation and AERController behaviour, against trajectories computed by hand."""

import dataclasses
import json
import math
import warnings

import pytest
import torch

from aer import AERConfig, AERController

EXACT = dict(rel=1e-12, abs=1e-15)


def trajectory(ctrl: AERController, entropies: list[float]) -> list[float]:
    """The applied α after each update, feeding each entropy as one token."""
    coefs = []
    for h in entropies:
        ctrl.update(h, 1.0)
        coefs.append(ctrl.coefficient)
    return coefs


def test_config_defaults():
    cfg = AERConfig()
    assert dataclasses.asdict(cfg) == {
        "weighting": "linear",
        "threshold": 0.5,
        "normalize_weights": False,
        "success_threshold": 0.5,
        "target_ratio": 0.5,
        "anchor_steps": 1,
        "absolute_target": None,
        "update": "sign",
        "coef_init": 0.0,
        "coef_step": 1e-4,
        "coef_min": 0.0,
        "coef_max": 5e-3,
        "tolerance": 0.0,
        "gate_above_target": False,
    }


@pytest.mark.parametrize(
    "field, value, extra",
    [
        ("weighting", "quadratic", {}),
        ("update", "pid", {}),
        ("threshold", 1.5, {}),
        ("threshold", -0.1, {}),
        ("threshold", math.nan, {}),
        ("success_threshold", math.inf, {}),
        ("target_ratio", 0.0, {}),
        ("target_ratio", -1.0, {}),
        ("target_ratio", math.nan, {}),
        ("anchor_steps", 0, {}),
        ("anchor_steps", 1.0, {}),
        ("anchor_steps", True, {}),
        ("absolute_target", 0.0, {}),
        ("absolute_target", -0.2, {}),
        ("absolute_target", math.inf, {}),
        ("coef_step", -1e-4, {}),
        ("coef_step", math.nan, {}),
        ("coef_init", 1.0, {}),
        ("coef_init", -1.0, {}),
        ("coef_init", math.nan, {}),
        ("coef_min", 1.0, {"coef_init": 1.0}),
        ("coef_max", -math.inf, {}),
        ("coef_init", 0.0, {"update": "log"}),
        ("tolerance", -0.1, {}),
        ("tolerance", "0.1", {}),
        ("normalize_weights", 1, {}),
        ("gate_above_target", "yes", {}),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field, value, extra):
    with pytest.raises(ValueError, match=field):
        AERConfig(**{field: value, **extra})


def test_config_is_frozen_so_validation_cannot_be_bypassed():
    cfg = AERConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.coef_step = -1.0
    with pytest.raises(ValueError, match="coef_step"):
        dataclasses.replace(cfg, coef_step=-1.0)


def test_controller_takes_an_aer_config():
    assert AERController().config == AERConfig()
    with pytest.raises(ValueError, match="config"):
        AERController({"coef_step": 1e-3})


def test_log_rule_accepts_positive_coef_init():
    assert AERConfig(update="log", coef_init=1e-3).coef_init == 1e-3


def test_anchoring_is_token_weighted_over_several_updates_and_holds_alpha():
    ctrl = AERController(AERConfig(anchor_steps=3, target_ratio=0.5, coef_init=1e-3, coef_step=1e-3))
    # (Σ H·mask, Σ mask) per step: token means 1.0, 1.5, 0.5; their plain mean would be 1.0.
    for entropy_sum, tokens in [(10.0, 10.0), (30.0, 20.0)]:
        ctrl.update(entropy_sum, tokens)
        assert ctrl.initial_entropy is None and ctrl.target_entropy is None
        assert ctrl.coefficient == 1e-3
    ctrl.update(5.0, 10.0)
    assert ctrl.initial_entropy == 45.0 / 40.0
    assert ctrl.target_entropy == 0.5 * 45.0 / 40.0
    assert ctrl.coefficient == 1e-3  # the update completing the anchor does not move α
    assert ctrl.step == 3
    ctrl.update(0.1, 1.0)  # below target: sign rule raises α
    assert ctrl.coefficient == pytest.approx(2e-3, **EXACT)
    assert ctrl.step == 4


def test_state_saved_while_anchoring_anchors_under_a_smaller_anchor_steps():
    """Saved after 2 of 3 anchoring updates, resumed with anchor_steps=1: the next update is past anchor_steps,
    so it anchors there on all the entropy accumulated so far, and α adapts from the update after."""
    first = AERController(AERConfig(anchor_steps=3, coef_step=1e-3))
    first.update(10.0, 10.0)
    first.update(30.0, 20.0)
    resumed = AERController(AERConfig(anchor_steps=1, coef_step=1e-3))
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    resumed.update(5.0, 10.0)
    assert resumed.initial_entropy == 45.0 / 40.0 and resumed.step == 3
    assert resumed.coefficient == 0.0  # the update completing the anchor does not move α
    resumed.update(0.1, 1.0)  # far below the target: α climbs
    assert resumed.coefficient == pytest.approx(1e-3, **EXACT)
    for _ in range(49):
        resumed.update(0.1, 1.0)
    assert resumed.coefficient == 5e-3 and resumed.initial_entropy == 45.0 / 40.0  # coef_max


def test_target_ratio_scales_the_anchor():
    ctrl = AERController(AERConfig(target_ratio=0.8))
    ctrl.update(2.5, 1.0)
    assert ctrl.target_entropy == pytest.approx(2.0, **EXACT)


def test_sign_rule_trajectory_with_clipping_at_both_bounds():
    cfg = AERConfig(update="sign", coef_init=2e-3, coef_step=1e-3, coef_min=0.0, coef_max=4e-3)
    ctrl = AERController(cfg)
    ctrl.update(2.0, 1.0)  # anchor
    got = trajectory(ctrl, [0.5, 0.8, 0.9, 1.0, 1.5, 2.0, 3.0, 3.0, 0.2])
    # e > 0 raises by 1e-3, e < 0 lowers, e = 0 keeps; clipped to [0, 4e-3].
    want = [3e-3, 4e-3, 4e-3, 4e-3, 3e-3, 2e-3, 1e-3, 0.0, 1e-3]
    assert got == pytest.approx(want, **EXACT)


def test_proportional_rule_trajectory_with_clipping_at_both_bounds():
    cfg = AERConfig(update="proportional", coef_init=0.01, coef_step=0.1, coef_min=0.0, coef_max=0.05)
    ctrl = AERController(cfg)
    ctrl.update(2.0, 1.0)
    got = trajectory(ctrl, [0.5, 1.5, 1.25, 0.75, 0.875])
    # e = 0.5 -> 0.06 clipped to 0.05; e = -0.5 -> 0.0; e = -0.25 -> -0.025 clipped to 0;
    # e = 0.25 -> 0.025; e = 0.125 -> 0.0375
    assert got == pytest.approx([0.05, 0.0, 0.0, 0.025, 0.0375], **EXACT)


def test_log_rule_trajectory_with_clipping_at_both_bounds():
    cfg = AERConfig(update="log", coef_init=1e-3, coef_step=2.0, coef_min=1e-4, coef_max=1e-2)
    ctrl = AERController(cfg)
    ctrl.update(2.0, 1.0)
    got = trajectory(ctrl, [0.5, 0.0, 2.0, 4.0, 1.5])
    a1 = 1e-3 * math.exp(2.0 * 0.5)  # e = 0.5
    # e = 1: a1 · e^2 = 0.0201 clips to 1e-2; e = -1: 1e-2 · e^-2; e = -3: · e^-6 clips to 1e-4;
    # e = -0.5 stays clipped at 1e-4
    a3 = 1e-2 * math.exp(-2.0)
    assert got == pytest.approx([a1, 1e-2, a3, 1e-4, 1e-4], **EXACT)


@pytest.mark.parametrize("update", ["sign", "proportional", "log"])
def test_dead_band_keeps_alpha_within_tolerance(update):
    cfg = AERConfig(update=update, coef_init=1e-3, coef_step=1e-3, coef_max=1.0, tolerance=0.125)
    ctrl = AERController(cfg)
    ctrl.update(2.0, 1.0)  # H* = 1.0
    assert trajectory(ctrl, [0.875, 1.125, 1.0]) == [1e-3, 1e-3, 1e-3]  # |e| = 0.125, 0.125, 0
    ctrl.update(0.75, 1.0)  # e = 0.25 leaves the band
    assert ctrl.coefficient > 1e-3


def test_zero_step_never_moves_alpha():
    ctrl = AERController(AERConfig(coef_init=1e-3, coef_step=0.0))
    ctrl.update(2.0, 1.0)
    assert trajectory(ctrl, [0.1, 5.0]) == [1e-3, 1e-3]


def test_gate_zeroes_alpha_while_entropy_is_above_target():
    cfg = AERConfig(update="sign", coef_init=2e-3, coef_step=1e-3, gate_above_target=True)
    ctrl = AERController(cfg)
    acc = torch.tensor([0.0, 0.5])
    assert ctrl.coefficient == 2e-3  # nothing measured yet
    ctrl.update(2.0, 1.0)  # anchor: H* = 1.0, last H = 2.0 > H*
    assert ctrl.coefficient == 0.0
    assert torch.equal(ctrl.coefficients(acc, group_size=2), torch.zeros(4))
    assert ctrl.metrics()["aer/coef"] == 0.0
    # The held α keeps following the rule underneath the gate.
    assert trajectory(ctrl, [0.5, 1.5, 0.5]) == pytest.approx([3e-3, 0.0, 3e-3], **EXACT)
    assert ctrl.coefficients(acc, group_size=2).tolist() == pytest.approx([3e-3, 3e-3, 1.5e-3, 1.5e-3], rel=1e-6)


def test_without_gate_alpha_applies_above_target():
    ctrl = AERController(AERConfig(update="sign", coef_init=2e-3, coef_step=1e-3))
    ctrl.update(2.0, 1.0)
    assert ctrl.coefficient == 2e-3


def skywork_or1_reference(entropies, target=0.2, step=1e-4, lo=0.0, hi=5e-3):
    """Skywork-OR1's adaptive entropy control: c += step if H < target else -= step, clipped; the applied
    coefficient is 0 while H > target."""
    c, applied = 0.0, []
    for h in entropies:
        c = min(max(c + step if h < target else c - step, lo), hi)
        applied.append(0.0 if h > target else c)
    return applied


def test_skywork_or1_configuration_reproduces_its_controller():
    cfg = AERConfig(
        absolute_target=0.2,
        weighting="uniform",
        update="sign",
        gate_above_target=True,
        coef_init=0.0,
        coef_step=1e-4,
        coef_min=0.0,
        coef_max=5e-3,
    )
    gen = torch.Generator().manual_seed(0)
    # A long stretch below target (α saturates at coef_max), then noise around it, then above (α back to 0).
    entropies = [0.1] * 60 + (0.2 + 0.05 * torch.randn(100, generator=gen)).tolist() + [0.3] * 60
    assert 0.2 not in entropies  # the rules differ only on exact ties
    ctrl = AERController(cfg)
    assert ctrl.target_entropy == 0.2 and ctrl.coefficient == 0.0
    acc = torch.tensor([0.0, 0.25, 1.0])
    got = []
    for h in entropies:
        ctrl.update(h, 1.0)
        lam = ctrl.coefficients(acc, group_size=4)
        assert torch.all(lam == lam[0])  # uniform: no difficulty awareness
        got.append(ctrl.coefficient)
        assert lam[0].item() == pytest.approx(ctrl.coefficient, rel=1e-6)
    want = skywork_or1_reference(entropies)
    assert got == pytest.approx(want, abs=1e-15)
    assert max(want) == pytest.approx(5e-3) and want[-1] == 0.0
    assert ctrl.initial_entropy == 0.1  # H0 is still measured for reference


def test_absolute_target_overrides_the_ratio():
    ctrl = AERController(AERConfig(absolute_target=0.7, target_ratio=0.1, anchor_steps=2))
    ctrl.update(3.0, 1.0)
    ctrl.update(1.0, 1.0)
    assert ctrl.target_entropy == 0.7 and ctrl.initial_entropy == 2.0


ACC = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])  # all-wrong ... all-correct


@pytest.mark.parametrize(
    "weighting, threshold, weights",
    [
        ("linear", 0.5, [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("threshold", 0.5, [1.0, 1.0, 1.0, 0.0, 0.0]),
        ("threshold", 0.25, [1.0, 1.0, 0.0, 0.0, 0.0]),
        ("signed", 0.5, [1.0, 0.5, 0.0, -0.5, -1.0]),
        ("signed", 0.25, [1 / 3, 0.0, -1 / 3, -2 / 3, -1.0]),
        ("uniform", 0.5, [1.0] * 5),
    ],
)
def test_weightings_on_hand_picked_accuracies(weighting, threshold, weights):
    ctrl = AERController(AERConfig(weighting=weighting, threshold=threshold, coef_init=4e-3))
    lam = ctrl.coefficients(ACC, group_size=3)
    assert lam.shape == (15,) and lam.dtype == torch.float32 and not lam.requires_grad
    want = torch.tensor(weights).mul(4e-3).repeat_interleave(3)
    torch.testing.assert_close(lam, want, rtol=1e-6, atol=0)
    metrics = ctrl.metrics()
    assert metrics["aer/weight_mean"] == pytest.approx(sum(weights) / 5, abs=1e-6)
    assert metrics["aer/frac_weighted"] == pytest.approx(sum(w != 0 for w in weights) / 5)


@pytest.mark.parametrize(
    "weighting, acc, weights",
    [
        ("linear", ACC, [2.0, 1.5, 1.0, 0.5, 0.0]),  # mean|w| = 0.5
        ("signed", ACC, [1 / 0.6, 0.5 / 0.6, 0.0, -0.5 / 0.6, -1 / 0.6]),  # mean|w| = 0.6
        ("linear", torch.ones(3), [0.0, 0.0, 0.0]),  # mean|w| = 0: left as is, no NaN
    ],
)
def test_normalize_weights_rescales_by_mean_absolute_weight(weighting, acc, weights):
    ctrl = AERController(AERConfig(weighting=weighting, normalize_weights=True, coef_init=1e-3))
    lam = ctrl.coefficients(acc, group_size=2)
    torch.testing.assert_close(lam, torch.tensor(weights).mul(1e-3).repeat_interleave(2), rtol=1e-6, atol=0)


def test_coefficients_are_detached_and_follow_alpha():
    ctrl = AERController(AERConfig(coef_init=0.0, coef_step=1e-3))
    acc = torch.tensor([0.0, 1.0], requires_grad=True)
    assert torch.equal(ctrl.coefficients(acc, group_size=2), torch.zeros(4))
    ctrl.update(2.0, 1.0)
    ctrl.update(0.1, 1.0)
    lam = ctrl.coefficients(acc, group_size=2)
    assert not lam.requires_grad
    assert lam.tolist() == pytest.approx([1e-3, 1e-3, 0.0, 0.0], rel=1e-6)


@pytest.mark.parametrize(
    "acc, group_size, name",
    [
        (torch.zeros(2, 2), 2, "acc"),
        ([0.5], 2, "acc"),
        (torch.zeros(2), 0, "group_size"),
        (torch.zeros(2), 2.0, "group_size"),
    ],
)
def test_coefficients_validate_arguments(acc, group_size, name):
    with pytest.raises(ValueError, match=name):
        AERController().coefficients(acc, group_size=group_size)


def test_update_accepts_tensors_like_floats():
    a, b = AERController(), AERController()
    for s, n in [(6.0, 4.0), (1.0, 4.0)]:
        a.update(s, n)
        b.update(torch.tensor(s, dtype=torch.float32), torch.tensor(int(n)))
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize(
    "entropy_sum, token_count, name",
    [(torch.ones(2), 1.0, "entropy_sum"), (1.0, "3", "token_count"), (True, 1.0, "entropy_sum")],
)
def test_update_validates_arguments(entropy_sum, token_count, name):
    with pytest.raises(ValueError, match=name):
        AERController().update(entropy_sum, token_count)


@pytest.mark.parametrize(
    "entropy_sum, token_count, name",
    [
        (-1e-3, 4.0, "entropy_sum"),
        (torch.tensor(-2.0, dtype=torch.float64), torch.tensor(3.0), "entropy_sum"),
        (-5.0, 0.0, "entropy_sum"),
        (1.0, -2.0, "token_count"),
        (1.0, math.nan, "token_count"),
        (1.0, math.inf, "token_count"),
        (math.nan, torch.tensor(-math.inf), "token_count"),
    ],
)
def test_update_rejects_impossible_sums_and_leaves_state_untouched(entropy_sum, token_count, name):
    """An entropy is never negative and a token count is a finite number >= 0: anything else is a caller's
    mistake, raised (unlike a non-finite entropy, which a diverging model can produce and which is skipped)."""
    ctrl = AERController(AERConfig(coef_init=1e-3, coef_step=1e-3))
    ctrl.update(2.0, 1.0)
    before = ctrl.state_dict()
    with pytest.raises(ValueError, match=name):
        ctrl.update(entropy_sum, token_count)
    assert ctrl.state_dict() == before  # not even counted as skipped
    ctrl.update(0.5, 1.0)
    assert ctrl.coefficient == pytest.approx(2e-3, **EXACT)


INVALID_ACC = torch.tensor([0.0, math.nan, 1.0, 1.5, 0.5, -0.25])
INVALID_AT = [False, True, False, True, False, True]


@pytest.mark.parametrize("weighting", ["linear", "threshold", "signed", "uniform"])
def test_accuracy_outside_unit_interval_gives_nan_coefficients_then_update_raises(weighting):
    ctrl = AERController(AERConfig(weighting=weighting, coef_init=1e-3, coef_step=1e-3))
    ctrl.update(2.0, 1.0)
    before = ctrl.state_dict()
    lam = ctrl.coefficients(INVALID_ACC, group_size=2)
    valid = ctrl.coefficients(INVALID_ACC[[0, 2, 4]], group_size=2)
    assert lam.isnan().tolist() == [bad for bad in INVALID_AT for _ in range(2)]
    assert torch.equal(lam[~lam.isnan()], valid)  # the valid prompts' λ are those of a clean batch
    with pytest.raises(ValueError, match=r"acc .* 3 value\(s\) outside \[0, 1\] or NaN"):
        ctrl.update(0.5, 1.0)
    assert ctrl.state_dict() == before
    ctrl.update(0.5, 1.0)  # reported once: the next step goes through
    assert ctrl.coefficient == pytest.approx(2e-3, **EXACT)


def test_invalid_accuracies_accumulate_over_coefficients_calls_until_update():
    ctrl = AERController()
    ctrl.coefficients(torch.tensor([2.0]), group_size=1)
    ctrl.coefficients(torch.tensor([0.5]), group_size=1)
    ctrl.coefficients(torch.tensor([math.nan, -1.0]), group_size=1)
    with pytest.raises(ValueError, match=r"3 value\(s\)"):
        ctrl.update(1.0, 1.0)


def test_normalized_weights_are_all_nan_when_one_accuracy_is_invalid():
    ctrl = AERController(AERConfig(normalize_weights=True, coef_init=1e-3))
    assert ctrl.coefficients(torch.tensor([0.0, 0.5, math.nan]), group_size=2).isnan().all()
    assert math.isnan(ctrl.metrics()["aer/weight_mean"])


def test_coefficients_never_read_values_back_to_the_host():
    """A meta tensor has no values: any host read of them (.item(), bool(), int()) raises."""
    ctrl = AERController(AERConfig(normalize_weights=True, coef_init=1e-3))
    lam = ctrl.coefficients(torch.empty(4, device="meta"), group_size=3)
    assert lam.shape == (12,) and lam.device.type == "meta"


def test_update_with_group_but_no_process_group_is_an_error():
    with pytest.raises(ValueError, match="group"):
        AERController().update(1.0, 1.0, group=object())


@pytest.mark.parametrize(
    "backend, inputs_on, want",
    [
        ("nccl", torch.device("cuda", 1), torch.device("cuda", 1)),  # the rank's GPU, whatever the current one
        ("nccl", torch.device("cpu"), torch.device("cuda", 3)),  # CPU numbers go to the current CUDA device
        ("gloo", torch.device("cuda", 1), torch.device("cpu")),
        ("gloo", torch.device("cpu"), torch.device("cpu")),
    ],
)
def test_all_reduce_device_follows_backend_and_inputs(monkeypatch, backend, inputs_on, want):
    """Without torch.cuda.set_device every rank's current device is cuda:0; NCCL must still reduce on the
    inputs' own GPU. (Checked on the device choice itself: this machine may have no GPU.)"""
    import torch.distributed as dist

    from aer import _distributed

    monkeypatch.setattr(dist, "get_backend", lambda group=None: dist.Backend(backend))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _distributed._communication_device(inputs_on, None) == want


def test_bad_steps_are_skipped_counted_warned_once_and_leave_state_untouched():
    ctrl = AERController(AERConfig(anchor_steps=2, coef_init=1e-3))
    ctrl.update(3.0, 2.0)
    before = ctrl.state_dict()
    bad = [
        (math.nan, 4.0),
        (math.inf, 4.0),
        (5.0, 0.0),
        (torch.tensor(-math.inf), torch.tensor(3)),
        (0.0, torch.tensor(0)),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s, n in bad:
            ctrl.update(s, n)
    assert len(caught) == 1 and "skipped" in str(caught[0].message)
    assert ctrl.metrics()["aer/skipped_updates"] == float(len(bad))
    assert {**ctrl.state_dict(), "skipped_updates": 0} == {**before, "skipped_updates": 0}
    ctrl.update(1.0, 2.0)  # the anchor still completes on the next good step
    assert ctrl.initial_entropy == 1.0 and ctrl.step == 2


METRIC_KEYS = {
    "aer/entropy",
    "aer/initial_entropy",
    "aer/target_entropy",
    "aer/coef",
    "aer/weight_mean",
    "aer/frac_weighted",
    "aer/skipped_updates",
    "aer/step",
}


def test_metrics_before_anything_use_nan_for_undefined_values():
    m = AERController(AERConfig(coef_init=1e-3)).metrics()
    assert set(m) == METRIC_KEYS and all(type(v) is float for v in m.values())
    for key in ("aer/entropy", "aer/initial_entropy", "aer/target_entropy", "aer/weight_mean", "aer/frac_weighted"):
        assert math.isnan(m[key])
    assert (m["aer/coef"], m["aer/skipped_updates"], m["aer/step"]) == (1e-3, 0.0, 0.0)


def test_metrics_after_steps():
    ctrl = AERController(AERConfig(coef_init=1e-3, coef_step=1e-3))
    ctrl.coefficients(torch.tensor([0.0, 1.0, 0.5, 0.5]), group_size=2)
    ctrl.update(torch.tensor(8.0), torch.tensor(4))
    ctrl.update(2.0, 2.0)
    m = ctrl.metrics()
    assert set(m) == METRIC_KEYS and all(type(v) is float for v in m.values())
    assert m == {
        "aer/entropy": 1.0,
        "aer/initial_entropy": 2.0,
        "aer/target_entropy": 1.0,
        "aer/coef": 1e-3,
        "aer/weight_mean": 0.5,
        "aer/frac_weighted": 0.75,
        "aer/skipped_updates": 0.0,
        "aer/step": 2.0,
    }


RULES = [
    AERConfig(update="sign", anchor_steps=3, coef_step=1e-3, coef_max=1e-2),
    AERConfig(update="proportional", coef_init=1e-3, coef_step=1e-2, gate_above_target=True),
    AERConfig(update="log", coef_init=1e-3, coef_step=0.5, coef_min=1e-5, tolerance=0.05),
]


def entropy_stream(n: int) -> list[tuple[float, float]]:
    """(Σ H·mask, Σ mask) per step: token means 2.0 for the first steps, then around 1.0 (the target)."""
    gen = torch.Generator().manual_seed(1)
    means = (1.0 + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)).tolist()
    means[:3] = [2.0] * 3
    counts = torch.randint(1, 20, (n,), generator=gen).tolist()
    counts[4] = 0  # one skipped step inside the stream
    return [(h * c, c) for h, c in zip(means, counts)]


@pytest.mark.parametrize("cfg", RULES, ids=lambda c: c.update)
@pytest.mark.parametrize("stop_at", [1, 2, 7])
def test_resumed_controller_continues_the_uninterrupted_trajectory(cfg, stop_at):
    stream = entropy_stream(30)
    uninterrupted = AERController(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [(uninterrupted.update(s, n), uninterrupted.coefficient)[1] for s, n in stream]

        first = AERController(cfg)
        got = [(first.update(s, n), first.coefficient)[1] for s, n in stream[:stop_at]]
        checkpoint = json.loads(json.dumps(first.state_dict()))
        resumed = AERController(cfg)
        resumed.load_state_dict(checkpoint)
        got += [(resumed.update(s, n), resumed.coefficient)[1] for s, n in stream[stop_at:]]
    assert got == want  # bit-identical
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert len(set(want)) > 3  # the trajectory actually moves


def test_state_dict_is_plain_json_with_a_format_version():
    ctrl = AERController()
    ctrl.update(1.0, 2.0)
    state = ctrl.state_dict()
    assert state["format_version"] == 1
    assert json.loads(json.dumps(state, allow_nan=False)) == state


def test_load_state_dict_rejects_other_versions_and_missing_or_unknown_keys():
    state = AERController().state_dict()
    ctrl = AERController()
    with pytest.raises(ValueError, match="format_version 2"):
        ctrl.load_state_dict({**state, "format_version": 2})
    with pytest.raises(ValueError, match="format_version None"):
        ctrl.load_state_dict({k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(ValueError, match=r"missing keys \['coef'\]"):
        ctrl.load_state_dict({k: v for k, v in state.items() if k != "coef"})
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        ctrl.load_state_dict({**state, "extra": 1})
    with pytest.raises(ValueError, match="mapping"):
        ctrl.load_state_dict([("format_version", 1)])


CHECKPOINTED = AERConfig(anchor_steps=2, coef_init=1e-3, coef_step=1e-3, coef_max=1e-2)


def checkpointed_state() -> dict:
    """A valid state after anchoring: step 3, H0 = (3 + 1) / (2 + 2) = 1.0, α = 2e-3."""
    ctrl = AERController(CHECKPOINTED)
    for entropy_sum, tokens in [(3.0, 2.0), (1.0, 2.0), (0.1, 1.0)]:
        ctrl.update(entropy_sum, tokens)
    state = ctrl.state_dict()
    assert (state["step"], state["initial_entropy"], state["coef"]) == (3, 1.0, pytest.approx(2e-3, **EXACT))
    return state


@pytest.mark.parametrize(
    "key, bad",
    [
        ("coef", math.nan),
        ("coef", math.inf),
        ("coef", -math.inf),
        ("coef", 1e9),
        ("coef", -1e-3),
        ("coef", "0.001"),
        ("coef", True),
        ("coef", None),
        ("step", "7"),
        ("step", -3),
        ("step", 3.0),
        ("step", True),
        ("skipped_updates", -1),
        ("skipped_updates", None),
        ("skipped_updates", 0.5),
        ("anchor_entropy_sum", -4.0),
        ("anchor_entropy_sum", math.nan),
        ("anchor_entropy_sum", "4"),
        ("anchor_token_count", -4.0),
        ("anchor_token_count", math.inf),
        ("initial_entropy", math.nan),
        ("initial_entropy", -1.0),
        ("initial_entropy", "high"),
        ("initial_entropy", math.inf),
        ("last_entropy", math.nan),
        ("last_entropy", -0.1),
        ("last_entropy", False),
    ],
)
def test_load_state_dict_rejects_corrupt_values_naming_the_key(key, bad):
    ctrl = AERController(CHECKPOINTED)
    ctrl.update(2.0, 1.0)
    before = ctrl.state_dict()
    with pytest.raises(ValueError, match=rf"AER state {key} must be"):
        ctrl.load_state_dict({**checkpointed_state(), key: bad})
    assert ctrl.state_dict() == before  # all or nothing


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"last_entropy": None}, "last_entropy"),  # step 3 but nothing measured
        ({"step": 0, "initial_entropy": None}, "last_entropy"),  # measured but no step
        ({"anchor_token_count": 0.0, "anchor_entropy_sum": 0.0, "initial_entropy": None}, "anchor_token_count"),
        ({"step": 0, "last_entropy": None, "initial_entropy": None, "anchor_token_count": 0.0}, "anchor_entropy_sum"),
        ({"step": 1}, "initial_entropy"),  # anchored before anchor_steps = 2 updates
        ({"initial_entropy": 1.5}, "initial_entropy"),  # not the anchored sums' mean
    ],
)
def test_load_state_dict_rejects_inconsistent_states_naming_the_key(changes, key):
    ctrl = AERController(CHECKPOINTED)
    before = ctrl.state_dict()
    with pytest.raises(ValueError, match=rf"AER state {key}"):
        ctrl.load_state_dict({**checkpointed_state(), **changes})
    assert ctrl.state_dict() == before


def test_load_state_dict_checks_coef_against_this_config():
    state = checkpointed_state()  # α = 2e-3
    with pytest.raises(ValueError, match=r"coef must be .*\[coef_min, coef_max\] = \[0.0, 0.001\]"):
        AERController(AERConfig(coef_max=1e-3)).load_state_dict(state)
    with pytest.raises(ValueError, match="initial_entropy"):
        AERController(AERConfig(anchor_steps=4, coef_max=1e-2)).load_state_dict(state)


def test_load_state_dict_accepts_every_valid_state_of_a_run():
    """Before any update, while anchoring, after skips and after anchoring: each state loads and round-trips."""
    ctrl = AERController(AERConfig(anchor_steps=2, update="log", coef_init=1e-3, coef_step=0.5))
    states = [ctrl.state_dict()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entropy_sum, tokens in [(0.0, 3.0), (math.nan, 2.0), (4.0, 2.0), (0.2, 1.0), (5.0, 0.0)]:
            ctrl.update(entropy_sum, tokens)
            states.append(ctrl.state_dict())
    for state in states:
        resumed = AERController(ctrl.config)
        resumed.load_state_dict(json.loads(json.dumps(state)))
        assert resumed.state_dict() == state
