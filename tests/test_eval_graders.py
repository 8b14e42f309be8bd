"""Graders: each type on fixed samples with known scores, templates, formulas, located config errors,
failing graders scored 0 and counted, score_model against a judge on 127.0.0.1, and graders in `tuneforge eval`."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter

from tuneforge.config import validate_config
from tuneforge.errors import ConfigError
from tuneforge.eval.graders import Sample, build_grader, check_item_fields, item_of
from tuneforge.eval.graders.spec import GraderSpec
from tuneforge.eval.graders.templates import render, resolve
from tuneforge.eval.metrics import token_f1

SPECS = TypeAdapter(GraderSpec)


def grader(**spec):
    return build_grader(SPECS.validate_python(spec), "eval.graders[0]")


def scores(g, outputs: list[str], items: list[dict]) -> tuple[list[float], list[str | None]]:
    batch = g.grade_batch([Sample(o) for o in outputs], items)
    return [round(s, 4) for s in batch.scores], batch.errors


ITEM = item_of(
    "Thanks! The Lumora Echo Mini costs $49. Anything else?",
    {"fact": "$49", "topic": "price", "expected": {"price": 49, "currency": "USD"}},
)


def test_templates_keep_types_alone_and_write_text_otherwise():
    where = {"sample": Sample('{"price": 49}').as_dict(), "item": ITEM}
    assert resolve("{{sample.output_json}}", where) == {"price": 49}  # a lone reference keeps its type
    assert resolve(" {{ item.expected }} ", where) == {"price": 49, "currency": "USD"}
    assert render("fact={{item.fact}}; got {{sample.output_json}}", where) == 'fact=$49; got {"price": 49}'
    assert Sample("not json").output_json is None
    with pytest.raises(KeyError, match="no field 'colour'"):
        render("{{item.colour}}", where)


@pytest.mark.parametrize(
    "operation, expected",
    [
        ("eq", [1, 0, 0]),
        ("ne", [0, 1, 1]),
        ("like", [1, 1, 0]),
        ("ilike", [1, 1, 1]),
        ("not_like", [0, 0, 1]),
        ("not_ilike", [0, 0, 0]),
    ],
)
def test_string_check_operations(operation, expected):
    g = grader(
        type="string_check", name="s", input="{{sample.output_text}}", reference="{{item.word}}", operation=operation
    )
    items = [{"word": "Blue"}] * 3
    assert scores(g, ["Blue", "It is Blue.", "it is blue"], items)[0] == expected


def test_regex_json_match_and_text_similarity():
    rx = grader(type="regex", name="r", pattern=r"\$\d+\b")
    assert scores(rx, ["costs $49.", "costs 49 dollars", "$"], [ITEM] * 3)[0] == [1, 0, 0]
    assert scores(grader(type="regex", name="r", pattern="echo", ignore_case=True), ["The ECHO Mini"], [ITEM])[0] == [1]
    whole = grader(type="json_match", name="j", reference="{{item.expected}}")
    outputs = ['{"currency": "USD", "price": 49}', '{"price": 49, "currency": "EUR"}', "not JSON", '{"price": 49}']
    assert scores(whole, outputs, [ITEM] * 4) == (
        [1, 0, 0, 0],
        [None] * 4,
    )  # an answer that is not JSON scores 0, no error
    fields = grader(type="json_match", name="j", reference="{{item.expected}}", fields=["price", "currency"])
    assert scores(fields, outputs, [ITEM] * 4)[0] == [1, 0.5, 0, 0.5]
    bad_reference = grader(
        type="json_match", name="j", reference="{{item.fact}}"
    )  # "$49" is not JSON: the data's fault
    assert scores(bad_reference, ['{"a": 1}'], [ITEM])[1][0].startswith("ValueError: the reference")
    sim = {
        m: grader(type="text_similarity", name="t", reference="{{item.reference}}", evaluation_metric=m)
        for m in ("fuzzy_match", "bleu", "token_f1", "rouge_1", "rouge_l", "exact_match")
    }
    for g in sim.values():
        assert scores(g, [ITEM["reference"]], [ITEM])[0] == [1.0]  # identical text: every similarity is 1
    assert scores(sim["token_f1"], ["the cat sat"], [{"reference": "a cat sat down"}])[0] == [0.8]
    assert scores(sim["fuzzy_match"], ["abcd"], [{"reference": "abce"}])[0] == [0.75]
    assert scores(sim["rouge_1"], ["cat sat"], [{"reference": "the dog sat"}])[0] == [pytest.approx(0.4)]
    assert sim["bleu"].family == "style" and rx.family == "facts"


def test_python_grader_from_source_and_file_and_its_failures(tmp_path):
    source = (
        "def grade(sample, item):\n    if item['topic'] == 'boom':\n        return 1 / 0\n"
        "    return float(item['fact'] in sample['output_text'])\n"
    )
    g = grader(type="python", name="p", source=source)
    items = [ITEM, {**ITEM, "topic": "boom"}, ITEM]
    values, errors = scores(g, ["It is $49", "It is $49", "No idea"], items)
    assert values == [1, 0, 0]  # the item whose call raises scores 0 ...
    assert errors == [
        None,
        "ZeroDivisionError: division by zero (line 3)",
        None,
    ]  # ... and its error is kept, with the line
    path = tmp_path / "grader.py"
    path.write_text("def grade(sample, item):\n    return 'yes'\n")
    assert scores(grader(type="python", name="p", file=str(path)), ["x"], [ITEM])[1] == [
        "TypeError: grade returned 'yes', not a number"
    ]
    with pytest.raises(ConfigError) as exc:
        grader(type="python", name="p", source="def grade(sample, item):\n    return (\n")
    assert (
        exc.value.problems[0].where == "eval.graders[0].source"
        and "SyntaxError at line" in exc.value.problems[0].message
    )
    with pytest.raises(ConfigError) as exc:
        grader(type="python", name="p", file=str(tmp_path / "missing.py"))
    assert exc.value.problems[0].where == "eval.graders[0].file"
    with pytest.raises(ConfigError, match="no grade function"):
        grader(type="python", name="p", source="def score(sample, item):\n    return 1\n")


def test_multi_formula_weights_powers_functions_and_failures():
    subs = {
        "fact": {"type": "string_check", "reference": "{{item.fact}}", "operation": "like"},
        "style": {"type": "text_similarity", "reference": "{{item.reference}}", "evaluation_metric": "token_f1"},
    }
    g = grader(type="multi", name="m", graders=subs, calculate_output="0.7 * fact + 0.3 * style^2")
    outputs = [ITEM["reference"], "It costs $49", "the lumora echo mini costs $19 anything else"]
    values, errors = scores(g, outputs, [ITEM] * 3)
    f1 = [token_f1(o, ITEM["reference"]) for o in outputs]
    assert values == [round(0.7 * fact + 0.3 * s**2, 4) for fact, s in zip([1, 1, 0], f1)] and errors == [None] * 3
    assert scores(
        grader(type="multi", name="m", graders=subs, calculate_output="min(fact, style) + max(1, abs(-2))"),
        outputs[:1],
        [ITEM],
    )[0] == [3.0]
    ratio = grader(type="multi", name="m", graders=subs, calculate_output="style / fact")
    values, errors = scores(ratio, ["It costs $19"], [ITEM])
    assert values == [0] and errors[0].startswith("calculate_output: ZeroDivisionError")  # scored 0, counted, no crash
    missing = grader(
        type="multi",
        name="m",
        graders={"a": {"type": "string_check", "reference": "{{item.colour}}", "operation": "eq"}},
        calculate_output="1 + a",
    )
    values, errors = scores(missing, ["x"], [ITEM])
    assert values == [1.0] and errors == [
        "a: MissingField: {{item.colour}}: no field 'colour'"
    ]  # the failed sub-grader counts 0


def bad(graders) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        validate_config({"data": {"train": "t.jsonl"}, "eval": {"graders": graders}}, "run.yaml", check_files=False)
    return [(p.where, p.message) for p in exc.value.problems]


def test_bad_grader_configs_are_located_errors_listing_what_is_allowed():
    ok = {"type": "string_check", "name": "fact", "reference": "{{item.fact}}", "operation": "ilike"}
    problems = bad(
        [
            ok,
            ok | {"name": "b", "operation": "contains"},
            {"type": "regex", "name": "r", "pattern": "("},
            {"type": "similarity", "name": "x"},
            ok | {"name": "d", "input": "{{output_text}}"},
            {"type": "text_similarity", "name": "t", "reference": "x", "evaluation_metric": "cosine"},
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": ok | {"operation": "eq ", "name": ""}},
                "calculate_output": "a + b",
            },
            {
                "type": "score_model",
                "name": "j",
                "model": "demo",
                "input": [{"role": "user", "content": "x"}],
                "range": [5, 1],
            },
        ]
    )
    where = dict(problems)
    assert "'eq', 'ne', 'like', 'ilike'" in where["run.yaml: eval.graders[1].operation"]
    assert "not a regular expression" in where["run.yaml: eval.graders[2].pattern"]
    assert "'string_check', 'regex', 'json_match'" in where["run.yaml: eval.graders[3]"]
    assert "not sample.FIELD or item.FIELD" in where["run.yaml: eval.graders[4].input"]
    assert "'cosine' is not supported yet" in where["run.yaml: eval.graders[5].evaluation_metric"]
    assert "run.yaml: eval.graders[6].graders.a.operation" in where
    assert "low < high" in where["run.yaml: eval.graders[7].range"]
    assert len(problems) == 7  # every problem at once (the multi's formula is checked once its graders are valid)
    assert (
        "unknown name 'b'"
        in dict(bad([{"type": "multi", "name": "m", "graders": {"a": ok}, "calculate_output": "a + b"}]))[
            "run.yaml: eval.graders[0].calculate_output"
        ]
    )
    [(key, message)] = bad([ok, ok, ok | {"name": "token_f1"}, ok | {"name": ""}])
    assert key == "run.yaml: eval" and "eval.graders[1].name: 'fact' is already another grader's name" in message
    assert (
        "eval.graders[2].name: 'token_f1' is already a metric" in message
        and "eval.graders[3].name: required" in message
    )


def test_templates_reading_a_field_no_test_example_has_are_refused_before_loading_a_model():
    spec = SPECS.validate_python(
        {"type": "string_check", "name": "fact", "reference": "{{item.fakt}}", "operation": "eq"}
    )
    with pytest.raises(ConfigError) as exc:
        check_item_fields([spec], [ITEM], "test.jsonl")
    p = exc.value.problems[0]
    assert (
        p.where == "eval.graders[0].reference"
        and "no test example in test.jsonl has the field 'fakt'" in p.message
        and "fact" in p.fix
    )
    check_item_fields(
        [spec.model_copy(update={"reference": "{{item.fact}}"})], [ITEM], "test.jsonl"
    )  # a field that exists passes


# ------------------------------------------------------------------ score_model against judges on 127.0.0.1


def stub_judge():
    """An OpenAI-compatible judge with fixed replies: 8 if the answer states the fact, 2 if not, none for 'shrug'."""
    from fastapi import FastAPI

    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    def complete(body: dict):
        seen.append(body)
        text = body["messages"][-1]["content"]
        answer, fact = text.split("Answer: ")[1].split(" Fact: ")
        reply = (
            "I shrug"
            if "shrug" in answer
            else ('{"result": 8}' if fact in answer else "Score: 2 - the fact is missing")
        )
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app, seen


JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": "judge-1",
    "range": [0, 10],
    "concurrency": 3,
    "api_key_env": "H9_JUDGE_KEY",
    "input": [
        {"role": "system", "content": "Score 0-10: does the answer state the fact?"},
        {"role": "user", "content": "Answer: {{sample.output_text}} Fact: {{item.fact}}"},
    ],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 5, "seed": 3},
}


def test_score_model_scales_the_judges_number_and_counts_replies_without_one(monkeypatch):
    from helpers import serve_in_thread

    monkeypatch.setenv("H9_JUDGE_KEY", "k")
    app, seen = stub_judge()
    with serve_in_thread(app) as url:
        g = grader(**JUDGE, base_url=url + "/v1")
        values, errors = scores(g, ["It costs $49.", "It costs $19.", "I shrug", "$49 indeed"], [ITEM] * 4)
        out_of_range = grader(**{**JUDGE, "range": [0, 5]}, base_url=url + "/v1")
        high, high_errors = scores(out_of_range, ["It costs $49."], [ITEM])
    assert values == [0.8, 0.2, 0, 0.8]
    assert (
        errors[:2] == [None, None]
        and errors[2].startswith("ValueError: the judge's reply holds no score")
        and errors[3] is None
    )
    assert high == [0] and "outside range [0, 5]" in high_errors[0]
    assert len(seen) == 5  # one request per answer (3 in flight at once, so in any order)
    for body in seen:
        assert body["model"] == "judge-1" and body["max_tokens"] == 5 and body["seed"] == 3 and body["temperature"] == 0
    sent = sorted(body["messages"][1]["content"] for body in seen[:4])
    assert sent == sorted(f"Answer: {o} Fact: $49" for o in ["It costs $49.", "It costs $19.", "I shrug", "$49 indeed"])


def test_score_model_on_tuneforge_serve_grades_or_counts_every_answer(tmp_path, monkeypatch):
    """The project's own service as the judge: its replies are graded exactly as parse_score reads them."""
    import openai

    from helpers import install_tiny_demo, serve_in_thread
    from tuneforge.eval.graders.judge import parse_score
    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    install_tiny_demo(home)
    settings = ServeSettings(database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=1)
    store = Store(settings.database_url)
    outputs = ["It costs $49.", "It costs $19.", "No idea.", "Forty-nine dollars."]
    try:
        with serve_in_thread(create_app(settings, store)) as url:
            _, key = keys.create_key(store, "judge")
            monkeypatch.setenv("H9_JUDGE_KEY", key)
            g = grader(**{**JUDGE, "model": "demo", "range": [0, 1000]}, base_url=url + "/v1")
            values, errors = scores(g, outputs, [ITEM] * 4)
            direct = openai.OpenAI(base_url=url + "/v1", api_key=key)
            replies = [
                direct.chat.completions.create(
                    model="demo", messages=g.messages(Sample(o), ITEM), temperature=0, max_tokens=5, seed=3
                )
                .choices[0]
                .message.content
                for o in outputs
            ]
    finally:
        store.dispose()
    for value, error, reply in zip(values, errors, replies):
        try:
            expected = parse_score(reply) / 1000
        except ValueError:
            expected = None
        if expected is None or not 0 <= expected <= 1:
            assert value == 0 and error  # no usable number in the reply: scored 0 and counted
        else:
            assert value == round(expected, 4) and error is None


