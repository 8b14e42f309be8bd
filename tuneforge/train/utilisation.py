"""How close a run comes to the machine's limit: model FLOPs per second against a measured matmul peak.

FLOP convention (model FLOPs, the PaLM paper's appendix B; recomputation under gradient checkpointing is not
counted, padding counts as nothing):

    per real token   2 N (forward) + 2 N (gradient of the inputs) + 2 N_trained (gradient of trained weights)
    per sequence     + 6 L d len^2 / 2 ... written as 6 L d sum(len^2) over the step's sequences (causal attention,
                       QK^T and AV, forward and backward)

N counts the weights of the matrix multiplies (every nn.Linear / Conv1D: the LM head once, embedding lookups not at
all), N_trained those among them that train. Full fine-tuning is the familiar 6 N per token; LoRA, whose frozen
weights need no weight gradient, ~4 N. The peak is the best fp32 GEMM rate of a short probe (1024^3 on CPU, 4096^3 on
CUDA) with the run's threads, measured once per machine, thread count and torch version and cached under
$TUNEFORGE_HOME (`matmul_peak.json`).

`thread_count` picks intra-op threads for `train.threads: auto`: the cores this process may use, minus the load other
processes put on them (1-minute load average), at least one.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONVENTION = (
    "model FLOPs: (4 N + 2 N_trained) per real token + 6 L d sum(len^2) per step (causal attention); "
    "N = weights of the matrix multiplies, N_trained = those trained (full: 6 N, LoRA: ~4 N); "
    "recomputation (gradient checkpointing) and padding not counted; peak = best fp32 GEMM of a short probe"
)
CACHE_NAME = "matmul_peak.json"
# objectives whose step is more than one forward/backward of its batch: no share is claimed for them
OTHER_WORK = {
    "dpo": "a reference-model forward per row besides the trained one",
    "kto": "a reference-model forward per row besides the trained one",
    "grpo": "sampling the answers (generation) before the loss",
}


# ---------------------------------------------------------------- the model's work


@dataclass(frozen=True)
class ModelWork:
    """What the FLOP count needs to know about a model: matmul weights (all, trained), layers, hidden size."""

    matmul_params: int
    trained_matmul_params: int
    layers: int
    hidden: int

    def flops(self, real_tokens: int, sum_len_sq: int) -> float:
        per_token = 4 * self.matmul_params + 2 * self.trained_matmul_params
        return float(per_token * real_tokens + 6 * self.layers * self.hidden * sum_len_sq)


def model_work(model: nn.Module) -> ModelWork:
    """Count matmul weights (shared tensors once: a tied LM head is the embedding matrix) and read L, d."""
    from transformers.pytorch_utils import Conv1D

    seen: set[int] = set()
    total = trained = 0
    for module in model.modules():
        if isinstance(module, nn.Linear | Conv1D) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
            trained += module.weight.numel() if module.weight.requires_grad else 0
    config = getattr(model, "config", None)
    layers = _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers"))
    hidden = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
    return ModelWork(total, trained, layers, hidden)


def _first_attr(config: Any, names: tuple[str, ...]) -> int:
    config = getattr(config, "text_config", None) or config
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0  # unknown architecture: the attention term is left out (the share is then a lower bound)


def batch_work(batch: dict[str, torch.Tensor], pad_id: int | None) -> tuple[int, int] | None:
    """(real tokens, sum of sequence length squared) of one forward batch; None for batches that are not one
    token sequence per row or packed row (pairs, groups: their FLOPs follow another convention).

    Padded rows count their attention_mask; packed rows (position_ids restarting at 0) count each example, the
    row's padded tail (pad_id from its start) counting nothing.
    """
    ids = batch.get("input_ids")
    if ids is None or ids.dim() != 2 or any(key.endswith("_input_ids") for key in batch):
        return None
    if "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(1)
        return int(lengths.sum()), int((lengths.long() ** 2).sum())
    positions = batch.get("position_ids")
    if positions is None:
        n = ids.shape[1]
        return ids.numel(), ids.shape[0] * n * n
    starts = (positions == 0).flatten().long().cumsum(0)
    real = (ids != pad_id).flatten() if pad_id is not None else torch.ones(ids.numel(), dtype=torch.bool)
    lengths = torch.bincount(starts, weights=real.double())
    return int(real.sum()), int((lengths**2).sum())


# ---------------------------------------------------------------- the machine's peak


def matmul_peak(device: torch.device, cache_dir: Path | None = None, seconds: float = 0.6) -> dict[str, Any]:
    """The device's fp32 matmul peak in FLOP/s ({"flops_per_s", "key", "measured", "cached"}), cached per machine."""
    key = _machine_key(device)
    path = (cache_dir or _cache_dir()) / CACHE_NAME
    cached = _read_cache(path)
    if key in cached:
        return {**cached[key], "key": key, "cached": True}
    entry = {"flops_per_s": probe_matmul(device, seconds=seconds), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**_read_cache(path), key: entry}, indent=1))
        tmp.replace(path)  # atomic: two runs starting together do not corrupt the cache
    except OSError:
        pass  # a read-only home: the probe reruns next time, the run itself is unaffected
    return {**entry, "key": key, "cached": False}


