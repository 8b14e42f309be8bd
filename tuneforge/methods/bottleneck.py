"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020; He et al. 2021's parallel form).

A small down-project -> non-linearity -> up-project module is inserted by module swapping
(peft's pattern: the base model class is untouched, chosen submodules are wrapped):

- sequential (houlsby, pfeiffer): the wrapped sublayer output y becomes y + adapter(y);
  houlsby wraps the attention output and the FFN output projections, pfeiffer only the FFN's.
- parallel: the whole FFN f(x) becomes f(x) + scaling * adapter(x).

The up-projection starts at zero, so the adapted model starts exactly as the base.
Adapters cannot be merged (the non-linearity sits between the projections). The artifact is
`bottleneck/` with `bottleneck_config.json` and `bottleneck_model.safetensors` holding only
the adapter (and new task-head) weights; `load_bottleneck` rebuilds it on a fresh base.
The modules themselves are in `bottleneck_layers.py` (torch), imported when the method runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tuneforge.methods.registry import Method, MethodConfig, has_file, register

if TYPE_CHECKING:
    from torch import nn

FOLDER, CONFIG_NAME, WEIGHTS_NAME = "bottleneck", "bottleneck_config.json", "bottleneck_model.safetensors"
SETTINGS = ("placement", "bottleneck", "activation", "dropout", "scaling")  # what bottleneck_config.json records


class AdapterMethod(MethodConfig):
    name: Literal["adapter"] = "adapter"
    placement: Literal["houlsby", "pfeiffer", "parallel"] = Field(
        "pfeiffer",
        description="houlsby: after attention and after the FFN; "
        "pfeiffer: after the FFN only; parallel: beside the FFN, added to its output.",
    )
    bottleneck: int = Field(16, gt=0, description="Width of the bottleneck (down-projection size).")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="Non-linearity between down- and up-projection."
    )
    scaling: float = Field(
        1.0,
        gt=0,
        description="Multiplier on the adapter's output before it is added back (parallel adapters often use 4).",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter output.")


def _apply(model: nn.Module, cfg: AdapterMethod) -> nn.Module:
    from tuneforge.methods.bottleneck_layers import insert_adapters

    return insert_adapters(model, cfg.model_dump(include=set(SETTINGS)))


def _save(model: nn.Module, run_dir: Path) -> Path:
    from tuneforge.methods.bottleneck_layers import save_bottleneck

    return save_bottleneck(model, run_dir)


def _load(base: nn.Module, folder: Path) -> nn.Module:
    from tuneforge.methods.bottleneck_layers import load_bottleneck

    return load_bottleneck(base, folder)


def _disabled(model: nn.Module) -> AbstractContextManager:
    from tuneforge.methods.bottleneck_layers import adapters_disabled

    return adapters_disabled(model)


def _owns(model: nn.Module) -> bool:
    return hasattr(model, "tuneforge_bottleneck")  # the settings `insert_adapters` records


register(
    Method(
        "adapter",
        AdapterMethod,
        FOLDER,
        _apply,
        _save,
        has_file(CONFIG_NAME),
        restore=_load,
        reference=_disabled,
        owns=_owns,
    )
)
