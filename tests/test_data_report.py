"""build_report: statistics, token counts with a real (tiny) tokenizer, cost and HTML."""

import json

import pytest

from tuneforge.data.costs import PriceTable, estimate, load_prices
from tuneforge.data.report import build_report
from tuneforge.data.report_html import render_html
from tuneforge.data.stats import charset_anomalies, dominant_script
from tuneforge.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    tok = build_tokenizer([f"hello world question {i} answer support desk invoice" for i in range(200)], vocab_size=300)
    return save_model_folder(build_tiny_llama(tok, hidden=32, layers=2), tok, tmp_path_factory.mktemp("tiny"))


def _chat(u, a):
    return {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


@pytest.fixture
def chat_file(tmp_path):
    rows = [_chat(f"question {i} about my invoice", "answer " + "word " * (i % 5)) for i in range(30)]
    rows += [
        _chat("question 0 about my invoice", "answer "),
        _chat("Ã©tÃ© problem", "caf\ufffd"),
        _chat("Привет, как дела?", "Хорошо"),
        _chat("long " * 400, "fine"),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return path


def test_report_statistics_and_tokens(chat_file, tiny_tokenizer_dir):
    r = build_report(chat_file, model=str(tiny_tokenizer_dir), epochs=2, max_tokens=256, measure_hardware=False)
    assert (r["examples"], r["invalid"], r["duplicates"]) == (34, 1, 1)
    assert r["messages_histogram"] == {"2": 34}
    assert r["charset"]["anomalies"] == {"mojibake": 1, "replacement_char": 1}
    assert r["charset"]["other_script_lines"] == {"Cyrillic": [33]}
    assert r["length_outliers"]["lines"] == [34]
    t = r["tokens"]
    assert t["sampled"] == 34 and not t["estimated"] and t["over_context"] == 1
    assert 0 < t["loss_tokens"] < t["total_tokens"]
    assert sum(t["histogram"]["counts"]) == 34
    c = r["cost"]
    assert c["training_tokens"] == 2 * t["total_tokens"]
    assert c["training_cost"] == pytest.approx(2 * t["total_tokens"] / 1000 * 0.008, abs=1e-4)
    assert c["params"] > 0 and c["flops"] == 6 * c["params"] * c["training_tokens"]
    html = render_html(r)
    assert html.count("data:image/png;base64,") == 2 and "Cost and compute" in html


def test_sampled_totals_are_estimates(chat_file, tiny_tokenizer_dir):
    full = build_report(chat_file, model=str(tiny_tokenizer_dir), measure_hardware=False)
    part = build_report(chat_file, model=str(tiny_tokenizer_dir), sample=10, measure_hardware=False)
    assert part["tokens"]["estimated"] and part["tokens"]["sampled"] == 10
    assert 0.3 < part["tokens"]["total_tokens"] / full["tokens"]["total_tokens"] < 3


def test_without_model_has_no_tokens_or_cost(chat_file):
    r = build_report(chat_file, model=None)
    assert "tokens" not in r and "cost" not in r and r["examples"] == 34


def test_cost_estimate_and_price_table(tmp_path):
    e = estimate(1_000_000, 3, PriceTable(), prompt_tokens=100, completion_tokens=50, params=1_000_000, peak_flops=1e10)
    assert e["training_cost"] == 24.0  # 3M tokens x $0.008 / 1K
    assert e["serving_cost_per_1k_requests"] == pytest.approx(100 * 0.012 + 50 * 0.016)
    assert e["seconds_at_peak"] == pytest.approx(6 * 1e6 * 3e6 / 1e10)
    (tmp_path / "p.yaml").write_text("training_per_1k: 0.001\ncurrency: EUR\n")
    assert load_prices(tmp_path / "p.yaml").currency == "EUR"
    (tmp_path / "bad.yaml").write_text("training_per_1K: 1\n")
    with pytest.raises(ConfigError, match="invalid price table"):
        load_prices(tmp_path / "bad.yaml")


def test_charset_helpers():
    assert dominant_script("Bonjour à tous") == "Latin" and dominant_script("東京は大きい") == "CJK"
    assert charset_anomalies("donâ€™t") == ["mojibake"] and charset_anomalies("plain") == []


def test_validate_context_window_with_real_tokenizer(chat_file, tiny_tokenizer_dir):
    from tuneforge.data.validate import validate_file

    report = validate_file(chat_file, tokenizer=str(tiny_tokenizer_dir), max_tokens=256, min_examples=1)
    assert sorted((i.line, i.kind) for i in report.errors) == [(34, "too_long"), (35, "invalid_json")]
