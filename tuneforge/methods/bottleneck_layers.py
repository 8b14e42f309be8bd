"""The bottleneck adapter modules and their insertion by module swapping (see `bottleneck.py`).

Kept apart from the method record because defining `nn.Module` classes imports torch, and the
method's config class must stay importable without it (config parsing, light commands).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuneforge.errors import ConfigError, ModelLoadError, Problem
from tuneforge.methods.bottleneck import CONFIG_NAME, FOLDER, SETTINGS, WEIGHTS_NAME
from tuneforge.methods.partial import block_list
from tuneforge.methods.registry import is_new_head_task, save_task_config, task_head_parameters

# model_type -> (attention output projection, FFN output projection, whole FFN), paths inside one block
_SITES = {
    **{
        t: ("self_attn.o_proj", "mlp.down_proj", "mlp")
        for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2")
    },
    "bert": ("attention.output.dense", "output.dense", None),  # BERT's FFN is split over two modules
    "gpt2": ("attn.c_proj", "mlp.c_proj", "mlp"),
}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """x (B, T, H) -> scaling * up(act(down(x))) (B, T, H)."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, dropout: float, scaling: float):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        self.dropout = nn.Dropout(dropout)
        self.scaling = scaling
        self.enabled = True
        nn.init.zeros_(self.up.weight)  # identity at initialisation: training starts from the base model
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.dropout(self.up(self.act(self.down(x))))


class SequentialAdapter(nn.Module):
    """y = base(x); y + adapter(y)."""

    def __init__(self, base: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, x, *args, **kwargs):
        y = self.base(x, *args, **kwargs)
        return y + self.adapter(y) if self.adapter.enabled else y


class ParallelAdapter(nn.Module):
    """base(x) + adapter(x): the adapter sees the FFN's input."""

    def __init__(self, base: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, x, *args, **kwargs):
        y = self.base(x, *args, **kwargs)
        return y + self.adapter(x) if self.adapter.enabled else y


def _sites(model: nn.Module, placement: str) -> list[tuple[str, type[nn.Module]]]:
    model_type = model.config.model_type
    if model_type not in _SITES:
        raise ConfigError(
            f"bottleneck adapters do not know where to go in a '{model_type}' model",
            [
                Problem(
                    "method.name",
                    f"supported model types: {sorted(_SITES)}",
                    "use lora, ia3 or another method for this model",
                )
            ],
        )
    attn_out, ffn_out, ffn = _SITES[model_type]
    if placement == "parallel":
        if ffn is None:
            raise ConfigError(
                f"parallel adapters need a single FFN module; '{model_type}' splits it",
                [Problem("method.placement", "parallel is not available for this model", "use houlsby or pfeiffer")],
            )
        return [(ffn, ParallelAdapter)]
    paths = [attn_out, ffn_out] if placement == "houlsby" else [ffn_out]
    return [(p, SequentialAdapter) for p in paths]


def insert_adapters(model: nn.Module, settings: dict) -> nn.Module:
    """Wrap the placement's sublayers of every block; freeze everything but adapters and a new head."""
    head = set(task_head_parameters(model)) if is_new_head_task(model) else set()
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    prefix, blocks = block_list(model)
    for block in blocks:
        for path, wrapper in _sites(model, settings["placement"]):
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            target = getattr(parent, attr)
            ref = next(target.parameters())
            adapter = Bottleneck(
                model.config.hidden_size,
                settings["bottleneck"],
                settings["activation"],
                settings["dropout"],
                settings["scaling"],
            )
            setattr(parent, attr, wrapper(target, adapter.to(device=ref.device, dtype=ref.dtype)))
    model.tuneforge_bottleneck = dict(settings)
    return model


def save_bottleneck(model: nn.Module, run_dir: Path) -> Path:
    """`bottleneck/`: the adapter (and new task-head) weights, their settings and the base's task config."""
    out = run_dir / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(
        json.dumps({**model.tuneforge_bottleneck, "base_model": model.config._name_or_path}, indent=2)
    )
    save_task_config(model, out)  # architecture and label set, to rebuild the same base
    return out


def load_bottleneck(base: nn.Module, folder: Path) -> nn.Module:
    """Insert adapters into a freshly loaded base and load the trained weights."""
    settings = json.loads((folder / CONFIG_NAME).read_text())
    model = insert_adapters(base, {k: settings[k] for k in SETTINGS})
    weights = load_file(str(folder / WEIGHTS_NAME))
    unknown = set(weights) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ModelLoadError(
            f"{folder} does not fit this base model",
            [
                Problem(
                    str(folder / WEIGHTS_NAME),
                    f"unknown weights: {sorted(unknown)[:3]}",
                    "load it on the base it was trained on",
                )
            ],
        )
    model.load_state_dict(weights, strict=False)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model alone (e.g. as DPO's reference), like peft's `disable_adapter()`."""
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters:
            a.enabled = True
