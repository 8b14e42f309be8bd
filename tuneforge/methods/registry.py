"""One registry of adaptation methods: `method.name` in the config -> how to adapt a model.

A method registers once with a small contract (peft's pattern): `apply` swaps or freezes
modules on an unmodified base model and returns the model to train; `save` writes what
other tools load (a PEFT `adapter/` folder or an HF `model/` folder) into the run dir.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from tuneforge.errors import ConfigError, Problem

ApplyFn = Callable[[nn.Module, Any], nn.Module]
SaveFn = Callable[[nn.Module, Path], Path]


def _no_load_kwargs(cfg: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    name: str
    apply: ApplyFn  # (base model, method config section) -> model to train
    save: SaveFn  # (trained model, run dir) -> folder written
    # -> plain transformers model with the update folded in; None when the update cannot be folded
    # into the base weights (soft prompts, prefixes, non-linear bottleneck adapters)
    merge: Callable[[nn.Module], nn.Module] | None
    # extra `from_pretrained` kwargs for the base (e.g. a 4-bit quantization_config for QLoRA)
    load_kwargs: Callable[[Any], dict[str, Any]] = _no_load_kwargs
    folder: str = "adapter"  # the artifact folder `save` writes inside the run dir


_METHODS: dict[str, Method] = {}
_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    """Import the built-in method modules once, so every lookup sees them whichever module came first."""
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        import tuneforge.methods.builtin  # noqa: F401  (registers the built-in methods)


def artifact_folders() -> tuple[str, ...]:
    """Every registered method's artifact folder name in a run dir (e.g. "adapter", "model", "bottleneck")."""
    _ensure_builtin()
    return tuple(dict.fromkeys(m.folder for m in _METHODS.values()))


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _ensure_builtin()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'", [Problem("method.name", f"'{name}' is not registered", f"use one of {sorted(_METHODS)}")])
    return _METHODS[name]


def save_model_folder(model: nn.Module, run_dir: Path) -> Path:
    """The whole model in HF format (`model/`): for methods that change base weights."""
    out = run_dir / "model"
    model.save_pretrained(out)
    return out


def task_head_parameters(model: nn.Module) -> list[str]:
    """Names of a task model's head parameters: everything outside the backbone.

    transformers task models hold the backbone under `base_model_prefix` (bert, model...);
    the head (classifier, score, cls...) is what lies outside it.
    """
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        return []
    return [n for n, _ in model.named_parameters() if not n.startswith(prefix + ".")]


def is_new_head_task(model: nn.Module) -> bool:
    """True for models whose head is freshly initialised (classification), not a pretrained LM head."""
    return type(model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification"))


def save_task_config(model: nn.Module, folder: Path) -> None:
    """config.json naming the task class and its labels, so the base can be rebuilt before an adapter loads."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]  # the checkpoint's own class (e.g. *ForPreTraining) otherwise
    config.save_pretrained(folder)


def available_methods() -> list[str]:
    _ensure_builtin()
    return sorted(_METHODS)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
