"""The team set-up: two homes ("machines") that share only the PostgreSQL database and an S3 bucket (moto's
server on 127.0.0.1). A uploads, a worker of B trains under torchrun with 2 gloo ranks, A chats with the
model B produced; a job asking for more processes than B's worker has is refused; a cancelled 2-rank job
leaves no rank behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from helpers import install_tiny_demo, moto_s3, postgres_schema, serve_in_thread, write_chat_jsonl
from tuneforge.serve import keys
from tuneforge.serve.app import create_app
from tuneforge.serve.db import Store
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import File, FineTunedModel, Job

pytestmark = pytest.mark.slow
FAST = {"model": {"max_length": 96}, "train": {"lr": 1e-2, "log_every": 1, "eval_every": 4, "save_every": 4}}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    home_a, home_b = tmp_path_factory.mktemp("home-a"), tmp_path_factory.mktemp("home-b")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFORGE_HOME", str(home_a))
    install_tiny_demo(home_a)
    shutil.copytree(home_a / "models", home_b / "models")  # the same base model on both machines
    with postgres_schema() as db_url, moto_s3() as (bucket, options):
        storage_url = f"{bucket}/team"
        settings = ServeSettings(
            database_url=db_url,
            data_dir=home_a / "serve",
            inference_threads=1,
            storage_url=storage_url,
            storage_options=options,
        )
        store = Store(db_url)
        worker_env = {
            **os.environ,
            "TUNEFORGE_HOME": str(home_b),
            "TUNEFORGE_DATABASE_URL": db_url,
            "TUNEFORGE_STORAGE_URL": storage_url,
            "TUNEFORGE_STORAGE_OPTIONS": json.dumps(options),
            "TUNEFORGE_JOB_LEASE_S": "5",
            "TUNEFORGE_WORKER_THREADS": "1",
        }
        worker_env.pop("CUDA_VISIBLE_DEVICES", None)
        cmd = [sys.executable, "-m", "tuneforge.serve.worker", "--max-procs", "2"]
        worker = subprocess.Popen(cmd, env=worker_env, cwd=home_b)
        try:
            with serve_in_thread(create_app(settings, store)) as base:
                _, key = keys.create_key(store, "team")
                c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
                train = home_a / "train.jsonl"
                write_chat_jsonl(train, 40, seed=0)
                file_id = c.files.create(file=train.open("rb"), purpose="fine-tune").id
                yield {"client": c, "file": file_id, "store": store, "settings": settings, "a": home_a, "b": home_b}
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            store.dispose()
            mp.undo()


def wait_for(c, job_id: str, statuses: set[str], timeout: float = 150):
    deadline = time.time() + timeout
    while (job := c.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
        assert time.time() < deadline, f"job {job_id} stuck in {job.status}"
        time.sleep(0.3)
    return job


def _create(c, file_id: str, nproc: int, max_steps: int, **kw):
    options = {**FAST, "train": {**FAST["train"], "max_steps": max_steps}, "distributed": {"nproc_per_node": nproc}}
    return c.fine_tuning.jobs.create(
        model="demo",
        training_file=file_id,
        seed=3,
        hyperparameters={"batch_size": 4},
        extra_body={"tuneforge": options},
        **kw,
    )


def _ranks_of(job_id: str) -> list[int]:
    """Processes whose command line names the job (its torchrun and ranks: the spec folder holds its id)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and job_id in cmdline and "tuneforge.serve.runner" in cmdline:
            found.append(int(proc.name))
    return found


def test_more_processes_than_the_worker_has_are_refused(team):
    c = team["client"]
    job = wait_for(c, _create(c, team["file"], nproc=3, max_steps=2).id, {"succeeded", "failed", "cancelled"}, 60)
    assert job.status == "failed" and job.error.code == "invalid_distributed"
    assert job.error.param == "tuneforge.distributed.nproc_per_node"
    assert "is 3 but worker" in job.error.message and "at most 2 processes on CPU (--max-procs)" in job.error.message


