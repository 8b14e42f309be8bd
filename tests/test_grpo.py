"""The grpo objective: RFT prompts read with their grader fields, group advantages, the clipped loss and its gradient
equal to TRL's GRPOTrainer._compute_loss (each loss_type) on the same tiny model, answers and rewards, bad rewards,
and a LoRA run through the real recipe writing its reward metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.config import GrpoSection, LoraMethod, validate_config
from tuneforge.data.readers import read_examples
from tuneforge.data.types import PromptExample
from tuneforge.errors import ConfigError, DataError, TrainingError
from tuneforge.methods import get_method
from tuneforge.methods.registry import reference_context
from tuneforge.objectives import get_objective, objective_for
from tuneforge.objectives.grpo import completion_logps, group_advantages, policy_loss

CHECK = {
    "type": "string_check",
    "name": "fact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "like",
}


def write_rft(path, n=8):
    rows = [{"messages": [{"role": "user", "content": f"How much is plan {i}?"}], "answer": f"${i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rft_records_read_as_prompts_with_their_item_fields(tmp_path):
    path = write_rft(tmp_path / "rft.jsonl", 3)
    read = read_examples(path, "rft")
    assert all(isinstance(ex, PromptExample) for ex in read)
    assert read[1].prompt[-1].content == "How much is plan 1?" and read[1].item == {"reference": "", "answer": "$1"}
    assert read[2].source == f"{path}:3"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "answer": "x"}
        )
        + "\n"
    )
    with pytest.raises(DataError) as err:
        read_examples(bad, "rft")
    assert "bad.jsonl:1" in str(err.value.problems) and "end with a assistant" in str(err.value.problems).replace(
        "an assistant", "a assistant"
    )


def test_grpo_refuses_chat_data_and_other_objectives_refuse_prompts(support_data, tmp_path, tiny_tokenizer):
    chats = read_examples(support_data["train"])
    with pytest.raises(DataError, match="grpo objective needs prompts"):
        get_objective("grpo").prepare(chats)
    typo = GrpoSection(graders=[{**CHECK, "reference": "{{item.answr}}"}])
    with pytest.raises(ConfigError) as err:
        get_objective("grpo", settings=typo).prepare(read_examples(write_rft(tmp_path / "rft.jsonl", 2), "rft"))
    assert err.value.problems[0].where == "grpo.graders[0].reference" and "use one of answer" in str(err.value.problems)
    with pytest.raises(DataError, match="got PromptExample"):
        get_objective("sft").encode(read_examples(write_rft(tmp_path / "rft.jsonl", 2), "rft"), tiny_tokenizer, 64)


def test_config_needs_graders_a_reference_for_kl_and_refuses_grpo_elsewhere():
    base = {"data": {"train": "x.jsonl"}, "objective": "grpo", "method": {"name": "lora"}}
    cfg = validate_config(
        {**base, "grpo": {"graders": [CHECK], "group_size": 3, "loss_type": "grpo"}}, check_files=False
    )
    grpo = objective_for(cfg)
    assert grpo.cfg.group_size == 3 and grpo.cfg.loss_type == "grpo" and grpo.weights == [1.0]
    assert cfg.data.format == "rft"  # auto: RFT prompts, never read as chats missing their answer
    with pytest.raises(ConfigError, match="objective grpo needs a reward"):
        validate_config(base, check_files=False)
    with pytest.raises(ConfigError, match="grpo.beta > 0 uses the base"):
        validate_config(
            {**base, "method": {"name": "full"}, "grpo": {"graders": [CHECK], "beta": 0.1}}, check_files=False
        )
    with pytest.raises(ConfigError, match="2 weight"):
        validate_config({**base, "grpo": {"graders": [CHECK], "weights": [1, 2]}}, check_files=False)
    with pytest.raises(ConfigError, match="non-finite weight"):
        validate_config({**base, "grpo": {"graders": [CHECK], "weights": [float("nan")]}}, check_files=False)
    with pytest.raises(ConfigError, match="grpo applies to objective grpo only"):
        validate_config({**base, "objective": "sft", "grpo": {"group_size": 8}}, check_files=False)


def test_group_advantages_scale_and_report_constant_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    scaled, flat = group_advantages(rewards, 4, scale=True)
    plain, _ = group_advantages(rewards, 4, scale=False)
    assert flat == 0.5  # the second group has no learning signal
    assert torch.allclose(plain[:4], torch.tensor([0.5, -0.5, -0.5, 0.5])) and plain[4:].abs().max() == 0
    assert torch.allclose(scaled[:4], plain[:4] / (rewards[:4].std() + 1e-4)) and scaled[4:].abs().max() == 0


def _lora_model(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_method("lora").apply(model, LoraMethod(r=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at 0: move it so the policy differs from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_loss_and_gradient_match_trl_grpo_trainer(tiny_model_dir, tmp_path, loss_type):
    """TRL's _compute_loss on our sampled answers, rewards' advantages and reference log-probs (adapter off): the
    loss and every LoRA gradient agree to 1e-4, with the KL term and the clip bounds both in play."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = GrpoSection(
        group_size=4,
        temperature=0.8,
        max_new_tokens=6,
        beta=0.2,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type=loss_type,
        graders=[CHECK],
    )
    grpo = get_objective("grpo", settings=settings)
    examples = read_examples(write_rft(tmp_path / "rft.jsonl", 2), "rft")
    feats = grpo.encode(examples, tok, 64)
    model = _lora_model(tiny_model_dir)
    torch.manual_seed(1)
    done = grpo.sample(model, grpo.collate(feats, tok.pad_token_id))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 0.9, 0.3, 0.3])  # fixed rewards: every answer has advantage
    advantages, _ = group_advantages(rewards, 4, scale=True)
    with torch.no_grad(), reference_context(model):
        ref = completion_logps(model, done, settings.temperature)
    mask = done.completion_mask
    assert mask.sum() > 0
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=8,
        num_generations=4,
        beta=settings.beta,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        loss_type=loss_type,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "x"}] * 8),
        processing_class=tok,
    )
    trainer.current_gradient_accumulation_steps = 1
    inputs = {
        "prompt_ids": done.prompt_ids,
        "prompt_mask": done.prompt_mask,
        "completion_ids": done.completion_ids,
        "completion_mask": mask,
        "advantages": advantages,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum().float(),
    }
    model.train()
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    their_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    total, count, kl = policy_loss(
        completion_logps(model, done, settings.temperature), ref, advantages, mask.float(), settings
    )
    (total / count).backward()  # what the recipe does with (sum, count)
    assert kl > 1e-4  # the reference differs: the KL term takes part
    assert abs(total.item() / count - theirs.item()) < 1e-4, (total.item() / count, theirs.item())
    for name, grad in their_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)


