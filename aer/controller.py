"""The Adaptive Entropy Regularization controller: per-response coefficients and the global α.

Per response i of prompt b (group accuracy acc_b, weight w, global coefficient α):

    λ_i = α · w(acc_b)

After each optimizer step the controller reads the step's token-mean entropy H_k and moves α towards the
target entropy H* (= target_ratio · H0, with H0 the token-mean entropy of the first `anchor_steps` updates,
or `absolute_target`):

    e = (H* - H_k) / H*                      > 0 when entropy is below target
    |e| <= tolerance: α unchanged
    sign:         α ← α + coef_step · sgn(e)
    proportional: α ← α + coef_step · e
    log:          α ← α · exp(coef_step · e)
    α ← clip(α, coef_min, coef_max)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch

from aer._distributed import reduce_entropy_stats
from aer.loss import _check_group_size, _describe

WEIGHTINGS = ("linear", "threshold", "signed", "uniform")
UPDATE_RULES = ("sign", "proportional", "log")
STATE_FORMAT_VERSION = 1
_STATE_KEYS = frozenset(
    {
        "format_version",
        "coef",
        "step",
        "anchor_entropy_sum",
        "anchor_token_count",
        "initial_entropy",
        "last_entropy",
        "skipped_updates",
    }
)


def _check_real(name: str, value: Any) -> float:
    # bool is an int subclass; True as a coefficient is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AERConfig:
    """Settings of the controller; validated on construction (ValueError names the field).

    Args:
        weighting: w(acc) — "linear" 1 - acc, "threshold" 1[acc <= threshold],
            "signed" (threshold - acc) / max(threshold, 1 - threshold), "uniform" 1.
        threshold: τ of the "threshold" and "signed" weightings, in [0, 1].
        normalize_weights: rescale w by 1 / mean|w| over the batch (skipped when that mean is 0).
        success_threshold: a reward r counts as correct when r >= success_threshold (for group_accuracy).
        target_ratio: ρ in H* = ρ · H0, > 0.
        anchor_steps: number of first updates whose token-mean entropy defines H0, >= 1.
        absolute_target: H* in nats (> 0) replacing ρ · H0; α then adapts from the first update.
        update: "sign", "proportional" or "log" (multiplicative; needs coef_init > 0).
        coef_init: α's start, in [coef_min, coef_max].
        coef_step: α's step size, >= 0.
        coef_min: α's lower bound.
        coef_max: α's upper bound, >= coef_min.
        tolerance: dead band on the relative error |e|, >= 0.
        gate_above_target: apply α = 0 while the last measured entropy is above H*.
    """

    weighting: str = "linear"
    threshold: float = 0.5
    normalize_weights: bool = False
    success_threshold: float = 0.5
    target_ratio: float = 0.5
    anchor_steps: int = 1
    absolute_target: float | None = None
    update: str = "sign"
    coef_init: float = 0.0
    coef_step: float = 1e-4
    coef_min: float = 0.0
    coef_max: float = 5e-3
    tolerance: float = 0.0
    gate_above_target: bool = False

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {UPDATE_RULES}, got {self.update!r}")
        for name in ("normalize_weights", "gate_above_target"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.anchor_steps, bool) or not isinstance(self.anchor_steps, int) or self.anchor_steps < 1:
            raise ValueError(f"anchor_steps must be an int >= 1, got {self.anchor_steps!r}")
        for name in (
            "threshold",
            "success_threshold",
            "target_ratio",
            "coef_init",
            "coef_step",
            "coef_min",
            "coef_max",
            "tolerance",
        ):
            _check_real(name, getattr(self, name))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold!r}")
        if self.target_ratio <= 0:
            raise ValueError(f"target_ratio must be > 0, got {self.target_ratio!r}")
        if self.absolute_target is not None and _check_real("absolute_target", self.absolute_target) <= 0:
            raise ValueError(f"absolute_target must be > 0 or None, got {self.absolute_target!r}")
        if self.coef_step < 0:
            raise ValueError(f"coef_step must be >= 0, got {self.coef_step!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance!r}")
        if self.coef_min > self.coef_max:
            raise ValueError(f"coef_min ({self.coef_min!r}) must be <= coef_max ({self.coef_max!r})")
        if not self.coef_min <= self.coef_init <= self.coef_max:
            raise ValueError(
                f"coef_init must lie in [coef_min, coef_max] = [{self.coef_min!r}, {self.coef_max!r}], "
                f"got {self.coef_init!r}"
            )
        if self.update == "log" and self.coef_init <= 0:
            raise ValueError(f"coef_init must be > 0 for update='log' (α is multiplied), got {self.coef_init!r}")


class AERController:
    """Holds α and the target entropy; hands out per-response coefficients and adapts α once per step.

    Typical step: `coef = ctrl.coefficients(acc, group_size=G)`, add `entropy_bonus(H, coef, mask)` to the loss,
    then `ctrl.update(*entropy_stats(H.detach(), mask))` once per rollout batch (however many optimizer steps it takes).

    Args:
        config: the settings; `AERConfig()` when None.
    """

    def __init__(self, config: AERConfig | None = None) -> None:
        if config is not None and not isinstance(config, AERConfig):
            raise ValueError(f"config must be an AERConfig, got {type(config).__name__}")
        self.config = config if config is not None else AERConfig()
        self._coef = float(self.config.coef_init)
        self._step = 0
        self._anchor_entropy_sum = 0.0
        self._anchor_token_count = 0.0
        self._initial_entropy: float | None = None
        self._last_entropy: float | None = None
        self._skipped_updates = 0
        self._warned_skip = False
        # Diagnostics of the last coefficients() batch, kept as tensors so that call never syncs the host.
        self._weight_mean: torch.Tensor | None = None
        self._frac_weighted: torch.Tensor | None = None
        # Accuracies outside [0, 1] (or NaN) seen by coefficients() since the last update, read there.
        self._invalid_accuracies: torch.Tensor | None = None

    @property
    def step(self) -> int:
        """Number of accepted updates (skipped ones not counted)."""
        return self._step

    @property
    def initial_entropy(self) -> float | None:
        """H0: token-mean entropy over the first `anchor_steps` accepted updates; None until then."""
        return self._initial_entropy

    @property
    def target_entropy(self) -> float | None:
        """H* = absolute_target if set, else target_ratio · H0; None until anchored."""
        if self.config.absolute_target is not None:
            return float(self.config.absolute_target)
        if self._initial_entropy is None:
            return None
        return self.config.target_ratio * self._initial_entropy

    @property
    def coefficient(self) -> float:
        """The global α applied to the next batch: 0 while gated (gate_above_target and last H > H*)."""
        return 0.0 if self._gated() else self._coef

    def _gated(self) -> bool:
        target = self.target_entropy
        return (
            self.config.gate_above_target
            and target is not None
            and self._last_entropy is not None
            and self._last_entropy > target
        )

    def _weights(self, acc: torch.Tensor) -> torch.Tensor:
        """w(acc) per prompt, [P] fp32, after `normalize_weights` (w / mean|w|, unless mean|w| = 0).

        An accuracy outside [0, 1] or NaN gets w = NaN, under every weighting; with `normalize_weights` the
        batch's mean|w| is then NaN and so is every w.
        """
        if not isinstance(acc, torch.Tensor) or acc.dim() != 1:
            raise ValueError(f"acc must be a 1-D tensor [P] of group accuracies, got {_describe(acc)}")
        acc = acc.detach().float()
        tau = self.config.threshold
        if self.config.weighting == "linear":
            w = 1.0 - acc
        elif self.config.weighting == "threshold":
            w = (acc <= tau).float()
        elif self.config.weighting == "signed":
            w = (tau - acc) / max(tau, 1.0 - tau)
        else:
            w = torch.ones_like(acc)
        valid = (acc >= 0) & (acc <= 1)  # False for NaN
        w = torch.where(valid, w, math.nan)
        invalid = (~valid).sum()
        self._invalid_accuracies = (
            invalid
            if self._invalid_accuracies is None
            else self._invalid_accuracies + invalid.to(self._invalid_accuracies.device)
        )
        if self.config.normalize_weights and w.numel() > 0:
            scale = w.abs().mean()
            # torch.where instead of a Python `if` keeps this free of host syncs; a NaN scale stays NaN.
            w = torch.where(scale == 0, w, w / scale)
        return w

    def coefficients(self, acc: torch.Tensor, *, group_size: int) -> torch.Tensor:
        """λ_i = α · w(acc_b) for response i of prompt b: [P * group_size] fp32, detached.

        Responses are laid out prompt-major (the G responses of prompt 0, then of prompt 1, ...), as
        `w.repeat_interleave(group_size)`. The batch's mean weight and fraction of responses with w != 0 are
        recorded for `metrics()`. Nothing is read back to the host, so values cannot be checked here: an
        accuracy outside [0, 1] or NaN makes its responses' λ NaN (so the loss is NaN), and the next `update`
        raises ValueError naming `acc`.

        Args:
            acc: [P] group accuracies in [0, 1], the fraction of each prompt's responses that are correct
                (`group_accuracy(rewards, group_size=G)`); any real dtype, any device.
            group_size: G, the number of responses per prompt, an int >= 1.
        """
        _check_group_size(group_size)
        w = self._weights(acc)
        self._weight_mean = w.mean() if w.numel() else None
        self._frac_weighted = (w != 0).float().mean() if w.numel() else None
        return (self.coefficient * w).repeat_interleave(group_size)

    def update(
        self,
        entropy_sum: float | torch.Tensor,
        token_count: float | torch.Tensor,
        *,
        group: Any = None,
    ) -> None:
        """Feed one optimizer step's Σ_t H·mask and Σ mask; anchors H0, then moves α (module docstring).

        When torch.distributed is initialised, both numbers are summed over `group` first (one all-reduce),
        so every rank ends with the same α and target. The sums are then read to the host once, and checked
        there: a non-finite entropy or a token count of 0 skips the step (counted in `aer/skipped_updates`,
        warned once, the rest of the state untouched), while impossible values raise ValueError before the
        state changes. H0 is anchored on the first accepted update at or past `anchor_steps`.

        Args:
            entropy_sum: Σ_t H_t · mask_t over the step's response tokens, a number or 1-element tensor
                (`entropy_stats(H.detach(), mask)[0]`). Non-finite: the step is skipped. Negative (an entropy
                is never below 0): ValueError.
            token_count: Σ mask, a number or 1-element tensor. 0: the step is skipped. Negative, NaN or
                infinite: ValueError.
            group: the torch.distributed process group to sum over (None: all ranks). Only valid when
                torch.distributed is initialised.

        Raises:
            ValueError: for the impossible values above, checked on the sums over ranks, or when a
                `coefficients` call since the last update was given an accuracy outside [0, 1] or NaN.
        """
        total_sum, total_count = reduce_entropy_stats(entropy_sum, token_count, group=group)
        self._check_recorded_accuracies()
        if not (math.isfinite(total_count) and total_count >= 0):
            raise ValueError(f"token_count must be a finite number >= 0 (summed over ranks), got {total_count!r}")
        if math.isfinite(total_sum) and total_sum < 0:
            raise ValueError(
                f"entropy_sum must be >= 0 (entropies are never negative; summed over ranks), got {total_sum!r}"
            )
        entropy = total_sum / total_count if total_count > 0 else math.nan
        if not math.isfinite(entropy):
            self._skip(total_sum, total_count)
            return

        self._step += 1
        self._last_entropy = entropy
        anchoring = self._initial_entropy is None
        if anchoring:
            self._anchor_entropy_sum += total_sum
            self._anchor_token_count += total_count
            # >=, not ==: a state saved mid-anchoring under a larger anchor_steps still anchors, on its next update.
            if self._step >= self.config.anchor_steps:
                self._initial_entropy = self._anchor_entropy_sum / self._anchor_token_count
        # With an absolute target there is nothing to wait for: α adapts from the first update.
        if anchoring and self.config.absolute_target is None:
            return
        self._coef = self._next_coef(entropy)

    def _check_recorded_accuracies(self) -> None:
        invalid, self._invalid_accuracies = self._invalid_accuracies, None
        count = 0 if invalid is None else int(invalid)  # the host read of coefficients()' check
        if count:
            raise ValueError(
                f"acc given to coefficients() since the last update held {count} value(s) outside [0, 1] or NaN "
                "(their coefficients were NaN); acc is each prompt's fraction of correct responses, "
                "as group_accuracy(rewards, group_size=G) returns"
            )

    def _next_coef(self, entropy: float) -> float:
        cfg = self.config
        target = self.target_entropy
        assert target is not None
        if target > 0:
            error = (target - entropy) / target
        else:  # H0 = 0 (a deterministic start): only the direction is defined.
            error = -1.0 if entropy > 0 else 0.0
        if abs(error) <= cfg.tolerance:
            return self._coef
        if cfg.update == "sign":
            coef = self._coef + cfg.coef_step * math.copysign(1.0, error)
        elif cfg.update == "proportional":
            coef = self._coef + cfg.coef_step * error
        else:
            coef = self._coef * math.exp(cfg.coef_step * error)
        return min(max(coef, cfg.coef_min), cfg.coef_max)

    def _skip(self, total_sum: float, total_count: float) -> None:
        self._skipped_updates += 1
        if not self._warned_skip:
            self._warned_skip = True
            warnings.warn(
                f"AERController.update skipped a step with entropy_sum={total_sum!r}, token_count={total_count!r} "
                "(non-finite entropy or no tokens); the controller state is unchanged. "
                "Further skips are counted in aer/skipped_updates without a warning.",
                RuntimeWarning,
                stacklevel=3,
            )

    def metrics(self) -> dict[str, float]:
        """Floats for a logger; NaN marks a value not defined yet (before the first update / anchoring /
        coefficients() call).

        aer/entropy: last accepted H_k; aer/initial_entropy: H0; aer/target_entropy: H*; aer/coef: the α
        applied to the next batch; aer/weight_mean: mean w of the last coefficients() batch;
        aer/frac_weighted: fraction of its responses with w != 0; aer/skipped_updates; aer/step.

        Args:
            None.
        """
        return {
            "aer/entropy": _or_nan(self._last_entropy),
            "aer/initial_entropy": _or_nan(self._initial_entropy),
            "aer/target_entropy": _or_nan(self.target_entropy),
            "aer/coef": float(self.coefficient),
            "aer/weight_mean": _or_nan(self._weight_mean),
            "aer/frac_weighted": _or_nan(self._frac_weighted),
            "aer/skipped_updates": float(self._skipped_updates),
            "aer/step": float(self._step),
        }

    def state_dict(self) -> dict[str, Any]:
        """The controller's state as plain JSON-serialisable values (None where undefined).

        The configuration is not included: construct the resumed controller with the same AERConfig.
        Per-batch diagnostics (aer/weight_mean, aer/frac_weighted) are not state and restart as NaN.

        Args:
            None.
        """
        return {
            "format_version": STATE_FORMAT_VERSION,
            "coef": self._coef,
            "step": self._step,
            "anchor_entropy_sum": self._anchor_entropy_sum,
            "anchor_token_count": self._anchor_token_count,
            "initial_entropy": self._initial_entropy,
            "last_entropy": self._last_entropy,
            "skipped_updates": self._skipped_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`, all or nothing: a state that fails a check leaves this controller as it was.

        Checked, each failure a ValueError naming the key: the format version and the set of keys; counts
        (`step`, `skipped_updates`) are ints >= 0; the other numbers are finite reals (not strings, not bools)
        >= 0; `coef` lies in this config's [coef_min, coef_max]; `last_entropy` is None exactly when `step` is
        0, and so is `anchor_token_count` 0; `initial_entropy` is None or equals
        anchor_entropy_sum / anchor_token_count, and can only be set once `step` >= anchor_steps. A state saved
        while anchoring, loaded into a config with a smaller anchor_steps, anchors on the next update.

        Args:
            state: a mapping as returned by `state_dict()` (possibly through JSON), from a controller built
                with the same AERConfig.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"AER state must be a mapping, got {type(state).__name__}")
        version = state.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"AER state has format_version {version!r}; this version of aer reads {STATE_FORMAT_VERSION}"
            )
        missing = sorted(_STATE_KEYS - state.keys())
        unknown = sorted(state.keys() - _STATE_KEYS)
        if missing or unknown:
            raise ValueError(
                f"AER state does not match format {STATE_FORMAT_VERSION}: missing keys {missing}, "
                f"unknown keys {unknown}"
            )
        # Check every value before assigning any, so a corrupt state leaves this controller as it was.
        values = _checked_state(state, self.config)
        (
            self._coef,
            self._step,
            self._anchor_entropy_sum,
            self._anchor_token_count,
            self._initial_entropy,
            self._last_entropy,
            self._skipped_updates,
        ) = values
        self._weight_mean = None
        self._frac_weighted = None
        self._invalid_accuracies = None


def _or_nan(value: float | torch.Tensor | None) -> float:
    if value is None:
        return math.nan
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _checked_state(
    state: Mapping[str, Any], config: AERConfig
) -> tuple[float, int, float, float, float | None, float | None, int]:
    """The state's values in `state_dict()` order, as Python numbers, after every check `load_state_dict` names."""
    lo, hi = config.coef_min, config.coef_max
    coef = _state_number(
        state, "coef", low=lo, high=hi, bounds=f"in this AERConfig's [coef_min, coef_max] = [{lo!r}, {hi!r}]"
    )
    step = _state_count(state, "step")
    skipped = _state_count(state, "skipped_updates")
    anchor_sum = _state_number(state, "anchor_entropy_sum")
    anchor_count = _state_number(state, "anchor_token_count")
    initial = None if state["initial_entropy"] is None else _state_number(state, "initial_entropy")
    last = None if state["last_entropy"] is None else _state_number(state, "last_entropy")

    if (last is None) != (step == 0):
        raise ValueError(
            f"AER state last_entropy must be None exactly when step is 0, got last_entropy={last!r} with step={step}"
        )
    if (anchor_count == 0) != (step == 0):
        raise ValueError(
            f"AER state anchor_token_count must be 0 exactly when step is 0 (every accepted update "
            f"has tokens), got anchor_token_count={anchor_count!r} with step={step}"
        )
    if anchor_count == 0 and anchor_sum != 0:
        raise ValueError(f"AER state anchor_entropy_sum must be 0 while anchor_token_count is 0, got {anchor_sum!r}")
    if initial is not None:
        if step < config.anchor_steps:
            raise ValueError(
                f"AER state initial_entropy is set after step={step} updates, fewer than this "
                f"AERConfig's anchor_steps={config.anchor_steps}: not the config it was saved with"
            )
        anchored = anchor_sum / anchor_count
        if not math.isclose(initial, anchored, rel_tol=1e-9):
            raise ValueError(
                f"AER state initial_entropy={initial!r} is not anchor_entropy_sum / anchor_token_count = {anchored!r}"
            )
    return coef, step, anchor_sum, anchor_count, initial, last, skipped


def _state_number(
    state: Mapping[str, Any], key: str, *, low: float = 0.0, high: float = math.inf, bounds: str = ">= 0"
) -> float:
    value = state[key]
    # bool is an int subclass and a string converts with float(): neither is something state_dict() writes.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"AER state {key} must be a finite number {bounds}, got {value!r}")
    return float(value)


def _state_count(state: Mapping[str, Any], key: str) -> int:
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"AER state {key} must be an int >= 0, got {value!r}")
    return int(value)
