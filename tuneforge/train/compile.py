"""`train.compile`: fuse the element-wise work of each decoder layer with torch.compile (regional compilation).

Each decoder layer is compiled in place (`layer.compile()`): the modules, parameter names and state dicts stay as they
are (checkpoints, adapters and DDP see the same model), and every layer runs the same code, so inductor compiles one
graph and reuses it for all layers: compile time does not grow with depth. On CPU inductor writes C++/OpenMP kernels
that fuse RMSNorm, rotary, SiLU x up, LoRA scaling and dropout into a few loops; the matrix multiplies stay oneDNN/MKL.

What it costs and gains (bench/README.md, issue 20, 25.7M Llama, 8 layers, 2 cores, LoRA r16 dropout 0.05, packed one
512-token row per pass; figures in the why-comment of `decide`): compiling is a matter of minutes on a small CPU, the
gain ~15-30% on steady steps, so `auto` turns it on only for runs long enough to pay the compile back, and never
where it was not measured (CUDA, several processes). A failing compiler (no C++ compiler, a broken inductor) is not
fatal: the run trains eagerly, says so and records why in manifest.json (`compile`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.train.distributed import decoder_layers

WARM_NAME = "compiled.json"  # which (model, method, torch) compiled before here, and in how many seconds

# ---- measured figures behind `auto` (bench/README.md, "train.compile", 2 Dec 2026; 2 cores shared, load 4-6)
# Cold compile for a LoRA run (paired runs, now bench/profile_step.py --compare; forward + backward of every
# variant a packed LoRA run meets: the first layer's frozen input, rows with and without a block mask, a second
# row length): ~210 s of the
# first steps on 2 busy cores. With inductor's on-disk cache warm (same model, method and torch; the cache lives under
# $TUNEFORGE_HOME/inductor) dynamo still traces and guards: ~30 s. Steady-state step time eager / compiled, same
# batches alternating in one process: 7 pairs 0.87-1.80x, median 1.29x, pooled 1.19x (load 4-6 on 2 cores: noisy);
# CPU_GAIN takes the pooled figure.
COLD_COMPILE_S = 210.0
WARM_COMPILE_S = 30.0
CPU_GAIN = 0.15  # share of the eager step time the compiled layers save (1 - 1/1.19)
PAYBACK = 2.0  # the saving must be twice the expected compile time: estimates are rough, recompiles happen
EAGER_SHARE = 0.45  # share of the matmul peak an eager CPU step reaches (bench: 44-57%): the run-length estimate


@dataclass
class CompilePlan:
    """What `train.compile` resolved to for this run, and (once trained) how long compiling took."""

    setting: str
    enabled: bool
    why: str
    estimate: dict[str, Any] = field(default_factory=dict)  # auto's figures: estimated run, compile and saving
    layers: int = 0
    warning: str | None = None  # `on` that could not be honoured: said at start, kept in the manifest
    key: str = ""  # the warm-cache key of this model/method/torch
    _counted_at_start: float = 0.0

    @classmethod
    def off(cls) -> CompilePlan:
        return cls("off", False, "train.compile: off")

    def compile_seconds(self) -> float:
        """Seconds dynamo and inductor spent compiling in this process since the layers were compiled."""
        return max(0.0, _compile_time_so_far() - self._counted_at_start) if self.enabled else 0.0

    def describe(self, with_seconds: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"setting": self.setting, "used": self.enabled, "why": self.why}
        if self.enabled:
            out["layers"] = self.layers
        if self.estimate:
            out["estimate"] = self.estimate
        if self.warning:
            out["warning"] = self.warning
        if with_seconds and self.enabled:
            out["compile_s"] = round(self.compile_seconds(), 2)
        return out

    def summary(self) -> str:
        if self.warning:
            return self.warning
        return f"compile: {'on' if self.enabled else 'off'} ({self.why})"

    def finish(self) -> None:
        """Remember that this model compiled here (auto then counts on inductor's warm cache next time)."""
        if self.enabled and self.key and self.compile_seconds() > 0:
            remember_warm(self.key, self.compile_seconds())

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Validation runs eagerly: a no-grad forward would otherwise compile another graph for a few batches."""
        if not self.enabled:
            yield
            return
        with torch.compiler.set_stance("force_eager"):
            yield


def prepare(
    setting: str,
    model: nn.Module,
    device: torch.device,
    strategy: str | None,
    run_estimate_s: float | None,
) -> CompilePlan:
    """Resolve `train.compile` for this run and, when on, compile the decoder layers in place.

    `strategy`: the torchrun job's (ddp / fsdp2), None in one process. DDP wraps the root module, so compiled layers
    train under it as they do alone; FSDP2's per-layer hooks would be traced into the graphs: not done.
    """
    key = warm_key(model, device)
    warm = key in read_warm()
    plan = decide(setting, device, strategy is not None, run_estimate_s, warm)
    plan.key = key
    if not plan.enabled:
        return plan
    if strategy == "fsdp2":
        return _fall_back(plan, "not supported with train.distributed.strategy fsdp2 (use ddp)")
    use_cache_under_home()
    try:
        layers = decoder_layers(model)  # the classes the HF model names in _no_split_modules (FSDP2 shards the same)
    except ConfigError:
        return _fall_back(plan, f"{type(model).__name__} names no decoder layer classes (_no_split_modules)")
    failure = compiler_failure()
    if failure:
        return _fall_back(plan, f"torch.compile does not work here ({failure})")
    # a graph that fails to compile later (an unusual layer) runs eagerly with dynamo's warning, not a crash
    torch._dynamo.config.suppress_errors = True
    # the variants above are 8 graphs for one model: room for a second model in the same process (the service)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    plan._counted_at_start = _compile_time_so_far()
    for layer in layers:
        layer.compile(dynamic=True)  # row lengths vary (packed widths): a symbolic length, as measured
    plan.layers = len(layers)
    return plan


def decide(
    setting: str, device: torch.device, distributed: bool, run_estimate_s: float | None, warm: bool
) -> CompilePlan:
    """on / off as given; auto: on only when the measured saving pays the expected compile time back PAYBACK times.

    Why (figures at the top of this module): on 2 busy CPU cores compiling takes ~210 s cold and ~30 s with
    inductor's cache warm, and saves ~15% of each step. Paying it back twice needs an eager run of
    PAYBACK x compile / gain: ~47 minutes cold, ~7 minutes warm. So a 10-minute job on a cold cache never spends
    3.5 minutes compiling, and with the cache warm it spends 30 s to save 90. CUDA and multi-process runs stay off
    under auto: not measured.
    """
    if setting == "off":
        return CompilePlan(setting, False, "train.compile: off")
    if setting == "on":
        return CompilePlan(setting, True, "train.compile: on")
    if device.type != "cpu":
        return CompilePlan(setting, False, f"auto: not measured on {device.type} (set train.compile: on to try it)")
    if distributed:
        return CompilePlan(setting, False, "auto: not measured with several processes (set train.compile: on)")
    if run_estimate_s is None:
        return CompilePlan(setting, False, "auto: the run's length cannot be estimated for this objective")
    compile_s = WARM_COMPILE_S if warm else COLD_COMPILE_S
    saving = CPU_GAIN * run_estimate_s
    estimate = {
        "eager_run_s": round(run_estimate_s, 1),
        "compile_s": compile_s,
        "cache": "warm" if warm else "cold",
        "saving_s": round(saving, 1),
    }
    on = saving >= PAYBACK * compile_s
    verdict = "pays" if on else "does not pay"
    why = (
        f"auto: ~{run_estimate_s / 60:.1f} min eager run, {CPU_GAIN:.0%} saved = {saving:.0f} s vs "
        f"~{compile_s:.0f} s to compile ({estimate['cache']} cache): {verdict}"
    )
    return CompilePlan(setting, on, why, estimate)


def estimate_run_seconds(
    work: Any, peak: dict[str, Any] | None, lengths: Sequence[int], steps: int, examples_per_step: int
) -> float | None:
    """The eager run's length from FLOPs: steps x tokens per step x FLOPs per token / (peak x EAGER_SHARE).

    `work` is utilisation.ModelWork; `lengths` the tokens of each training example. None when unknown.
    """
    flops_per_s = (peak or {}).get("flops_per_s")
    if not lengths or not flops_per_s or not work.matmul_params:
        return None
    mean = sum(lengths) / len(lengths)
    mean_sq = sum(n * n for n in lengths) / len(lengths)
    per_step = work.flops(round(mean * examples_per_step), round(mean_sq * examples_per_step))
    return steps * per_step / (flops_per_s * EAGER_SHARE)


def example_lengths(feats: Sequence[Any]) -> list[int]:
    """Token counts of encoded single-sequence examples; [] for objectives whose examples are pairs or groups."""
    out = []
    for f in feats:
        ids = getattr(f, "input_ids", None)
        if not isinstance(ids, list | tuple):
            return []
        out.append(len(ids))
    return out


def compiler_failure() -> str | None:
    """Why inductor cannot compile here (e.g. no C++ compiler), or None: a two-op function, forward and backward."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * x + 1.0)
        x = torch.ones(4, requires_grad=True)
        probe(x).sum().backward()
    except Exception as exc:  # any failure means: train eagerly
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return None


def use_cache_under_home() -> None:
    """Inductor's on-disk cache under $TUNEFORGE_HOME/inductor (kept across reboots; /tmp is inductor's default)."""
    from tuneforge.config import tuneforge_home

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tuneforge_home() / "inductor"))


def warm_key(model: nn.Module, device: torch.device) -> str:
    """What inductor's cache depends on here: the layer's config and class, the trainable set, torch, device."""
    config = getattr(model, "config", None)
    text = json.dumps(
        {
            "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
            "layers": sorted({type(m).__name__ for m in model.modules()}),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "torch": torch.__version__,
            "device": device.type,
            "threads": torch.get_num_threads(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_warm() -> dict[str, Any]:
    try:
        data = json.loads(_warm_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_warm(key: str, seconds: float) -> None:
    path = _warm_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"compile_s": round(seconds, 2), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**read_warm(), key: entry}, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: auto assumes a cold cache next time


def _warm_path() -> Path:
    from tuneforge.config import tuneforge_home

    return tuneforge_home() / WARM_NAME


def _fall_back(plan: CompilePlan, reason: str) -> CompilePlan:
    plan.enabled = False
    plan.why = f"{plan.why}; not compiled: {reason}"
    plan.warning = f"warning: train.compile: {plan.setting} but training eagerly: {reason}"
    return plan


def _compile_time_so_far() -> float:
    """dynamo's running total of compile wall time in this process (forward frames + lazily compiled backwards)."""
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent().get("total_wall_time", 0.0))
