"""Built-in methods: full fine-tuning and LoRA/DoRA (via peft)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from tuneforge.methods.registry import Method, register


def _save_model(model: nn.Module, run_dir: Path) -> Path:
    out = run_dir / "model"
    model.save_pretrained(out)
    return out


def _save_adapter(model: nn.Module, run_dir: Path) -> Path:
    out = run_dir / "adapter"
    model.save_pretrained(out)  # PEFT format: adapter_config.json + adapter_model.safetensors
    return out


def _apply_full(model: nn.Module, cfg) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _apply_lora(model: nn.Module, cfg) -> nn.Module:
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else list(cfg.target_modules)
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      use_dora=cfg.use_dora, task_type=_task_type(model))
    return get_peft_model(model, lora)


def _merge_peft(model: nn.Module) -> nn.Module:
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return None


register(Method("full", _apply_full, _save_model, lambda m: m))
register(Method("lora", _apply_lora, _save_adapter, _merge_peft))
