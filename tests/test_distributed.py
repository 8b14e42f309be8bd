"""Training on several processes (torchrun, gloo on CPU) gives the numbers of one process.

2 ranks x train.batch_size b == 1 process x 2b: the same per-step losses and the same final artifact
(DDP for LoRA, FSDP2 for full fine-tuning); resuming with another world size; two launches with
--nnodes 2 forming one job; a rank killed with SIGKILL ending the job with the rank named, and with
--max-restarts 1 the run resuming and completing. Each rank runs one thread (the machine has 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port, make_config
from tuneforge.cli.launch import torchrun_args
from tuneforge.config import FullMethod
from tuneforge.errors import ConfigError
from tuneforge.train import train
from tuneforge.train.batching import micro_batches, rank_shard

REPO = Path(__file__).resolve().parents[1]


def write_config(tiny_model_dir, data, tmp_path, name, method=None, **train_kw) -> Path:
    cfg = make_config(tiny_model_dir, data, tmp_path / name, method=method, **train_kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(cfg.to_yaml())
    return path


def tuneforge_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge", "train", str(config), "--quiet", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_cli(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(tuneforge_cmd(config, *args), env=env(), capture_output=True, text=True, timeout=timeout)


def train_losses(run_dir: Path) -> list[float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [e["loss"] for e in records if e["type"] == "train"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_rank_shards_are_disjoint_and_make_up_the_micro_batch():
    for world in (1, 2, 3):
        for batch in micro_batches(50, 8 * world, seed=1, epoch=0):
            shards = [rank_shard(batch, r, world) for r in range(world)]
            assert sorted(i for s in shards for i in s) == sorted(batch)
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_torchrun_options():
    one = torchrun_args(nproc_per_node=2, nnodes=1, node_rank=None, rdzv_endpoint=None, max_restarts=0, run_id="r")
    assert one == ["--nproc-per-node=2", "--nnodes=1", "--max-restarts=0", "--standalone"]
    fixed = torchrun_args(
        nproc_per_node=1, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500", max_restarts=1, run_id="r"
    )
    assert fixed[-3:] == ["--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500"]
    c10d = torchrun_args(nproc_per_node=1, nnodes=2, node_rank=None, rdzv_endpoint="h:1", max_restarts=0, run_id="r")
    assert "--rdzv-backend=c10d" in c10d and "--rdzv-endpoint=h:1" in c10d
    with pytest.raises(ConfigError, match="machine 0"):
        torchrun_args(nproc_per_node=1, nnodes=2, node_rank=0, rdzv_endpoint=None, max_restarts=0, run_id="r")


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process_with_twice_the_batch(tiny_model_dir, support_data, tmp_path):
    one = train(make_config(tiny_model_dir, support_data, tmp_path / "one", max_steps=4, batch_size=8), progress=False)
    config = write_config(tiny_model_dir, support_data, tmp_path, "two", max_steps=4, batch_size=4)
    done = run_cli(config, "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    assert train_losses(two) == pytest.approx(one.losses, abs=1e-5)  # written once (rank 0): 4 records, not 8
    adapter = "adapter/adapter_model.safetensors"
    assert max_diff(load_file(two / adapter), load_file(one.run_dir / adapter)) < 1e-5
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["distributed"] == {"world_size": 2, "strategy": "ddp"}
    assert (two / "checkpoints" / "step-0000004" / "sharded").is_dir()  # DCP
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed"  # rank 0 reports, once


@pytest.mark.slow
def test_fsdp2_full_fine_tuning_two_ranks_equal_one_process(tiny_model_dir, support_data, tmp_path):
    kw = dict(method=FullMethod(), max_steps=4, lr=1e-3)
    one = train(make_config(tiny_model_dir, support_data, tmp_path / "one", batch_size=8, **kw), progress=False)
    config = write_config(tiny_model_dir, support_data, tmp_path, "two", batch_size=4, **kw)
    done = run_cli(config, "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    assert train_losses(two) == pytest.approx(one.losses, abs=1e-5)
    assert json.loads((two / "manifest.json").read_text())["distributed"]["strategy"] == "fsdp"
    mine, ref = load_file(two / "model/model.safetensors"), load_file(one.run_dir / "model/model.safetensors")
    # the same HF folder (tied weights once), the same weights: gradients summed over ranks in every FSDP2
    # group (the layers' too; AdamW alone would hide a constant factor on a group, clipping does not)
    assert max_diff(mine, ref) < 1e-5


@pytest.mark.slow
def test_resume_with_another_world_size_gives_the_uninterrupted_losses(tiny_model_dir, support_data, tmp_path):
    kw = dict(max_steps=6, save_every=3, eval_every=3)
    full = train(make_config(tiny_model_dir, support_data, tmp_path / "full", batch_size=8, **kw), progress=False)

    # 1 -> 2: one process stops after 3 steps, two ranks of half the batch finish the run
    calls = {"n": 0}

    def after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    a = train(
        make_config(tiny_model_dir, support_data, tmp_path / "a", batch_size=8, **kw),
        should_stop=after_three,
        progress=False,
    )
    assert a.status == "stopped" and a.steps == 3
    config = write_config(tiny_model_dir, support_data, tmp_path, "a", batch_size=4, **kw)
    done = run_cli(config, "--nproc-per-node", "2", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert train_losses(tmp_path / "a") == pytest.approx(full.losses, abs=1e-5)

    # 2 -> 1: two ranks run, the run is cut back to its step-3 checkpoint, one process finishes it
    config = write_config(tiny_model_dir, support_data, tmp_path, "b", batch_size=4, **kw)
    done = run_cli(config, "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    b = tmp_path / "b"
    import shutil

    shutil.rmtree(b / "checkpoints" / "step-0000006")
    shutil.rmtree(b / "adapter")
    resumed = train(make_config(tiny_model_dir, support_data, b, batch_size=8, **kw), resume=True, progress=False)
    assert resumed.losses == pytest.approx(full.losses[3:], abs=1e-5)
    with pytest.raises(ConfigError, match="train.batch_size=8"):  # another global batch would replay other examples
        shutil.rmtree(b / "checkpoints" / "step-0000006")
        train(make_config(tiny_model_dir, support_data, b, batch_size=4, **kw), resume=True, progress=False)


@pytest.mark.slow
def test_two_launches_with_nnodes_2_form_one_job(tiny_model_dir, support_data, tmp_path):
    one = train(make_config(tiny_model_dir, support_data, tmp_path / "one", max_steps=3, batch_size=8), progress=False)
    config = write_config(tiny_model_dir, support_data, tmp_path, "two", max_steps=3, batch_size=4)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            tuneforge_cmd(
                config, "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(r), "--rdzv-endpoint", endpoint
            ),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert train_losses(tmp_path / "two") == pytest.approx(one.losses, abs=1e-5)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["distributed"]["world_size"] == 2


def rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among processes whose environment holds `marker`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = (marker.encode(), f"RANK={rank}".encode(), f"LOCAL_RANK={rank}".encode())
        if all(entry in environ for entry in wanted):
            return int(proc.name)
    return None


def kill_rank_after_first_checkpoint(job: subprocess.Popen, run_dir: Path, marker: str) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*/state.json")):
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.5)
    pid = rank_pid(marker, 1)
    assert pid, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("restarts", [0, 1])
def test_a_killed_rank_ends_the_job_or_restarts_it(tiny_model_dir, support_data, tmp_path, restarts):
    config = write_config(
        tiny_model_dir,
        support_data,
        tmp_path,
        "run",
        max_steps=30,
        batch_size=4,
        save_every=2,
        eval_every=100,
        distributed={"timeout_s": 60},
    )
    marker = f"TUNEFORGE_TEST_JOB={tmp_path.name}"
    job = subprocess.Popen(
        tuneforge_cmd(config, "--nproc-per-node", "2", "--max-restarts", str(restarts)),
        env={**env(), "TUNEFORGE_TEST_JOB": tmp_path.name},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kill_rank_after_first_checkpoint(job, tmp_path / "run", marker)
    killed = time.time()
    out, errors = job.communicate(timeout=300)
    if restarts == 0:
        assert job.returncode != 0 and time.time() - killed < 60  # within train.distributed.timeout_s
        assert "rank      : 1 (local_rank: 1)" in errors and "(SIGKILL)" in errors, errors[-3000:]
        return
    assert job.returncode == 0, errors[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(e["type"] == "message" and e["message"].startswith("resumed from step-") for e in events)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "completed"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
