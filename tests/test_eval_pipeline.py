"""Baselines, retrieval and the whole `tuneforge eval` pipeline on a tiny model and run."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.synthetic import support_desk_dataset
from tuneforge.data.types import Conversation, Message
from tuneforge.eval.baselines import RAG, FewShot, prompt_tokens, zero_shot
from tuneforge.eval.retrieval import BM25Retriever, EmbeddingRetriever, HybridRetriever, read_documents

DOCS = [
    "The Glow Bulb costs 19 dollars and has a two year warranty.",
    "Our office in Lyon opens at nine and closes at five.",
    "Returns are free within thirty days of delivery.",
    "The Soundbar ships in five days to most countries.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared busy CPU two threads are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from tuneforge.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_bm25_finds_the_right_passage():
    r = BM25Retriever(DOCS)
    assert r.search("when do refunds and returns close after delivery?", 2)[0].index == 2
    assert r.search("how fast does the soundbar ship", 1)[0].text == DOCS[3]


@pytest.mark.slow
def test_minilm_embeddings_find_paraphrases():
    # no shared content words with the passage: lexical search cannot, embeddings should
    r = EmbeddingRetriever(DOCS)
    assert r.search("Can I send back a product I bought?", 1)[0].index == 2
    assert HybridRetriever(DOCS).search("what time is the office open", 1)[0].index == 1


def test_documents_are_chunked(tmp_path):
    (tmp_path / "a.md").write_text("first paragraph here\n\nsecond one\n")
    (tmp_path / "b.txt").write_text(" ".join(f"w{i}" for i in range(25)))
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    passages = read_documents(tmp_path, max_words=10)
    assert passages[0] == "first paragraph here second one"
    assert [len(p.split()) for p in passages[1:]] == [10, 10, 5]


def test_few_shot_respects_the_context_budget(tokenizer):
    pool, test = support_desk_dataset(60, seed=5)[:50], support_desk_dataset(60, seed=5)[50:]
    zero = prompt_tokens(tokenizer, zero_shot(test[0]))
    for budget in (zero - 1, zero + 40, zero + 120, 10_000):
        builder = FewShot(pool, tokenizer, k=4, budget=budget)
        for conv in test:
            msgs = builder(conv)
            shots = (len(msgs) - len(zero_shot(conv))) // 2
            assert shots <= 4
            if shots:  # only an empty few-shot prompt may exceed the budget (the question alone is too long)
                assert prompt_tokens(tokenizer, msgs) <= budget
    assert (len(FewShot(pool, tokenizer, k=4, budget=10_000)(test[0])) - 2) // 2 == 4
    assert len(FewShot(pool, tokenizer, k=4, budget=zero + 40)(test[0])) < len(
        FewShot(pool, tokenizer, k=4, budget=10_000)(test[0])
    )


def test_few_shot_demonstrations_carry_no_loss_and_similar_comes_last(tokenizer):
    pool = [
        Conversation([Message("user", q), Message("assistant", a)])
        for q, a in [
            ("what is the glow bulb price", "19"),
            ("when does the office open", "nine"),
            ("glow bulb warranty", "2 years"),
        ]
    ]
    conv = Conversation([Message("system", "S"), Message("user", "glow bulb price please"), Message("assistant", "19")])
    msgs = FewShot(pool, tokenizer, k=2, budget=10_000)(conv)
    assert msgs[0].content == "S" and msgs[-1].content == "glow bulb price please"
    assert msgs[-3].content == "what is the glow bulb price"  # the most similar demonstration sits next to the question
    assert all(m.weight == 0 for m in msgs[1:-1])


def test_rag_puts_passages_in_the_system_message_within_budget(tokenizer):
    conv = Conversation([Message("system", "Be brief."), Message("user", "How fast does the Soundbar ship?")])
    msgs = RAG(BM25Retriever(DOCS), tokenizer, k=2, budget=10_000)(conv)
    assert (
        msgs[0].role == "system"
        and msgs[0].content.startswith("Be brief.")
        and "[1] The Soundbar ships" in msgs[0].content
    )
    tight = prompt_tokens(tokenizer, zero_shot(conv)) + 5
    assert RAG(BM25Retriever(DOCS), tokenizer, k=2, budget=tight)(conv)[0].content == "Be brief."


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """A 6-step LoRA run on the tiny model: a real run directory with adapter/ and metrics.jsonl."""
    from tuneforge.config import DataSection, EvalSection, LoraMethod, ModelSection, RunConfig, TrainSection
    from tuneforge.data.readers import write_jsonl
    from tuneforge.train import train

    root = tmp_path_factory.mktemp("eval-run")
    examples = support_desk_dataset(80, seed=3)
    paths = {}
    for name, rows in (("train", examples[:60]), ("validation", examples[60:68]), ("test", examples[68:])):
        paths[name] = root / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    general = root / "general.txt"
    general.write_text(
        "The fox lives in the forest.\nPeople in Oslo meet at the market.\nWater boils at one hundred degrees.\n"
    )
    cfg = RunConfig(
        objective="sft",
        output_dir=root / "run",
        model=ModelSection(name=str(tiny_model_dir), max_length=256),
        data=DataSection(train=paths["train"], validation=paths["validation"], test=paths["test"]),
        method=LoraMethod(r=4, alpha=8),
        train=TrainSection(max_steps=6, batch_size=8, lr=3e-3, eval_every=2, log_every=1, seed=0),
        eval=EvalSection(
            max_new_tokens=6,
            batch_size=16,
            bootstrap_samples=200,
            latency_samples=1,
            general_text=general,
            slice_fields=["product_line", "topic"],
        ),
    )
    train(cfg, progress=False)
    return cfg


@pytest.mark.slow
def test_eval_pipeline_writes_eval_json_and_report(tiny_run, tmp_path):
    from tuneforge.eval.evaluate import resolve_target, run_eval
    from tuneforge.eval.report import SECTIONS

    target = resolve_target(tiny_run.output_dir)
    report = run_eval(target, tmp_path, say=lambda m: None)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["approaches"] == report["approaches"]
    names = [a["name"] for a in report["approaches"]]
    assert names == ["base", "few_shot", "rag", "fine_tuned", "fine_tuned+rag"]
    by = {a["name"]: a for a in report["approaches"]}
    for a in report["approaches"]:
        assert set(a["metrics"]) == {"loss", "perplexity", "exact_match", "token_f1"}
        for cell in a["metrics"].values():
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
        assert a["examples"] == 12 and a["latency_seconds"] > 0
    # few-shot and RAG prompts carry demonstrations/passages: longer than zero-shot
    assert by["few_shot"]["prompt_tokens_per_request"] > by["base"]["prompt_tokens_per_request"]
    assert by["rag"]["prompt_tokens_per_request"] > by["base"]["prompt_tokens_per_request"]
    assert by["fine_tuned"]["prompt_tokens_per_request"] == by["base"]["prompt_tokens_per_request"]
    assert set(report["slices"]["fields"]) == {"product_line", "topic"}
    assert set(report["forgetting"]["perplexity"]) == {"base", "fine_tuned"}
    assert set(report["retrieval"]["answer_in_prompt"]) == {"rag", "fine_tuned+rag"}
    over = report["training_curves"]["overfitting"]
    assert [g["step"] for g in over["gap"]] == [2, 4, 6] and over["overfitting"] in (True, False)
    cost = report["cost"]
    assert cost["training"]["fine_tuned"]["training_tokens"] > 0 and cost["training"]["fine_tuned"][
        "epochs"
    ] == pytest.approx(6 / 8)
    assert set(cost["break_even_requests"]["fine_tuned"]) == {"base", "few_shot", "rag"}
    assert (
        cost["break_even_requests"]["fine_tuned"]["base"] is None
    )  # same prompt: fine-tuning never saves serving cost
    assert report["verdict"]["quality_winner"] in names and report["verdict"]["summary"]
    html = (tmp_path / "eval_report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in html
    assert html.count("data:image/png;base64,") >= 4  # metric bars, 2 slice charts, loss curves
    assert len(list((tmp_path / "predictions").glob("*.jsonl"))) == 5


@pytest.mark.slow
def test_eval_cli_json_with_other_run_and_subset(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app

    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_run.output_dir),
            "--run",
            str(tiny_run.output_dir),
            "--approaches",
            "base,fine_tuned",
            "--out",
            str(tmp_path),
            "--output",
            "json",
            "--set",
            "eval.max_examples=6",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [a["name"] for a in report["approaches"]] == ["base", "fine_tuned", "run"]
    assert report["approaches"][0]["examples"] == 6
    assert report["approaches"][1]["metrics"] == report["approaches"][2]["metrics"]  # the same run scored twice agrees
    assert report["cost"]["training"]["run"] == report["cost"]["training"]["fine_tuned"]
    assert set(report["cost"]["break_even_requests"]) == {"fine_tuned", "run"}


@pytest.mark.slow  # needs the trained tiny run
def test_eval_errors_name_the_fix(tmp_path, tiny_run):
    from tuneforge.errors import ConfigError
    from tuneforge.eval.evaluate import resolve_target

    with pytest.raises(ConfigError) as err:
        resolve_target(tmp_path / "nope")
    assert "run directory" in err.value.problems[0].fix
    with pytest.raises(ConfigError) as err:
        resolve_target(tiny_run.output_dir, [tmp_path])
    assert "--run" in err.value.problems[0].fix


@pytest.mark.slow
def test_untrained_config_scores_baselines_with_classification_metrics(tiny_model_dir, tmp_path):
    import yaml

    from tuneforge.eval.evaluate import resolve_target, run_eval

    rows = [
        {"text": f"the {thing} is {mood}", "label": mood}
        for thing in ("lamp", "lock", "fan", "radio", "kettle")
        for mood in ("good", "bad")
    ]
    for name, part in (("train.jsonl", rows[:6]), ("test.jsonl", rows[6:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "not-trained"),
                "model": {"name": str(tiny_model_dir), "max_length": 128},
                "data": {"train": "train.jsonl", "test": "test.jsonl"},
                "eval": {"max_new_tokens": 3, "latency_samples": 0, "bootstrap_samples": 200, "few_shot_k": 2},
            }
        )
    )
    said = []
    report = run_eval(resolve_target(config), tmp_path / "out", say=said.append)
    assert [a["name"] for a in report["approaches"]] == ["base", "few_shot", "rag"]
    assert set(report["approaches"][0]["metrics"]) == {"loss", "perplexity", "accuracy", "macro_f1"}
    assert report["primary_metric"] == "accuracy" and report["cost"]["training"] == {}
    assert report["verdict"]["fine_tuning_worth_it"] == "unknown" and any("baselines only" in m for m in said)
    assert "skipped" in report["forgetting"]
    assert (tmp_path / "out" / "eval_report.html").exists()
