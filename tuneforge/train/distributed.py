"""Training on several processes (torchrun): process group, per-rank shards, summed gradients, rank-0 writes.

Launched by torchrun (`tuneforge train --nproc-per-node N`, or `torchrun -m tuneforge train ...`), every
rank runs the same recipe, and the numbers are those of one process with an N times bigger batch:

- each micro-batch of `world * train.batch_size` examples is drawn from the one seeded order, and rank r
  trains on examples r, r + world, ... of it (packed per rank): the ranks' shards are disjoint and together
  they are the micro-batch one process would see with `train.batch_size * world`;
- gradients are *summed* over ranks (DDP with a sum comm hook, FSDP2 with gradient divide factor 1, once
  per optimizer step) and the recipe divides them by the supervised tokens of the global step, all-reduced,
  as one process divides by its own count. DDP's default mean would be off by world/N_rank-token shares;
- validation runs on every rank (the weights agree), rank 0's early-stopping decision is broadcast, and
  only rank 0 writes the run directory (metrics.jsonl, manifest, artifact); checkpoints are DCP shards.

gloo on CPU, NCCL on CUDA with one device per rank (LOCAL_RANK). Every collective times out after
`train.distributed.timeout_s`, so a rank that died leaves the others an error instead of a hang (torchrun
also stops the group as soon as one rank exits with an error).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, Problem
from tuneforge.train.rundir import RunDir


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; `Dist()` is the one-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str | None = None  # "ddp" | "fsdp" once `wrap` resolved train.distributed.strategy

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the torch.distributed environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(cfg: RunConfig, device: torch.device) -> Dist:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); `Dist()` outside torchrun."""
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local)  # one device per rank
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=cfg.train.distributed.timeout_s)
        dist.init_process_group(
            backend, store=_attempt_store(rank, world, timeout), rank=rank, world_size=world, timeout=timeout
        )
    return Dist(rank, world, local)


def _attempt_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """torchrun's store under a prefix per restart: after --max-restarts restarted the group, gloo would
    otherwise read the dead attempt's addresses (connectFullMesh: connection refused)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=timeout,
    )
    return dist.PrefixStore(f"tuneforge/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def rank_device(device: torch.device, d: Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.active else device


def run_dir(root: Path, d: Dist) -> RunDir:
    """The run directory; on ranks other than 0 a view that reads it but never writes it."""
    return RunDir(root) if d.is_main else _ReadOnlyRunDir(root)


class _ReadOnlyRunDir(RunDir):
    def prepare(self, cfg: RunConfig, resume: bool) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        pass


def restarted() -> bool:
    """torchrun restarted the group after a failure (--max-restarts): the run resumes from its last checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def resolve_strategy(cfg: RunConfig, trainable_share: float) -> str:
    """auto: FSDP2 when the base weights train (full / partial fine-tuning), DDP for adapters."""
    chosen = cfg.train.distributed.strategy
    if chosen == "auto":
        return "fsdp" if trainable_share > 0.5 else "ddp"
    return chosen


class LossModule(nn.Module):
    """The model and its objective as one module whose forward is the objective's summed loss.

    DDP and FSDP2 act in a module's forward (DDP prepares its reducer, FSDP2 gathers the root's
    weights); objectives may call the decoder and the LM head separately (`decoder_and_head`), so
    the wrapper must be the module they call, not the HF model.
    """

    def __init__(self, model: nn.Module, objective: Any):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.objective.loss(self.model, batch)


def wrap(
    model: nn.Module, objective: Any, cfg: RunConfig, d: Dist, trainable_share: float
) -> tuple[Dist, nn.Module | None]:
    """(this rank with its strategy, the DDP/FSDP2-wrapped LossModule), or (d, None) in one process.

    FSDP2 shards in place (the model's parameters become DTensors): build the optimizer afterwards.
    """
    if not d.active:
        return d, None
    strategy = resolve_strategy(cfg, trainable_share)
    d = Dist(d.rank, d.world, d.local_rank, strategy)
    root = LossModule(model, objective)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = next(model.parameters()).device
        ddp = DDP(root, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
        ddp.register_comm_hook(None, _sum_hook)
        return d, ddp
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
    fully_shard(root)
    for module in (*layers, root):  # per module: these setters do not recurse into the layers' groups
        module.set_gradient_divide_factor(1.0)  # a sum: the recipe divides by the global token count
        module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    return d, root


def _sum_hook(state, bucket):  # no annotations: DDP checks them as objects (this module's are strings)
    """DDP's all-reduce without its division by the world size: dist.GradBucket -> Future[Tensor]."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers FSDP2 shards one by one: the classes the HF model names in `_no_split_modules`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"FSDP2 cannot find the decoder layers of {type(base).__name__}",
            [
                Problem(
                    "train.distributed.strategy",
                    "the model names no layer classes (_no_split_modules)",
                    "use strategy: ddp",
                )
            ],
        )
    return layers


class ThroughRoot:
    """The objective, with its loss taken through the FSDP2 root: validation forwards must gather weights too."""

    def __init__(self, objective: Any, root: nn.Module):
        self._objective, self._root = objective, root

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self._root(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)


def eval_objective(objective: Any, wrapped: nn.Module | None, d: Dist) -> Any:
    """What validation calls: the objective itself, except under FSDP2 (the root must run every forward)."""
    return ThroughRoot(objective, wrapped) if d.strategy == "fsdp" else objective


def gradient_sync(wrapped: nn.Module | None, sync: bool):
    """Reduce gradients in this backward (the step's last) or only accumulate them locally."""
    if wrapped is None:
        return nullcontext()
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(wrapped, DDP):
        return nullcontext() if sync else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(sync)  # FSDP2
    return nullcontext()


def global_sums(loss_sum: float, n_tokens: int, d: Dist, device: torch.device) -> tuple[float, int]:
    """(summed loss, supervised tokens) of the whole step, over every rank."""
    if not d.active:
        return loss_sum, n_tokens
    t = torch.tensor([loss_sum, float(n_tokens)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t[0].item(), int(round(t[1].item()))


def agree(flag: bool, d: Dist, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (early stopping)."""
    if not d.active:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


@contextmanager
def full_weights(model: nn.Module, d: Dist) -> Iterator[None]:
    """FSDP2: the model's full weights gathered to rank 0's CPU while rank 0 saves the artifact.

    Every rank takes part in the gather (a collective); on rank 0 `model.state_dict()` then answers the
    full tensors, so the method's own save (save_pretrained, peft's adapter state) writes the same files
    as one process. Without it transformers would gather the DTensors itself, on rank 0 alone: a hang.
    """
    if d.strategy != "fsdp":
        yield
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights: one tensor, as in the model
        if first.setdefault(id(p), name) != name and first[id(p)] in full and name in full:
            full[name] = full[first[id(p)]]
    if d.is_main:
        model.state_dict = lambda *args, **kwargs: dict(full)  # an instance attribute, removed below
    try:
        yield
    finally:
        model.__dict__.pop("state_dict", None)


def peak_memory_per_rank(own: dict[str, int], d: Dist) -> list[dict[str, int]] | None:
    """Every rank's peak memory (gathered to all), None in one process."""
    if not d.active:
        return None
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, own)
    return out
