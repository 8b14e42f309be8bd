"""Progress display and the event stream (metrics.jsonl + the caller's callback)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuneforge.train.rundir import RunDir

EventFn = Callable[[dict[str, Any]], None]


class Events:
    """Fans one event out to metrics.jsonl, the progress bar and an optional callback."""

    def __init__(self, run: RunDir, callback: EventFn | None, total_steps: int, show: bool):
        self.run = run
        self.callback = callback
        self.progress = _bar() if show else None
        self.task = self.progress.add_task("training", total=total_steps, loss="-", tps="-") if self.progress else None
        self.started = time.perf_counter()

    def __enter__(self) -> "Events":
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def emit(self, record: dict[str, Any], log: bool = True) -> None:
        record = {**record, "time": round(time.time(), 3)}
        if log:
            self.run.log(record)
        if self.callback:
            self.callback(record)

    def advance(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")

    def message(self, text: str, level: str = "info") -> None:
        self.emit({"type": "message", "level": level, "message": text})
        if self.progress:
            self.progress.console.print(f"[dim]{text}[/dim]")


def _bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(file=sys.stderr), transient=False,
    )
