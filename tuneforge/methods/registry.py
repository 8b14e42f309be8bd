"""One registry of adaptation methods: `method.name` in the config -> everything method-specific.

A method registers once with a small contract (peft's pattern): its config section class,
the artifact folder it writes in a run dir, `apply` (swap or freeze modules on an unmodified
base), `save` (write what other tools load), `load` (rebuild it on a fresh base), whether it
can be merged, how it switches itself off (the reference model of DPO and any later
KL-regularised objective) and how the service serves it. Nothing outside `methods/` names a
method: config parsing, loading, the artifact, DPO, the estimate and the service ask here.

The built-in methods live in `BUILTIN_MODULES`; the registry imports them itself on first
lookup, so every caller sees every method whichever module it imported first. Method modules
keep torch/peft imports inside their functions: `tuneforge.config` builds the `method:`
union from this registry and is imported by light commands (~0.2 s without torch, ~2 s with).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from tuneforge.errors import ConfigError, Problem

if TYPE_CHECKING:
    from torch import nn

# each module registers its methods when imported; a new built-in method is one module and one line here
BUILTIN_MODULES = (
    "tuneforge.methods.builtin",
    "tuneforge.methods.peft_family",
    "tuneforge.methods.ia3",
    "tuneforge.methods.quantized",
    "tuneforge.methods.partial",
    "tuneforge.methods.bottleneck",
)
DEFAULT_METHOD = "lora"  # what a run config without a `method:` section trains
TAG = "tuneforge_method"  # attribute naming the method on a model it applied or loaded
NEW_WEIGHTS = "tuneforge_new_weights"  # attribute: parameter names the checkpoint lacked (see `new_modules`)


class MethodConfig(BaseModel):
    """Base of every method's config section (`method:`); its `name: Literal[...]` picks the method."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Serving(str, Enum):
    """How the service holds a fine-tune in memory. The values are the service's stored model kinds."""

    SHARED_BASE = "adapter"  # adapters on one shared copy of the base, switched per request
    OWN_COPY = "run"  # the base plus this adapter, loaded from the run dir as a model of its own
    STANDALONE = "model"  # a whole HF model folder


ApplyFn = Callable[["nn.Module", Any], "nn.Module"]  # (base model, method config section) -> model to train
SaveFn = Callable[["nn.Module", Path], Path]  # (trained model, run dir) -> artifact folder written
LoadFn = Callable[["nn.Module", Path], "nn.Module"]  # (fresh base, artifact folder) -> trained model
ReferenceFn = Callable[["nn.Module"], AbstractContextManager]  # model -> context in which it computes the base alone


def _no_load_kwargs(cfg: Any) -> dict[str, Any]:
    return {}


def _loaded_whole(base: nn.Module, folder: Path) -> nn.Module:
    return base  # a whole-model folder is its own base: nothing to add


def has_file(name: str) -> Callable[[Path], bool]:
    """`recognises` for a format identified by one file in its folder."""
    return lambda folder: (folder / name).is_file()


def whole_model_folder(folder: Path) -> bool:
    """An HF model folder. Adapter formats (checked first) also keep a config.json for their task head."""
    return (folder / "config.json").is_file()


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]  # the `method:` section; `config.model_fields["name"]` is Literal[name]
    folder: str  # artifact folder `save` writes in the run dir ("adapter", "model", "bottleneck")
    adapt: ApplyFn
    save: SaveFn
    recognises: Callable[[Path], bool]  # is this folder in this method's format (a run without config.yaml)?
    restore: LoadFn = _loaded_whole
    # -> plain transformers model with the update folded in; None when the update cannot be folded
    # into the base weights (soft prompts, prefixes, non-linear bottleneck adapters)
    merge: Callable[[nn.Module], nn.Module] | None = None
    reference: ReferenceFn | None = None  # None: no adapter to switch off (full, partial, head methods)
    serving: Serving = Serving.OWN_COPY
    mixed_batches: bool = False  # one batch may mix its rows with the base's and other adapters' (peft adapter_names)
    load_kwargs: Callable[[Any], dict[str, Any]] = _no_load_kwargs  # extra `from_pretrained` kwargs (QLoRA's 4-bit)
    needs_new_head: bool = False  # trains a freshly initialised task head: classification-style objectives only
    base_lr: float = 2e-4  # the service's learning rate before learning_rate_multiplier
    fp32_adapters: bool = False  # trained weights (and their gradients) stay fp32 under a 16-bit base (peft)
    quantized_bytes: Callable[[Any], float] | None = None  # bytes per frozen base weight when loaded quantized
    owns: Callable[[nn.Module], bool] | None = (
        None  # recognises a model adapted without `apply` (built with peft by hand)
    )

    def apply(self, model: nn.Module, cfg: Any) -> nn.Module:
        """The model to train: the base adapted as `cfg` says, tagged with this method."""
        return _tag(self.adapt(model, cfg), self.name)

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        """The trained model: this method's artifact `folder` rebuilt on a freshly loaded `base`."""
        return _tag(self.restore(base, folder), self.name)

    @property
    def can_merge(self) -> bool:
        return self.merge is not None


