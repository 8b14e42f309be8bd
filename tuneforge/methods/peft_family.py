"""Methods provided by peft: LoRA, DoRA, prompt tuning, prefix tuning, and head+LoRA.

Each one builds a peft config from its config section and lets `get_peft_model` swap the
modules; the artifact is a standard PEFT `adapter/` folder (`PeftModel.from_pretrained`).
The shared peft pieces (save, load, merge, switching the adapter off, recognising a folder
by its `peft_type`) are here for every peft-format method (IA3 and QLoRA use them too).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tuneforge.methods.registry import (
    Method,
    MethodConfig,
    Serving,
    is_new_head_task,
    json_file,
    new_modules,
    register,
    save_task_config,
)

if TYPE_CHECKING:
    from torch import nn

ADAPTER_FOLDER, ADAPTER_CONFIG = "adapter", "adapter_config.json"
# peft wraps new task heads in `modules_to_save` for these task types, so they train too
# (GPT-2's causal LM class is GPT2LMHeadModel: without its suffix prompt and prefix tuning had no task type)
_TASK_TYPES = {
    "ForCausalLM": "CAUSAL_LM",
    "LMHeadModel": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
}


class _LoraFields(MethodConfig):
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input; 0 is fastest.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear'."
    )


class LoraMethod(_LoraFields):
    name: Literal["lora"] = "lora"
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA); same as method.name: dora.")


class DoraMethod(_LoraFields):
    name: Literal["dora"] = "dora"


class HeadLoraMethod(_LoraFields):
    name: Literal["head+lora"] = "head+lora"


class PromptTuningMethod(MethodConfig):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, gt=0, description="Trained soft-prompt embeddings prepended to every input.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from the embeddings of this text (random when null)."
    )


class PrefixTuningMethod(MethodConfig):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, gt=0, description="Trained key/value prefix length in every layer.")
    prefix_projection: bool = Field(
        False,
        description="Reparameterise the prefix through a 2-layer MLP (more stable, more parameters while training).",
    )


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES.items() if name.endswith(suffix)), None)


def trained_whole(model: nn.Module) -> list[str]:
    """Modules trained in full and saved beside the adapter (peft's `modules_to_save`).

    A classification model's head (every child beside the backbone: BERT's classifier, DeBERTa's
    pooler and classifier, ModernBERT's head and classifier) and every module the checkpoint lacked
    (BERT's pooler under a masked-LM checkpoint): left out, they would start at a new random value on
    every load, and a reloaded run would predict differently. The cost is their parameters in the
    adapter (hidden^2 for a pooler).
    """
    head = []
    if is_new_head_task(model):
        backbone = getattr(model, "base_model_prefix", "")
        head = [n for n, child in model.named_children() if n != backbone and any(True for _ in child.parameters())]
    names = list(dict.fromkeys(head + new_modules(model)))
    return [n for n in names if not any(n.startswith(outer + ".") for outer in names)]


def _targeted(name: str, module: nn.Module, targets: str | list[str]) -> bool:
    """Would peft put an adapter on this module (its rule for a list of names: the name or a dotted suffix)?"""
    from torch import nn

    if targets == "all-linear":
        return isinstance(module, nn.Linear)  # bitsandbytes' Linear4bit is an nn.Linear too
    return any(name == t or name.endswith("." + t) for t in targets)


def head_placement(model: nn.Module, targets: str | list[str]) -> dict:
    """`modules_to_save` for the modules trained whole, and `exclude_modules` keeping adapters off them.

    peft cannot wrap a module that already carries an adapter ("modules_to_save cannot be applied to
    modules of type ...lora.Linear"); `all-linear` reaches a token-classification head and the linear
    layers inside RoBERTa's classifier and BERT's pooler, so those are excluded from the targets.
    """
    heads = trained_whole(model)
    if not heads:
        return {}
    pattern = "(" + "|".join(re.escape(h) for h in heads) + r")(\..+)?"
    excluded = any(re.fullmatch(pattern, n) and _targeted(n, m, targets) for n, m in model.named_modules())
    # passed only when it excludes something: peft warns about an exclude_modules that matched nothing
    return {"modules_to_save": heads, **({"exclude_modules": pattern} if excluded else {})}


def save_adapter(model: nn.Module, run_dir: Path) -> Path:
    out = run_dir / ADAPTER_FOLDER
    model.save_pretrained(out)  # PEFT format: adapter_config.json + adapter_model.safetensors
    base = model.get_base_model()
    # the base is rebuilt with this class (and label set) before the adapter loads: without it a masked-LM
    # adapter would load onto a causal-LM class (BertLMHeadModel) or not at all (DeBERTa-v2, ModernBERT)
    if task_type(base) != "CAUSAL_LM":
        save_task_config(base, out)
    return out


def load_adapter(base: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder))


def merge_peft(model: nn.Module) -> nn.Module:
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def adapter_disabled(model: nn.Module) -> AbstractContextManager:
    return model.disable_adapter()  # peft: the wrapped base alone, no second copy in memory


def is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def peft_type_of(folder: Path) -> str | None:
    """The peft_type a PEFT folder declares (LORA, IA3, PROMPT_TUNING...); None for other folders."""
    return json_file(folder / ADAPTER_CONFIG).get("peft_type")


def peft_folder(peft_type: str, use_dora: bool = False) -> Callable[[Path], bool]:
    """`recognises` for a PEFT folder of this peft_type (DoRA is LoRA with use_dora)."""

    def recognises(folder: Path) -> bool:
        config = json_file(folder / ADAPTER_CONFIG)
        return config.get("peft_type") == peft_type and bool(config.get("use_dora")) == use_dora

    return recognises


def peft_method(name: str, config: type[MethodConfig], apply, peft_type: str, **fields) -> Method:
    """A method whose artifact is a PEFT `adapter/` folder; `fields` override the peft defaults."""
    defaults = dict(
        restore=load_adapter, merge=merge_peft, reference=adapter_disabled, fp32_adapters=True, owns=is_peft_model
    )
    return Method(
        name,
        config,
        ADAPTER_FOLDER,
        apply,
        save_adapter,
        peft_folder(peft_type, fields.pop("use_dora", False)),
        **{**defaults, **fields},
    )


def _targets(cfg) -> str | list[str]:
    return cfg.target_modules if cfg.target_modules == "all-linear" else list(cfg.target_modules)


def new_token_rows(model: nn.Module, trained_whole: list[str]) -> dict:
    """peft's `trainable_token_indices` for the rows a chat template's special tokens added (fit_embeddings).

    Frozen, they would stay at their mean initialisation and the model could never learn to emit
    `<|im_end|>`; peft trains just those rows of the input embeddings and of an untied output layer
    (a tied one follows the input rows) and saves them with the adapter: (rows x hidden) weights each.
    """
    from tuneforge.models.chat_templates import ADDED_ROWS

    rows = getattr(model, ADDED_ROWS, None)
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and inputs is not None and outputs.weight is inputs.weight  # peft ties it to the input
    layers = [m for m in (inputs, None if tied else outputs) if m is not None]
    if not rows or not layers:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    picked = {names[id(m)]: list(rows) for m in layers if names[id(m)] not in trained_whole}
    return {"trainable_token_indices": picked} if picked else {}


def lora_config(cfg, model: nn.Module, use_dora: bool):
    from peft import LoraConfig

    targets = _targets(cfg)
    heads = head_placement(model, targets)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=use_dora,
        task_type=task_type(model),
        **heads,
        **new_token_rows(model, heads.get("modules_to_save", [])),
    )


def _apply_lora(model: nn.Module, cfg) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, model, cfg.use_dora))


def _apply_dora(model: nn.Module, cfg) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, model, use_dora=True))


def _apply_head_lora(model: nn.Module, cfg) -> nn.Module:
    from peft import get_peft_model

    # SEQ_CLS / TOKEN_CLS task types make peft train (and save) the new head beside the LoRA weights
    return get_peft_model(model, lora_config(cfg, model, use_dora=False))


def _apply_prompt_tuning(model: nn.Module, cfg) -> nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    init = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if cfg.init_text:
        init = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": cfg.init_text,
            "tokenizer_name_or_path": model.config._name_or_path,
        }
    prompt = PromptTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens,
        task_type=task_type(model),
        modules_to_save=trained_whole(model) or None,
        **init,
    )
    peft_model = get_peft_model(model, prompt)
    _drop_virtual_positions(peft_model)
    return peft_model


def _apply_prefix_tuning(model: nn.Module, cfg) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    prefix = PrefixTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        encoder_hidden_size=model.config.hidden_size,
        task_type=task_type(model),
        modules_to_save=trained_whole(model) or None,
    )
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


register(peft_method("lora", LoraMethod, _apply_lora, "LORA", serving=Serving.SHARED_BASE, mixed_batches=True))
register(peft_method("dora", DoraMethod, _apply_dora, "LORA", use_dora=True, serving=Serving.SHARED_BASE))
register(
    peft_method(
        "head+lora",
        HeadLoraMethod,
        _apply_head_lora,
        "LORA",
        serving=Serving.SHARED_BASE,
        mixed_batches=True,
        reference=None,
        needs_new_head=True,
    )
)
register(peft_method("prompt_tuning", PromptTuningMethod, _apply_prompt_tuning, "PROMPT_TUNING", merge=None))
register(peft_method("prefix_tuning", PrefixTuningMethod, _apply_prefix_tuning, "PREFIX_TUNING", merge=None))
