"""Fine-tuning job records: creation, listing, control requests, safe claiming, leases.

Statuses and their transitions live in `job_states` (validating_files -> queued -> running
-> succeeded | failed | cancelled, with paused as a stop on the way); this module decides
*when* to take them. A running job is leased to one worker: the worker refreshes
`heartbeat_at`; a job whose heartbeat is older than the lease is taken back by any other
worker (re-queued to resume from its checkpoints, or failed when it has used its attempts),
so no job stays "running" after its worker died.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update

from tuneforge.serve import job_states
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.job_states import JobStatus
from tuneforge.serve.tables import Checkpoint, Job, JobEvent


def add_event(
    store: Store,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    with store.session() as s:
        s.add(JobEvent(job_id=job_id, created_at=now(), level=level, type=type, message=message, data=data))


def list_events(store: Store, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    """Newest first, as OpenAI lists them; `after` is an event id (`ftevent-<seq>`)."""
    with store.session() as s:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())
        if after:
            query = query.where(JobEvent.seq < _event_seq(after))
        rows = list(s.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _event_seq(event_id: str) -> int:
    try:
        return int(event_id.removeprefix("ftevent-"))
    except ValueError:
        return 0


def create_job(store: Store, **fields: Any) -> Job:
    job = Job(
        id=new_id("ftjob-"),
        status=job_states.INITIAL.value,
        created_at=now(),
        result_files=[],
        attempts=0,
        resume=False,
        **fields,
    )
    with store.session() as s:
        s.add(job)
    add_event(store, job.id, f"Created fine-tuning job: {job.id}")
    return job


def get_job(store: Store, job_id: str, project_id: str) -> Job | None:
    with store.session() as s:
        job = s.get(Job, job_id)
        return job if job is not None and job.project_id == project_id else None


def list_jobs(
    store: Store, project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None = None
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the id of the last job of the previous page."""
    with store.session() as s:
        query = select(Job).where(Job.project_id == project_id).order_by(Job.created_at.desc(), Job.id.desc())
        if after:
            anchor = s.get(Job, after)
            if anchor is not None:
                query = query.where(
                    (Job.created_at < anchor.created_at)
                    | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
                )
        rows = list(s.scalars(query))
    if metadata:
        rows = [j for j in rows if all((j.user_metadata or {}).get(k) == v for k, v in metadata.items())]
    return rows[:limit], len(rows) > limit


def request_control(store: Store, job_id: str, action: str) -> bool:
    """Ask the worker running `job_id` to pause it (the worker acknowledges with `job_states.paused`)."""
    with store.session() as s:
        running = Job.status == JobStatus.RUNNING.value
        return s.execute(update(Job).where(Job.id == job_id, running).values(control=action)).rowcount == 1


def claim_next_job(store: Store, worker_id: str) -> Job | None:
    """Take the oldest queued job for this worker, or None. Safe with many workers."""
    queued = select(Job.id).where(Job.status == JobStatus.QUEUED.value).order_by(Job.created_at, Job.id)
    if store.is_postgres:
        with store.session() as s:
            # SKIP LOCKED: concurrent workers each lock a different row instead of waiting.
            job_id = s.scalar(queued.limit(1).with_for_update(skip_locked=True))
            if job_id is None or not job_states.claim(s, job_id, worker_id, time.time()):
                return None
        return _load(store, job_id)
    # SQLite has no row locks: the claim's conditional UPDATE is the compare-and-set; SQLite
    # runs writers one at a time, so exactly one worker sees rowcount 1 for a given job.
    with store.session() as s:
        candidates = list(s.scalars(queued.limit(8)))
    for job_id in candidates:
        with store.session() as s:
            won = job_states.claim(s, job_id, worker_id, time.time())
        if won:
            return _load(store, job_id)
    return None


def _load(store: Store, job_id: str) -> Job:
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job is not None  # claimed a moment ago in the same database
        return job


def heartbeat(store: Store, job_id: str, worker_id: str) -> Job | None:
    """Refresh the lease; returns the job (to read control requests), None if lost."""
    with store.session() as s:
        ok = (
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING.value)
                .values(heartbeat_at=time.time())
            ).rowcount
            == 1
        )
        return s.get(Job, job_id) if ok else None


def reap_orphans(store: Store, lease_s: float, max_attempts: int) -> list[str]:
    """Take back running jobs whose worker sent no heartbeat for `lease_s`. Returns their ids."""
    cutoff = time.time() - lease_s
    running = Job.status == JobStatus.RUNNING.value
    with store.session() as s:
        stale = list(s.execute(select(Job.id, Job.worker_id, Job.attempts).where(running, Job.heartbeat_at < cutoff)))
    reaped = []
    for job_id, worker_id, attempts in stale:
        gone = f"Worker {worker_id} stopped sending heartbeats; job"
        late = [Job.heartbeat_at < cutoff]  # in the WHERE: two reapers (or a late heartbeat) race safely
        if attempts < max_attempts:
            won = job_states.requeue(
                store,
                job_id,
                level="warn",
                when=late,
                event=f"{gone} re-queued to resume from "
                f"its last checkpoint (attempt {attempts + 1} of {max_attempts}).",
            )
        else:
            why = f"The worker running this job stopped responding after {attempts} attempt(s)."
            won = job_states.fail(
                store, job_id, "worker_lost", why, event=f"{gone} failed: no attempts left.", release=True, when=late
            )
        if won:
            reaped.append(job_id)
    return reaped


def add_checkpoint(store: Store, job_id: str, step: int, metrics: dict[str, Any], path: str | None) -> None:
    with store.session() as s:
        s.add(Checkpoint(id=new_id("ftckpt-"), job_id=job_id, step=step, metrics=metrics, path=path, created_at=now()))


def list_checkpoints(store: Store, job_id: str, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
    with store.session() as s:
        query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc())
        rows = list(s.scalars(query))
    if after:
        ids = [c.id for c in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else rows
    return rows[:limit], len(rows) > limit