# ------------------------------------------------------------------ graders in `tuneforge eval`


@pytest.mark.slow
def test_eval_reports_graders_with_intervals_errors_and_a_verdict_per_family(tiny_model_dir, support_data, tmp_path):
    import yaml

    from tuneforge.eval.evaluate import resolve_target, run_eval

    source = (
        "def grade(sample, item):\n    if item['topic'] == 'shipping':\n        raise RuntimeError('no courier data')\n"
        "    return float(item['topic'] == 'price')\n"
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "not-trained"),
                "model": {"name": str(tiny_model_dir), "max_length": 256},
                "data": {k: str(v) for k, v in support_data.items()},
                "eval": {
                    "max_new_tokens": 4,
                    "latency_samples": 0,
                    "bootstrap_samples": 200,
                    "few_shot_k": 1,
                    "approaches": ["base", "few_shot"],
                    "graders": [
                        {
                            "type": "string_check",
                            "name": "fact_accuracy",
                            "reference": "{{item.fact}}",
                            "operation": "ilike",
                        },
                        {"type": "python", "name": "is_price", "source": source},
                    ],
                },
            }
        )
    )
    said = []
    report = run_eval(resolve_target(config), tmp_path / "out", say=said.append)
    assert report["graders"] == json.loads((tmp_path / "out" / "eval.json").read_text())["graders"]
    test = [json.loads(line) for line in support_data["test"].read_text().splitlines()]
    topics = [t["metadata"]["topic"] for t in test]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    for a in saved["approaches"]:
        for name in ("fact_accuracy", "is_price"):
            cell = a["metrics"][name]
            assert set(cell) == {"mean", "ci_low", "ci_high"} and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
        assert a["metrics"]["is_price"]["mean"] == pytest.approx(topics.count("price") / len(topics), abs=1e-4)
        assert a["grader_errors"] == {"fact_accuracy": 0, "is_price": topics.count("shipping")}
    assert saved["graders"]["is_price"]["errors"] == {
        "base": topics.count("shipping"),
        "few_shot": topics.count("shipping"),
    }
    assert saved["graders"]["is_price"]["first_errors"]["base"][0] == "RuntimeError: no courier data (line 3)"
    assert saved["metric_families"] == {"facts": "fact_accuracy", "style": "token_f1"}
    families = saved["verdict"]["families"]
    assert set(families) == {"facts", "style"} and families["facts"]["metric"] == "fact_accuracy"
    assert set(families["facts"]["differences"]) == {
        f"{families['facts']['winner']} - " + ({"base", "few_shot"} - {families["facts"]["winner"]}).pop()
    }
    assert saved["verdict"]["summary"][0].startswith("Facts (fact_accuracy, 8 test examples)")
    assert any(line.startswith("Style (token_f1, 8 test examples)") for line in saved["verdict"]["summary"])
    assert any("grader is_price could not grade" in m for m in said)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions" / "base.jsonl").read_text().splitlines()]
    assert [r["grades"]["is_price"] for r in rows] == [float(t == "price") for t in topics]
    assert all(("grade_errors" in r) == (r["topic"] == "shipping") for r in rows)
    assert "<h2>Graders</h2>" in (tmp_path / "out" / "eval_report.html").read_text()


