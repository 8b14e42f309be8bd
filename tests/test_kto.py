"""The kto objective: KTO data read as judged answers (never an SFT target), the loss and its gradient equal to TRL's
KTOTrainer on the same tiny model and batch, the mismatched KL rows, and a LoRA run through the real recipe."""

from __future__ import annotations

import json
import logging
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection, validate_config
from tuneforge.data.readers import read_examples, write_jsonl
from tuneforge.data.tokenize import IGNORE
from tuneforge.data.types import LabelledAnswer, Message
from tuneforge.errors import ConfigError, DataError
from tuneforge.objectives import get_objective, objective_for
from tuneforge.objectives.kto import balance_warning
from tuneforge.train import train


def judged(n: int, seed: int, desirable_share: float = 0.5) -> list[LabelledAnswer]:
    """Helpful answers labelled desirable, dismissive ones undesirable (unpaired: each prompt has one answer)."""
    rng = random.Random(seed)
    items = ["printer", "router", "laptop", "phone"]
    out = []
    for _ in range(n):
        x, good = rng.choice(items), rng.random() < desirable_share
        answer = f"Restart the {x} and tell me if it helps." if good else "No idea, go away."
        out.append(LabelledAnswer([Message("user", f"My {x} is broken, what now?")], answer, good))
    return out


def write_kto(path, rows: list[LabelledAnswer]):
    write_jsonl(rows, path)  # LabelledAnswer.to_dict is TRL's prompt/completion/label layout
    return path


def test_trl_and_llamafactory_layouts_read_back_as_the_same_judged_answers(tmp_path):
    rows = judged(6, 1)
    trl = write_kto(tmp_path / "trl.jsonl", rows)
    factory = tmp_path / "factory.json"

    def messages(r):
        prompt = [{"role": m.role, "content": m.content} for m in r.prompt]
        return [{"role": "system", "content": "Be kind."}, *prompt, {"role": "assistant", "content": r.completion}]

    factory.write_text(
        json.dumps(
            [{"messages": messages(r), "kto_tag": "true" if r.desirable else "false", "topic": "support"} for r in rows]
        )
    )
    read = read_examples(trl)
    assert [(r.prompt, r.completion, r.desirable) for r in read] == [
        (r.prompt, r.completion, r.desirable) for r in rows
    ]
    assert read[2].source == f"{trl}:3"
    other = read_examples(factory)
    assert [e.desirable for e in other] == [r.desirable for r in rows]  # the string labels read as booleans
    assert [m.role for m in other[0].prompt] == ["system", "user"] and other[0].metadata["topic"] == "support"


def test_kto_data_under_another_objective_is_refused_with_file_and_line(tiny_model_dir, tmp_path):
    rows = judged(8, 2)
    path = write_kto(tmp_path / "kto.jsonl", rows)
    for objective in ("sft", "clm"):
        cfg = RunConfig(
            objective=objective,
            output_dir=tmp_path / objective,
            model=ModelSection(name=str(tiny_model_dir), max_length=48),
            data=DataSection(train=path, validation_fraction=0),
            method=LoraMethod(r=4, alpha=8),
            train=TrainSection(max_steps=1),
        )
        with pytest.raises(DataError) as err:
            train(cfg, progress=False)
        assert (
            "KTO data (unpaired desirable/undesirable labels) trains only with objective kto: "
            f"8 record(s), first at {path}:1" in str(err.value)
        ), str(err.value)
        assert err.value.problems[0].where == f"{path}:1" and not (tmp_path / objective / "adapter").exists()


