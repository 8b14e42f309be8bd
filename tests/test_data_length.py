"""Length checks against the run's model.max_length: data.overlength truncate | drop | error in train, validate
and report; preference pairs cut off by the limit dropped by name; the default-epochs rule; cost on capped tokens."""

import json
import logging
import math

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli.main import app
from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection
from tuneforge.data import length
from tuneforge.data.report import build_report
from tuneforge.data.tokenize import Encoded
from tuneforge.data.types import Conversation, Message, PreferencePair
from tuneforge.data.validate import validate_file
from tuneforge.errors import DataError
from tuneforge.objectives.dpo import DirectPreference
from tuneforge.serve.jobspec import Hyperparameters, resolve_hyperparameters
from tuneforge.train.recipe import train


def _chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def mixed_file(tmp_path):
    """12 short chats and 3 long ones (lines 4, 9, 14), and one without a user message (line 16)."""
    rows = [_chat(f"question {i} about my invoice", f"answer {i}") for i in range(12)]
    for at in (3, 8, 13):
        rows.insert(at, _chat("long question " * 60, "a long answer"))
    rows.append({"messages": [{"role": "assistant", "content": "Hello, how can I help?"}]})
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "n, epochs", [(1, 25), (4, 25), (10, 10), (33, 4), (34, 3), (8333, 3), (8334, 2), (12_500, 2), (30_000, 1)]
)
def test_default_epochs_keep_examples_times_epochs_within_100_and_25000(n, epochs):
    assert length.default_epochs(n) == epochs
    if 4 <= n <= 25_000:
        assert 100 <= n * epochs <= 25_000 + n  # within the range wherever 1..25 epochs allow it
    assert resolve_hyperparameters(Hyperparameters(), n, "lora")["n_epochs"] == epochs  # the service's rule agrees


def _feats(flags):
    convs = [
        Conversation([Message("user", "q"), Message("assistant", "a")], source=f"f.jsonl:{i + 1}")
        for i in range(len(flags))
    ]
    return convs, [Encoded([1, 2], [1, 2], t) for t in flags]


def test_truncate_says_it_loudly_drop_leaves_them_out_error_refuses_with_every_place(caplog):
    convs, feats = _feats([False, True, False, True])
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        kept, over = length.enforce(convs, feats, 64, "truncate")
    assert kept == feats and (over.count, over.share) == (2, 0.5)
    assert "2 of 4 example(s) (50.0%) are longer than model.max_length=64 tokens, first at f.jsonl:2, f.jsonl:4" in (
        caplog.text
    )
    kept, over = length.enforce(convs, feats, 64, "drop")
    assert kept == [feats[0], feats[2]] and over.places == ["f.jsonl:2", "f.jsonl:4"]
    with pytest.raises(DataError) as err:
        length.enforce(convs, feats, 64, "error")
    assert [p.where for p in err.value.problems] == ["f.jsonl:2", "f.jsonl:4"]
    with pytest.raises(DataError, match="left no train example"):
        length.enforce(convs[1:2], feats[1:2], 64, "drop")


