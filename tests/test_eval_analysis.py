"""Slices, overfitting, cost/break-even and the verdict on hand-made results (no model)."""

from __future__ import annotations

import pytest

from tuneforge.data.costs import PriceTable
from tuneforge.eval.compare import ApproachResult, summarise
from tuneforge.eval.cost import break_even, cost_report
from tuneforge.eval.forgetting import forgetting_summary, overfitting
from tuneforge.eval.metrics import METRICS
from tuneforge.eval.slices import slice_fields, slice_report
from tuneforge.eval.verdict import verdict

F1 = METRICS["token_f1"]


def result(name: str, correct: list[bool], lines: list[str], prompt_tokens: int = 50) -> ApproachResult:
    n = len(correct)
    refs = [f"answer {i}" for i in range(n)]
    preds = [r if ok else "wrong" for r, ok in zip(refs, correct)]
    return ApproachResult(
        name,
        name,
        preds,
        refs,
        [{"line": line, "id": i} for i, line in enumerate(lines)],
        [2.0] * n,
        [4] * n,
        [prompt_tokens] * n,
        [10] * n,
        0.01,
        1.0,
        [0.05],
        [[{"role": "user", "content": "q"}]] * n,
    )


LINES = ["audio"] * 20 + ["video"] * 20


def test_slice_fields_pick_low_cardinality_fields():
    meta = [{"line": line, "id": i, "score": 0.5} for i, line in enumerate(LINES)]
    assert slice_fields(meta) == ["line"]  # 'id' has 40 values, 'score' only one
    assert slice_fields(meta, ["id"]) == ["id"]


def test_slice_flags_a_group_hurt_by_fine_tuning():
    base = result("base", [True] * 10 + [False] * 10 + [True] * 20, LINES)
    # fine-tuning fixes audio but breaks video: the average rises a little, one group pays for it
    tuned = result("fine_tuned", [True] * 20 + [True] * 12 + [False] * 8, LINES)
    report = slice_report([base, tuned], F1, ["line"], 300, 0.95)
    cells = report["fields"]["line"]["values"]
    assert (
        cells["audio"]["n"] == 20
        and cells["audio"]["fine_tuned"]["mean"] == 1.0
        and cells["video"]["fine_tuned"]["mean"] == 0.6
    )
    flags = report["fields"]["line"]["flags"]
    assert any("fine_tuned is worse than base on line=video" in f for f in flags)
    assert any(f.startswith("base: line=audio") for f in flags)


def test_overfitting_is_flagged_when_validation_rises():
    train = [(s, 2.0 - 0.1 * s) for s in range(1, 13)]
    rising = overfitting({"train": train, "validation": [(4, 1.5), (8, 1.4), (12, 1.7)]})
    assert rising["overfitting"] is True and rising["best_step"] == 8
    assert rising["gap"][0] == {"step": 4, "train_loss": 1.75, "val_loss": 1.5, "gap": -0.25}
    healthy = overfitting({"train": train, "validation": [(4, 1.5), (8, 1.4), (12, 1.39)]})
    assert healthy["overfitting"] is False
    assert overfitting({"train": train, "validation": []})["overfitting"] is None


def test_break_even_and_cost_report():
    assert break_even(10.0, 0.001, 0.003) == 5000
    assert break_even(10.0, 0.003, 0.003) is None
    prices = PriceTable(training_per_1k=0.008, input_per_1k=0.012, output_per_1k=0.016)
    rows = [
        {
            "name": "rag",
            "prompt_tokens_per_request": 300.0,
            "completion_tokens_per_request": 20.0,
            "latency_seconds": 0.2,
            "seconds_per_request_batched": 0.1,
        },
        {
            "name": "fine_tuned",
            "prompt_tokens_per_request": 50.0,
            "completion_tokens_per_request": 20.0,
            "latency_seconds": 0.1,
            "seconds_per_request_batched": 0.05,
        },
    ]
    report = cost_report(
        rows, {"fine_tuned": {"training_cost": 1.2, "training_tokens": 150_000, "epochs": 3, "currency": "USD"}}, prices
    )
    # rag: (300*0.012 + 20*0.016)/1000 = 0.00392; tuned: (50*0.012 + 20*0.016)/1000 = 0.00092; 1.2 / 0.003 = 400
    assert report["approaches"]["rag"]["cost_per_request"] == pytest.approx(0.00392)
    assert report["break_even_requests"] == {"fine_tuned": {"rag": 400}}


