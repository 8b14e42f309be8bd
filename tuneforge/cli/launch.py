"""`tuneforge train --nproc-per-node N`: the same command under torchrun (torch.distributed.run).

torchrun starts N ranks per machine running `python -m tuneforge train ...`, restarts the group after
a failure (`--max-restarts`; the recipe then resumes from the last checkpoint) and, when one rank fails,
stops the others and prints which rank failed with what error.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import ConfigError, Problem


def torchrun_args(
    *,
    nproc_per_node: int,
    nnodes: int,
    node_rank: int | None,
    rdzv_endpoint: str | None,
    max_restarts: int,
    run_id: str,
) -> list[str]:
    """torchrun's own options: standalone on one machine, else c10d rendezvous (or static ranks with --node-rank)."""
    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
    if nnodes == 1 and rdzv_endpoint is None:
        return args + ["--standalone"]
    if rdzv_endpoint is None or ":" not in rdzv_endpoint:
        raise ConfigError(
            "a job on several machines needs the address of machine 0",
            [
                Problem(
                    "--rdzv-endpoint",
                    f"got {rdzv_endpoint!r}",
                    "pass --rdzv-endpoint HOST:PORT, the same on every machine",
                )
            ],
        )
    host, port = rdzv_endpoint.rsplit(":", 1)
    if node_rank is not None:  # fixed ranks: machine 0 listens on HOST:PORT
        return args + [f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    rdzv_id = hashlib.sha256(run_id.encode()).hexdigest()[:12]  # the same on every machine of this run
    return args + ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]


def launch_torchrun(config: Path, overrides: list[str], *, resume: bool, quiet: bool, **launch) -> int:
    """Run torchrun with `-m tuneforge train` as each rank's entry; its exit status."""
    entry = ["-m", "tuneforge", "train", str(config), *overrides] + ["--resume"] * resume + ["--quiet"] * quiet
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(**launch), *entry]
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank unless asked otherwise (torchrun's default too)
    return subprocess.call(cmd, env=env)


@contextmanager
def rank_failures_named() -> Iterator[None]:
    """An error on a rank says which rank it was (torchrun's summary then names it too)."""
    try:
        yield
    except Exception as exc:
        rank = os.environ.get("RANK", "?")
        print(
            f"tuneforge: rank {rank} of {os.environ.get('WORLD_SIZE', '?')} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        raise


def shutdown_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
