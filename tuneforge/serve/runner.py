"""One fine-tuning job inside its own process (started by a worker).

The process calls `tuneforge.train.train` with callbacks that write events and
checkpoints to the database, and records the outcome itself. If it is killed (cancel,
out-of-memory), the worker that started it notices and records that instead.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from tuneforge.config import tuneforge_home
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.methods.registry import Serving
from tuneforge.models.artifact import read_artifact
from tuneforge.serve import files, job_states, jobs
from tuneforge.serve.catalog import base_model_path
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.job_states import JobStatus
from tuneforge.serve.jobspec import build_config
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import FineTunedModel, Job

if TYPE_CHECKING:  # the training stack (torch, transformers) loads in the job's process only, not in the worker or API
    from tuneforge.train.progress import Event


WORKER_GONE_GRACE_S = 15.0
log = logging.getLogger(__name__)


def fine_tuned_name(job: Job) -> str:
    """OpenAI's `ft:BASE:SUFFIX:ID`, BASE the base model's name: a hub id as given, a local folder by its name
    (TUNEFORGE_BASE_MODELS may list folders; a client never sees a server path)."""
    return f"ft:{base_model_name(job.model)}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')[:8]}"


def base_model_name(model: str) -> str:
    path = Path(model).expanduser()
    is_folder = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.is_dir()  # hub ids: name or org/name
    return path.name if is_folder and path.name else model


def run_dir_of(data_dir: Path, job: Job) -> Path:
    return data_dir / "runs" / job.project_id / job.id


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the fork server) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # other systems: _watch_worker still stops the job


class EventSink:
    """`on_event` for train(): metrics and messages become job events, checkpoints rows."""

    def __init__(self, store: Store, job: Job) -> None:
        self.store, self.job = store, job
        self.last_metrics: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        from tuneforge.train.progress import CheckpointSaved, EvalDone, Finished, Message, TrainStep

        job_id = self.job.id
        match event:
            case TrainStep(step=step, loss=loss):
                self.last_metrics.update(step=step, train_loss=loss)
                data = {
                    "step": step,
                    "train_loss": loss,
                    "learning_rate": event.lr,
                    "tokens": event.tokens,
                    "tokens_per_s": event.tokens_per_s,
                }
                jobs.add_event(self.store, job_id, f"Step {step}: training loss={loss:.4f}", type="metrics", data=data)
            case EvalDone(step=step, val_loss=val_loss):
                self.last_metrics.update(step=step, valid_loss=val_loss)
                jobs.add_event(
                    self.store,
                    job_id,
                    f"Step {step}: validation loss={val_loss:.4f}",
                    type="metrics",
                    data={"step": step, "valid_loss": val_loss},
                )
            case CheckpointSaved(step=step, path=path):
                jobs.add_checkpoint(self.store, job_id, step, {**self.last_metrics, "step": step}, path)
                jobs.add_event(self.store, job_id, f"Checkpoint saved at step {step}")
            case Message(text=text, level=level):
                jobs.add_event(self.store, job_id, text, level={"warning": "warn"}.get(level, level))  # OpenAI's names
            case Finished(metrics=metrics):
                data = {k: v for k, v in metrics.items() if k != "artifact"}  # a server path: not for clients
                jobs.add_event(self.store, job_id, "Training finished", data=data)


def _alive(pid: int) -> bool:
    """Is `pid` running? A zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # /proc/PID/stat: "pid (name) STATE ..."; the name may hold spaces or parentheses
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no procfs: kill(0) is all there is


def _lease_held(store: Store, job_id: str, worker_id: str | None, lease_s: float) -> bool:
    """Does the worker that claimed this job still hold its lease (running, its own, heartbeat fresh)?"""
    with store.session() as s:
        job = s.get(Job, job_id)
    fresh = job is not None and (job.heartbeat_at or 0) > time.time() - lease_s
    return fresh and job.status == JobStatus.RUNNING and job.worker_id == worker_id


def _watch_worker(worker_pid: int, stop, db_url: str, job_id: str, lease_s: float) -> None:
    """The job's process is a child of the fork server, not of the worker: watch the worker, and the
    job's lease (a worker that hangs, or another worker that took the job back). When either is gone,
    stop at the next step (checkpoint kept); if a step hangs, exit hard."""
    store = Store(db_url, run_migrations=False)
    with store.session() as s:
        worker_id = s.get(Job, job_id).worker_id
    checked = time.monotonic()
    while _alive(worker_pid):
        time.sleep(0.5)
        if time.monotonic() - checked > lease_s / 3:
            checked = time.monotonic()
            with contextlib.suppress(Exception):  # a database hiccup is not a lost lease
                if not _lease_held(store, job_id, worker_id, lease_s):
                    log.warning("job %s: lease lost; stopping", job_id)
                    break
    stop.set()
    store.dispose()
    time.sleep(WORKER_GONE_GRACE_S)
    os._exit(3)


