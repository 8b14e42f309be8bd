"""Encoder baselines for classification (zero-shot embedding, kNN, linear probe) beside a fine-tuned
classifier in `tuneforge eval`: the pieces on fixed numbers, the probe against sklearn, the pooling
against sentence-transformers, and `eval` end to end on a 2-layer BERT."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoTokenizer, BertConfig, BertForPreTraining

from tuneforge.data.types import LabelledExample
from tuneforge.errors import ConfigError, DataError
from tuneforge.eval.encoder_baselines import (
    Embedder,
    can_generate,
    fit_probe,
    knn_probs,
    label_texts,
    zero_shot_probs,
)
from tuneforge.models.loading import resolve_model_path

WORDS = {
    "weather": ["rain", "snow", "sunny", "storm", "wind"],
    "sport": ["football", "tennis", "goal", "match", "team"],
    "food": ["pizza", "bread", "soup", "cheese", "apple"],
}


def topics(n: int, seed: int) -> list[dict]:
    """Short texts with their topic's name between two of its words: a frozen random encoder's mean pooling
    separates the words (knn, probe) and puts the text near its label's name (zero-shot; with longer texts,
    "weather news: rain and snow today", the shared filler drowns the name and zero-shot is at chance)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(WORDS))
        a, b = rng.sample(WORDS[label], 2)
        rows.append({"text": f"{a} {label} {b}", "label": label})
    return rows


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A random 2-layer, hidden-32 BERT (pretraining heads) with MiniLM's WordPiece tokenizer."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    folder = tmp_path_factory.mktemp("enc-bert")
    BertForPreTraining(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_knn_votes_weighted_majority_and_ties():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    probs, pred = knn_probs(train, y, query, 3, k=3, vote="weighted")  # sims 1.0 (0), 0.8 (1), 0.0 (1)
    assert probs[0].tolist() == pytest.approx([1 / 1.8, 0.8 / 1.8, 0.0]) and pred.item() == 0
    probs, pred = knn_probs(train, y, query, 3, k=3, vote="majority")  # two votes for 1 beat one for 0
    assert probs[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0]) and pred.item() == 1
    probs, pred = knn_probs(train, y, query, 3, k=2, vote="majority")  # 1-1 tie: the more similar neighbour wins
    assert probs[0].tolist() == pytest.approx([0.5, 0.5, 0.0]) and pred.item() == 0
    probs, _ = knn_probs(train, y, query, 3, k=50, vote="majority")  # k above the pool: every example votes
    assert probs[0].tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_zero_shot_is_softmax_of_scaled_cosines():
    labels = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), dim=-1)
    probs, pred = zero_shot_probs(torch.tensor([[0.6, 0.8]], dtype=torch.float64), labels)
    want = torch.softmax(torch.tensor([12.0, 16.0], dtype=torch.float64), dim=0)
    assert torch.allclose(probs[0], want) and pred.item() == 1


@pytest.mark.slow  # sklearn import and the first L-BFGS step (torch.optim set-up) take ~5 s
def test_linear_probe_matches_sklearn_and_is_deterministic():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = F.normalize(
        torch.randn(90, 8, generator=g, dtype=torch.float64) + 0.8 * torch.eye(8)[torch.arange(90) % 3], dim=-1
    )
    y = torch.arange(90) % 3
    l2 = 1e-2
    probe = fit_probe(x, y, 3, steps=500, l2=l2)
    again = fit_probe(x, y, 3, steps=500, l2=l2)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    ref = LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-10, max_iter=5000).fit(x.numpy(), y.numpy())
    ours = probe(x)[0].numpy()
    assert abs(ours - ref.predict_proba(x.numpy())).max() < 1e-4
    assert probe.train_accuracy == pytest.approx(float((ref.predict(x.numpy()) == y.numpy()).mean()))


