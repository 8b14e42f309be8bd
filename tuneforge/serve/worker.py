"""Worker processes: claim queued jobs and run each in a child process.

The API never trains: a crash or an out-of-memory kill takes down only the child. The
worker heartbeats the job's lease while the child runs, relays pause/cancel, and records
what happened when the child dies without reporting. Any worker also takes back jobs of
workers that died (see `jobs.reap_orphans`); every status change is a `job_states`
transition. Run several against one database with `tuneforge worker`.

A worker owns the devices it is given (`--gpus 0,1`, else $CUDA_VISIBLE_DEVICES): its jobs see only those,
so two workers on one machine never share a GPU, and a job whose `tuneforge.distributed.nproc_per_node` is
more than its GPUs (on CPU: more than `--max-procs`, by default the core count) fails with that said. A
job's process leads its own process group (torchrun and its ranks are in it): stopping a job kills the group.
"""

from __future__ import annotations

import argparse
import contextlib
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
from tuneforge.serve.jobspec import distributed_of
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
    def __init__(
        self,
        store: Store,
        settings: ServeSettings,
        poll_s: float = 1.0,
        beat_s: float = 1.0,
        gpus: list[str] | None = None,
        max_procs: int | None = None,
    ) -> None:
        self.store, self.settings = store, settings
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.gpus = gpus if gpus is not None else ([g for g in visible.split(",") if g] if visible else None)
        self.max_procs = max_procs
        self.id = new_id("worker-", 6)
        self.poll_s, self.beat_s = poll_s, beat_s
        self.shutdown = threading.Event()  # set by SIGTERM: finish up and exit
        self._stopped = threading.Event()  # the main loop has ended
        self._job_id: str | None = None  # the job being run, whose lease the heartbeat thread refreshes
        self._job_state: Job | None = None  # the job as of the last heartbeat (control requests)

    def capacity(self) -> tuple[int, str]:
        """How many training processes one job may have here, and how to say so."""
        if self.gpus:
            return len(self.gpus), f"{len(self.gpus)} GPU(s) ({','.join(self.gpus)}; set by --gpus)"
        n = self.max_procs or os.cpu_count() or 1
        return (
            n,
            f"no GPU and at most {n} processes on CPU (--max-procs{'' if self.max_procs else ', default the cores'})",
        )

    def run_forever(self) -> None:
        if self.gpus is not None:  # before the fork server starts: every job process inherits it
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
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
            if self._fits(job):
                self._supervise(job)
        finally:
            self._job_id = None

    def _fits(self, job: Job) -> bool:
        """A job asking for more processes than this worker has devices fails here, saying both numbers."""
        nproc, _ = distributed_of(job.options)
        have, what = self.capacity()
        if nproc <= have:
            return True
        job_states.fail(
            self.store,
            job.id,
            "invalid_distributed",
            f"tuneforge.distributed.nproc_per_node is {nproc} but worker {self.id} has {what}; ask for at most "
            f"{have} processes, or start a worker with more devices (tuneforge worker --gpus 0,1,...)",
            param="tuneforge.distributed.nproc_per_node",
            release=True,
            when=[Job.worker_id == self.id],
        )
        return False

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
                _kill_group(proc)
        proc.join()
        _kill_group(proc)  # ranks a dead job process left behind
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


def _kill_group(proc) -> None:
    """SIGKILL the job's process group (its process, torchrun and the ranks); the process alone if it has not
    made its group yet."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if proc.is_alive():
            proc.kill()


def _shutdown_when_orphaned(shutdown: threading.Event, poll_s: float = 0.5) -> None:
    """`serve` was killed (-9: no SIGTERM reached us): shut down as if it had sent one (the running job is
    re-queued from its checkpoint), so that a restarted serve's workers do not share the database with us."""
    parent = os.getppid()
    while not shutdown.is_set():
        if os.getppid() != parent:
            shutdown.set()
        shutdown.wait(poll_s)


def main(database_url: str | None = None, gpus: list[str] | None = None, max_procs: int | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT; a running job is re-queued to resume elsewhere."""
    settings = ServeSettings()
    store = Store(database_url or settings.database_url)
    worker = Worker(store, settings, gpus=gpus, max_procs=max_procs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.shutdown.set())
    if os.environ.get("TUNEFORGE_SUPERVISED") == "1":  # started by `tuneforge serve`: end with it
        threading.Thread(target=_shutdown_when_orphaned, args=(worker.shutdown,), daemon=True).start()
    worker.run_forever()
    store.dispose()


def parse_gpus(text: str | None) -> list[str] | None:
    """'0,1' -> ['0', '1'] (device indexes or UUIDs, as CUDA_VISIBLE_DEVICES takes them); '' -> [] (no GPU)."""
    return None if text is None else [g.strip() for g in text.split(",") if g.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tuneforge.serve.worker")
    parser.add_argument("--gpus", default=None, help="devices this worker's jobs use, e.g. 0,1")
    parser.add_argument("--max-procs", type=int, default=None, help="most processes of a CPU job")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        main(gpus=parse_gpus(args.gpus), max_procs=args.max_procs)
