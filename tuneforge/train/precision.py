"""Training precision the way peers do it (HF Trainer's `bf16=True`, torchtune, TRL).

- **Full and partial fine-tuning**: the weights stay fp32 (they are the master copy), AdamW keeps
  its two moments in fp32, and forward/backward run under `torch.autocast` in bf16 (or fp16):
  every matmul sees bf16 copies of its operands, every update lands in fp32. Pure bf16 weights
  would round away each update smaller than half a bf16 ulp (2^-8 relative, ~0.4%): an AdamW step
  of lr=1e-5 on a weight of 0.02 is lost (tests/test_precision.py shows it).
- **Adapter methods** (LoRA, DoRA, QLoRA...): the frozen base may be loaded in bf16 to halve its
  memory; the trainable adapter weights stay fp32 (peft upcasts them), the same split as peft/TRL.
- **fp16** has 5 exponent bits: small gradients underflow, so the loss is scaled (`GradScaler`)
  and steps with inf/nan gradients are skipped, as `torch.amp` prescribes.
- **auto**: bf16 on a CUDA device that supports it, fp32 elsewhere (CPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.errors import ConfigError, Problem

_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How one run computes and stores: `compute` is the autocast dtype (None: no autocast)."""

    name: str  # fp32 | bf16 | fp16, resolved from train.precision
    device_type: str  # "cpu" | "cuda": autocast's device type, from the model's device
    weights: torch.dtype  # dtype the base model is loaded in (model.dtype, or the choice of `auto`)
    trains_base: bool  # full / partial fine-tuning: the base weights themselves are updated

    @classmethod
    def fp32(cls) -> Precision:
        return cls("fp32", "cpu", torch.float32, trains_base=True)

    @property
    def compute(self) -> torch.dtype | None:
        return None if self.name == "fp32" else _NAMES[self.name]

    @property
    def master_weights(self) -> bool:
        """Do the trained weights keep fp32 between steps (the updates are applied in fp32)?"""
        return self.weights == torch.float32 or not self.trains_base

    def autocast(self) -> AbstractContextManager:
        if self.compute is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.compute)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 compute (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def describe(self) -> dict[str, Any]:
        """What manifest.json records under `precision`."""

        def name(dtype: torch.dtype | None) -> str | None:
            return None if dtype is None else str(dtype).removeprefix("torch.")

        trained = "float32" if self.master_weights else name(self.weights)
        return {
            "train.precision": self.name,
            "autocast": name(self.compute),
            "base_weights": name(self.weights),
            "trained_weights": trained,
            "optimizer_states": trained,  # torch's AdamW keeps its moments in the parameter's dtype
            "master_weights": self.master_weights,
            "loss_scaling": self.name == "fp16",
        }

    def summary(self) -> str:
        """One line for the start of a run."""
        if self.compute is None:
            return f"precision: fp32 (weights {self.weights})".replace("torch.", "")
        kept = "trained weights fp32" if self.master_weights else f"trained weights {self.weights}, no fp32 master"
        scaled = ", loss scaling" if self.name == "fp16" else ""
        return f"precision: {self.name} autocast, {kept}{scaled} (base {self.weights})".replace("torch.", "")

    def warning(self) -> str | None:
        if self.master_weights:
            return None
        return (
            f"the base weights train in {self.weights} without an fp32 master copy: updates smaller than ~0.4% of a "
            "weight are rounded away; set model.dtype: auto (or float32) to keep fp32 weights under "
            f"train.precision: {self.name}"
        )


def resolve_precision(precision: str, model_dtype: str, device: torch.device, trains_base: bool) -> Precision:
    """train.precision and model.dtype ('auto' or a dtype name) -> the run's Precision.

    model.dtype auto keeps fp32 weights whenever they train (master weights) and loads a frozen base
    in the compute dtype (16-bit under bf16/fp16), as peft/TRL users do by hand.
    """
    name = precision
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    elif name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "train.precision: bf16 is not supported by this GPU",
            [Problem("train.precision", f"{torch.cuda.get_device_name(device)} has no bf16", "use fp16 (or auto)")],
        )
    if model_dtype != "auto":
        weights = getattr(torch, model_dtype)
    elif trains_base or name == "fp32":
        weights = torch.float32
    else:
        weights = _NAMES[name]
    return Precision(name, device.type, weights, trains_base)
