"""The service's store against SQLite and PostgreSQL: migrations match the tables, keys,
job claiming/leases are safe when several workers race, and job statuses move only along
the transitions of `job_states`, each a compare-and-set."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update

import tuneforge
from helpers import postgres_schema
from tuneforge.serve import job_states, jobs, keys
from tuneforge.serve.db import Store
from tuneforge.serve.job_states import ALLOWED, TRANSITIONS, JobStatus
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import Base, FineTunedModel, Job
from tuneforge.serve.worker import Worker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'tf.db'}")
        yield s
        s.dispose()
    else:
        with postgres_schema() as url:
            s = Store(url)
            yield s
            s.dispose()


def _job(store: Store, project_id: str, **extra) -> str:
    fields = dict(
        project_id=project_id,
        model="demo",
        training_file="file-x",
        validation_file=None,
        hyperparameters={},
        method={"type": "supervised"},
        options={},
        suffix=None,
        seed=1,
        user_metadata=None,
    )
    fields.update(extra)
    return jobs.create_job(store, **fields).id


def test_migrations_create_exactly_the_orm_tables(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    Store(store.url).dispose()  # migrating an up-to-date database again is a no-op


def test_keys_are_hashed_scoped_and_revocable(store):
    key_id, key = keys.create_key(store, "alpha")
    _, other = keys.create_key(store, "beta")
    who = keys.authenticate(store, key)
    assert who is not None and who.project_name == "alpha" and who.key_id == key_id
    assert keys.authenticate(store, other).project_name == "beta"
    assert keys.authenticate(store, key + "x") is None
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT key_hash FROM api_keys")]
    assert key not in stored and keys.hash_key(key) in stored
    assert keys.revoke_key(store, key_id) and keys.authenticate(store, key) is None
    assert not keys.revoke_key(store, key_id)


def test_each_queued_job_is_claimed_by_exactly_one_worker(store):
    project = keys.get_or_create_project(store, "p")
    ids = [_job(store, project) for _ in range(12)]
    for job_id in ids:
        assert job_states.files_validated(store, job_id)
    claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}

    def work(worker_id: str) -> None:
        while (job := jobs.claim_next_job(store, worker_id)) is not None:
            claimed[worker_id].append(job.id)

    threads = [threading.Thread(target=work, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for got in claimed.values() for j in got]
    assert sorted(everything) == sorted(ids)  # all claimed, none twice
    job = jobs.get_job(store, ids[0], project)
    assert job.status == "running" and job.attempts == 1 and job.worker_id in claimed


def test_orphaned_job_is_requeued_then_failed(store):
    lease = dict(lease_s=0.2, max_attempts=2)  # passed in (ServeSettings.job_lease_s / job_max_attempts)
    project = keys.get_or_create_project(store, "p")
    job_id = _job(store, project)
    job_states.files_validated(store, job_id)
    assert jobs.claim_next_job(store, "w1").id == job_id
    assert jobs.reap_orphans(store, **lease) == []  # heartbeat is fresh
    assert jobs.heartbeat(store, job_id, "w1") is not None
    time.sleep(0.3)
    assert jobs.reap_orphans(store, **lease) == [job_id]
    job = jobs.get_job(store, job_id, project)
    assert job.status == "queued" and job.resume and job.worker_id is None
    assert jobs.heartbeat(store, job_id, "w1") is None  # the dead worker lost its lease
    assert jobs.claim_next_job(store, "w2").attempts == 2
    time.sleep(0.3)
    assert jobs.reap_orphans(store, **lease) == [job_id]
    job = jobs.get_job(store, job_id, project)
    assert job.status == "failed" and job.error["code"] == "worker_lost" and job.finished_at is not None
    events, _ = jobs.list_events(store, job_id, None, 10)
    assert [e.level for e in events[:2]] == ["error", "warn"]


def test_list_pagination_and_project_isolation(store):
    a = keys.get_or_create_project(store, "a")
    b = keys.get_or_create_project(store, "b")
    ids = [_job(store, a) for _ in range(5)]
    _job(store, b)
    page, more = jobs.list_jobs(store, a, None, 2)
    assert more and len(page) == 2
    seen = [j.id for j in page]
    while more:
        page, more = jobs.list_jobs(store, a, seen[-1], 2)
        seen += [j.id for j in page]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert jobs.get_job(store, ids[0], b) is None


# ---------------------------------------------------------------- the job state machine

S = JobStatus
OPENAI_STATUSES = {"validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"}


def _put(store: Store, job_id: str, status: JobStatus) -> None:
    """Test-only: place a job in any status, to try every transition from it."""
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status.value, worker_id="w1", finished_at=None))


def _row(store: Store, job_id: str) -> dict:
    with store.session() as s:
        job = s.get(Job, job_id)
        return {attr.key: getattr(job, attr.key) for attr in Job.__mapper__.column_attrs}


def test_the_transition_table_is_openais_statuses_and_moves():
    assert {s.value for s in JobStatus} == OPENAI_STATUSES and S.RUNNING == "running" and f"{S.PAUSED}" == "paused"
    assert ALLOWED == {
        S.VALIDATING_FILES: {S.QUEUED, S.FAILED, S.PAUSED, S.CANCELLED},
        S.QUEUED: {S.RUNNING, S.PAUSED, S.CANCELLED},
        S.RUNNING: {S.SUCCEEDED, S.FAILED, S.QUEUED, S.PAUSED, S.CANCELLED},
        S.PAUSED: {S.QUEUED, S.CANCELLED},
        S.SUCCEEDED: set(),
        S.FAILED: set(),
        S.CANCELLED: set(),
    }
    assert {t.name: (set(t.sources), t.target) for t in TRANSITIONS} == {
        "validate": ({S.VALIDATING_FILES}, S.QUEUED),
        "reject_files": ({S.VALIDATING_FILES}, S.FAILED),
        "hold": ({S.VALIDATING_FILES, S.QUEUED}, S.PAUSED),
        "claim": ({S.QUEUED}, S.RUNNING),
        "pause": ({S.RUNNING}, S.PAUSED),
        "requeue": ({S.RUNNING}, S.QUEUED),
        "resume": ({S.PAUSED}, S.QUEUED),
        "succeed": ({S.RUNNING}, S.SUCCEEDED),
        "fail": ({S.RUNNING}, S.FAILED),
        "cancel": ({S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSED}, S.CANCELLED),
    }
    assert len({t.name for t in TRANSITIONS}) == len(TRANSITIONS)


def test_every_allowed_transition_moves_and_every_other_is_refused_unchanged(store):
    job_id = _job(store, keys.get_or_create_project(store, "p"))
    for t in TRANSITIONS:
        for status in JobStatus:
            _put(store, job_id, status)
            before = _row(store, job_id)
            with store.session() as s:
                won = job_states.apply(s, job_id, t, event=f"{t.name} from {status}")
            after = _row(store, job_id)
            if status in t.sources:
                assert won and after["status"] == t.target.value, (t.name, status)
                assert (after["finished_at"] is not None) == (t.target in job_states.FINAL)
            else:
                assert not won and after == before, (t.name, status)
    events, _ = jobs.list_events(store, job_id, None, 1000)
    written = sorted(e.message for e in events if " from " in e.message)
    assert written == sorted(f"{t.name} from {s}" for t in TRANSITIONS for s in t.sources)  # only when it moved


def test_named_transitions_write_their_fields_and_respect_their_guards(store):
    project = keys.get_or_create_project(store, "p")
    bad = _job(store, project)
    assert job_states.files_rejected(store, bad, "training_file", "holds preference data")
    assert not job_states.files_validated(store, bad)  # failed is final: the later writer loses
    job = jobs.get_job(store, bad, project)
    assert job.status == "failed"
    assert job.error == {"code": "invalid_training_file", "message": "holds preference data", "param": "training_file"}

    job_id = _job(store, project)
    assert job_states.hold(store, job_id) and not job_states.hold(store, job_id)
    assert job_states.resume(store, job_id) and jobs.get_job(store, job_id, project).resume
    assert jobs.claim_next_job(store, "w1").id == job_id
    assert jobs.request_control(store, job_id, "pause")
    assert not job_states.paused(store, job_id, "w2")  # only the worker holding the lease acknowledges
    assert job_states.paused(store, job_id, "w1")
    job = jobs.get_job(store, job_id, project)
    assert job.status == "paused" and job.worker_id is None and job.control is None and job.resume
    assert not job_states.requeue(store, job_id, "not running")
    assert job_states.cancel(store, job_id) and not job_states.cancel(store, job_id)


def _race(*calls):
    """Run the calls at the same moment, one thread each; their results in order."""
    start, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_racing_claims_of_one_job_one_wins(store):
    project = keys.get_or_create_project(store, "p")
    for _ in range(3):
        job_id = _job(store, project)
        job_states.files_validated(store, job_id)
        got = _race(partial(jobs.claim_next_job, store, "w1"), partial(jobs.claim_next_job, store, "w2"))
        winners = [w for w, job in zip(("w1", "w2"), got) if job is not None]
        assert len(winners) == 1
        job = jobs.get_job(store, job_id, project)
        assert job.status == "running" and job.worker_id == winners[0] and job.attempts == 1


def test_racing_finish_and_cancel_one_wins_with_its_event(store):
    project = keys.get_or_create_project(store, "p")
    for _ in range(3):
        job_id = _job(store, project)
        job_states.files_validated(store, job_id)
        jobs.claim_next_job(store, "w1")
        cancelled, failed = _race(
            partial(job_states.cancel, store, job_id), partial(job_states.fail, store, job_id, "training_error", "boom")
        )
        assert sorted([cancelled, failed]) == [False, True]
        assert jobs.get_job(store, job_id, project).status == ("cancelled" if cancelled else "failed")
        messages = [e.message for e in jobs.list_events(store, job_id, None, 50)[0]]
        assert ("Job cancelled" in messages) == cancelled and ("Job failed: boom" in messages) == failed


def test_succeed_makes_status_model_and_events_visible_together(store):
    project = keys.get_or_create_project(store, "p")
    job_id = _job(store, project)
    job_states.files_validated(store, job_id)
    jobs.claim_next_job(store, "w1")

    def model(name: str) -> FineTunedModel:
        return FineTunedModel(
            id=name, project_id=project, job_id=job_id, base_model="demo", kind="adapter", path="/r", created_at=1
        )

    assert job_states.succeed(
        store, job_id, fine_tuned_model=model("ft:demo::x"), trained_tokens=7, result_files=["file-r"], events=["done"]
    )
    job = jobs.get_job(store, job_id, project)
    assert (job.status, job.fine_tuned_model, job.trained_tokens, job.result_files) == (
        "succeeded",
        "ft:demo::x",
        7,
        ["file-r"],
    )
    assert jobs.list_events(store, job_id, None, 1)[0][0].message == "done"
    assert not job_states.succeed(
        store, job_id, fine_tuned_model=model("ft:demo::y"), trained_tokens=7, result_files=[], events=["twice"]
    )
    with store.session() as s:
        assert s.get(FineTunedModel, "ft:demo::y") is None  # the losing writer adds no row


def test_worker_records_a_pause_a_shutdown_and_crashes_until_attempts_run_out(store):
    project = keys.get_or_create_project(store, "p")
    worker = Worker(store, ServeSettings(database_url=store.url, job_max_attempts=2))

    def claimed() -> str:
        job_id = _job(store, project)
        job_states.files_validated(store, job_id)
        assert jobs.claim_next_job(store, worker.id).id == job_id
        return job_id

    paused = claimed()
    jobs.request_control(store, paused, "pause")
    worker._after_exit(paused, 0, stopped=True)
    assert jobs.get_job(store, paused, project).status == "paused"

    crashed = claimed()
    worker._after_exit(crashed, -9, stopped=False)
    job = jobs.get_job(store, crashed, project)
    assert job.status == "queued" and job.resume and job.worker_id is None
    last = jobs.list_events(store, crashed, None, 1)[0][0]
    assert last.level == "warn"
    assert "killed by SIGKILL (often the out-of-memory killer); job re-queued (attempt 2 of 2)" in last.message
    assert jobs.claim_next_job(store, worker.id).attempts == 2
    worker._after_exit(crashed, 1, stopped=False)
    job = jobs.get_job(store, crashed, project)
    assert job.status == "failed" and job.error["code"] == "worker_crashed"
    assert "exited with code 1" in job.error["message"]

    other = claimed()
    with store.session() as s:  # taken back by another worker meanwhile: this worker must not touch it
        s.execute(update(Job).where(Job.id == other).values(worker_id="w-other"))
    worker._after_exit(other, -9, stopped=False)
    assert jobs.get_job(store, other, project).status == "running"

    worker.shutdown.set()
    leaving = claimed()
    worker._after_exit(leaving, 0, stopped=True)
    job = jobs.get_job(store, leaving, project)
    assert job.status == "queued" and job.resume
    assert jobs.list_events(store, leaving, None, 1)[0][0].message == f"Worker {worker.id} shut down; job re-queued"


# Generation finish reasons that share a word with a job status, and are not job statuses.
NOT_JOB_STATUSES = {("streaming.py", "cancelled"), ("engine.py", "cancelled")}
# objects with statuses of their own (OpenAI's batch and upload objects, the feedback review), owned by their modules
OTHER_STATUS_OWNERS = {"batches.py", "uploads.py", "quality.py"}


def test_job_statuses_change_only_in_job_states():
    """No other module writes a status (UPDATE ... .values(status=...), job.status = ..., a Job
    built with a literal status) or spells a job status as a bare string."""
    serve = Path(tuneforge.__file__).parent / "serve"
    found = []
    for path in sorted(serve.rglob("*.py")):
        if path.name == "job_states.py" or path.name in OTHER_STATUS_OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(serve)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
                found += [where for k in node.keywords if k.arg == "status"]
            if isinstance(node, ast.Attribute) and node.attr == "status" and isinstance(node.ctx, ast.Store):
                found += [] if isinstance(node.value, ast.Name) and node.value.id == "self" else [where]  # HTTP status
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Job":
                found += [where for k in node.keywords if k.arg == "status" and isinstance(k.value, ast.Constant)]
            bare = isinstance(node, ast.Constant) and node.value in OPENAI_STATUSES
            if bare and (path.name, node.value) not in NOT_JOB_STATUSES:
                found.append(f"{where} {node.value!r}")
    assert found == []


def test_training_events_become_job_events_checkpoints_and_the_result_csv(store, tmp_path):
    from tuneforge.serve.runner import EventSink, _metrics_csv
    from tuneforge.train.progress import CheckpointSaved, EvalDone, Events, Finished, TrainStep
    from tuneforge.train.rundir import RunDir

    project = keys.get_or_create_project(store, "p")
    job = jobs.get_job(store, _job(store, project), project)
    run = RunDir(tmp_path)
    with Events(run, EventSink(store, job), total_steps=2, show=False) as events:
        events.message("low on memory", "warning")
        events.emit(TrainStep(1, 0, 2.5, 1e-3, 100, 50.0))
        events.emit(EvalDone(1, 2.25, 2.25, {"accuracy": 0.5}))
        events.emit(CheckpointSaved(1, "/srv/runs/ckpt-1"))
        events.emit(TrainStep(2, 0, 2.0, 5e-4, 200, 60.0))
        events.emit(Finished({"steps": 2, "train_loss": 2.0, "artifact": "/srv/runs/adapter"}))
    rows, _ = jobs.list_events(store, job.id, None, 50)
    assert [e.data for e in rows if e.type == "metrics"][::-1] == [
        {"step": 1, "train_loss": 2.5, "learning_rate": 1e-3, "tokens": 100, "tokens_per_s": 50.0},
        {"step": 1, "valid_loss": 2.25, "full_valid_loss": 2.25, "accuracy": 0.5},  # OpenAI's names and its own
        {"step": 2, "train_loss": 2.0, "learning_rate": 5e-4, "tokens": 200, "tokens_per_s": 60.0},
    ]
    by_message = {e.message: e for e in rows}
    assert by_message["low on memory"].level == "warn" and "Checkpoint saved at step 1" in by_message
    assert by_message["Training finished"].data == {"steps": 2, "train_loss": 2.0}  # no server path for the client
    (ckpt,), _ = jobs.list_checkpoints(store, job.id, None, 10)
    assert (ckpt.step, ckpt.path) == (1, "/srv/runs/ckpt-1")
    assert ckpt.metrics == {"step": 1, "train_loss": 2.5, "valid_loss": 2.25, "full_valid_loss": 2.25, "accuracy": 0.5}
    # OpenAI's columns; a classifier's accuracy is not a token accuracy, so those stay empty
    assert _metrics_csv(tmp_path).decode().splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.5,,2.25,",
        "2,2.0,,,",
    ]


def test_worker_and_api_processes_do_not_load_the_training_stack():
    """Only a job's own process imports torch and the recipe (the fork server preloads them): a worker
    registers, and the API answers, seconds after start instead of after a 30 s import on a busy machine."""
    code = (
        "import sys, tuneforge.serve.worker, tuneforge.serve.app\n"
        "print(sorted({'torch', 'tuneforge.train.recipe'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