def test_verdict_states_ties_and_wins():
    base = result("base", [i % 4 == 0 for i in range(40)], LINES)
    rag = result("rag", [i % 3 != 0 for i in range(40)], LINES, prompt_tokens=200)
    tuned = result("fine_tuned", [i % 3 != 0 for i in range(40)], LINES)
    results = [base, rag, tuned]
    summaries = [summarise(r, [F1], 300) for r in results]
    prices = PriceTable()
    cost = cost_report(
        summaries,
        {"fine_tuned": {"training_cost": 0.5, "training_tokens": 60_000, "epochs": 2.0, "currency": "USD"}},
        prices,
    )
    v = verdict(
        results,
        summaries,
        F1,
        cost,
        forgetting_summary({"base": {"mean": 10.0}, "fine_tuned": {"mean": 12.0}}, "gen"),
        None,
        [],
        300,
    )
    assert v["quality_winner"] in ("rag", "fine_tuned") and set(v["tied_with"]) == (
        {"rag", "fine_tuned"} - {v["quality_winner"]}
    )
    assert v["fine_tuning_worth_it"] == "uncertain"  # identical answers: the difference interval is [0, 0]
    assert v["cost_winner"] in ("base", "fine_tuned")
    assert v["cheapest_best_quality"] == "fine_tuned"  # tied with rag on quality, with a quarter of its prompt
    text = " ".join(v["summary"])
    assert (
        "interval includes 0" in text
        and "fine_tuned costs USD 0.5000 to train" in text
        and "+20.0% against the base - forgetting" in text
    )
    clear = verdict([base, tuned], summaries[::2], F1, cost_report(summaries[::2], {}, prices), None, None, [], 300)
    assert (
        clear["fine_tuning_worth_it"] == "yes" and clear["quality_winner"] == "fine_tuned" and clear["tied_with"] == []
    )


def test_summary_intervals_and_perplexity():
    s = summarise(result("base", [True, False] * 20, LINES), [F1], 300)
    assert (
        s["metrics"]["token_f1"]["mean"] == 0.5
        and s["metrics"]["token_f1"]["ci_low"] < 0.5 < s["metrics"]["token_f1"]["ci_high"]
    )
    assert s["metrics"]["loss"]["mean"] == 0.5 and s["metrics"]["perplexity"]["mean"] == pytest.approx(1.6487, abs=1e-4)
    assert s["prompt_tokens_per_request"] == 50 and s["latency_seconds"] == 0.05


def test_corpus_metric_differences_are_paired_too():
    chrf = METRICS["chrf"]
    base = result("base", [i % 4 == 0 for i in range(40)], LINES)
    tuned = result("fine_tuned", [i % 4 != 1 for i in range(40)], LINES)
    summaries = [summarise(r, [chrf], 200) for r in (base, tuned)]
    v = verdict([base, tuned], summaries, chrf, cost_report(summaries, {}, PriceTable()), None, None, [], 200)
    d = v["differences"]["fine_tuned - base"]
    assert v["quality_winner"] == "fine_tuned" and v["fine_tuning_worth_it"] == "yes"
    assert d["ci_low"] > 0 and d["mean"] == pytest.approx(
        summaries[1]["metrics"]["chrf"]["mean"] - summaries[0]["metrics"]["chrf"]["mean"], abs=1e-3
    )
    # tuned answers 3 in 4 questions right on both lines, base 1 in 4: no slice is flagged as hurt
    report = slice_report([base, tuned], chrf, ["line"], 200, 0.95)
    assert not any("worse than base" in f for f in report["fields"]["line"]["flags"])


def test_answer_in_prompt_separates_retrieval_from_reading():
    from tuneforge.eval.compare import answer_in_prompt

    rag = result("rag", [False] * 4, LINES[:4])
    rag.prompts = [
        [{"role": "system", "content": f"[1] Q: ... A: Answer {i}."}, {"role": "user", "content": "q"}]
        for i in range(3)
    ] + [
        [{"role": "system", "content": "[1] nothing useful"}, {"role": "user", "content": "answer 3"}]
    ]  # the question is not a passage
    assert answer_in_prompt(rag) == 0.75
    tuned = result("fine_tuned", [True] * 4, LINES[:4])
    summaries = [summarise(r, [F1], 200) for r in (rag, tuned)]
    v = verdict(
        [rag, tuned],
        summaries,
        F1,
        cost_report(summaries, {}, PriceTable()),
        None,
        None,
        [],
        200,
        answer_shown={"rag": 0.75},
    )
    assert any(
        "rag: the prompt held the reference answer for 75%" in line and "does not use what it is shown" in line
        for line in v["summary"]
    )
