"""Metrics against hand-computed values, and bootstrap intervals that cover the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneforge.errors import ConfigError
from tuneforge.eval.bootstrap import mean_ci, paired_difference, ratio_ci, statistic_ci
from tuneforge.eval.metrics import (
    accuracy,
    bio_entities,
    bleu,
    chrf,
    entity_f1,
    exact_match,
    load_custom_metric,
    macro_f1,
    rouge_l,
    select_metrics,
    token_f1,
)


def test_qa_metrics_hand_computed():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("a dog", "cat") == 0.0
    # pred {cat, sat}, ref {cat, sat, down}: P = 1, R = 2/3 -> F1 = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_classification_metrics_hand_computed():
    assert accuracy("Positive.\nbecause...", "positive") == 1.0
    # class a: tp 1 fp 1 fn 0 -> 2/3; class b: tp 2 fp 0 fn 1 -> 4/5; macro = 11/15
    assert macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(11 / 15)


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_bleu_and_chrf():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=0.01)
    assert chrf(["same words here"], ["same words here"]) == pytest.approx(100.0)
    assert chrf(["abc"], ["xyz"]) < 5


def test_entity_f1_bio_and_text():
    assert bio_entities(["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]) == {("PER", "0:2"), ("LOC", "3:5")}
    assert bio_entities(["I-ORG", "I-ORG", "B-ORG"]) == {("ORG", "0:2"), ("ORG", "2:3")}
    # one of two predicted and one of two true spans match -> 2*1/(2+2)
    assert entity_f1([["B-PER", "I-PER", "O", "B-ORG"]], [["B-PER", "I-PER", "O", "B-LOC"]]) == pytest.approx(0.5)
    assert entity_f1(["PER: Ada Lovelace; LOC: London"], ["per: ada lovelace"]) == pytest.approx(2 / 3)


def test_custom_metric_and_selection(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("def polite(prediction, reference):\n    return float('thanks' in prediction.lower())\n")
    metrics = select_metrics("qa", None, f"{f}:polite")
    assert [m.name for m in metrics] == ["exact_match", "token_f1", "polite"]
    assert metrics[-1].per_example(["Thanks!", "no"], ["", ""]) == [1.0, 0.0]
    with pytest.raises(ConfigError) as err:
        load_custom_metric(f"{f}:missing")
    assert "eval.custom_metric" in str(err.value.problems[0].where)
    with pytest.raises(ConfigError):
        select_metrics("qa", ["token_f1", "bleurt"])


def test_mean_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        sample = rng.random(150) < 0.3  # Bernoulli(0.3), true mean 0.3
        ci = mean_ci(sample, samples=500, seed=trial)
        covered += ci.ci_low <= 0.3 <= ci.ci_high
        assert ci.ci_low <= ci.mean <= ci.ci_high
    assert 0.88 <= covered / 200 <= 0.99


def test_statistic_and_ratio_intervals():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 1.0, 300)
    ci = statistic_ci(len(x), lambda idx: float(np.median(x[idx])), samples=300)
    assert ci.ci_low < 5.0 < ci.ci_high and ci.ci_high - ci.ci_low < 0.5
    loss = ratio_ci([2.0, 6.0], [1.0, 3.0], samples=200)
    assert loss.mean == pytest.approx(2.0) and loss.ci_low == pytest.approx(2.0) and loss.ci_high == pytest.approx(2.0)
    assert math.isnan(mean_ci([]).mean)


def test_paired_difference_detects_consistent_gain_only():
    rng = np.random.default_rng(3)
    base = rng.random(200)
    diff, p_better = paired_difference(base + 0.05, base)
    assert diff.ci_low > 0 and p_better == 1.0
    noise, _ = paired_difference(rng.random(200), rng.random(200))
    assert noise.ci_low < 0 < noise.ci_high  # two draws of the same distribution: no detectable gain
