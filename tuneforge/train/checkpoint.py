"""Checkpoints: trainable weights, optimizer, scheduler, RNG and loop position, written atomically.

A checkpoint is first written to a temporary sibling folder and then renamed into place,
so a crash mid-write never leaves a half checkpoint that `--resume` would pick up.

Two formats, both readable by a run of any world size:
- one process: `trainable.safetensors` + `optim.pt` (torch.save of the optimizer, scheduler, RNG);
- several ranks (torchrun): `sharded/`, a torch.distributed.checkpoint (DCP) of the trainable weights and
  the optimizer state keyed by parameter name, each rank writing its shards (FSDP2) or one copy of the
  replicated tensors (DDP), + `loop.pt` (scheduler, rank 0's RNG). DCP reshards on load, so 2 -> 1 and
  1 -> 2 (and the one-process format into FSDP2 shards) resume the same run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

SHARDED = "sharded"  # the DCP folder of a checkpoint written by several ranks
_TRAINABLE = StateDictOptions(ignore_frozen_params=True)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_batch: int = 0  # next micro-batch index within the epoch
    tokens: int = 0  # supervised tokens seen
    best_val_loss: float = float("inf")
    evals_without_improvement: int = 0
    global_batch: int | None = None  # examples per micro-batch over all ranks (None: a checkpoint from before ranks)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, model: nn.Module, optimizer, scheduler, state: LoopState, keep: int) -> Path:
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
        tmp / "optim.pt",
    )
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return found[-1] if found else None


def save_sharded_checkpoint(
    root: Path, model: nn.Module, optimizer, scheduler, state: LoopState, keep: int, is_main: bool
) -> Path:
    """The checkpoint of a torchrun job: every rank calls it (DCP is collective); rank 0 writes the rest."""
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(
        {
            "model": get_model_state_dict(model, options=_TRAINABLE),
            "optim": get_optimizer_state_dict(model, optimizer, options=_TRAINABLE),
        },
        checkpoint_id=tmp / SHARDED,
    )
    if is_main:
        torch.save({"scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "loop.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()  # no rank goes on (or resumes) before the checkpoint is in place
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> LoopState:
    """Load either format into this process's model and optimizer, whatever world size wrote it."""
    if (path / SHARDED).is_dir():
        return _load_sharded(path, model, optimizer, scheduler)
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return _load_full_into_shards(path, model, optimizer, scheduler)
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    blob = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
    return LoopState(**json.loads((path / "state.json").read_text()))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_sharded(path: Path, model: nn.Module, optimizer, scheduler) -> LoopState:
    """A DCP checkpoint, resharded to this run's ranks (or read whole by one process)."""
    state = {
        "model": get_model_state_dict(model, options=_TRAINABLE),
        "optim": get_optimizer_state_dict(model, optimizer, options=_TRAINABLE),
    }
    dcp.load(state, checkpoint_id=path / SHARDED)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optim"], options=_TRAINABLE)
    blob = torch.load(path / "loop.pt", weights_only=False)
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
    return LoopState(**json.loads((path / "state.json").read_text()))


def _load_full_into_shards(path: Path, model: nn.Module, optimizer, scheduler) -> LoopState:
    """A one-process checkpoint into FSDP2-sharded parameters: full tensors in, each rank keeps its shard.

    optim.pt keys its state by position in the optimizer's parameter groups; the same optimizer built
    over the same model lists the same parameters in the same order, which names them.
    """
    weights = load_file(str(path / "trainable.safetensors"))
    full = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=full)
    names = {id(p): n for n, p in model.named_parameters()}
    fqn = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    blob = torch.load(path / "optim.pt", weights_only=False)
    saved = blob["optimizer"]
    named = {
        "state": {fqn[i]: v for i, v in saved["state"].items()},
        "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
    return LoopState(**json.loads((path / "state.json").read_text()))
