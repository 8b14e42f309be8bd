"""`tuneforge keys` and `tuneforge serve` as a user runs them, on PostgreSQL: the server
with its own worker process takes a job from upload to a fine-tuned model it serves."""

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

from helpers import free_port, install_tiny_demo, postgres_schema, write_chat_jsonl

TUNEFORGE = [sys.executable, "-m", "tuneforge.cli.main"]


@pytest.mark.slow
@pytest.mark.postgres
def test_serve_and_keys_commands_on_postgres(tmp_path):
    install_tiny_demo(tmp_path)
    with postgres_schema() as url:
        env = {
            **os.environ,
            "TUNEFORGE_HOME": str(tmp_path),
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_WORKER_THREADS": "1",
            "TUNEFORGE_INFERENCE_THREADS": "1",
        }
        made = subprocess.run(
            [*TUNEFORGE, "keys", "create", "--project", "ops"], env=env, capture_output=True, text=True, check=True
        )
        key = made.stdout.strip()
        assert made.stdout.count("\n") == 1 and key.startswith("tf-")  # the key is the only stdout
        port = free_port()
        server = subprocess.Popen(
            [*TUNEFORGE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 60
            while True:
                try:
                    health = httpx.get(base + "/health").json()
                    if health["workers_alive"] >= 1:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline and server.poll() is None, "server did not come up"
                time.sleep(0.3)
            assert health["database"] == "postgresql"
            c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            data = tmp_path / "train.jsonl"
            write_chat_jsonl(data, 20)
            f = c.files.create(file=data.open("rb"), purpose="fine-tune")
            started = time.time()
            job = c.fine_tuning.jobs.create(
                model="demo",
                training_file=f.id,
                extra_body={"tuneforge": {"train": {"max_steps": 3}, "model": {"max_length": 64}}},
            )
            while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
                assert time.time() - started < 180
                time.sleep(0.2)
            assert job.status == "succeeded", job.error
            print(f"\njob on PostgreSQL via `tuneforge serve`: {time.time() - started:.1f} s")
            answer = c.chat.completions.create(
                model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert answer.usage.completion_tokens >= 1
            revoke = subprocess.run([*TUNEFORGE, "keys", "revoke", key], env=env, capture_output=True, text=True)
            assert revoke.returncode == 0
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
        finally:
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=60) is not None
        orphans = subprocess.run(
            ["pgrep", "-f", "tuneforge.serve.worker"], capture_output=True, text=True
        ).stdout.split()
        assert not [p for p in orphans if _parent(int(p)) == server.pid]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ValueError):
        return -1
