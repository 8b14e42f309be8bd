"""Fine-tuning jobs end to end: API in a thread, workers as separate processes, the
official `openai` client following a job to a fine-tuned model it then chats with;
pause/resume; cancel stops the process; a worker killed mid-job; drift and feedback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from helpers import install_tiny_demo, serve_in_thread, write_chat_jsonl
from tuneforge.serve import keys
from tuneforge.serve.app import create_app
from tuneforge.serve.db import Store
from tuneforge.serve.jobspec import base_lr
from tuneforge.serve.settings import ServeSettings

pytestmark = pytest.mark.slow
FAST = {"model": {"max_length": 96}, "train": {"log_every": 1, "eval_every": 5, "save_every": 5}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFORGE_HOME", str(home))
    install_tiny_demo(home)
    url = f"sqlite:///{home / 'tf.db'}"
    settings = ServeSettings(database_url=url, data_dir=home / "serve", inference_threads=1)
    store = Store(url)
    app = create_app(settings, store)
    worker_env = {
        **os.environ,
        "TUNEFORGE_HOME": str(home),
        "TUNEFORGE_DATABASE_URL": url,
        "TUNEFORGE_JOB_LEASE_S": "5",
        "TUNEFORGE_WORKER_THREADS": "1",
    }
    # Two workers share the database for the whole module (each boots a fork server that
    # imports torch once, the slow part); the last test kills one of them mid-job.
    workers = [subprocess.Popen([sys.executable, "-m", "tuneforge.serve.worker"], env=worker_env) for _ in range(2)]

    with serve_in_thread(app) as base:
        _, key = keys.create_key(store, "team")
        c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        train, val = home / "train.jsonl", home / "val.jsonl"
        write_chat_jsonl(train, 40, seed=0)
        write_chat_jsonl(val, 12, seed=1)
        files = (
            c.files.create(file=train.open("rb"), purpose="fine-tune").id,
            c.files.create(file=val.open("rb"), purpose="fine-tune").id,
        )
        yield {"client": c, "files": files, "workers": workers, "store": store, "home": home, "url": base, "key": key}
    for p in workers:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=30)
    mp.undo()
    store.dispose()


def wait_for(c, job_id: str, statuses: set[str], timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck in {job.status}")


def test_job_to_fine_tuned_model_and_chat(env):
    c, (train_id, val_id) = env["client"], env["files"]
    started = time.time()
    job = c.fine_tuning.jobs.create(
        model="demo",
        training_file=train_id,
        validation_file=val_id,
        suffix="support",
        seed=3,
        hyperparameters={"learning_rate_multiplier": 10, "batch_size": 4},  # OpenAI's largest multiplier
        # ... and 5x more through tuneforge's own lr, so the tiny model visibly learns in 20 steps
        extra_body={"tuneforge": {**FAST, "train": {**FAST["train"], "max_steps": 20, "lr": 50 * base_lr("lora")}}},
    )
    seen: list[str] = []
    finishes: list[int] = []
    while (cur := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        seen.append(cur.status)
        if cur.estimated_finish is not None:
            finishes.append(cur.estimated_finish)
        time.sleep(0.1)
        assert time.time() - started < 180
    print(f"\njob time (create -> succeeded): {time.time() - started:.1f} s")
    assert cur.status == "succeeded", cur.error
    assert "running" in seen and cur.trained_tokens > 0 and cur.finished_at >= cur.created_at
    assert cur.fine_tuned_model == f"ft:demo:team:support:{job.id.removeprefix('ftjob-')[:8]}"  # BASE:PROJECT:SUFFIX
    assert finishes and all(started - 5 < t < time.time() + 300 for t in finishes)  # estimated while running
    assert cur.estimated_finish is None
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=200))
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Created fine-tuning job")
    assert all(isinstance(e.data, dict) for e in events)  # OpenAI's event data: an object, never null
    metrics = [e.data for e in events if e.type == "metrics" and e.data and "train_loss" in e.data]
    assert sorted(m["step"] for m in metrics) == list(range(1, 21)) and {m["total_steps"] for m in metrics} == {20}
    valid = [e.data for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert valid and all(v["full_valid_loss"] == v["valid_loss"] for v in valid)
    losses = {m["step"]: m["train_loss"] for m in metrics}
    assert losses[20] < losses[1]  # it learned something
    ckpts = list(c.fine_tuning.jobs.checkpoints.list(job.id))
    assert [k.step_number for k in ckpts] == [20, 15, 10, 5] and ckpts[0].metrics.valid_loss is not None
    assert ckpts[0].fine_tuned_model_checkpoint == f"{cur.fine_tuned_model}:ckpt-step-20"
    csv = c.files.content(cur.result_files[0]).read().decode().splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 21
    assert cur.fine_tuned_model in [m.id for m in c.models.list()]

    msgs = [{"role": "user", "content": "How long is the warranty on my router?"}]
    t0 = time.perf_counter()
    ft = c.chat.completions.create(model=cur.fine_tuned_model, messages=msgs, max_tokens=24, temperature=0)
    print(f"first fine-tuned chat (loads base + adapter): {1000 * (time.perf_counter() - t0):.0f} ms")
    t0 = time.perf_counter()
    base = c.chat.completions.create(model="demo", messages=msgs, max_tokens=24, temperature=0)
    print(f"base chat on the shared model: {1000 * (time.perf_counter() - t0):.0f} ms")
    # The service's answers equal loading the run directory directly: the adapter is applied
    # per request on the shared base, and base requests run with adapters disabled.
    from tuneforge.models.generate import generate_batch
    from tuneforge.models.loading import load_for_inference

    run = Path(env["home"]) / "serve" / "runs" / job.id  # the storage key runs/<job id>, in place in the home
    model, tok = load_for_inference(run)
    assert ft.choices[0].message.content == generate_batch(model, tok, [msgs], 24)[0].text
    base_model, base_tok = load_for_inference(env["home"] / "models" / "demo")
    assert base.choices[0].message.content == generate_batch(base_model, base_tok, [msgs], 24)[0].text
    assert ft.choices[0].message.content != base.choices[0].message.content
    chunks = list(
        c.chat.completions.create(model=cur.fine_tuned_model, messages=msgs, max_tokens=24, temperature=0, stream=True)
    )
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()
        == ft.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    # Feedback becomes a training file; drift compares live prompts with the training data.
    for i in range(10):
        r = c.post(
            "/feedback",
            cast_to=object,
            body={
                "model": cur.fine_tuned_model,
                "messages": msgs,
                "completion": "?",
                "correction": f"Two years, answer {i}.",
            },
        )
        assert r["correction"].startswith("Two years")
        c.post(f"/feedback/{r['id']}", cast_to=object, body={"status": "accepted"})  # reviewed: only accepted export
    exported = c.post("/feedback/export", cast_to=object, body={"model": cur.fine_tuned_model})
    assert exported["purpose"] == "fine-tune" and b"Two years, answer 9." in c.files.content(exported["id"]).read()
    from tuneforge.data.synthetic import support_desk_dataset

    for q in [conv.messages[-2].content for conv in support_desk_dataset(8, seed=7)]:  # unseen, same distribution
        c.chat.completions.create(model=cur.fine_tuned_model, messages=[{"role": "user", "content": q}], max_tokens=2)
    same = c.get(f"/monitoring/drift/{cur.fine_tuned_model}", cast_to=object)
    assert same["live_prompts"] >= 5 and same["drifted"] is False, same
    for q in ["Write a haiku about the sea and the stars at midnight, please, in the style of an old poet " * 3] * 6:
        c.chat.completions.create(model=cur.fine_tuned_model, messages=[{"role": "user", "content": q}], max_tokens=2)
    drifted = c.get(f"/monitoring/drift/{cur.fine_tuned_model}", cast_to=object)
    assert drifted["drifted"] is True and drifted["score"] > same["score"], drifted

    deleted = c.models.delete(cur.fine_tuned_model)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=cur.fine_tuned_model, messages=msgs, max_tokens=4)


def test_pause_resume_and_cancel_stop_the_process(env):
    c, (train_id, _) = env["client"], env["files"]
    long = {"tuneforge": {**FAST, "train": {**FAST["train"], "max_steps": 100000, "save_every": 10}}}
    job = c.fine_tuning.jobs.create(model="demo", training_file=train_id, extra_body=long)
    wait_for(c, job.id, {"running"})
    while not list(c.fine_tuning.jobs.checkpoints.list(job.id)):
        time.sleep(0.2)
    c.fine_tuning.jobs.pause(job.id)
    paused = wait_for(c, job.id, {"paused"}, timeout=60)
    step_at_pause = max(k.step_number for k in c.fine_tuning.jobs.checkpoints.list(job.id))
    c.fine_tuning.jobs.resume(job.id)
    wait_for(c, job.id, {"running"})
    deadline = time.time() + 60
    while not any("resumed from" in e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=50)):
        assert time.time() < deadline
        time.sleep(0.2)
    pid = _training_pid(env["store"], job.id)
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.time() + 30
    while _alive(pid):
        assert time.time() < deadline, "cancel did not stop the training process"
        time.sleep(0.2)
    assert (
        c.fine_tuning.jobs.retrieve(job.id).status == "cancelled" and paused.status == "paused" and step_at_pause >= 10
    )


def test_dpo_job_on_preference_pairs_and_format_checks(env):
    import json

    c = env["client"]
    pairs = env["home"] / "pairs.jsonl"
    products = ["Cam Pro", "Soundbar", "Light Strip", "Hub", "Doorbell", "Thermostat"]
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": f"What warranty does the {p} have? ({k})"}],
                    "chosen": f"Thanks for asking! The Lumora {p} has a {k + 1} year warranty.",
                    "rejected": "No idea.",
                }
            )
            + "\n"
            for p in products
            for k in range(2)
        )
    )
    f = c.files.create(file=pairs.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        c.fine_tuning.jobs.create(
            model="demo", training_file=f.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}
        )
    assert "beta" in exc.value.body["param"] and "greater than 0" in exc.value.body["message"]
    wrong = c.fine_tuning.jobs.create(model="demo", training_file=f.id)  # supervised on pairs
    wrong = wait_for(c, wrong.id, {"failed"}, timeout=30)
    assert wrong.error.code == "invalid_training_file" and wrong.error.param == "training_file"
    # The job trains on OpenAI's DPO layout (input / preferred_output / non_preferred_output).
    openai_pairs = env["home"] / "openai_pairs.jsonl"
    openai_pairs.write_text(
        "".join(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": f"What warranty does the {p} have? ({k})"}]},
                    "preferred_output": [
                        {
                            "role": "assistant",
                            "content": f"Thanks for asking! The Lumora {p} has a {k + 1} year warranty.",
                        }
                    ],
                    "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
                }
            )
            + "\n"
            for p in products
            for k in range(2)
        )
    )
    f = c.files.create(file=openai_pairs.open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="demo",
        training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": 4}}},
        extra_body={"tuneforge": {**FAST, "train": {**FAST["train"], "max_steps": 3}}},
    )
    done = wait_for(c, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.1
    answer = c.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Warranty of the Hub?"}], max_tokens=4
    )
    assert answer.choices[0].message.role == "assistant"


def test_training_process_killed_like_oom_is_retried_from_its_checkpoint(env):
    c, (train_id, _) = env["client"], env["files"]
    opts = {"tuneforge": {**FAST, "train": {**FAST["train"], "max_steps": 150, "save_every": 5}}}
    job = c.fine_tuning.jobs.create(model="demo", training_file=train_id, extra_body=opts)
    wait_for(c, job.id, {"running"})
    while not list(c.fine_tuning.jobs.checkpoints.list(job.id)):
        time.sleep(0.1)
    os.kill(_training_pid(env["store"], job.id), signal.SIGKILL)  # what the out-of-memory killer does
    done = wait_for(c, job.id, {"succeeded", "failed"}, timeout=120)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any(
        "killed by SIGKILL (often the out-of-memory killer); job re-queued (attempt 2 of 2)" in m for m in messages
    )
    assert any(m.startswith("resumed from step-") for m in messages) and done.model_extra["tuneforge"]["attempts"] == 2
    assert httpx.get(env["url"] + "/health").json()["status"] == "ok"  # the API never noticed


def test_killed_worker_job_is_taken_over_and_finishes(env):
    c, (train_id, _) = env["client"], env["files"]
    opts = {"tuneforge": {**FAST, "train": {**FAST["train"], "max_steps": 150, "save_every": 5}}}
    job = c.fine_tuning.jobs.create(model="demo", training_file=train_id, extra_body=opts)
    wait_for(c, job.id, {"running"})
    while not list(c.fine_tuning.jobs.checkpoints.list(job.id)):
        time.sleep(0.1)
    child = _training_pid(env["store"], job.id)
    victim = next(w for w in env["workers"] if w.pid == _worker_pid(env["store"], job.id))
    os.kill(victim.pid, signal.SIGKILL)  # the worker dies without a word; its training process must stop too
    victim.wait()
    deadline = time.time() + 10
    while _alive(child):
        assert time.time() < deadline, "the training process outlived its worker"
        time.sleep(0.1)
    assert c.fine_tuning.jobs.retrieve(job.id).status == "running"  # until the lease runs out
    done = wait_for(c, job.id, {"succeeded", "failed"}, timeout=240)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any("stopped sending heartbeats; job re-queued" in m for m in messages)
    assert any(m.startswith("resumed from step-") for m in messages)
    assert done.model_extra["tuneforge"]["attempts"] == 2


def _training_pid(store: Store, job_id: str) -> int:
    from sqlalchemy import select

    from tuneforge.serve.tables import JobEvent

    deadline = time.time() + 30
    while time.time() < deadline:
        with store.session() as s:
            msgs = list(
                s.scalars(
                    select(JobEvent.message)
                    .where(JobEvent.job_id == job_id, JobEvent.message.like("Fine-tuning job started%"))
                    .order_by(JobEvent.seq.desc())
                )
            )
        if msgs:
            return int(msgs[0].split("(pid ")[1].split(",")[0])
        time.sleep(0.1)
    raise AssertionError("no training process started")


def _worker_pid(store: Store, job_id: str) -> int:
    from tuneforge.serve.tables import Job, Worker

    with store.session() as s:
        return s.get(Worker, s.get(Job, job_id).worker_id).pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
