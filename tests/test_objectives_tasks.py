"""Each objective end to end on a tiny model through the real recipe: classification, tokens (NER),
mlm and nsp on a 2-layer BERT, dpo on the tiny Llama; plus the metric and masking helpers."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForPreTraining, BertForSequenceClassification

from tuneforge.config import (
    AdapterMethod,
    DataSection,
    FullMethod,
    HeadLoraMethod,
    HeadMethod,
    LoraMethod,
    ModelSection,
    RunConfig,
    TrainSection,
)
from tuneforge.data.readers import write_jsonl
from tuneforge.data.types import LabelledExample, Message, PreferencePair, TextExample, TokenExample
from tuneforge.errors import DataError
from tuneforge.models.loading import load_for_inference
from tuneforge.objectives import get_objective
from tuneforge.objectives.tokens import entity_f1, entity_spans
from tuneforge.train import train

FAST = dict(batch_size=8, eval_every=1000, save_every=1000, log_every=1, warmup_ratio=0.0, seed=3)


def _tiny_bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A random 2-layer, hidden-32 BERT with pretraining heads (MLM + NSP) and MiniLM's WordPiece tokenizer."""
    from tuneforge.models.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertForPreTraining(_tiny_bert_config(len(tok))).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_tiny_bert_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT after a short supervised pretraining on sentiment-like data, keeping only the encoder.

    Transfer methods (a new head, LoRA) need a backbone whose features carry the signal, as a
    real pretrained encoder's do; a random 32-wide BERT's [CLS] barely depends on the input.
    """
    objective = get_objective("classification")
    data = sentiment(96, 11)
    objective.prepare(data)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    feats = objective.encode(data, tok, 32)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(60):
        loss, n = objective.loss(
            model, objective.collate(feats[(step * 8) % 96 : (step * 8) % 96 + 8], tok.pad_token_id)
        )
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
    encoder = BertForPreTraining(_tiny_bert_config(len(tok)))
    encoder.bert.load_state_dict(model.bert.state_dict())
    folder = tmp_path_factory.mktemp("tiny-bert-pretrained")
    encoder.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


COLOURS = {
    "positive": ["great", "lovely", "excellent", "wonderful", "superb"],
    "negative": ["awful", "broken", "terrible", "useless", "poor"],
}


def sentiment(n: int, seed: int) -> list[LabelledExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(sorted(COLOURS))
        thing = rng.choice(["printer", "laptop", "service", "delivery", "support team"])
        out.append(LabelledExample(f"the {thing} was {rng.choice(COLOURS[label])} today", label))
    return out


def write(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(rows, path)
    return path


def run_config(model_dir, objective, train_path, val_path, out, method, max_steps, lr, max_length=48):
    return RunConfig(
        objective=objective,
        output_dir=out,
        model=ModelSection(name=str(model_dir), max_length=max_length),
        data=DataSection(train=train_path, validation=val_path),
        method=method,
        train=TrainSection(max_steps=max_steps, lr=lr, **FAST),
    )


@pytest.mark.parametrize(
    "method",
    [
        HeadMethod(),
        HeadLoraMethod(r=4, alpha=8),
        FullMethod(),
        pytest.param(AdapterMethod(bottleneck=8), marks=pytest.mark.slow),
    ],
    ids=lambda m: m.name,
)
def test_classification_learns_and_reloads(method, pretrained_tiny_bert_dir, tmp_path):
    train_path, val_path = write(tmp_path, "train", sentiment(96, 1)), write(tmp_path, "val", sentiment(32, 2))
    # full fine-tuning moves the whole encoder: smaller steps, and more of them (at 30 steps seeds
    # ranged 0.81-0.97 accuracy on one machine; at 60 every seed tried reached 0.97)
    lr, steps = (1e-3, 60) if method.name == "full" else (2e-2, 30)
    cfg = run_config(
        pretrained_tiny_bert_dir, "classification", train_path, val_path, tmp_path / "run", method, steps, lr
    )
    result = train(cfg, progress=False)
    final = result.final_metrics
    assert final["accuracy"] >= 0.85 and final["macro_f1"] >= 0.85, final  # chance: 0.5
    if method.name == "head":  # transfer learning: the encoder is bit-identical after training
        base = BertForPreTraining.from_pretrained(pretrained_tiny_bert_dir).bert.state_dict()
        trained, _ = load_for_inference(result.run_dir, device=torch.device("cpu"))
        assert all(torch.equal(base[k], v) for k, v in trained.bert.state_dict().items())
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    share = manifest["params"]["trainable_share"]
    assert (share == 1.0) if method.name == "full" else (0 < share < 0.6), share
    assert manifest["memory_estimate"]["total"] > 0 and manifest["memory"]["peak_rss_bytes"] > 0

    model, tok = load_for_inference(result.run_dir, device=torch.device("cpu"))  # the saved artifact scores the same
    assert model.config.id2label == {0: "negative", 1: "positive"}
    val = sentiment(32, 2)
    with torch.no_grad():
        predicted = model(**tok([ex.text for ex in val], return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert sum(model.config.id2label[p] == ex.label for p, ex in zip(predicted, val)) / len(val) == final["accuracy"]


def test_unknown_validation_label_is_a_data_error(tiny_bert_dir, tmp_path):
    objective = get_objective("classification")
    objective.prepare(sentiment(20, 1))
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with pytest.raises(DataError, match="label 'neutral'"):
        objective.encode([LabelledExample("meh", "neutral")], tok, 32)


PEOPLE, PLACES = (
    ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"],
    ["Paris", "New York", "Oslo", "Cape Town"],
)


def ner(n: int, seed: int) -> list[TokenExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE).split(), rng.choice(PLACES).split()
        words = [*person, "flew", "to", *place, "on", "monday"]
        tags = (
            ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O", "O", "B-LOC"] + ["I-LOC"] * (len(place) - 1) + ["O", "O"]
        )
        out.append(TokenExample(words, tags))
    return out


def test_tokens_ner_reaches_entity_f1(tiny_bert_dir, tmp_path):
    train_path, val_path = write(tmp_path, "train", ner(64, 1)), write(tmp_path, "val", ner(16, 2))
    cfg = run_config(tiny_bert_dir, "tokens", train_path, val_path, tmp_path / "run", FullMethod(), 40, 1e-2)
    final = train(cfg, progress=False).final_metrics
    assert final["entity_f1"] >= 0.9 and final["tag_accuracy"] >= 0.95, final


def test_entity_spans_follow_conlleval():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]) == {
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("LOC", 4, 5),
        ("ORG", 5, 6),
    }
    scores = entity_f1(
        [["B-PER", "O", "B-LOC"]],
        [
            [
                "B-PER",
                "O",
                "B-LOC",
            ][:2]
            + ["O"]
        ],
    )
    assert (
        scores["entity_precision"] == 0.5
        and scores["entity_recall"] == 1.0
        and scores["entity_f1"] == pytest.approx(2 / 3)
    )


def docs(n: int, seed: int) -> list[TextExample]:
    rng = random.Random(seed)
    subjects = ["The printer", "The router", "Our laptop", "The phone"]
    return [
        TextExample(
            " ".join(
                f"{rng.choice(subjects)} {v} at {h} o'clock."
                for v, h in zip(rng.sample(["restarts", "beeps", "blinks", "stops", "updates"], 3), range(1, 4))
            )
        )
        for _ in range(n)
    ]


@pytest.mark.slow  # vocabulary-sized (30k) logits per token: the heaviest test here
def test_mlm_reduces_masked_loss(tiny_bert_dir, tmp_path):
    train_path, val_path = write(tmp_path, "train", docs(64, 1)), write(tmp_path, "val", docs(16, 2))
    result = train(
        run_config(tiny_bert_dir, "mlm", train_path, val_path, tmp_path / "run", FullMethod(), 40, 5e-3), progress=False
    )
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, result.losses
    assert (result.run_dir / "model" / "config.json").exists()


def test_mlm_masks_fifteen_percent_never_special(tiny_bert_dir):
    objective = get_objective("mlm")
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    feats = objective.encode(docs(50, 3), tok, 64)
    torch.manual_seed(0)
    batch = objective.collate(feats, tok.pad_token_id)
    masked = batch["labels"] != -100
    real = sum(len(f.input_ids) - 2 for f in feats)
    assert 0.12 < masked.sum().item() / real < 0.18
    special = torch.isin(torch.tensor([[f.input_ids[0]] for f in feats]), torch.tensor([tok.cls_token_id]))
    assert special.all() and not masked[:, 0].any()
    assert 0.7 < (batch["input_ids"][masked] == tok.mask_token_id).float().mean().item() < 0.9


def test_objective_options_reach_the_objective_and_are_checked_against_it(tiny_bert_dir):
    from tuneforge.config import validate_config
    from tuneforge.errors import ConfigError
    from tuneforge.objectives import objective_for

    base = {"data": {"train": "x.jsonl"}, "method": {"name": "full"}}
    mlm = objective_for(
        validate_config({**base, "objective": "mlm", "train": {"mlm_probability": 0.4}}, check_files=False)
    )
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    feats = mlm.encode(docs(50, 3), tok, 64)
    torch.manual_seed(0)
    masked = (mlm.collate(feats, tok.pad_token_id)["labels"] != -100).sum().item()
    assert 0.36 < masked / sum(len(f.input_ids) - 2 for f in feats) < 0.44
    dpo = objective_for(
        validate_config(
            {**base, "objective": "dpo", "method": {"name": "lora"}, "train": {"dpo_beta": 0.3}}, check_files=False
        )
    )
    assert (
        dpo.beta == 0.3
        and objective_for(
            validate_config({**base, "objective": "dpo", "method": {"name": "lora"}}, check_files=False)
        ).beta
        == 0.1
    )
    with pytest.raises(ConfigError, match="dpo_beta applies to objective dpo only"):
        validate_config({**base, "objective": "sft", "train": {"dpo_beta": 0.3}}, check_files=False)


def test_dpo_beta_scales_the_implicit_rewards(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    low, high = get_objective("dpo", beta=0.1), get_objective("dpo", beta=0.5)
    batch = low.collate(low.encode(preferences(4, 3), tok, 64), tok.pad_token_id)
    with torch.no_grad():
        (c1, r1), (c5, r5) = low.rewards(model, batch), high.rewards(model, batch)
    assert c1.abs().min() > 0  # the adapter moved the policy away from the reference
    torch.testing.assert_close(c5, 5 * c1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r5, 5 * r1, rtol=1e-4, atol=1e-6)


def topical_docs(n: int, seed: int) -> list[TextExample]:
    """Each document keeps to one subject, so a sentence from another document is told apart by its subject."""
    rng = random.Random(seed)
    subjects = ["printer", "router", "garden", "kitchen", "piano", "bicycle"]
    verbs = ["is new", "needs care", "was cleaned", "looks fine", "is loud", "got fixed"]
    return [
        TextExample(" ".join(f"The {s} {v}." for v in rng.sample(verbs, 4)))
        for s in (rng.choice(subjects) for _ in range(n))
    ]


@pytest.mark.slow
def test_nsp_learns_pairs(tiny_bert_dir, tmp_path):
    train_path, val_path = write(tmp_path, "train", topical_docs(40, 1)), write(tmp_path, "val", topical_docs(20, 2))
    result = train(
        run_config(tiny_bert_dir, "nsp", train_path, val_path, tmp_path / "run", FullMethod(), 30, 3e-3), progress=False
    )
    # a random 32-wide encoder learns the label prior in a few steps, the pair relation only much later
    assert sum(result.losses[-10:]) < sum(result.losses[:10]), result.losses
    assert 0 <= result.final_metrics["nsp_accuracy"] <= 1
    assert json.loads((result.run_dir / "model" / "config.json").read_text())["architectures"] == [
        "BertForNextSentencePrediction"
    ]
    assert (result.run_dir / "model" / "config.json").exists()


def test_nsp_pairs_are_half_true_successors(tiny_bert_dir):
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    documents = topical_docs(40, 5)
    feats = get_objective("nsp").encode(documents, tok, 64)
    assert len(feats) == 40 * 3  # every sentence but the last of each document starts a pair
    assert 0.35 < sum(f.labels[0] == 0 for f in feats) / len(feats) < 0.65
    for f in feats:
        first, second = tok.decode(f.input_ids, skip_special_tokens=False).split(" [SEP] ")[:2]

        def subject(text):
            return text.split()[2]  # "[CLS] the <subject> ..." / "the <subject> ..."

        if f.labels[0] == 0:  # IsNext: same document, hence same subject
            assert subject(first) == second.split()[1]


def preferences(n: int, seed: int) -> list[PreferencePair]:
    rng = random.Random(seed)
    items = ["printer", "router", "laptop", "phone"]
    return [
        PreferencePair(
            [Message("user", f"My {x} is broken, what now?")],
            f"Restart the {x} and tell me if it helps.",
            "No idea, go away.",
        )
        for x in (rng.choice(items) for _ in range(n))
    ]


@pytest.mark.parametrize("method", [LoraMethod(r=4, alpha=8), AdapterMethod(bottleneck=8)], ids=lambda m: m.name)
def test_dpo_prefers_chosen_with_the_base_as_reference(method, tiny_model_dir, tmp_path):
    train_path, val_path = write(tmp_path, "train", preferences(32, 1)), write(tmp_path, "val", preferences(8, 2))
    cfg = run_config(tiny_model_dir, "dpo", train_path, val_path, tmp_path / "run", method, 12, 1e-2, max_length=64)
    result = train(cfg, progress=False)
    assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference before the first step
    assert result.losses[-1] < 0.5 and result.final_metrics["reward_accuracy"] == 1.0, result.final_metrics
    assert result.final_metrics["reward_margin"] > 0
