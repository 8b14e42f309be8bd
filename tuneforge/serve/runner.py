"""One fine-tuning job inside its own process (started by a worker).

The process calls `tuneforge.train.train` with callbacks that write events and
checkpoints to the database, and records the outcome itself. If it is killed (cancel,
out-of-memory), the worker that started it notices and records that instead.

Files and run directories go through the shared storage (`tuneforge.serve.storage`): the training file is
read by its key (in place on a shared folder, a local copy from a bucket), the run directory is written
where the storage says and synced under `runs/<job id>/` at each checkpoint and at the end, and the
database records keys, so that the API on another machine serves the model.

A job with `tuneforge.distributed.nproc_per_node` N > 1 runs under torchrun: this process prepares the run,
starts `torch.distributed.run` with N ranks of `python -m tuneforge.serve.runner SPEC` (rank 0 reports
events and the outcome as a one-process job does) and relays pause/cancel through a stop file that rank 0
reads before each step. This process leads its own process group, which torchrun and the ranks share: the
worker kills the group, so no rank outlives a cancelled job.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
from tuneforge.serve.jobspec import build_config, distributed_of
from tuneforge.serve.jobspec_rft import reward_event_data
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.storage import FilesystemStorage, Storage, join
from tuneforge.serve.tables import FineTunedModel, Job

if TYPE_CHECKING:  # the training stack (torch, transformers) loads in the job's process only, not in the worker or API
    from tuneforge.train.progress import Event


WORKER_GONE_GRACE_S = 15.0
# An objective's metric that is OpenAI's token accuracy (OpenAI's *_mean_token_accuracy); objectives report it
# under this name where they measure it, and no other metric (a classifier's accuracy) is shown as it.
TOKEN_ACCURACY = "mean_token_accuracy"
log = logging.getLogger(__name__)


def fine_tuned_name(job: Job, project: str) -> str:
    """OpenAI's `ft:BASE:PROJECT:SUFFIX:ID` (OpenAI's third part is the organization: here the project's name),
    BASE the base model's name: a hub id as given, a local folder by its name (TUNEFORGE_BASE_MODELS may list
    folders; a client never sees a server path). Models named before the project part (`ft:BASE:SUFFIX:ID`)
    keep their ids: a name is looked up as stored, never parsed."""
    short_id = job.id.removeprefix("ftjob-")[:8]
    return f"ft:{base_model_name(job.model)}:{project.replace(':', '-')}:{job.suffix or ''}:{short_id}"


def project_name(store: Store, project_id: str) -> str:
    from tuneforge.serve.tables import Project

    with store.session() as s:
        row = s.get(Project, project_id)
    return row.name if row is not None else ""


def base_model_name(model: str) -> str:
    path = Path(model).expanduser()
    is_folder = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.is_dir()  # hub ids: name or org/name
    return path.name if is_folder and path.name else model


def run_key(job: Job) -> str:
    """The run directory's key: the one a first attempt recorded (a job from before storage keys has
    runs/<project>/<job id>), else runs/<job id>."""
    return job.run_dir if job.run_dir and not job.run_dir.startswith("/") else f"runs/{job.id}"


@dataclasses.dataclass
class RunSync:
    """A job's run directory on this machine and its place in the storage."""

    storage: Storage
    local: Path
    prefix: str

    def key(self, path: str | Path) -> str:
        """The storage key of a file or folder inside the run directory."""
        rel = Path(path).resolve().relative_to(self.local.resolve()).as_posix()
        return join(self.prefix, "" if rel == "." else rel)

    def sync(self) -> None:
        self.storage.sync_dir(self.local, self.prefix)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the fork server) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # other systems: _watch_worker still stops the job


