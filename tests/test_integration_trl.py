"""AERGRPOTrainer against TRL's own GRPOTrainer: a randomly initialised 2-layer Llama and a tokenizer built here,
a few steps on CPU, nothing downloaded."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'aer-kernels[trl]')")
from packaging.version import Version  # noqa: E402

if (
    Version(trl.__version__).release[:2] == (1, 15)
    and not torch.cuda.is_available()
    and os.environ.get("TRITON_INTERPRET") != "1"
):
    pytest.skip(
        "trl 1.15 runs its fused LM head's Triton kernels even on CPU tensors: run with TRITON_INTERPRET=1 "
        "(make test-integration does)",
        allow_module_level=True,
    )
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from aer import AERConfig  # noqa: E402
from aer.integrations.trl import COEFFICIENTS_KEY, AERGRPOTrainer, AERTrainerMixin  # noqa: E402

VOCAB = ["<pad>", "<eos>", *"0123456789+= "]
PROMPTS = [f"{a}+{b}=" for a in range(8) for b in range(4)]  # distinct: a prompt's text names its group
GROUP = 4
AER_METRICS = (
    "aer/entropy",
    "aer/initial_entropy",
    "aer/target_entropy",
    "aer/coef",
    "aer/weight_mean",
    "aer/frac_weighted",
    "aer/skipped_updates",
    "aer/step",
)


def even_length(completions, **kwargs):
    """A verifiable reward that a random model gets right about half the time."""
    return [float(len(c) % 2 == 0) for c in completions]


def never_right(completions, **kwargs):
    return [0.0 for _ in completions]


def always_formatted(completions, **kwargs):
    return [1.0 for _ in completions]


@pytest.fixture(scope="module")
def tokenizer():
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def train(
    tmp_path,
    tokenizer,
    trainer_cls=AERGRPOTrainer,
    *,
    reward_funcs=(even_length,),
    resume=None,
    trainer_kwargs=None,
    **config,
):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
    )
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_generations=GROUP,
        max_completion_length=6,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
    )
    trainer = trainer_cls(
        model=model,
        reward_funcs=list(reward_funcs),
        args=GRPOConfig(**{**settings, **config}),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        **(trainer_kwargs or {}),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def step_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def fixed(alpha, weighting="uniform"):
    return AERConfig(weighting=weighting, coef_init=alpha, coef_min=alpha, coef_max=alpha, coef_step=0.0)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_uniform_fixed_alpha_equals_trl_entropy_coef_step_for_step(tmp_path, tokenizer, loss_type):
    alpha = 0.5
    reference = step_logs(train(tmp_path / "trl", tokenizer, GRPOTrainer, loss_type=loss_type, entropy_coef=alpha))
    aer = step_logs(
        train(tmp_path / "aer", tokenizer, loss_type=loss_type, trainer_kwargs={"aer_config": fixed(alpha)})
    )
    assert len(aer) == len(reference) == 3
    for ours, theirs in zip(aer, reference):
        for key in ("loss", "grad_norm", "entropy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
        assert ours["aer/coef"] == alpha
    if loss_type == "dapo":  # the entropy term is not negligible: without it the run differs
        without = step_logs(train(tmp_path / "none", tokenizer, GRPOTrainer, loss_type=loss_type, max_steps=1))
        assert aer[0]["loss"] != pytest.approx(without[0]["loss"], rel=1e-3)


@pytest.mark.parametrize(
    "target_ratio, coef_init, expected",
    [
        (2.0, 0.0, [0.0, 0.01, 0.02, 0.03]),  # entropy below its target: α rises by coef_step per rollout
        (0.5, 0.05, [0.05, 0.04, 0.03, 0.02]),
    ],  # above it: α falls
)
def test_adaptive_alpha_moves_once_per_rollout_after_anchoring(tmp_path, tokenizer, target_ratio, coef_init, expected):
    config = AERConfig(target_ratio=target_ratio, coef_init=coef_init, coef_step=0.01, coef_max=1.0)
    logs = step_logs(train(tmp_path, tokenizer, max_steps=4, trainer_kwargs={"aer_config": config}))
    assert [entry["aer/coef"] for entry in logs] == pytest.approx(expected)
    assert [entry["aer/step"] for entry in logs] == [1, 2, 3, 4]
    assert logs[-1]["aer/initial_entropy"] == pytest.approx(logs[0]["aer/entropy"])
    assert logs[-1]["aer/target_entropy"] == pytest.approx(target_ratio * logs[0]["aer/entropy"])


@pytest.mark.parametrize("steps_per_generation, num_iterations", [(4, 1), (2, 2)])
def test_one_controller_update_per_rollout_batch(tmp_path, tokenizer, steps_per_generation, num_iterations):
    # Two optimizer steps per rollout batch: a larger batch, or the same batch trained on twice.
    config = AERConfig(target_ratio=2.0, coef_step=0.01, coef_max=1.0)
    logs = step_logs(
        train(
            tmp_path,
            tokenizer,
            max_steps=4,
            steps_per_generation=steps_per_generation,
            num_iterations=num_iterations,
            trainer_kwargs={"aer_config": config},
        )
    )
    assert [entry["aer/step"] for entry in logs] == [0, 1, 1, 2]
    assert [entry["aer/coef"] for entry in logs] == pytest.approx([0.0, 0.0, 0.0, 0.01])


def test_aer_term_has_a_gradient_when_every_reward_is_zero(tmp_path, tokenizer):
    # All-wrong groups have zero advantage: the only gradient is the entropy term's. TRL <= 1.14 computes the
    # entropies without gradient unless its own bonus is on; this fails if that is not switched on.
    plain = step_logs(train(tmp_path / "plain", tokenizer, GRPOTrainer, reward_funcs=(never_right,), max_steps=1))
    aer = step_logs(
        train(
            tmp_path / "aer",
            tokenizer,
            reward_funcs=(never_right,),
            max_steps=1,
            trainer_kwargs={"aer_config": fixed(0.1, weighting="linear")},
        )
    )
    assert plain[0]["reward"] == aer[0]["reward"] == 0.0
    assert plain[0]["grad_norm"] == 0.0
    assert aer[0]["grad_norm"] > 1e-6
    assert aer[0]["aer/weight_mean"] == 1.0  # linear weighting: an all-wrong group gets w = 1


def test_coefficients_follow_each_completion_through_shuffling_and_accumulation(tmp_path, tokenizer):
    seen = []

    class Recording(AERGRPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append(
                {
                    key: inputs[key].clone()
                    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", COEFFICIENTS_KEY)
                }
            )
            return super()._compute_loss(model, inputs)

    alpha = 0.2
    train(tmp_path, tokenizer, Recording, max_steps=2, trainer_kwargs={"aer_config": fixed(alpha, weighting="linear")})
    rows = []
    for batch in seen:
        for i in range(batch["prompt_ids"].size(0)):
            prompt = tokenizer.decode(batch["prompt_ids"][i][batch["prompt_mask"][i].bool()], skip_special_tokens=True)
            completion = tokenizer.decode(
                batch["completion_ids"][i][batch["completion_mask"][i].bool()], skip_special_tokens=True
            )
            rows.append((prompt, even_length([completion])[0], batch[COEFFICIENTS_KEY][i].item()))
    assert len(rows) == 2 * 8  # two rollout batches of 2 prompts x 4 completions, in micro-batches of 4
    groups = {prompt: [r for p, r, _ in rows if p == prompt] for prompt, _, _ in rows}
    assert all(len(rewards) == GROUP for rewards in groups.values())
    for prompt, _, coefficient in rows:
        assert coefficient == pytest.approx(alpha * (1 - sum(groups[prompt]) / GROUP))
    assert len({c for _, _, c in rows}) > 1  # the rewards really differ between groups


def test_named_reward_sets_the_group_accuracy(tmp_path, tokenizer):
    funcs = (even_length, always_formatted)
    by_sum = step_logs(
        train(
            tmp_path / "sum",
            tokenizer,
            reward_funcs=funcs,
            max_steps=1,
            trainer_kwargs={"aer_config": fixed(0.1, weighting="linear")},
        )
    )
    by_name = step_logs(
        train(
            tmp_path / "name",
            tokenizer,
            reward_funcs=funcs,
            max_steps=1,
            trainer_kwargs={"aer_config": fixed(0.1, weighting="linear"), "aer_reward": "even_length"},
        )
    )
    assert by_sum[0]["aer/weight_mean"] == 0.0  # the weighted sum is >= 1: every group solved
    # Linear weighting, equal groups: mean w = 1 - mean accuracy = 1 - the reward's mean.
    assert by_name[0]["aer/weight_mean"] == pytest.approx(1 - by_name[0]["rewards/even_length/mean"])
    assert 0 < by_name[0]["aer/weight_mean"] < 1


def test_metrics_in_every_training_log_with_none_until_defined(tmp_path, tokenizer):
    # Anchoring over two rollouts: the first log has no H0 yet, and says so with None (TRL's way) rather than NaN.
    logs = step_logs(train(tmp_path, tokenizer, max_steps=2, trainer_kwargs={"aer_config": AERConfig(anchor_steps=2)}))
    for entry in logs:
        assert set(AER_METRICS) <= entry.keys()
        assert "entropy_coef" not in entry  # TRL's own coefficient, always 0 under AER
        assert not any(isinstance(v, float) and math.isnan(v) for v in entry.values())
    assert logs[0]["aer/initial_entropy"] is None and logs[0]["aer/target_entropy"] is None
    assert logs[1]["aer/initial_entropy"] > 0 and logs[1]["aer/entropy"] > 0
    assert [entry["aer/step"] for entry in logs] == [1, 2] and logs[1]["aer/skipped_updates"] == 0


def test_resuming_from_a_checkpoint_continues_alpha_exactly(tmp_path, tokenizer):
    config = AERConfig(target_ratio=2.0, coef_step=0.01, coef_max=1.0)
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, trainer_kwargs={"aer_config": config})
    full = step_logs(train(tmp_path / "full", tokenizer, **common))
    checkpoint = tmp_path / "full" / "checkpoint-2"
    with open(checkpoint / "aer_controller.json") as f:
        assert json.load(f)["step"] == 2
    resumed = step_logs(train(tmp_path / "resumed", tokenizer, resume=str(checkpoint), **common))[2:]
    assert [entry["step"] for entry in resumed] == [3, 4]  # the log history up to step 2 comes from the checkpoint
    for ours, theirs in zip(resumed, full[2:]):
        for key in ("aer/coef", "aer/step", "aer/initial_entropy", "aer/target_entropy"):
            assert ours[key] == theirs[key], key
    assert resumed[-1]["aer/coef"] == pytest.approx(0.03)  # a fresh controller would still be anchoring


def test_resuming_without_aer_state_warns_and_starts_afresh(tmp_path, tokenizer):
    train(tmp_path / "plain", tokenizer, GRPOTrainer, max_steps=2, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "plain" / "checkpoint-2"
    assert not os.path.exists(checkpoint / "aer_controller.json")
    with pytest.warns(RuntimeWarning, match="aer_controller.json does not exist"):
        logs = step_logs(train(tmp_path / "aer", tokenizer, resume=str(checkpoint), max_steps=3))
    assert logs[-1]["aer/step"] == 1


@pytest.mark.parametrize(
    "config, trainer_kwargs, message",
    [
        ({"entropy_coef": 0.01}, {}, "entropy_coef must be 0"),
        ({"use_adaptive_entropy": True}, {}, "use_adaptive_entropy must be False"),
        ({}, {"aer_config": {"coef_init": 0.1}}, "aer_config must be an AERConfig"),
        ({}, {"aer_reward": 3}, "aer_reward must be"),
        ({}, {"aer_reward": "accuracy"}, r"aer_reward must name one of the reward functions \['even_length'\]"),
    ],
)
def test_bad_settings_are_refused(tmp_path, tokenizer, config, trainer_kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path, tokenizer, max_steps=1, trainer_kwargs=trainer_kwargs, **config)


def test_entropy_coef_is_refused_behind_a_subclass_that_hides_its_arguments(tmp_path, tokenizer):
    class PassThrough(GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    class Mine(AERTrainerMixin, PassThrough):
        pass

    with pytest.raises(ValueError, match="entropy_coef must be 0"):
        train(tmp_path, tokenizer, Mine, max_steps=1, entropy_coef=0.01)


# Each of two processes trains on its half of every rollout batch: 3 prompts x 4 completions, 6 per process,
# so the middle prompt's group is split between the processes.
TWO_PROCESS_WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig
    from aer import AERConfig
    from aer.integrations.trl import COEFFICIENTS_KEY, AERGRPOTrainer

    VOCAB = ["<pad>", "<eos>", *"0123456789+= "]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=1))

    def even_length(completions, **kwargs):
        return [float(len(c) % 2 == 0) for c in completions]

    rows = []

    class Recording(AERGRPOTrainer):
        def _compute_loss(self, model, inputs):
            for i in range(inputs["prompt_ids"].size(0)):
                prompt = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()].tolist()
                mask = inputs["completion_mask"][i].bool()
                completion = tokenizer.decode(inputs["completion_ids"][i][mask], skip_special_tokens=True)
                rows.append([self._step // 2, prompt, even_length([completion])[0], int(mask.sum()),
                             inputs[COEFFICIENTS_KEY][i].item()])
            return super()._compute_loss(model, inputs)

    args = GRPOConfig(output_dir=sys.argv[1], use_cpu=True, bf16=False, report_to="none", disable_tqdm=True, seed=0,
                      per_device_train_batch_size=3, gradient_accumulation_steps=2, num_generations=4,
                      max_completion_length=6, max_steps=3, logging_steps=1, save_strategy="no", learning_rate=1e-2)
    trainer = Recording(model=model, reward_funcs=[even_length], args=args, processing_class=tokenizer,
                        train_dataset=Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(8) for b in range(4)]}),
                        aer_config=AERConfig(weighting="linear", target_ratio=2.0, coef_init=0.1, coef_step=0.05,
                                             coef_max=1.0))
    trainer.train()
    with open(f"{sys.argv[1]}/rank{trainer.accelerator.process_index}.json", "w") as f:
        json.dump({"rows": rows, "state": trainer.aer_controller.state_dict()}, f)
""")