def test_bad_distributed_options_are_a_400_naming_the_key(team):
    c = team["client"]
    with pytest.raises(openai.BadRequestError) as info:
        c.fine_tuning.jobs.create(
            model="demo", training_file=team["file"], extra_body={"tuneforge": {"distributed": {"nprocs": 2}}}
        )
    assert "tuneforge.distributed.nprocs" in str(info.value) and "nproc_per_node" in str(info.value)


def test_a_cancelled_two_rank_job_leaves_no_rank(team):
    c = team["client"]
    job = _create(c, team["file"], nproc=2, max_steps=400)
    deadline = time.time() + 120
    while not any("training loss" in e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=50)):
        assert time.time() < deadline, "the 2-rank job did not start training"
        time.sleep(0.3)
    assert len(_ranks_of(job.id)) >= 2  # torchrun's two ranks (the spec path names the job)
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.time() + 40
    while _ranks_of(job.id):
        assert time.time() < deadline, f"ranks of the cancelled job still run: {_ranks_of(job.id)}"
        time.sleep(0.3)
    assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_upload_on_a_train_on_b_with_two_ranks_chat_on_a(team):
    c, store, settings = team["client"], team["store"], team["settings"]
    started = time.time()
    job = wait_for(c, _create(c, team["file"], nproc=2, max_steps=8, suffix="team").id, {"succeeded", "failed"})
    print(f"\n2-rank job on home B (create -> succeeded): {time.time() - started:.1f} s")
    assert job.status == "succeeded", job.error
    events = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert "Training on 2 processes (torchrun, at most 0 restarts)" in events
    assert sorted(s.step_number for s in c.fine_tuning.jobs.checkpoints.list(job.id)) == [4, 8]

    with store.session() as s:  # the database holds storage keys, never a host path
        upload, model, row = s.get(File, team["file"]), s.get(FineTunedModel, job.fine_tuned_model), s.get(Job, job.id)
    assert upload.path.startswith("files/") and row.run_dir == f"runs/{job.id}"
    assert model.path == f"runs/{job.id}/adapter"
    storage = settings.storage()
    stored = storage.list(f"runs/{job.id}")
    assert f"runs/{job.id}/adapter/adapter_model.safetensors" in stored
    assert any("/checkpoints/" in k for k in stored)
    assert not (team["a"] / "serve" / "runs").exists()  # A has no run directory: it trained on B
    b_files = team["b"] / "serve" / "files"  # B staged its result CSV there before putting it in the bucket
    assert not [p for p in b_files.rglob("*") if p.is_file()]  # B never held the upload but as a cached copy
    assert (team["b"] / "serve" / "cache" / upload.path).is_file()

    msgs = [{"role": "user", "content": "How long is the warranty on my router?"}]
    ft = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=24, temperature=0)
    fetched = team["a"] / "serve" / "cache" / f"runs/{job.id}" / "adapter"
    written = team["b"] / "serve" / "work" / f"runs/{job.id}" / "adapter"
    assert (fetched / "adapter_model.safetensors").read_bytes() == (written / "adapter_model.safetensors").read_bytes()
    assert not (fetched.parent / "checkpoints").exists()  # the model, not the training state

    from tuneforge.models.generate import generate_batch
    from tuneforge.models.loading import load_for_inference

    model, tok = load_for_inference(written.parent)  # B's run directory, as B wrote it
    assert ft.choices[0].message.content == generate_batch(model, tok, [msgs], 24)[0].text
    base = c.chat.completions.create(model="demo", messages=msgs, max_tokens=24, temperature=0)
    assert ft.choices[0].message.content != base.choices[0].message.content  # the adapter is applied
    csv = c.files.content(job.result_files[0]).read().decode().splitlines()  # written by B, read on A
    assert csv[0].startswith("step,train_loss") and len(csv) == 9