class EventSink:
    """`on_event` for train(): metrics and messages become job events, checkpoints rows."""

    def __init__(self, store: Store, job: Job, total_steps: int | None = None, run: RunSync | None = None) -> None:
        self.store, self.job, self.total_steps, self.run = store, job, total_steps, run
        self.last_metrics: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        from tuneforge.train.progress import CheckpointSaved, EvalDone, Finished, Message, TrainStep

        job_id = self.job.id
        match event:
            case TrainStep(step=step, loss=loss):
                self.last_metrics.update(step=step, train_loss=loss)
                data = {  # OpenAI's metric names; accuracy only where the objective measures it
                    "step": step,
                    "train_loss": loss,
                    **({"total_steps": self.total_steps} if self.total_steps else {}),
                    **(
                        {"train_mean_token_accuracy": event.metrics[TOKEN_ACCURACY]}
                        if TOKEN_ACCURACY in event.metrics
                        else {}
                    ),
                    "learning_rate": event.lr,
                    "tokens": event.tokens,
                    "tokens_per_s": event.tokens_per_s,
                    **reward_event_data(event.metrics, "train"),  # grpo: reward mean/std, graders, KL, length
                }
                jobs.add_event(self.store, job_id, f"Step {step}: training loss={loss:.4f}", type="metrics", data=data)
            case EvalDone(step=step, val_loss=val_loss):
                # tuneforge validates on the whole validation file: the loss is OpenAI's full_valid_loss,
                # and valid_loss too (OpenAI's is a validation batch's).
                # The objective's own metrics (a classifier's accuracy, macro_f1...) keep their names.
                data = {"step": step, "valid_loss": val_loss, "full_valid_loss": val_loss, **event.metrics}
                if TOKEN_ACCURACY in data:
                    data["valid_mean_token_accuracy"] = data["full_valid_mean_token_accuracy"] = data.pop(
                        TOKEN_ACCURACY
                    )
                data.update(reward_event_data(event.metrics, "valid"))  # grpo: the validation reward
                self.last_metrics.update(data)
                jobs.add_event(
                    self.store, job_id, f"Step {step}: validation loss={val_loss:.4f}", type="metrics", data=data
                )
            case CheckpointSaved(step=step, path=path):
                if self.run is not None:  # in the storage before its key is recorded: resumable on any machine
                    self.run.sync()
                    path = self.run.key(path)
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
    if os.getpgrp() == os.getpid():  # torchrun and its ranks first
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGTERM)
    os._exit(3)


def run_job(db_url: str, settings: ServeSettings, job_id: str, stop, worker_pid: int) -> None:
    """Process entry point. `stop` is a multiprocessing Event the worker sets to pause/cancel."""
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of its own, with torchrun and its ranks: what the worker kills
    watch = (worker_pid, stop, db_url, job_id, settings.job_lease_s)
    threading.Thread(target=_watch_worker, args=watch, daemon=True).start()
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)
    store = Store(db_url, run_migrations=False)
    with store.session() as s:
        job = s.get(Job, job_id)
    try:
        nproc, restarts = distributed_of(job.options)
        if nproc > 1:
            _train_distributed(store, settings, job, stop, nproc, restarts)
        else:
            _train(store, settings, job, should_stop=stop.is_set)
    except TuneforgeError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "training_error"
        _fail(store, job, code, client_text(str(exc), store, settings, job))
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


def client_text(text: str, store: Store, settings: ServeSettings, job: Job) -> str:
    """A training error as the job's owner may see it: the server's paths (its files, the run folder, the
    models folder) become the file ids, names and folders the client knows, and no internal id remains."""
    swaps: list[tuple[str, str]] = []
    for file_id in filter(None, (job.training_file, job.validation_file)):
        with contextlib.suppress(Exception):
            key = files.get_file(store, job.project_id, file_id).path
            swaps += [(place, file_id) for place in _local_places(settings, key)] + [(key, file_id)]
    swaps += [(place, "<run>") for place in _local_places(settings, run_key(job))]
    swaps += [
        (str(tuneforge_home() / "models") + os.sep, ""),
        (str(settings.data_dir), "<data>"),
        (job.project_id, "<project>"),
    ]
    for server, client in swaps:
        text = text.replace(server, client)
    return text


def _local_places(settings: ServeSettings, key: str) -> list[str]:
    """Where a stored object may lie on this machine: the shared folder itself, the cache, the work folder."""
    storage = settings.storage()
    places = [settings.cache_dir / key, settings.work_dir / key]
    if isinstance(storage, FilesystemStorage):
        places.insert(0, storage.root / key)
    named = [str(p) for p in places]
    return named + [r for r in (str(p.resolve()) for p in places) if r not in named]


