"""Worker processes: claim queued jobs and run each in a child process.

The API never trains: a crash or an out-of-memory kill takes down only the child. The
worker heartbeats the job's lease while the child runs, relays pause/cancel, and records
what happened when the child dies without reporting. Any worker also takes back jobs of
workers that died (see `jobs.reap_orphans`); every status change is a `job_states`
transition. Run several against one database with `tuneforge worker`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time

from sqlalchemy import update

from tuneforge.serve import job_states, jobs
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id
from tuneforge.serve.job_states import JobStatus
from tuneforge.serve.runner import run_job
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import Job
from tuneforge.serve.tables import Worker as WorkerRow

STOP_GRACE_S = 15.0  # time a stopped child gets to write its checkpoint before it is killed


def _context():
    """A fork server that imported torch and the training recipe once: each job starts in
    a fresh fork of it (about a second) rather than a new interpreter (import takes 5-10 s),
    and inherits none of the worker's threads or database connections."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tuneforge.serve.runner", "tuneforge.train"])
    return ctx


def _start_fork_server() -> None:
    """Boot the fork server and wait until its imports are done (a no-op child round trip),
    so that no job is claimed before this worker can start it promptly."""
    ctx = _context()
    warm = ctx.Process(target=os.getpid)
    warm.start()
    warm.join()


class Worker:
    def __init__(self, store: Store, settings: ServeSettings, poll_s: float = 1.0, beat_s: float = 1.0) -> None:
        self.store, self.settings = store, settings
        self.id = new_id("worker-", 6)
        self.poll_s, self.beat_s = poll_s, beat_s
        self.shutdown = threading.Event()  # set by SIGTERM: finish up and exit
        self._stopped = threading.Event()  # the main loop has ended
        self._job_id: str | None = None  # the job being run, whose lease the heartbeat thread refreshes
        self._job_state: Job | None = None  # the job as of the last heartbeat (control requests)

    def run_forever(self) -> None:
        _start_fork_server()
        self._register()
        beats = threading.Thread(target=self._heartbeats, name="tuneforge-heartbeat", daemon=True)
        beats.start()
        try:
            while not self.shutdown.is_set():
                jobs.reap_orphans(self.store, self.settings.job_lease_s, self.settings.job_max_attempts)
                job = jobs.claim_next_job(self.store, self.id)
                if job is None:
                    self.shutdown.wait(self.poll_s)
                else:
                    self.run(job)
        finally:
            self._stopped.set()
            beats.join(timeout=10)
            with self.store.session() as s:
                s.execute(
                    update(WorkerRow).where(WorkerRow.id == self.id).values(current_job_id=None, heartbeat_at=0.0)
                )

    def _heartbeats(self) -> None:
        """Refresh this worker's row and its job's lease on their own thread, so that a slow
        step of the main loop (starting a process, a busy database) never loses the lease."""
        while not self._stopped.is_set():
            job_id = self._job_id
            self._beat(job_id)
            if job_id is not None:
                self._job_state = jobs.heartbeat(self.store, job_id, self.id)
            self._stopped.wait(self.beat_s)

    def run(self, job: Job) -> None:
        self._job_state, self._job_id = job, job.id
        try:
            self._supervise(job)
        finally:
            self._job_id = None

    def _supervise(self, job: Job) -> None:
        ctx = _context()
        stop = ctx.Event()
        proc = ctx.Process(
            target=run_job, args=(self.store.url, self.settings, job.id, stop, os.getpid()), name=f"tuneforge-{job.id}"
        )
        proc.start()
        jobs.add_event(
            self.store, job.id, f"Fine-tuning job started on {self.id} (pid {proc.pid}, attempt {job.attempts})"
        )
        deadline = None
        while proc.is_alive():
            proc.join(0.2)
            current = self._job_state  # None once the job was cancelled or taken back
            wants_stop = current is None or current.control is not None or self.shutdown.is_set()
            if wants_stop and deadline is None:
                stop.set()
                deadline = time.time() + STOP_GRACE_S
            if deadline is not None and time.time() > deadline and proc.is_alive():
                proc.kill()
        proc.join()
        self._after_exit(job.id, proc.exitcode, stop.is_set())

    def _after_exit(self, job_id: str, exitcode: int | None, stopped: bool) -> None:
        with self.store.session() as s:
            job = s.get(Job, job_id)
        if job.status != JobStatus.RUNNING or job.worker_id != self.id:
            return  # the child recorded the outcome, or the job was cancelled/taken back
        mine = [Job.worker_id == self.id]
        if stopped and exitcode == 0 and job.control == "pause":
            job_states.paused(self.store, job_id, self.id)
            return
        if stopped and exitcode == 0 and self.shutdown.is_set():
            job_states.requeue(self.store, job_id, f"Worker {self.id} shut down; job re-queued", when=mine)
            return
        if exitcode is not None and exitcode < 0:
            why = f"the training process was killed by {signal.Signals(-exitcode).name}" + (
                " (often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
            )
        else:
            why = f"the training process exited with code {exitcode} without reporting a result"
        attempts = self.settings.job_max_attempts
        if job.attempts < attempts:
            job_states.requeue(
                self.store,
                job_id,
                f"{why[0].upper()}{why[1:]}; job re-queued (attempt {job.attempts + 1} of {attempts})",
                level="warn",
                when=mine,
            )
        else:
            job_states.fail(self.store, job_id, "worker_crashed", why, release=True, when=mine)

    def _register(self) -> None:
        with self.store.session() as s:
            s.add(
                WorkerRow(
                    id=self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=time.time(),
                    heartbeat_at=time.time(),
                )
            )

    def _beat(self, job_id: str | None = None) -> None:
        with self.store.session() as s:
            s.execute(
                update(WorkerRow).where(WorkerRow.id == self.id).values(heartbeat_at=time.time(), current_job_id=job_id)
            )


def _shutdown_when_orphaned(shutdown: threading.Event, poll_s: float = 0.5) -> None:
    """`serve` was killed (-9: no SIGTERM reached us): shut down as if it had sent one (the running job is
    re-queued from its checkpoint), so that a restarted serve's workers do not share the database with us."""
    parent = os.getppid()
    while not shutdown.is_set():
        if os.getppid() != parent:
            shutdown.set()
        shutdown.wait(poll_s)


def main(database_url: str | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT; a running job is re-queued to resume elsewhere."""
    settings = ServeSettings()
    store = Store(database_url or settings.database_url)
    worker = Worker(store, settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.shutdown.set())
    if os.environ.get("TUNEFORGE_SUPERVISED") == "1":  # started by `tuneforge serve`: end with it
        threading.Thread(target=_shutdown_when_orphaned, args=(worker.shutdown,), daemon=True).start()
    worker.run_forever()
    store.dispose()


if __name__ == "__main__":
    main()