@pytest.mark.distributed
def test_two_processes_share_alpha_and_groups_split_between_them(tmp_path):
    (tmp_path / "worker.py").write_text(TWO_PROCESS_WORKER)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "worker.py"),
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]  # one all-reduced update per rollout: the same α everywhere
    groups = {}
    for rank, result in enumerate(ranks):
        for rollout, prompt, reward, tokens, coefficient in result["rows"]:
            groups.setdefault((rollout, tuple(prompt)), []).append((rank, reward, tokens, coefficient))
    assert len(groups) == 9 and all(len(group) == 4 for group in groups.values())
    assert sum({rank for rank, *_ in group} == {0, 1} for group in groups.values()) == 3  # one split group a rollout
    alphas = [0.1, 0.1, 0.15]  # anchoring on the first rollout, then one coef_step up per rollout
    for (rollout, _), group in groups.items():
        acc = sum(reward for _, reward, _, _ in group) / 4  # over both processes' completions
        for *_, coefficient in group:
            assert coefficient == pytest.approx(alphas[rollout] * (1 - acc))
    first_rollout_tokens = sum(
        tokens for (rollout, _), group in groups.items() if rollout == 0 for _, _, tokens, _ in group
    )
    assert ranks[0]["state"]["anchor_token_count"] == first_rollout_tokens  # H0 over both processes' tokens
    assert ranks[0]["state"]["step"] == 3
