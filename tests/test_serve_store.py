"""The service's store against SQLite and PostgreSQL: migrations match the tables, keys,
and job claiming/leases are safe when several workers race."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from helpers import postgres_schema
from tuneforge.serve import jobs, keys
from tuneforge.serve.db import Store
from tuneforge.serve.tables import Base


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
    fields = dict(project_id=project_id, model="demo", training_file="file-x", validation_file=None, hyperparameters={}, method={"type": "supervised"}, options={}, suffix=None, seed=1, user_metadata=None)
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
        assert jobs.set_status(store, job_id, "queued", expect=("validating_files",))
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


def test_orphaned_job_is_requeued_then_failed(store, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_JOB_LEASE_S", "0.2")
    monkeypatch.setenv("TUNEFORGE_JOB_MAX_ATTEMPTS", "2")
    project = keys.get_or_create_project(store, "p")
    job_id = _job(store, project)
    jobs.set_status(store, job_id, "queued", expect=("validating_files",))
    assert jobs.claim_next_job(store, "w1").id == job_id
    assert jobs.reap_orphans(store) == []  # heartbeat is fresh
    assert jobs.heartbeat(store, job_id, "w1") is not None
    time.sleep(0.3)
    assert jobs.reap_orphans(store) == [job_id]
    job = jobs.get_job(store, job_id, project)
    assert job.status == "queued" and job.resume and job.worker_id is None
    assert jobs.heartbeat(store, job_id, "w1") is None  # the dead worker lost its lease
    assert jobs.claim_next_job(store, "w2").attempts == 2
    time.sleep(0.3)
    assert jobs.reap_orphans(store) == [job_id]
    job = jobs.get_job(store, job_id, project)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
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
