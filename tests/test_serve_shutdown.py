"""`tuneforge serve` as real processes: SIGTERM with a running job and a long request exits within its
drain timeout, leaves no process of its tree, and the job resumes on restart; a worker killed with -9 is
replaced and its job taken back within a lease; serve killed with -9 takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from helpers import free_port, install_tiny_demo, write_chat_jsonl
from tuneforge.serve import keys
from tuneforge.serve.db import Store
from tuneforge.serve.tables import Job, JobEvent, Worker

DRAIN_S = 30  # generous: under load a step plus its checkpoint can take seconds
LEASE_S = 6
STARTUP_S = 300  # serve, its worker and the worker's fork server import torch: minutes on a loaded 2-core machine
LONG_JOB = {
    "train": {"max_steps": 100000, "save_every": 2, "eval_every": 100000, "log_every": 1},
    "model": {"max_length": 64},
}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def tree(pid: int) -> set[int]:
    """Every descendant of `pid` (worker, fork server, job processes)."""
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what, timeout: float, message, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(every)
    raise AssertionError(message() if callable(message) else message)


def all_gone(pids: set[int], timeout: float, what: str) -> None:
    def left() -> str:
        return f"{what}: " + "; ".join(
            Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200] for p in pids if alive(p)
        )

    wait_for(lambda: not [p for p in pids if alive(p)], timeout, left)


@pytest.fixture
def service(tmp_path):
    install_tiny_demo(tmp_path)
    url = f"sqlite:///{tmp_path / 'tf.db'}"
    env = {
        **os.environ,
        "TUNEFORGE_HOME": str(tmp_path),
        "TUNEFORGE_DATABASE_URL": url,
        "TUNEFORGE_WORKER_THREADS": "1",
        "TUNEFORGE_INFERENCE_THREADS": "1",
        "TUNEFORGE_DRAIN_TIMEOUT_S": str(DRAIN_S),
        "TUNEFORGE_JOB_LEASE_S": str(LEASE_S),
    }
    store = Store(url)
    _, key = keys.create_key(store, "ops")
    started: list[subprocess.Popen] = []

    def start() -> str:
        port = free_port()
        command = [sys.executable, "-m", "tuneforge.cli.main", "serve", "--port", str(port), "--workers", "1"]
        proc = subprocess.Popen(command, env=env)
        started.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(base + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, "serve exited"

        wait_for(up, STARTUP_S, "serve did not come up with a live worker")
        return base

    data = tmp_path / "train.jsonl"
    write_chat_jsonl(data, 20)
    yield {"start": start, "procs": started, "store": store, "key": key, "data": data}
    for proc in started:
        for pid in tree(proc.pid):
            with _suppress():
                os.kill(pid, signal.SIGKILL)
        with _suppress():
            proc.kill()
        proc.wait()
    store.dispose()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


def job_row(store: Store, job_id: str) -> Job:
    with store.session() as s:
        return s.get(Job, job_id)


def start_long_job(service, base: str) -> str:
    c = openai.OpenAI(base_url=base + "/v1", api_key=service["key"], max_retries=0)
    f = c.files.create(file=service["data"].open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="demo", training_file=f.id, extra_body={"tuneforge": LONG_JOB})
    wait_for(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data, STARTUP_S, "the job wrote no checkpoint")
    return job.id


@pytest.mark.slow
def test_sigterm_drains_within_its_timeout_leaves_no_process_and_the_job_resumes(service):
    base = service["start"]()
    serve = service["procs"][-1]
    job_id = start_long_job(service, base)
    long_request = threading.Thread(
        target=lambda: httpx.post(
            base + "/v1/chat/completions",
            timeout=120,
            headers={"Authorization": f"Bearer {service['key']}"},
            json={
                "model": "demo",
                "messages": [{"role": "user", "content": "Tell me everything"}],
                "max_tokens": 100000,
            },
        ),
        daemon=True,
    )
    long_request.start()
    time.sleep(0.5)
    family = tree(serve.pid)
    assert len(family) >= 3  # worker, its fork server, the job's process
    t0 = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=DRAIN_S + 20)
    took = time.monotonic() - t0
    print(f"\nSIGTERM with a running job and a long request: serve exited in {took:.1f} s (drain {DRAIN_S} s)")
    assert took < DRAIN_S + 5
    all_gone(family, 20, "left running after serve exited")  # the fork server unloads torch as it exits
    job = job_row(service["store"], job_id)
    assert job.status == "queued" and job.resume and job.worker_id is None
    base = service["start"]()  # the job continues from its checkpoint on the next serve
    wait_for(
        lambda: (
            job_row(service["store"], job_id).attempts == 2 and job_row(service["store"], job_id).status == "running"
        ),
        STARTUP_S,
        "the job did not resume",
    )
    with service["store"].session() as s:
        messages = [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job_id)]
    assert any("shut down; job re-queued" in m for m in messages)
    httpx.post(base + f"/v1/fine_tuning/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {service['key']}"})


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_job_taken_back_and_serve_killed_takes_its_workers(service):
    base = service["start"]()
    serve = service["procs"][-1]
    job_id = start_long_job(service, base)
    first = job_row(service["store"], job_id).worker_id
    with service["store"].session() as s:
        worker_pid = s.get(Worker, first).pid
    doomed = tree(worker_pid) | {worker_pid}
    os.kill(worker_pid, signal.SIGKILL)
    t0 = time.monotonic()
    all_gone(doomed, 20, "the dead worker's processes kept running")

    def taken_back():
        job = job_row(service["store"], job_id)
        return job.status == "running" and job.worker_id not in (None, first)

    wait_for(taken_back, LEASE_S + STARTUP_S, "no new worker took the job back")
    took = time.monotonic() - t0
    print(f"\nworker killed -9: its job running again on a new worker after {took:.1f} s (lease {LEASE_S} s)")
    assert httpx.get(base + "/health").json()["workers_alive"] >= 1
    family = tree(serve.pid)
    serve.kill()
    serve.wait()
    all_gone(family, DRAIN_S + 10, "serve killed -9 left its workers running")
    assert job_row(service["store"], job_id).status == "queued"  # re-queued by the worker as it shut down
