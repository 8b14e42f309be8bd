"""Typed training events: each type's metrics.jsonl line reads back as the same event,
Events hands the callback the typed event and logs the line with its time, and RunDir is
the one reader of metrics.jsonl in the package."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import tuneforge
from tuneforge.eval.forgetting import loss_curves
from tuneforge.train.progress import CheckpointSaved, EvalDone, Events, Finished, Message, TrainStep, event_from_record
from tuneforge.train.rundir import RunDir

EVENTS = [
    TrainStep(step=3, epoch=1, loss=2.5, lr=1e-3, tokens=480, tokens_per_s=1234.5),
    EvalDone(step=3, val_loss=2.25, best_val_loss=2.0, metrics={"accuracy": 0.75, "f1": 0.5}),
    CheckpointSaved(step=3, path="/runs/a/checkpoints/step-3"),
    Finished(
        metrics={"steps": 3, "trained_tokens": 480, "train_loss": 2.5, "val_loss": None, "artifact": "/r/adapter"}
    ),
    Message(text="early stopping at step 3", level="warning"),
]
# The metrics.jsonl lines as train() wrote them before the events were typed (without "time").
RECORDS = [
    {"type": "train", "step": 3, "epoch": 1, "loss": 2.5, "lr": 1e-3, "tokens": 480, "tokens_per_s": 1234.5},
    {"type": "eval", "step": 3, "val_loss": 2.25, "best_val_loss": 2.0, "accuracy": 0.75, "f1": 0.5},
    {"type": "checkpoint", "step": 3, "path": "/runs/a/checkpoints/step-3"},
    {"type": "final", "steps": 3, "trained_tokens": 480, "train_loss": 2.5, "val_loss": None, "artifact": "/r/adapter"},
    {"type": "message", "level": "warning", "message": "early stopping at step 3"},
]


@pytest.mark.parametrize("event,record", list(zip(EVENTS, RECORDS)), ids=lambda x: type(x).__name__)
def test_each_event_is_its_metrics_line_and_reads_back(event, record):
    assert event.to_record() == record and list(event.to_record()) == list(record)  # same keys, same order
    assert event_from_record({**record, "time": 1.5}) == event
    assert event_from_record(json.loads(json.dumps(event.to_record()))) == event


def test_an_unknown_record_type_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown type 'epoch'"):
        event_from_record({"type": "epoch", "step": 1})


def test_events_log_with_time_pass_the_typed_event_and_read_back(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_events() == []  # before the run wrote anything
    seen = []
    with Events(run, seen.append, total_steps=3, show=False) as events:
        for event in EVENTS[:4]:
            events.emit(event)
        events.message(EVENTS[4].text, EVENTS[4].level)
        events.emit(TrainStep(4, 1, 2.0, 1e-3, 640, 1000.0), log=False)  # the callback only
    assert seen == [*EVENTS, TrainStep(4, 1, 2.0, 1e-3, 640, 1000.0)]
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "time"} for line in lines] == RECORDS
    assert all(isinstance(line["time"], float) for line in lines)
    assert run.read_events() == EVENTS
    assert loss_curves(tmp_path) == {"train": [(3, 2.5)], "validation": [(3, 2.25)]}


def test_rundir_is_the_only_reader_of_metrics_jsonl():
    """Only train/rundir.py names the file or its path; everyone else calls read_events()."""
    package = Path(tuneforge.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() == "train/rundir.py":
            continue
        tree = ast.parse(path.read_text())
        scopes = (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, scopes)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            where = f"{path.relative_to(package)}:{getattr(node, 'lineno', '?')}"
            is_str = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            if is_str and (
                node.value == "metrics.jsonl" or node.value.endswith("/metrics.jsonl")
            ):  # the file, as a path
                found.append(where)
            if isinstance(node, ast.Attribute) and node.attr == "metrics_path":
                found.append(where)
    assert found == []