def probe_matmul(device: torch.device, size: int | None = None, seconds: float = 0.6) -> float:
    """Best fp32 GEMM rate (FLOP/s) over short bursts of `seconds` in all: the attainable matmul peak."""
    size = size or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        _sync(device)
        best = max(best, 3 * 2 * size**3 / max(time.perf_counter() - t, 1e-9))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        return f"cuda|{name}|tf32={tf32}|torch {torch.__version__}"
    return f"cpu|{_cpu_name()}|{platform.node()}|threads={torch.get_num_threads()}|torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    from tuneforge.config import tuneforge_home

    return tuneforge_home()


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- threads


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_count(setting: int | str, cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """(intra-op threads, why) for `train.threads`: a number is used as given; auto takes the usable cores minus
    what other processes keep busy now (`busy_elsewhere`, in cores, rounded), at least one."""
    cores = cores or usable_cores()
    if setting != "auto":
        return int(setting), f"train.threads={setting}"
    load = busy_elsewhere() if load is None else load
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's processes on this machine share it
    share = max(1, cores // ranks)
    free = max(1, min(share, round(cores - load)))
    machine = f"{cores} cores" + (f" shared by {ranks} ranks" if ranks > 1 else "")
    if free == share:
        return free, f"auto: {machine}, {load:.1f} busy elsewhere"
    return free, f"auto: {machine}, {load:.1f} busy elsewhere, so {free} thread(s)"


def busy_elsewhere(interval: float = 0.3) -> float:
    """Cores other processes keep busy now: the machine's busy CPU time over a short sleep of this process (from
    /proc/stat), in cores. Not the 1-minute load average: that counts this very process's own work of the last
    minute (reading data, building a tokenizer, pretraining before a fine-tune), which made auto pick one thread
    on an otherwise idle 2-core machine and halved the quickstart's speed. Load average where /proc is missing."""
    try:
        before = _cpu_ticks()
        time.sleep(interval)
        after = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    busy, total = after[0] - before[0], after[1] - before[1]
    return 0.0 if total <= 0 else os.cpu_count() * busy / total


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs: /proc/stat's first line (user nice system idle iowait irq softirq steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# ---------------------------------------------------------------- the run's tally


class Meter:
    """Adds up a run's real tokens, attention work and time spent building batches; reports the peak share."""

    def __init__(
        self, work: ModelWork, peak: dict[str, Any] | None, threads: int, why_threads: str, objective: str = "sft"
    ):
        self.work = work
        self.peak = peak
        self.threads = threads
        self.why_threads = why_threads
        self.real_tokens = 0
        self.sum_len_sq = 0
        self.objective = objective
        self.counted = objective not in OTHER_WORK  # False too once a batch could not be counted
        self.data_s = 0.0
        self.supervised = 0  # supervised tokens of the optimizer steps (all ranks')

    def add(self, batch: dict[str, torch.Tensor], pad_id: int | None) -> None:
        counted = batch_work(batch, pad_id)
        if counted is None:
            self.counted = False
            return
        self.real_tokens += counted[0]
        self.sum_len_sq += counted[1]

    def share(self, seconds: float) -> float | None:
        """Achieved share of the matmul peak over `seconds` of training; None when it cannot be said."""
        if not self.counted or not self.peak or not self.peak.get("flops_per_s") or seconds <= 0:
            return None
        return self.work.flops(self.real_tokens, self.sum_len_sq) / seconds / self.peak["flops_per_s"]

    def report(self, seconds: float) -> dict[str, Any]:
        """manifest.json's "utilisation": rates, the share of the peak, the convention and hints."""
        seconds = max(seconds, 1e-9)
        share = self.share(seconds)
        out: dict[str, Any] = {
            "tokens_per_s": self.supervised / seconds,
            "real_tokens_per_s": self.real_tokens / seconds if self.counted else None,
            "model_flops_per_s": self.work.flops(self.real_tokens, self.sum_len_sq) / seconds if self.counted else None,
            "matmul_peak_flops_per_s": (self.peak or {}).get("flops_per_s"),
            "peak_share": share,
            "data_time_share": self.data_s / seconds,
            "threads": self.threads,
            "threads_why": self.why_threads,
            "cores": usable_cores(),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "convention": CONVENTION,
            "model": {
                "matmul_params": self.work.matmul_params,
                "trained_matmul_params": self.work.trained_matmul_params,
                "layers": self.work.layers,
                "hidden": self.work.hidden,
            },
        }
        if not self.counted:
            why = OTHER_WORK.get(self.objective, "its batches are not one token sequence per row")
            out["not_counted"] = f"objective {self.objective}: {why}; the FLOP convention above does not cover it"
        out["hints"] = hints(out)
        return out


def hints(report: dict[str, Any]) -> list[str]:
    """What to change when a run is far from the peak: starved of CPU, input-bound, or too small to fill it."""
    out = []
    load, cores, threads = report.get("load_average"), report["cores"], report["threads"]
    if load is not None and load > cores + 0.5:
        out.append(
            f"CPU starved: load average {load:.1f} on {cores} cores; other processes compete for them "
            f"(train.threads: auto picks fewer threads on a busy machine; now {threads})"
        )
    if report["data_time_share"] > 0.15:
        out.append(
            f"input-bound: {100 * report['data_time_share']:.0f}% of the training time builds batches "
            "(prepare the data once with `tuneforge data prepare`, or raise train.batch_size)"
        )
    share = report.get("peak_share")
    if share is not None and share < 0.25 and not out:
        out.append(
            f"{100 * share:.0f}% of the matmul peak: small matrices or short rows leave the time to element-wise "
            "work and overheads (larger train.batch_size, packing, or a larger train.packed_rows_per_pass)"
        )
    return out