def test_every_support_example_records_the_fact_its_answer_must_state():
    from tuneforge.data.synthetic import support_desk_dataset

    examples = support_desk_dataset(400, seed=2)
    assert all(c.metadata["fact"] in c.reference for c in examples)
    by_topic: dict[str, set[tuple[str, str]]] = {}
    for c in examples:
        by_topic.setdefault(c.metadata["topic"], set()).add((c.metadata["fact"], c.reference))
    for pairs in by_topic.values():  # a wrong product's answer never passes the fact check ($19 is not in $189)
        assert all(fact.lower() not in answer.lower() for fact, _ in pairs for other, answer in pairs if other != fact)


def test_quickstart_grades_fact_accuracy_and_its_config_round_trips(tmp_path):
    import yaml

    from tuneforge.quickstart import REPORTED, quickstart_config, write_support_splits

    data = write_support_splits(tmp_path / "data", n=60)
    cfg = quickstart_config(tmp_path / "run", data)
    assert "fact_accuracy" in REPORTED and [g.name for g in cfg.eval.graders] == ["fact_accuracy"]
    again = validate_config(
        yaml.safe_load(cfg.to_yaml())
    )  # what a run's config.yaml holds, read back by `tuneforge eval RUN`
    assert again.eval.graders == cfg.eval.graders
    first = json.loads(data["test"].read_text().splitlines()[0])
    item = item_of(first["messages"][-1]["content"], first["metadata"])
    g = build_grader(cfg.eval.graders[0], "eval.graders[0]")
    assert g.grade(Sample(item["reference"]), item) == 1.0 and g.grade(Sample("Thanks for asking!"), item) == 0.0
