"""Methods provided by peft: LoRA, DoRA, IA3, prompt tuning, prefix tuning, and head+LoRA.

Each one builds a peft config from its config section and lets `get_peft_model` swap the
modules; the artifact is a standard PEFT `adapter/` folder (`PeftModel.from_pretrained`).
"""

from __future__ import annotations

from pathlib import Path

from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, get_peft_model
from torch import nn

from tuneforge.methods.registry import Method, is_new_head_task, register, save_task_config

# peft wraps new task heads in `modules_to_save` for these task types, so they train too
_TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS"}


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES.items() if name.endswith(suffix)), None)


def save_adapter(model: nn.Module, run_dir: Path) -> Path:
    out = run_dir / "adapter"
    model.save_pretrained(out)  # PEFT format: adapter_config.json + adapter_model.safetensors
    base = model.get_base_model()
    if is_new_head_task(base):  # the base must be rebuilt with the same label set before loading the adapter
        save_task_config(base, out)
    return out


def merge_peft(model: nn.Module) -> nn.Module:
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def _targets(cfg) -> str | list[str]:
    return cfg.target_modules if cfg.target_modules == "all-linear" else list(cfg.target_modules)


def lora_config(cfg, model: nn.Module, use_dora: bool) -> LoraConfig:
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=_targets(cfg),
                      use_dora=use_dora, task_type=task_type(model))


def _apply_lora(model: nn.Module, cfg) -> nn.Module:
    return get_peft_model(model, lora_config(cfg, model, cfg.use_dora))


def _apply_dora(model: nn.Module, cfg) -> nn.Module:
    return get_peft_model(model, lora_config(cfg, model, use_dora=True))


def _apply_head_lora(model: nn.Module, cfg) -> nn.Module:
    # SEQ_CLS / TOKEN_CLS task types make peft train (and save) the new head beside the LoRA weights
    return get_peft_model(model, lora_config(cfg, model, use_dora=False))


def _apply_ia3(model: nn.Module, cfg) -> nn.Module:
    ia3 = IA3Config(target_modules=cfg.target_modules, feedforward_modules=cfg.feedforward_modules, task_type=task_type(model))
    return get_peft_model(model, ia3)


def _apply_prompt_tuning(model: nn.Module, cfg) -> nn.Module:
    init = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if cfg.init_text:
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.init_text,
                "tokenizer_name_or_path": model.config._name_or_path}
    peft_model = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type=task_type(model), **init))
    _drop_virtual_positions(peft_model)
    return peft_model


def _apply_prefix_tuning(model: nn.Module, cfg) -> nn.Module:
    prefix = PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection,
                                encoder_hidden_size=model.config.hidden_size, task_type=task_type(model))
    return get_peft_model(model, prefix)


def _drop_virtual_positions(peft_model: nn.Module) -> None:
    """Make a prompt-tuned causal LM return logits for the real tokens only.

    peft prepends the soft prompt to the inputs, so its logits are (B, P+T, V); every
    objective indexes logits by input position, so the P virtual positions are cut here,
    once, instead of in each loss.
    """
    if task_type(peft_model.get_base_model()) != "CAUSAL_LM":
        return

    def hook(module, args, kwargs, output):
        width = kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None else args[0].shape[1]
        output.logits = output.logits[:, -width:]
        return output

    peft_model.register_forward_hook(hook, with_kwargs=True)


register(Method("lora", _apply_lora, save_adapter, merge_peft))
register(Method("dora", _apply_dora, save_adapter, merge_peft))
register(Method("head+lora", _apply_head_lora, save_adapter, merge_peft))
register(Method("ia3", _apply_ia3, save_adapter, merge_peft))
register(Method("prompt_tuning", _apply_prompt_tuning, save_adapter, None))
register(Method("prefix_tuning", _apply_prefix_tuning, save_adapter, None))
