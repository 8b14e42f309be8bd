"""Progress display and the typed event stream (metrics.jsonl + the caller's callback).

Training emits one of five event types. `to_record()` is the event's metrics.jsonl line (without
"time", which `Events.emit` stamps) and `event_from_record` reads such a line back; the JSON
shape is the run-directory contract, so readers written against it before these types existed
keep working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuneforge.train.rundir import RunDir

if TYPE_CHECKING:
    from tuneforge.train.trackers import Tracker


@dataclass(frozen=True)
class TrainStep:
    """A logged optimizer step (metrics.jsonl type "train")."""

    step: int
    epoch: int
    loss: float
    lr: float
    tokens: int
    tokens_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's per-step extras (grpo: reward, kl...)

    def to_record(self) -> dict[str, Any]:
        record = {
            "type": "train",
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
        }
        return {**record, "metrics": self.metrics} if self.metrics else record


@dataclass(frozen=True)
class EvalDone:
    """A validation pass (type "eval"); `metrics` are the objective's extra metrics (accuracy, ...)."""

    step: int
    val_loss: float
    best_val_loss: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:  # the extra metrics sit flat beside val_loss, as they always have
        return {
            "type": "eval",
            "step": self.step,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            **self.metrics,
        }


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint written to `path` (type "checkpoint")."""

    step: int
    path: str

    def to_record(self) -> dict[str, Any]:
        return {"type": "checkpoint", "step": self.step, "path": self.path}


@dataclass(frozen=True)
class Finished:
    """The end of a run that produced an artifact (type "final"); `metrics` is the final result dict."""

    metrics: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        return {"type": "final", **self.metrics}


@dataclass(frozen=True)
class Message:
    """A line for the user (type "message")."""

    text: str
    level: str = "info"

    def to_record(self) -> dict[str, Any]:
        return {"type": "message", "level": self.level, "message": self.text}


Event = TrainStep | EvalDone | CheckpointSaved | Finished | Message
EventFn = Callable[[Event], None]

_EVAL_KEYS = ("step", "val_loss", "best_val_loss")


def event_from_record(record: dict[str, Any]) -> Event:
    """The typed event of one metrics.jsonl line ("time" is dropped); ValueError for an unknown type."""
    rec = {k: v for k, v in record.items() if k not in ("type", "time")}
    kind = record.get("type")
    if kind == "train":
        return TrainStep(**rec)
    if kind == "eval":
        return EvalDone(**{k: rec.pop(k) for k in _EVAL_KEYS}, metrics=rec)
    if kind == "checkpoint":
        return CheckpointSaved(**rec)
    if kind == "final":
        return Finished(rec)
    if kind == "message":
        return Message(rec["message"], rec.get("level", "info"))
    raise ValueError(f"metrics.jsonl record of unknown type {kind!r}: {record}")


class Events:
    """Fans one event out to metrics.jsonl, the progress bar, an optional callback and the experiment trackers
    (closed on exit: failed when the block raised)."""

    def __init__(
        self, run: RunDir, callback: EventFn | None, total_steps: int, show: bool, trackers: list[Tracker] | None = None
    ):
        self.run = run
        self.callback = callback
        self.trackers = trackers or []
        self.progress = _bar() if show else None
        self.task = (
            self.progress.add_task("training", total=total_steps, loss="-", tps="-", util="", reward="")
            if self.progress
            else None
        )
        self.started = time.perf_counter()

    def __enter__(self) -> Events:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.progress:
            self.progress.stop()
        for tracker in list(self.trackers):
            try:
                tracker.close(failed=exc_type is not None)
            except Exception as exc:  # the run's result stands: a tracker that cannot finish is warned about
                self._tracker_failed(tracker, exc, "closing its run")

    def emit(self, event: Event, log: bool = True) -> None:
        if log:
            self.run.log({**event.to_record(), "time": round(time.time(), 3)})
        if self.callback:
            self.callback(event)
        if self.progress and isinstance(event, TrainStep) and "reward" in event.metrics:
            self.progress.update(self.task, reward=reward_field(event.metrics))
        for tracker in list(self.trackers):
            try:
                tracker.event(event)
            except Exception as exc:  # a tracker never stops training: one warning, then it is off
                self._tracker_failed(tracker, exc, f"logging a {type(event).__name__} event")

    def _tracker_failed(self, tracker: Tracker, exc: Exception, when: str) -> None:
        from tuneforge.train.trackers import tracker_failed

        self.trackers.remove(tracker)  # before the warning, which the other trackers still get
        self.message(tracker_failed(tracker, exc, when), "warning")

    def advance(self, step: int, loss: float, tokens_per_s: float, peak_share: float | None = None) -> None:
        """Move the bar; `peak_share` is the share of the device's matmul peak so far (train/utilisation.py)."""
        if self.progress:
            util = f"({100 * peak_share:.0f}% of matmul peak)" if peak_share is not None else ""
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}", util=util)

    def message(self, text: str, level: str = "info") -> None:
        self.emit(Message(text, level))
        if self.progress:
            self.progress.console.print(f"[dim]{text}[/dim]")


def reward_field(metrics: dict[str, float]) -> str:
    """The progress line's reward part (objective grpo): mean ± spread of the last logged step, and the share
    of groups without learning signal (every answer rewarded alike) when there are any."""
    text = f"reward {metrics['reward']:.3f}±{metrics.get('reward_std', 0.0):.3f}"
    flat = metrics.get("zero_advantage_groups", 0.0)
    return text + (f" ({flat:.0%} flat groups)" if flat > 0 else "")


def _bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("{task.fields[util]}"),
        TextColumn("{task.fields[reward]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=False,
    )