class _Raises:
    name, family = "boom", "facts"

    def grade(self, sample, item):
        raise RuntimeError("grader down")

    def grade_batch(self, samples, items):
        from tuneforge.eval.graders import grade_each

        return grade_each(self, samples, items)


def test_a_raising_grader_scores_zero_and_is_counted():
    grpo = get_objective("grpo", settings=GrpoSection(graders=[CHECK]))
    grpo.graders.append(_Raises())
    grpo.weights.append(1.0)
    rewards, report = grpo.rewards(["it is $1", "no idea"], [{"answer": "$1"}, {"answer": "$2"}])
    assert rewards.tolist() == [1.0, 0.0]
    assert report["grader/boom"] == 0.0 and report["grader/boom/errors"] == 2 and report["grader/fact"] == 0.5


# a reward that varies between a random model's answers, so groups carry a learning signal
LENGTH = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item):\n    return min(len(sample['output_text']), 12) / 12\n",
}


def _run_cfg(tiny_model_dir, tmp_path, **grpo):
    train_path, val_path = write_rft(tmp_path / "train.jsonl", 8), write_rft(tmp_path / "val.jsonl", 2)
    raw = {
        "objective": "grpo",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(tiny_model_dir), "max_length": 64},
        "data": {"train": str(train_path), "validation": str(val_path)},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {
            "max_steps": 3,
            "batch_size": 2,
            "lr": 1e-2,
            "eval_every": 2,
            "log_every": 1,
            "save_every": 1,
            "warmup_ratio": 0.0,
            "seed": 1,
        },
        "grpo": {
            "group_size": 4,
            "max_new_tokens": 6,
            "beta": 0.1,
            "graders": [CHECK, LENGTH],
            "weights": [1.0, 0.5],
            **grpo,
        },
    }
    return validate_config(raw)


def test_grpo_run_with_lora_writes_reward_metrics(tiny_model_dir, tmp_path):
    from tuneforge.train import train

    result = train(_run_cfg(tiny_model_dir, tmp_path), progress=False)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert len(steps) == 3
    for r in steps:
        m = r["metrics"]
        assert {
            "reward",
            "reward_std",
            "kl",
            "completion_length",
            "zero_advantage_groups",
            "grader/fact",
            "grader/fact/errors",
        } <= m.keys(), m
        assert 0 < m["completion_length"] <= 6 and 0 <= m["zero_advantage_groups"] <= 1 and m["kl"] >= 0
    assert steps[0]["metrics"]["kl"] == pytest.approx(0, abs=1e-6)  # LoRA starts as the base: policy == reference
    assert steps[-1]["metrics"]["kl"] > 0 and min(r["metrics"]["zero_advantage_groups"] for r in steps) < 1
    first = steps[0]["metrics"]
    assert first["reward"] == pytest.approx(first["grader/fact"] + 0.5 * first["grader/length"], abs=1e-5)
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and all("reward" in r and "grader/fact" in r for r in evals)
    assert (result.run_dir / "adapter" / "adapter_config.json").exists()
    assert json.loads((result.run_dir / "manifest.json").read_text())["objective"] == "grpo"


def test_a_nan_reward_stops_the_run_like_a_nan_loss(tiny_model_dir, tmp_path, monkeypatch):
    from tuneforge.objectives.grpo import GroupRelative
    from tuneforge.train import train

    def nan_rewards(self, texts, items):  # a grader's grade_batch that returned NaN (grade_safely would score 0)
        return torch.full((len(texts),), float("nan")), {}

    monkeypatch.setattr(GroupRelative, "rewards", nan_rewards)
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(_run_cfg(tiny_model_dir, tmp_path), progress=False)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"
