"""Full fine-tuning: every weight trains; the artifact is the whole model in HF format (`model/`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tuneforge.methods.registry import Method, MethodConfig, Serving, register, save_model_folder, whole_model_folder

if TYPE_CHECKING:
    from torch import nn


class FullMethod(MethodConfig):
    name: Literal["full"] = "full"


def _apply_full(model: nn.Module, cfg: FullMethod) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register(
    Method(
        "full",
        FullMethod,
        "model",
        _apply_full,
        save_model_folder,
        whole_model_folder,
        merge=lambda m: m,
        serving=Serving.STANDALONE,
        base_lr=2e-5,
    )
)