def run_job(db_url: str, settings: ServeSettings, job_id: str, stop, worker_pid: int) -> None:
    """Process entry point. `stop` is a multiprocessing Event the worker sets to pause/cancel."""
    _die_with_parent()
    watch = (worker_pid, stop, db_url, job_id, settings.job_lease_s)
    threading.Thread(target=_watch_worker, args=watch, daemon=True).start()
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)
    store = Store(db_url, run_migrations=False)
    with store.session() as s:
        job = s.get(Job, job_id)
    try:
        _train(store, settings.data_dir, job, should_stop=stop.is_set)
    except TuneforgeError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "training_error"
        _fail(store, job, code, client_text(str(exc), store, settings.data_dir, job))
    except Exception as exc:  # a bug or a broken model: the details go to the log, the job names their id
        error_id = new_id("err_", 8)
        log.error("error %s in fine-tuning job %s", error_id, job.id, exc_info=exc)
        _fail(
            store,
            job,
            "internal_error",
            f"The training process had an internal error (error id {error_id}); "
            "the operator finds the details in the worker's log.",
        )
        raise
    finally:
        store.dispose()


def client_text(text: str, store: Store, data_dir: Path, job: Job) -> str:
    """A training error as the job's owner may see it: the server's paths (its files, the run folder, the
    models folder) become the file ids, names and folders the client knows, and no internal id remains."""
    swaps: list[tuple[str, str]] = []
    for file_id in filter(None, (job.training_file, job.validation_file)):
        with contextlib.suppress(Exception):
            swaps.append((files.get_file(store, job.project_id, file_id).path, file_id))
    swaps += [
        (str(run_dir_of(data_dir, job)), "<run>"),
        (str(tuneforge_home() / "models") + os.sep, ""),
        (str(data_dir), "<data>"),
        (job.project_id, "<project>"),
    ]
    for server, client in swaps:
        text = text.replace(server, client)
    return text


def _train(store: Store, data_dir: Path, job: Job, should_stop) -> None:
    from tuneforge.train import train
    from tuneforge.train.checkpoint import latest_checkpoint

    train_file = files.get_file(store, job.project_id, job.training_file)
    val_file = files.get_file(store, job.project_id, job.validation_file) if job.validation_file else None
    run_dir = run_dir_of(data_dir, job)
    cfg = build_config(
        base_model=base_model_path(job.model),
        train_path=Path(train_file.path),
        validation_path=Path(val_file.path) if val_file else None,
        output_dir=run_dir,
        method_type=job.method["type"],
        hyper=job.hyperparameters,
        seed=job.seed,
        options=job.options,
    )
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(run_dir=str(run_dir)))
    # A job re-queued after a crash or a pause continues from its newest checkpoint, if
    # the earlier attempt got far enough to write one; otherwise it starts over.
    resume = job.resume and latest_checkpoint(run_dir / "checkpoints") is not None
    result = train(cfg, resume=resume, on_event=EventSink(store, job), should_stop=should_stop, progress=False)
    if result.status == "stopped":
        return  # the worker turns this into paused or cancelled
    _succeed(store, data_dir, job, result, cfg.method.name)


def _served_as(artifact: Path, run_dir: Path) -> tuple[str, Path]:
    """How the engine serves the result (the stored model kind, and what it loads): adapters that
    share their base in memory (switched per request) by their folder, whole models by theirs, and
    anything else (prompt tuning, IA3, bottleneck adapters) from the run directory as a model of its own."""
    found = read_artifact(artifact)
    return found.serving.value, run_dir if found.serving is Serving.OWN_COPY else found.folder


def _succeed(store: Store, data_dir: Path, job: Job, result, method: str) -> None:
    kind, path = _served_as(Path(result.final_metrics["artifact"]), Path(result.run_dir))
    name = fine_tuned_name(job)
    result_file = files.store_result_file(
        store, data_dir / "files", job.project_id, f"step_metrics_{job.id}.csv", _metrics_csv(result.run_dir)
    )
    model = FineTunedModel(
        id=name,
        project_id=job.project_id,
        job_id=job.id,
        base_model=job.model,
        kind=kind,
        path=str(path),
        created_at=now(),
    )
    done = (f"New fine-tuned model created: {name} ({method}, {kind})", "The job has successfully completed")
    job_states.succeed(
        store,
        job.id,
        fine_tuned_model=model,
        trained_tokens=result.trained_tokens,
        result_files=[result_file.id],
        events=done,
    )


def _fail(store: Store, job: Job, code: str, message: str) -> None:
    job_states.fail(store, job.id, code, message, param="training_file" if code == "invalid_training_file" else None)


def _metrics_csv(run_dir: Path) -> bytes:
    """OpenAI's result file: one row per logged step (step, train_loss, valid_loss, ...)."""
    from tuneforge.train.progress import EvalDone, TrainStep
    from tuneforge.train.rundir import RunDir

    rows: dict[int, dict[str, Any]] = {}
    for event in RunDir(Path(run_dir)).read_events():
        if isinstance(event, TrainStep):
            row = rows.setdefault(event.step, {"step": event.step})
            row.update(train_loss=event.loss, learning_rate=event.lr, tokens=event.tokens)
        elif isinstance(event, EvalDone):
            rows.setdefault(event.step, {"step": event.step})["valid_loss"] = event.val_loss
    out = io.StringIO()
    writer = csv.DictWriter(out, ["step", "train_loss", "valid_loss", "learning_rate", "tokens"])
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()