def test_validate_counts_examples_over_max_length_per_policy(mixed_file, tiny_model_dir):
    for policy, ok in (("truncate", True), ("drop", True), ("error", False)):
        r = validate_file(mixed_file, tokenizer=str(tiny_model_dir), max_tokens=64, overlength=policy, min_examples=1)
        assert r.length.count == 3 and r.length.examples == 16 and r.ok is ok, policy
        assert r.length.places == [f"{mixed_file}:{n}" for n in (4, 9, 14)]
        assert r.to_dict()["over_max_length"]["share"] == round(3 / 16, 4)
    cfg = {"model": {"name": str(tiny_model_dir), "max_length": 64}, "data": {"train": str(mixed_file)}}
    (mixed_file.parent / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(
        app, ["data", "validate", str(mixed_file), "--config", str(mixed_file.parent / "run.yaml")]
    )
    assert "3 of 16 example(s) (18.8%) are longer than model.max_length=64 tokens" in out.output, out.output
    assert "truncated (data.overlength: truncate)" in out.output


def test_report_counts_over_max_length_costs_capped_tokens_and_shows_the_epochs_rule(mixed_file, tiny_model_dir):
    full = build_report(mixed_file, model=str(tiny_model_dir), epochs="auto", max_tokens=10**6, measure_hardware=False)
    capped = build_report(
        mixed_file,
        model=str(tiny_model_dir),
        epochs="auto",
        max_tokens=64,
        overlength="truncate",
        measure_hardware=False,
    )
    dropped = build_report(
        mixed_file, model=str(tiny_model_dir), epochs=2, max_tokens=64, overlength="drop", measure_hardware=False
    )
    t = capped["tokens"]
    assert t["over_max_length"]["count"] == 3 and t["over_max_length"]["first"][0] == f"{mixed_file}:4"
    per_example = t["total_tokens"]
    long_ones = full["tokens"]["total_tokens"] - dropped["tokens"]["trained_tokens"]  # what drop leaves out
    assert t["trained_tokens"] == per_example - long_ones + 3 * 64  # each long example counted at the limit
    assert capped["epochs_rule"]["epochs"] == math.ceil(100 / 16) == 7
    assert capped["cost"]["training_tokens"] == 7 * t["trained_tokens"]
    assert dropped["cost"]["training_tokens"] == 2 * dropped["tokens"]["trained_tokens"]
    assert capped["no_user_or_system"] == 1
    a = t["loss_tokens_per_example"]
    assert 0 < a["min"] <= a["p50"] <= a["max"]


def _run(tmp_path, model_dir, data, policy, **train_kw):
    return RunConfig(
        objective="sft",
        output_dir=tmp_path / policy,
        model=ModelSection(name=str(model_dir), max_length=64),
        data=DataSection(train=data, validation_fraction=0, overlength=policy),
        method=LoraMethod(r=4, alpha=8),
        train=TrainSection(batch_size=16, save_every=1000, eval_every=1000, **train_kw),
    )


@pytest.mark.slow
def test_train_drops_or_refuses_overlong_examples_and_auto_epochs_follow_the_rule(tmp_path, mixed_file, tiny_model_dir):
    rows = mixed_file.read_text().splitlines()[:-1]  # without the record that has no user message
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        train(_run(tmp_path, tiny_model_dir, data, "error", max_steps=1), progress=False)
    assert [p.where for p in err.value.problems] == [f"{data}:{n}" for n in (4, 9, 14)]
    assert not (tmp_path / "error" / "manifest.json").exists()  # refused before the run directory
    result = train(_run(tmp_path, tiny_model_dir, data, "drop", epochs="auto"), progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    stats = manifest["data_stats"]
    assert stats["train_features"] == 12 and stats["overlength"]["dropped"] == [f"{data}:{n}" for n in (4, 9, 14)]
    assert stats["total_steps"] == length.default_epochs(12) == 9  # 12 examples: 9 epochs of one step
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["epochs"] == 9


def test_preference_pairs_cut_off_by_max_length_are_dropped_by_name(tiny_tokenizer, caplog):
    pairs = [
        PreferencePair([Message("user", "Is it sunny?")], "Yes.", "No.", source="p.jsonl:1"),
        PreferencePair([Message("user", "word " * 200)], "Yes.", "No.", source="p.jsonl:2"),
    ]
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        feats = DirectPreference().encode(pairs, tiny_tokenizer, 48)
    assert len(feats) == 1
    assert "1 of 2 preference pair(s) cut off entirely by model.max_length=48, dropped; first at p.jsonl:2" in (
        caplog.text
    )
    with pytest.raises(DataError) as err:
        DirectPreference().encode(pairs[1:], tiny_tokenizer, 48)
    assert err.value.problems[0].where == "p.jsonl:2"