def _prepare(store: Store, settings: ServeSettings, job: Job):
    """The job's run config, with its files read from the storage and its run directory where the storage
    wants it (the run so far fetched when it resumes on a machine that did not write it).
    (cfg, run, resume, total steps)."""
    from tuneforge.train.checkpoint import latest_checkpoint

    storage = settings.storage()
    train_file = files.get_file(store, job.project_id, job.training_file)
    val_file = files.get_file(store, job.project_id, job.validation_file) if job.validation_file else None
    prefix = run_key(job)
    local = storage.workdir(prefix, settings.work_dir)
    if job.resume:
        storage.fetch_dir(prefix, local)
    cfg = build_config(
        base_model=base_model_path(job.model),
        train_path=storage.local_file(train_file.path, settings.cache_dir),
        validation_path=storage.local_file(val_file.path, settings.cache_dir) if val_file else None,
        output_dir=local,
        method_type=job.method["type"],
        hyper=job.hyperparameters,
        seed=job.seed,
        options=job.options,
    )
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(run_dir=prefix))
    # A job re-queued after a crash or a pause continues from its newest checkpoint, if
    # the earlier attempt got far enough to write one; otherwise it starts over.
    resume = job.resume and latest_checkpoint(local / "checkpoints") is not None
    return cfg, RunSync(storage, local, prefix), resume, _total_steps(cfg, train_file)


def _train(store: Store, settings: ServeSettings, job: Job, should_stop) -> None:
    from tuneforge.train import train

    cfg, run, resume, total = _prepare(store, settings, job)
    sink = EventSink(store, job, total, run)
    try:
        result = train(cfg, resume=resume, on_event=sink, should_stop=should_stop, progress=False)
    except BaseException:
        with contextlib.suppress(Exception):  # a failed run's log and checkpoints too, without hiding its error
            run.sync()
        raise
    run.sync()  # a stopped run too: its checkpoints resume it on any machine
    if result.status == "stopped":
        return  # the worker turns this into paused or cancelled
    _succeed(store, settings, job, result, cfg.method.name, run)


def _train_distributed(store: Store, settings: ServeSettings, job: Job, stop, nproc: int, restarts: int) -> None:
    """torchrun with `nproc` ranks on this machine; rank 0 records the outcome (see `rank_main`)."""
    from tuneforge.cli.launch import torchrun_args

    cfg, run, resume, total = _prepare(store, settings, job)
    scratch = Path(tempfile.mkdtemp(prefix=f"tuneforge-{job.id}-"))
    spec = {
        "db_url": store.url,
        "job_id": job.id,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
        "config": cfg.model_dump(mode="json"),
        "resume": resume,
        "total_steps": total,
        "run_dir": str(run.local),
        "run_key": run.prefix,
        "stop_file": str(scratch / "stop"),
        "errors": str(scratch),
    }
    (scratch / "spec.json").write_text(json.dumps(spec))
    launch = torchrun_args(
        nproc_per_node=nproc, nnodes=1, node_rank=None, rdzv_endpoint=None, max_restarts=restarts, run_id=job.id
    )
    entry = ["-m", "tuneforge.serve.runner", str(scratch / "spec.json")]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, *entry]
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.worker_threads or 1)}
    jobs.add_event(store, job.id, f"Training on {nproc} processes (torchrun, at most {restarts} restarts)")
    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # in this process's group
        while proc.poll() is None:
            if stop.is_set() and not (scratch / "stop").exists():
                (scratch / "stop").touch()  # rank 0 asks before each step; every rank stops with it
            time.sleep(0.2)
        failure = _rank_failure(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0 and failure is not None:
        _fail(store, job, failure["code"], failure["message"])
    elif proc.returncode != 0:  # a rank killed (out of memory, a signal): the worker re-queues the job
        raise SystemExit(proc.returncode if proc.returncode > 0 else 128 - proc.returncode)


def _rank_failure(scratch: Path) -> dict[str, Any] | None:
    """The error a rank recorded: a user's mistake (any rank) before an internal error, the lowest rank first."""
    found = [json.loads(p.read_text()) for p in sorted(scratch.glob("rank-*.json"))]
    found.sort(key=lambda f: (f["code"] == "internal_error", f["rank"]))
    return found[0] if found else None


def rank_main(spec_path: str) -> None:
    """One rank of a distributed job (`python -m tuneforge.serve.runner SPEC`, started by torchrun)."""
    from tuneforge.cli.launch import rank_failures_named, shutdown_process_group
    from tuneforge.config import validate_config
    from tuneforge.train import train

    spec = json.loads(Path(spec_path).read_text())
    known = {f.name for f in dataclasses.fields(ServeSettings)}
    given = {k: v for k, v in spec["settings"].items() if k in known}
    settings = ServeSettings(**{**given, "data_dir": Path(given["data_dir"])})
    rank = int(os.environ["RANK"])
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)
    store = Store(spec["db_url"], run_migrations=False)
    with store.session() as s:
        job = s.get(Job, spec["job_id"])
    run = RunSync(settings.storage(), Path(spec["run_dir"]), spec["run_key"])
    stop_file = Path(spec["stop_file"])
    try:
        cfg = validate_config(spec["config"], source="tuneforge", check_files=False)
        sink = EventSink(store, job, spec["total_steps"], run) if rank == 0 else None
        with rank_failures_named():  # asked on rank 0 only, should_stop's answer is broadcast to every rank
            result = train(cfg, resume=spec["resume"], on_event=sink, should_stop=stop_file.exists, progress=False)
        shutdown_process_group()
        if rank == 0:
            run.sync()
            if result.status != "stopped":
                _succeed(store, settings, job, result, cfg.method.name, run)
    except TuneforgeError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "training_error"
        _record_rank_failure(spec, rank, code, client_text(f"rank {rank}: {exc}", store, settings, job))
        raise SystemExit(1) from None
    except Exception as exc:
        error_id = new_id("err_", 8)
        log.error("error %s on rank %s of fine-tuning job %s", error_id, rank, job.id, exc_info=exc)
        text = (
            f"Rank {rank} of the training processes had an internal error (error id {error_id}); "
            "the operator finds the details in the worker's log."
        )
        _record_rank_failure(spec, rank, "internal_error", text)
        raise
    finally:
        store.dispose()