@pytest.mark.slow  # sentence-transformers and MiniLM load in ~8 s
def test_embedder_pools_as_sentence_transformers_does():
    from sentence_transformers import SentenceTransformer

    texts = ["my invoice is wrong", "the router will not turn on", "cancel my plan"]
    ours = Embedder("minilm", max_length=64)(texts)
    ref = SentenceTransformer(resolve_model_path("minilm"), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384) and abs(ours.numpy() - ref).max() < 1e-5
    assert not can_generate("minilm")


def test_label_texts_precedence_and_located_errors():
    train = [
        LabelledExample("a", "account_access", {"label_description": "cannot log in"}),
        LabelledExample("b", "billing"),
        LabelledExample("c", "shipping-delay"),
    ]
    labels = ["account_access", "billing", "shipping-delay"]
    texts, sources = label_texts(labels, train, {"billing": "a question about a charge"}, "train.jsonl")
    assert texts == {
        "account_access": "cannot log in",
        "billing": "a question about a charge",
        "shipping-delay": "shipping delay",
    }
    assert sources["billing"] == "eval.label_descriptions" and sources["shipping-delay"] == "label name"
    with pytest.raises(ConfigError) as err:
        label_texts(labels, train, {"refund": "money back"}, "train.jsonl")
    assert err.value.problems[0].where == "eval.label_descriptions.refund" and "billing" in err.value.problems[0].fix
    clash = train + [LabelledExample("d", "account_access", {"label_description": "locked out"})]
    with pytest.raises(DataError) as err:
        label_texts(labels, clash, {}, "train.jsonl")
    assert err.value.problems[0].where == "train.jsonl: example 3 metadata.label_description"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoder_run(bert_dir, tmp_path_factory):
    """A config (head method on the random BERT, 40 steps) and its trained run."""
    from tuneforge.config import load_config
    from tuneforge.train import train

    root = tmp_path_factory.mktemp("enc-eval")
    for name, (n, seed) in {"train": (60, 1), "validation": (12, 2), "test": (30, 3)}.items():
        _write(root / f"{name}.jsonl", topics(n, seed))
    config = root / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "objective": "classification",
                "output_dir": str(root / "run"),
                "model": {"name": str(bert_dir), "max_length": 32},
                "data": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
                "method": {"name": "head"},
                "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-2, "eval_every": 1000, "save_every": 1000},
                "eval": {"bootstrap_samples": 200, "latency_samples": 1, "knn_k": 3},
            }
        )
    )
    cfg = load_config(config)
    train(cfg, progress=False)
    return config, cfg


@pytest.mark.slow
def test_eval_shows_encoder_baselines_beside_the_fine_tuned_head(encoder_run, tmp_path):
    from tuneforge.eval.evaluate import resolve_target, run_eval

    config, cfg = encoder_run
    said = []
    report = run_eval(resolve_target(config), tmp_path, say=said.append)
    names = [a["name"] for a in report["approaches"]]
    assert names == ["zero_shot_embedding", "knn", "linear_probe", "fine_tuned"]
    assert any("is an encoder" in m and "cannot answer the chat prompts" in m for m in said)
    by = {a["name"]: a["metrics"] for a in report["approaches"]}
    for a in report["approaches"]:
        assert set(a["metrics"]) == {"loss", "perplexity", "accuracy", "macro_f1"} and a["examples"] == 30
        for cell in a["metrics"].values():
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
        assert a["completion_tokens_per_request"] == 0 and a["prompt_tokens_per_request"] == 5  # [CLS] 3 [SEP]
    # a frozen random encoder's mean pooling already separates the topics' words
    assert by["knn"]["accuracy"]["mean"] == 1.0 and by["linear_probe"]["accuracy"]["mean"] == 1.0
    # the label names alone, with no training data: far above chance (1/3)
    assert by["zero_shot_embedding"]["accuracy"]["mean"] >= 0.8
    info = report["encoder_baselines"]
    assert info["zero_shot_embedding"]["label_texts"] == {"food": "food", "sport": "sport", "weather": "weather"}
    assert info["knn"] == {"k": 3, "vote": "weighted", "pool": 60}
    assert info["linear_probe"]["train_accuracy"] == 1.0 and info["linear_probe"]["iterations"] > 0
    # paired differences and a verdict that treats the embedding baselines as the cheaper alternatives
    verdict = report["verdict"]
    assert "linear_probe - fine_tuned" in verdict["differences"] or "knn - fine_tuned" in verdict["differences"]
    assert verdict["fine_tuning_worth_it"] in ("no", "uncertain", "yes")
    assert set(report["cost"]["break_even_requests"]["fine_tuned"]) == {"zero_shot_embedding", "knn", "linear_probe"}
    assert "encoder" in report["forgetting"]["skipped"]
    rows = [json.loads(x) for x in (tmp_path / "predictions" / "knn.jsonl").read_text().splitlines()]
    assert rows[0]["prediction"] == rows[0]["reference"] and rows[0]["reference"] in rows[0]["prompt"]
    assert (tmp_path / "eval_report.html").exists()


