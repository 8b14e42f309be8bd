"""Job statuses and the one place that changes them.

    validating_files --validate--> queued --claim--> running --succeed--> succeeded
           |  \\--reject_files--> failed               |  \\--fail--> failed
           |                                          |--requeue--> queued (crash, lost worker, shutdown)
           \\--hold--> paused <--hold-- queued         \\--pause--> paused --resume--> queued
    any active status --cancel--> cancelled

The strings are OpenAI's job statuses: the database stores them and the API returns them
as they are. Every transition is a compare-and-set: one UPDATE that only matches a row
still in one of the transition's source statuses (plus any guard the caller adds, such as
"still leased to me"), with the job event written in the same transaction, so two racing
writers (two workers claiming, a cancel during a pause) cannot both win and a reader never
sees a status without its event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from tuneforge.serve.db import Store
from tuneforge.serve.ids import now
from tuneforge.serve.tables import Base, FineTunedModel, Job, JobEvent


class JobStatus(str, Enum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # f-strings and messages show "running", not "JobStatus.RUNNING"
        return self.value


S = JobStatus
ACTIVE = frozenset({S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSED})
FINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
INITIAL = S.VALIDATING_FILES


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[JobStatus]
    target: JobStatus


VALIDATE = Transition("validate", frozenset({S.VALIDATING_FILES}), S.QUEUED)
REJECT_FILES = Transition("reject_files", frozenset({S.VALIDATING_FILES}), S.FAILED)
HOLD = Transition("hold", frozenset({S.VALIDATING_FILES, S.QUEUED}), S.PAUSED)  # paused before it started
CLAIM = Transition("claim", frozenset({S.QUEUED}), S.RUNNING)
PAUSE = Transition("pause", frozenset({S.RUNNING}), S.PAUSED)  # the worker acknowledges a pause request
REQUEUE = Transition("requeue", frozenset({S.RUNNING}), S.QUEUED)
RESUME = Transition("resume", frozenset({S.PAUSED}), S.QUEUED)
SUCCEED = Transition("succeed", frozenset({S.RUNNING}), S.SUCCEEDED)
FAIL = Transition("fail", frozenset({S.RUNNING}), S.FAILED)
CANCEL = Transition("cancel", ACTIVE, S.CANCELLED)

TRANSITIONS = (VALIDATE, REJECT_FILES, HOLD, CLAIM, PAUSE, REQUEUE, RESUME, SUCCEED, FAIL, CANCEL)
# The table of allowed moves, derived so that it cannot disagree with the transitions.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    status: frozenset(t.target for t in TRANSITIONS if status in t.sources) for status in JobStatus
}


def apply(
    s: Session,
    job_id: str,
    t: Transition,
    *,
    when: Iterable[ColumnElement[bool]] = (),
    event: str | None = None,
    level: str = "info",
    rows: Iterable[Base] = (),
    **values: Any,
) -> bool:
    """Move `job_id` along `t` inside session `s` if it is still in one of `t.sources` (and
    matches `when`); `event` and the extra `rows` are written only when it moved."""
    values = {"status": t.target.value, **values}
    if t.target in FINAL:
        values.setdefault("finished_at", now())
    guard = Job.status.in_([status.value for status in t.sources])
    won = s.execute(update(Job).where(Job.id == job_id, guard, *when).values(**values)).rowcount == 1
    if won:
        s.add_all(list(rows))
        if event:
            s.add(JobEvent(job_id=job_id, created_at=now(), level=level, type="message", message=event, data=None))
    return won


def _apply(store: Store, job_id: str, t: Transition, **kwargs: Any) -> bool:
    with store.session() as s:
        return apply(s, job_id, t, **kwargs)


def files_validated(store: Store, job_id: str) -> bool:
    return _apply(store, job_id, VALIDATE, event="Files validated, moving job to queued state")


def files_rejected(store: Store, job_id: str, param: str, message: str) -> bool:
    return _apply(
        store,
        job_id,
        REJECT_FILES,
        event=message,
        level="error",
        error={"code": f"invalid_{param}", "message": message, "param": param},
    )


def hold(store: Store, job_id: str) -> bool:
    """Pause a job that has not started (a running one is paused by its worker: `paused`)."""
    return _apply(store, job_id, HOLD, event="Job paused before it started")


def claim(s: Session, job_id: str, worker_id: str, heartbeat_at: float) -> bool:
    """Lease a queued job to `worker_id` (in the caller's session, which may hold a row lock)."""
    return apply(
        s, job_id, CLAIM, worker_id=worker_id, heartbeat_at=heartbeat_at, control=None, attempts=Job.attempts + 1
    )


def paused(store: Store, job_id: str, worker_id: str) -> bool:
    """The worker stopped the job at a pause request; resuming continues from its checkpoint."""
    return _apply(
        store,
        job_id,
        PAUSE,
        when=[Job.worker_id == worker_id],
        control=None,
        worker_id=None,
        resume=True,
        event="Job paused; resume it to continue from the last checkpoint",
    )


def requeue(
    store: Store, job_id: str, event: str, *, level: str = "info", when: Iterable[ColumnElement[bool]] = ()
) -> bool:
    """Give a running job back to the queue, to continue from its newest checkpoint."""
    return _apply(
        store, job_id, REQUEUE, when=when, event=event, level=level, control=None, worker_id=None, resume=True
    )


def resume(store: Store, job_id: str) -> bool:
    return _apply(store, job_id, RESUME, resume=True, event="Job resumed; queued to continue from its last checkpoint")


def cancel(store: Store, job_id: str) -> bool:
    """Cancel an active job; a running job's worker sees it at its next heartbeat and stops the process."""
    return _apply(store, job_id, CANCEL, control=None, event="Job cancelled")


def succeed(
    store: Store,
    job_id: str,
    *,
    fine_tuned_model: FineTunedModel,
    trained_tokens: int,
    result_files: list[str],
    events: Iterable[str],
) -> bool:
    """Finish a running job: its status, model row and closing events become visible together."""
    rows = [
        fine_tuned_model,
        *(
            JobEvent(job_id=job_id, created_at=now(), level="info", type="message", message=m, data=None)
            for m in events
        ),
    ]
    return _apply(
        store,
        job_id,
        SUCCEED,
        rows=rows,
        fine_tuned_model=fine_tuned_model.id,
        trained_tokens=trained_tokens,
        result_files=result_files,
        control=None,
    )


def fail(
    store: Store,
    job_id: str,
    code: str,
    message: str,
    *,
    event: str | None = None,
    param: str | None = None,
    release: bool = False,
    when: Iterable[ColumnElement[bool]] = (),
) -> bool:
    """Fail a running job with OpenAI's error object; `release` also clears its worker (it is gone)."""
    values: dict[str, Any] = {"worker_id": None} if release else {}
    return _apply(
        store,
        job_id,
        FAIL,
        when=when,
        event=event or f"Job failed: {message}",
        level="error",
        control=None,
        error={"code": code, "message": message, "param": param},
        **values,
    )