def _record_rank_failure(spec: dict[str, Any], rank: int, code: str, message: str) -> None:
    with contextlib.suppress(OSError):
        path = Path(spec["errors"]) / f"rank-{rank}.json"
        path.write_text(json.dumps({"rank": rank, "code": code, "message": message}))


def _total_steps(cfg, train_file) -> int | None:
    """The run's steps as training counts them on one device (max_steps, else epochs x steps per epoch of the
    file's valid examples): what estimated_finish extrapolates to."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    n = (train_file.validation or {}).get("valid")
    if not n:
        return None
    per_epoch = math.ceil(math.ceil(n / cfg.train.batch_size) / cfg.train.grad_accum)
    return max(1, math.ceil(per_epoch * cfg.train.epochs))


def _served_as(artifact: Path, run_dir: Path) -> tuple[str, Path]:
    """How the engine serves the result (the stored model kind, and what it loads): adapters that
    share their base in memory (switched per request) by their folder, whole models by theirs, and
    anything else (prompt tuning, IA3, bottleneck adapters) from the run directory as a model of its own."""
    found = read_artifact(artifact)
    return found.serving.value, run_dir if found.serving is Serving.OWN_COPY else found.folder


def _succeed(store: Store, settings: ServeSettings, job: Job, result, method: str, run: RunSync) -> None:
    kind, path = _served_as(Path(result.final_metrics["artifact"]), Path(result.run_dir))
    name = fine_tuned_name(job, project_name(store, job.project_id))
    result_file = files.store_result_file(
        store,
        settings.files_dir,
        job.project_id,
        f"step_metrics_{job.id}.csv",
        _metrics_csv(result.run_dir),
        storage=settings.storage(),
    )
    model = FineTunedModel(
        id=name,
        project_id=job.project_id,
        job_id=job.id,
        base_model=job.model,
        kind=kind,
        path=run.key(path),  # in the storage: synced when training ended
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
    """OpenAI's result file: one row per logged step with OpenAI's columns (step, train_loss, train_accuracy,
    valid_loss, valid_mean_token_accuracy); an accuracy is empty where the objective does not measure token
    accuracy (tuneforge's SFT does not today)."""
    from tuneforge.train.progress import EvalDone, TrainStep
    from tuneforge.train.rundir import RunDir

    rows: dict[int, dict[str, Any]] = {}
    for event in RunDir(Path(run_dir)).read_events():
        if isinstance(event, TrainStep):
            row = rows.setdefault(event.step, {"step": event.step})
            row.update(train_loss=event.loss, train_accuracy=event.metrics.get(TOKEN_ACCURACY))
        elif isinstance(event, EvalDone):
            row = rows.setdefault(event.step, {"step": event.step})
            row.update(valid_loss=event.val_loss, valid_mean_token_accuracy=event.metrics.get(TOKEN_ACCURACY))
    out = io.StringIO()
    writer = csv.DictWriter(out, ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()


if __name__ == "__main__":
    rank_main(sys.argv[1])