@pytest.mark.slow
def test_chat_baselines_refused_on_an_encoder_with_the_reason(encoder_run, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app
    from tuneforge.eval.evaluate import resolve_target, run_eval

    config, _ = encoder_run
    with pytest.raises(ConfigError) as err:
        run_eval(resolve_target(config), tmp_path, ["knn", "few_shot"], say=lambda m: None)
    problem = err.value.problems[0]
    assert problem.where == "--approaches" and "'few_shot'" in problem.message and "cannot generate" in problem.message
    with pytest.raises(ConfigError) as err:
        run_eval(resolve_target(config, overrides=["eval.approaches=[rag]"]), tmp_path, say=lambda m: None)
    assert err.value.problems[0].where == "eval.approaches"
    run = encoder_run[1].output_dir
    args = ["eval", str(config), "--run", str(run), "--approaches", "knn,fine_tuned", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--output", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [a["name"] for a in report["approaches"]] == ["knn", "fine_tuned", "run"]
    assert report["approaches"][1]["metrics"] == report["approaches"][2]["metrics"]  # another run: its head too


@pytest.mark.slow  # MiniLM embeds 120 training and 60 test texts (~10 s idle, ~50 s on 2 busy cores)
def test_minilm_intent_example_baselines_before_any_training(tmp_path, monkeypatch):
    """The shipped example's config, untrained: `eval` answers "is fine-tuning needed?" with the encoder's
    baselines on the real all-MiniLM-L6-v2 (test phrasings never occur in training)."""
    import sys
    from pathlib import Path

    from tuneforge.eval.evaluate import resolve_target, run_eval

    example = Path(__file__).parent.parent / "examples" / "minilm_intent"
    monkeypatch.syspath_prepend(str(example))
    sys.modules.pop("make_data", None)
    from make_data import main as make_data

    make_data(tmp_path / "data", n_train=120, n_val=12, n_test=60)  # the example's generator, smaller splits
    overrides = [f"data.{split}={tmp_path / 'data' / split}.jsonl" for split in ("train", "validation", "test")]
    overrides += [f"output_dir={tmp_path / 'untrained'}", "eval.bootstrap_samples=200", "eval.latency_samples=0"]
    said = []
    report = run_eval(resolve_target(example / "head.yaml", overrides=overrides), tmp_path / "out", say=said.append)
    by = {a["name"]: a["metrics"]["accuracy"]["mean"] for a in report["approaches"]}
    assert list(by) == ["zero_shot_embedding", "knn", "linear_probe"] and report["test_examples"] == 60
    assert any("baselines only" in m for m in said)
    # measured 0.717 / 0.583 / 0.883: six intents (chance 1/6); the label names alone go far, nearest
    # neighbours match training phrasings the test never uses, the probe generalises across them
    assert by["zero_shot_embedding"] > 0.6 and by["knn"] > 0.45 and by["linear_probe"] > 0.78
    assert by["linear_probe"] > by["knn"]
    assert report["verdict"]["fine_tuning_worth_it"] == "unknown"  # nothing fine-tuned to compare yet