def test_the_encoded_answer_is_the_only_target_and_kl_rows_pair_each_prompt_with_the_previous_answer(tiny_tokenizer):
    rows = judged(3, 3)
    rows[1] = LabelledAnswer(
        [Message("user", "Hi"), Message("assistant", "Hello, how can I help?"), Message("user", "Fix my phone")],
        "Restart the phone.",
        True,
    )
    kto = get_objective("kto")
    feats = kto.encode(rows, tiny_tokenizer, 256)
    decode = lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    for row, f in zip(rows, feats):  # only the final answer is learned: an earlier assistant turn is context
        assert decode([t for t in f.labels if t != IGNORE]) == row.completion
        assert all(t == IGNORE for t in f.labels[: f.start]) and f.labels[f.start] != IGNORE
    batch = kto.collate(feats, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["desirable"].tolist() == [r.desirable for r in rows]
    for i in range(
        3
    ):  # mismatched row i: prompt i, then the answer of example i-1 (cycled), labelled on that answer only
        ids, labels = batch["input_ids"][3 + i], batch["labels"][3 + i]
        assert decode(labels[labels != IGNORE].tolist()) == rows[i - 1].completion
        assert ids[: feats[i].start].tolist() == feats[i].input_ids[: feats[i].start]


def test_a_prompt_that_fills_max_length_is_dropped_by_name(tiny_tokenizer, caplog):
    rows = judged(3, 4)
    rows[1] = LabelledAnswer([Message("user", "word " * 200)], "Fine.", False, source="data.jsonl:2")
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        feats = get_objective("kto").encode(rows, tiny_tokenizer, 32)
    assert (
        len(feats) == 2
        and "1 of 3 answer(s) cut off entirely by model.max_length=32, dropped; first at data.jsonl:2" in caplog.text
    )
    with pytest.raises(DataError, match="every KTO answer is cut off"):
        get_objective("kto").encode(rows[1:2], tiny_tokenizer, 32)


def test_loss_and_gradient_match_trl_kto_trainer(tiny_model_dir, tmp_path, caplog):
    """TRL's KTOTrainer.compute_loss on the same tokens (TRL's own collator, KL completions cycled as TRL cycles them)
    and the same LoRA weights: loss and every LoRA gradient agree to 1e-4, with a KL term that is not clamped away."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = judged(6, 5, desirable_share=0.6)
    beta, good_w, bad_w = 0.3, 1.3, 0.7
    kto = get_objective("kto", beta=beta, desirable_weight=good_w, undesirable_weight=bad_w)
    feats = kto.encode(rows, tok, 64)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r.prompt[0].content}],
                "completion": [{"role": "assistant", "content": r.completion}],
                "label": r.desirable,
            }
            for r in rows
        ]
    )
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(rows),
        max_length=64,
        beta=beta,
        desirable_weight=good_w,
        undesirable_weight=bad_w,
        report_to=[],
        use_cpu=True,
    )
    torch.manual_seed(0)  # a random (non-zero) LoRA init: the policy differs from the reference (the base, adapter off)
    with caplog.at_level(logging.WARNING):
        trainer = KTOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
    model = trainer.model
    # TRL's tokens are ours: the prompt, then the answer up to its last labelled token (the template's trailing newline
    # is not a target); the KL completion of example i is the answer of example i-1
    answers = [f.input_ids[f.start : max(t for t, label in enumerate(f.labels) if label != IGNORE) + 1] for f in feats]
    trl_batch = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id, max_length=64)(
        [
            {
                "prompt_ids": f.input_ids[: f.start],
                "completion_ids": answers[i],
                "KL_completion_ids": answers[i - 1],
                "label": f.desirable,
            }
            for i, f in enumerate(feats)
        ]
    )
    model.train()
    theirs = trainer.compute_loss(model, trl_batch)
    theirs.backward()
    their_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    loss, n = kto.loss(model, kto.collate(feats, tok.pad_token_id))
    (loss / n).backward()  # the recipe divides the summed loss by the examples of the step: TRL's mean
    assert n == len(rows) and trainer._metrics["train"]["kl"][-1] > 0.01  # the KL baseline takes part
    assert abs(loss.item() / n - theirs.item()) < 1e-4, (loss.item() / n, theirs.item())
    for name, grad in their_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)
    # TRL's advice on unbalanced data (4 desirable, 2 undesirable here), in our words with the same ranges
    ours = balance_warning(sum(r.desirable for r in rows), sum(not r.desirable for r in rows), good_w, bad_w)
    low, high = (
        ours.split("kto_desirable_weight in [")[1].split("]")[0],
        ours.split("kto_undesirable_weight in [")[1].split("]")[0],
    )
    assert f"desirable_weight in [{low}] or undesirable_weight in [{high}]" in caplog.text


def test_one_sided_data_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        get_objective("kto").prepare([ex for ex in judged(12, 6) if ex.desirable])
    assert "training answers are desirable" in caplog.text and "add answers labelled false" in caplog.text
    assert "are undesirable" in balance_warning(0, 5, 1.0, 1.0) and balance_warning(3, 3, 1.0, 1.0) is None
    # 6 desirable, 4 undesirable: desirable_weight should be in [0.67, 0.89] or undesirable_weight in [1.13, 1.5]
    assert "kto_desirable_weight in [0.67, 0.89] OR train.kto_undesirable_weight in [1.13, 1.5]" in balance_warning(
        6, 4, 1.0, 1.0
    )
    assert balance_warning(6, 4, 1.0, 1.3) is None and balance_warning(6, 4, 0.8, 1.0) is None


def test_config_sends_kto_options_and_refuses_what_kto_cannot_do():
    base = {"data": {"train": "x.jsonl"}, "objective": "kto", "method": {"name": "lora"}}
    kto = objective_for(
        validate_config({**base, "train": {"kto_beta": 0.2, "kto_desirable_weight": 1.5}}, check_files=False)
    )
    assert (kto.beta, kto.desirable_weight, kto.undesirable_weight) == (0.2, 1.5, 1.0)
    with pytest.raises(ConfigError, match="objective kto uses the base with the adapter switched off"):
        validate_config({**base, "method": {"name": "full"}}, check_files=False)
    with pytest.raises(ConfigError, match="train.batch_size to 2 or more"):
        validate_config({**base, "train": {"batch_size": 1}}, check_files=False)
    with pytest.raises(ConfigError, match="kto_beta applies to objective kto only"):
        validate_config({**base, "objective": "sft", "train": {"kto_beta": 0.2}}, check_files=False)


def test_kto_run_with_lora_moves_desirable_up_and_undesirable_down(tiny_model_dir, tmp_path):
    train_path, val_path = (
        write_kto(tmp_path / "train.jsonl", judged(24, 8)),
        write_kto(tmp_path / "val.jsonl", judged(8, 8)),
    )
    cfg = RunConfig(
        objective="kto",
        output_dir=tmp_path / "run",
        model=ModelSection(name=str(tiny_model_dir), max_length=64),
        data=DataSection(train=train_path, validation=val_path),
        method=LoraMethod(r=4, alpha=8),
        train=TrainSection(
            max_steps=10, lr=1e-2, batch_size=6, eval_every=1000, save_every=1000, log_every=1, warmup_ratio=0.0, seed=1
        ),
    )
    result = train(cfg, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[0] == pytest.approx(
        0.5, abs=1e-4
    )  # policy == reference and KL 0 before the first step: 1 - sigmoid(0)
    assert sum(result.losses[-4:]) / 4 < 0.4, (
        result.losses
    )  # the loss of a step depends on its mix of labels: compare a few
    metrics = result.final_metrics
    assert metrics["reward_desirable"] > 0 > metrics["reward_undesirable"] and metrics["reward_margin"] > 0, metrics
    assert (result.run_dir / "adapter" / "adapter_config.json").exists()
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for s in steps if s.get("type") == "train") == 10
    assert json.loads((result.run_dir / "manifest.json").read_text())["objective"] == "kto"