def _tag(model: nn.Module, name: str) -> nn.Module:
    object.__setattr__(model, TAG, name)  # a plain attribute, not a submodule or buffer: never saved
    return model


_METHODS: dict[str, Method] = {}
_LISTENERS: list[Callable[[], None]] = []
_BUILTIN_LOADED = False


def register(method: Method) -> Method:
    """Add (or replace) a method; config parsing sees it at once."""
    _METHODS[method.name] = method
    for listener in _LISTENERS:
        listener()
    return method


def on_register(listener: Callable[[], None]) -> None:
    """Call `listener` after each registration (config.py rebuilds its `method:` union)."""
    _LISTENERS.append(listener)


def _ensure_builtin() -> None:
    """Import the built-in method modules once, so every lookup sees them whichever module came first."""
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def methods() -> list[Method]:
    """Every registered method, in registration order (built-ins first)."""
    _ensure_builtin()
    return list(_METHODS.values())


def get_method(name: str) -> Method:
    _ensure_builtin()
    if name not in _METHODS:
        raise ConfigError(
            f"unknown method '{name}'",
            [Problem("method.name", f"'{name}' is not registered", f"use one of {sorted(_METHODS)}")],
        )
    return _METHODS[name]


def available_methods() -> list[str]:
    _ensure_builtin()
    return sorted(_METHODS)


def artifact_folders() -> tuple[str, ...]:
    """Every registered method's artifact folder name in a run dir (e.g. "adapter", "model", "bottleneck")."""
    return tuple(dict.fromkeys(m.folder for m in methods()))


def method_configs() -> tuple[type[MethodConfig], ...]:
    """The config section classes of every method: the members of config.py's `method:` union."""
    return tuple(m.config for m in methods())


def method_config_named(class_name: str) -> type[MethodConfig] | None:
    """A method config class by its class name (`LoraMethod`), for `from tuneforge.config import LoraMethod`."""
    return next((c for c in method_configs() if c.__name__ == class_name), None)


def default_method_config() -> MethodConfig:
    return get_method(DEFAULT_METHOD).config()


def reference_methods() -> list[str]:
    """Methods that can switch their adapter off, so the base itself is a reference model (DPO)."""
    return [m.name for m in methods() if m.reference is not None]


def method_of(model: nn.Module) -> Method | None:
    """The method that applied or loaded `model` (a DDP/FSDP wrapper is looked through), else the first
    whose `owns` recognises it."""
    model = getattr(model, "module", model)
    name = getattr(model, TAG, None)
    if name:
        return get_method(name)
    return next((m for m in methods() if m.owns is not None and m.owns(model)), None)


def reference_context(model: nn.Module) -> AbstractContextManager:
    """A context in which `model` computes the frozen base's outputs (its adapter switched off)."""
    method = method_of(model)
    if method is None or method.reference is None:
        raise ConfigError(
            "this objective needs an adapter method: the reference model is the base with the adapter off",
            [
                Problem(
                    "method.name",
                    f"{method.name if method else type(model).__name__} has no adapter to switch off",
                    f"use one of {reference_methods()}",
                )
            ],
        )
    return method.reference(getattr(model, "module", model))


def json_file(path: Path) -> dict[str, Any]:
    """A small JSON file of an artifact, {} when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def record_new_weights(model: nn.Module, names: list[str]) -> None:
    """Remember which parameters `from_pretrained` initialised because the checkpoint lacks them."""
    object.__setattr__(model, NEW_WEIGHTS, frozenset(names))  # a plain attribute, like TAG: never saved


def new_modules(model: nn.Module) -> list[str]:
    """The largest modules whose every parameter was freshly initialised when the base loaded.

    A masked-LM checkpoint has no pooler and no classifier, so a classification model built from it
    starts them at random (`bert.pooler`, `classifier`): a method must train and save them whole, or
    every load would start them at a new random value. [] for a model not loaded by `load_model`.
    """
    new = getattr(model, NEW_WEIGHTS, frozenset())
    if not new:
        return []
    whole = [name for name, module in model.named_modules() if name and _all_in(module, name, new)]
    return [name for name in whole if not any(name.startswith(outer + ".") for outer in whole)]


def _all_in(module: nn.Module, name: str, new: frozenset[str]) -> bool:
    params = [f"{name}.{p}" for p, _ in module.named_parameters()]
    return bool(params) and all(p in new for p in params)


def is_new_head_task(model: nn.Module) -> bool:
    """True for models whose head is freshly initialised (classification), not a pretrained LM head."""
    return type(model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification"))


def save_task_config(model: nn.Module, folder: Path) -> None:
    """config.json naming the task class and its labels, so the base can be rebuilt before an adapter loads."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]  # the checkpoint's own class (e.g. *ForPreTraining) otherwise
    config.save_pretrained(folder)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
