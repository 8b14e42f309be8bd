"""The typed run configuration: one object for the CLI, the Python API and the service.

Every section is a pydantic model with a help text per field and `extra="forbid"`, so an
unknown or misspelt key is an error naming the key. `load_config` validates the whole file
(plus command-line overrides) and reports every problem at once, with its key and fix.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from tuneforge.errors import ConfigError, Problem
from tuneforge.eval.graders.spec import GRADER_TYPES, GraderSpec, name_problems
from tuneforge.methods.registry import (
    default_method_config,
    get_method,
    method_config_named,
    method_configs,
    on_register,
    reference_methods,
)


def tuneforge_home() -> Path:
    """Where models, caches and the service's state live ($TUNEFORGE_HOME)."""
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        "demo",
        description="Base model: a Hugging Face hub id, a local HF folder, a run directory, "
        "or a named model ('demo', 'minilm').",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `name` is a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype the base weights are loaded in. auto: float32 when they train (full, partial: the fp32 "
        "master weights of train.precision) or when train.precision is fp32, else the 16-bit compute dtype "
        "(a frozen base under adapters). A 16-bit dtype for trained weights drops the fp32 master copy.",
    )
    max_length: int = Field(
        512,
        gt=8,
        description="Longest tokenized example in tokens; longer ones are truncated (and counted in the log).",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub repository (only for models you trust)."
    )
    chat_template: str | None = Field(
        None,
        description="Chat template for a model without one (or to replace its own): a built-in name (chatml, llama3, "
        "mistral, gemma, phi3, alpaca) or the path of a .jinja file. Special tokens it needs are added "
        "(the embeddings grow); the template is saved with the artifact's tokenizer.",
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel. auto: flash_attention_2 on a CUDA GPU with the flash-attn package and a 16-bit "
        "train.precision (packed rows then run as variable-length sequences, no block mask over the row), else "
        "the model's default (sdpa where the family supports it). A kernel that cannot run here is a located error.",
    )

    @model_validator(mode="after")
    def _known_chat_template(self) -> ModelSection:
        from tuneforge.models.chat_templates import BUILTIN

        value = self.chat_template
        if value is not None and value not in BUILTIN and not Path(value).expanduser().is_file():
            raise ValueError(
                f"chat_template {value!r} is neither a built-in template ({', '.join(BUILTIN)}) "
                "nor an existing .jinja file"
            )
        return self


class RetrievalSection(Section):
    """Retrieval-augmented fine-tuning (RAFT, Zhang et al. 2024): retrieved passages in the training prompts."""

    corpus: str = Field(
        "train",
        description="Passages to retrieve from: 'train' (the training split as Q/A passages, an example's own "
        "left out) or a file/folder of .txt/.md documents.",
    )
    k: int = Field(3, ge=1, description="Passages in each training prompt (fewer if model.max_length is reached).")
    distractors: int = Field(1, ge=0, description="Of the k passages, how many are random ones, not retrieved.")
    p_oracle: float = Field(
        0.8, ge=0.0, le=1.0, description="Share of prompts with the retrieved passages; the rest get distractors only."
    )
    retriever: Literal["bm25", "embeddings", "hybrid"] = Field("bm25", description="As eval.rag_retriever.")

    @model_validator(mode="after")
    def _distractors_fit(self) -> RetrievalSection:
        if self.distractors > self.k:
            raise ValueError(f"distractors ({self.distractors}) cannot exceed k ({self.k}): lower distractors")
        return self


class ReplaySection(Section):
    """General examples mixed into training against forgetting."""

    source: str = Field(
        ..., description="'demo-general' (generated general chats) or a file of examples of the objective's kind."
    )
    share: float = Field(0.1, gt=0.0, lt=1.0, description="Share of the training examples that are replayed ones.")
    seed: int = Field(0, description="Seed for drawing the replayed examples.")


class DataSection(Section):
    train: Path = Field(..., description="Training file (JSONL chat, prompt/completion, text...).")
    validation: Path | None = Field(
        None,
        description="Validation file, evaluated while training. If absent, `validation_fraction` of train is held out.",
    )
    test: Path | None = Field(None, description="Held-out test file for the final comparison (never trained on).")
    format: str = Field(
        "auto",
        description="Input format; 'auto' detects it from the records (objective grpo: rft, "
        "OpenAI's reinforcement JSONL of prompts).",
    )
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of train held out for validation when no validation file is given."
    )
    mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Read other field names as ours: {ours: theirs}, theirs may be a nested path "
        "(prompt: data.question, text: pages.0.body), as `--map` does.",
    )
    overlength: Literal["truncate", "drop", "error"] = Field(
        "truncate",
        description="Examples longer than model.max_length tokens: truncate (cut, and counted loudly with the "
        "first file:line), drop (left out, listed in the manifest) or error (refused with every file:line).",
    )
    retrieval: RetrievalSection | None = Field(
        None, description="Retrieved passages in the training prompts (RAFT); eval's fine_tuned+rag uses the layout."
    )
    replay: ReplaySection | None = Field(None, description="General examples mixed into training against forgetting.")
    text_blocks: Literal["stream", "documents"] = Field(
        "stream",
        description="objective clm: how text becomes training rows. stream (the usual group_texts): documents "
        "joined by end-of-text and cut into full model.max_length blocks (no padding; a document may start in one "
        "block and end in the next, and attends to its neighbours); documents: each document is one example (cut "
        "only where longer than model.max_length), packed whole into rows with its own positions and attention "
        "block - for corpora of short structured documents (chats, question + passages + answer) whose parts "
        "must stay together.",
    )
    system_prompt: Literal["keep", "fold", "drop"] = Field(
        "keep",
        description="System messages: keep (passed to the chat template), "
        "fold (put at the start of the first user turn, "
        "as Gemma 3 does: for templates without a system role) or drop (removed and counted).",
    )


# The `method:` section: one member per registered method (each method's module defines its config
# class); the union is rebuilt when a method registers later (a plugin, a test).
def _method_union():
    return Annotated[Union[method_configs()], Field(discriminator="name")]  # noqa: UP007 (a union built at runtime)


MethodSection = _method_union()
# objectives a method that trains a new task head can serve (checked with the whole config, before any heavy work)
_HEAD_TASKS = ("classification", "tokens")


def __getattr__(name: str):
    """`from tuneforge.config import LoraMethod` keeps working: method config classes live with their methods."""
    config = method_config_named(name)
    if config is None:
        raise AttributeError(f"module 'tuneforge.config' has no attribute '{name}'")
    return config


class DistributedSection(Section):
    """How a run launched on several processes (torchrun, `tuneforge train --nproc-per-node`) splits its work."""

    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="ddp: every rank holds the whole model and gradients are summed (adapter methods); fsdp: FSDP2 "
        "(`fully_shard` per decoder layer, then the root) shards weights, gradients and optimizer state "
        "(full or partial fine-tuning, bases that do not fit one device); auto: ddp for adapter methods, "
        "fsdp when the base weights train. Ignored in one process.",
    )
    timeout_s: float = Field(
        300,
        gt=0,
        description="A collective that waits longer than this for another rank (one that died "
        "or hangs) fails on every rank, naming the rank; the job then stops.",
    )


class TrainSection(Section):
    epochs: float | Literal["auto"] = Field(
        3,
        description="Passes over the training data (ignored when max_steps is set); auto: OpenAI's rule, 3 unless "
        "examples x epochs would leave 100..25,000 (then the nearest epochs within 1..25).",
    )

    @field_validator("epochs")
    @classmethod
    def _positive_epochs(cls, v: float | str) -> float | str:
        if v != "auto" and v <= 0:
            raise ValueError("epochs must be greater than 0 (or auto)")
        return v

    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; null disables clipping."
    )
    seed: int = Field(42, description="Seed for data order, initialisation and dropout.")
    eval_every: int = Field(50, gt=0, description="Validate every N optimizer steps (and at the end).")
    save_every: int = Field(100, gt=0, description="Write a checkpoint every N optimizer steps (and at the end).")
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep on disk.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop when validation loss has not improved for this many evaluations; null disables."
    )
    log_every: int = Field(10, gt=0, description="Log training loss every N optimizer steps.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU intra-op threads (torch.set_num_threads) while training. auto: the usable cores minus the "
        "cores other processes keep busy (a 0.3 s /proc/stat probe at start), at least 1 - threads that wait on a "
        "busy neighbour slow every step; a number is used as given.",
    )

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if v != "auto" and v <= 0:
            raise ValueError("threads must be at least 1 (or auto)")
        return v

    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile each decoder layer in place (inductor fuses the norms, rotary, SiLU x up and LoRA "
        "scaling/dropout; one graph serves every layer). auto: on only when the run, estimated from its FLOPs and the "
        "matmul peak, is long enough that the measured saving (~15% of a CPU step) pays twice for the compile (~210 "
        "s on 2 CPU cores, ~30 s once inductor's cache under $TUNEFORGE_HOME/inductor holds this model): about 47 "
        "minutes of training cold, 7 warm; off on CUDA and with several processes (not measured). on: always; if "
        "the compiler does not work here the run trains eagerly with a warning (manifest.json: compile).",
    )

    packing: bool | None = Field(
        None,
        description="Pack the examples of each micro-batch into rows of up to model.max_length tokens "
        "instead of padding them to the longest: "
        "the same examples and the same loss (to float noise), without the compute and memory spent on padding "
        "(~40% of a batch of mixed lengths). "
        "Each example keeps its own positions and attention block. "
        "null (default): pack when the objective's batches are token sequences and the "
        "model keeps packed examples apart (checked at start-up), else pad; true: pack or refuse; false: always pad.",
    )
    packed_rows_per_pass: int | None = Field(
        None,
        gt=0,
        description="With packing: run forward/backward on this many packed rows "
        "(of up to model.max_length tokens) at a time "
        "and add up the gradients; the same update, with peak activation memory of one pass. "
        "null (default): on CPU as many rows as fit "
        "~256 MiB of estimated activations (one 512-token row of a 25M-parameter Llama: as fast as all rows, "
        "under half the peak memory; "
        "small models keep all rows), all rows of a micro-batch at once on GPU.",
    )
    dpo_beta: float = Field(
        0.1,
        gt=0,
        description="objective dpo: strength of the pull towards the reference model "
        "(TRL's beta; the DPO paper uses 0.1-0.5). "
        "Higher keeps the policy closer to the base.",
    )
    kto_beta: float = Field(
        0.1,
        gt=0,
        description="objective kto: strength of the pull towards the reference model "
        "(TRL's KTOConfig.beta). Higher keeps the policy closer to the base.",
    )
    kto_desirable_weight: float = Field(
        1.0,
        gt=0,
        description="objective kto: weight of the loss on desirable answers (TRL's desirable_weight). "
        "With unbalanced data, keep desirable_weight x desirable count / (undesirable_weight x "
        "undesirable count) between 1 and 4/3 (the KTO paper's Eq. 8; the run warns outside).",
    )
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="objective kto: weight of the loss on undesirable answers (TRL's undesirable_weight)."
    )
    mlm_probability: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="objective mlm: share of tokens chosen for prediction "
        "(80% of them shown as [MASK], 10% a random token, 10% unchanged).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations during the backward pass instead of storing them: "
        "activation memory drops to about one layer's worth, for ~20-30% more compute per step.",
    )
    fused_loss: Literal["auto", "on", "off"] = Field(
        "auto",
        description="objectives sft and clm: compute the LM head and its cross-entropy over chunks of supervised "
        "tokens, with the gradients in the same pass, never holding the [tokens, vocab] logits (Liger's fused "
        "linear cross-entropy in plain PyTorch): the same loss and gradients to float noise, a fraction of the "
        "step's peak memory for large vocabularies (bench/fused_loss.py). auto: on for vocabularies of 32k tokens "
        "and more when the head is a plain linear layer (not with a LoRA or quantised lm_head); on: always, or "
        "refuse the model; off: the standard path.",
    )

    @field_validator("fused_loss", "compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: object) -> object:
        if isinstance(v, bool):  # YAML 1.1 (yaml.safe_load) reads on / off as booleans
            return "on" if v else "off"
        return v

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Compute precision: bf16/fp16 run forward and backward under torch.autocast while trained "
        "weights and AdamW states stay fp32 (master weights; fp16 adds loss scaling); with model.dtype auto a "
        "frozen base (adapter methods) is loaded in the 16-bit dtype. auto: bf16 on CUDA with bf16 support, "
        "fp32 on CPU.",
    )
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="Several processes: strategy and failure timeout."
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that get every train/eval event, the resolved config, "
        "manifest.json (lineage) and the artifact: tensorboard (event files in "
        "<run>/tensorboard), mlflow (a run in train.mlflow_tracking_uri). wandb is "
        "refused: there is no W&B tracker yet.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="report_to mlflow: the MLflow store or server (sqlite:///..., http://host:5000). Default: "
        "sqlite:///<output_dir's parent>/mlruns.db, artifacts in <output_dir's parent>/mlartifacts.",
    )
    mlflow_experiment: str = Field(
        "tuneforge",
        min_length=1,
        description="report_to mlflow: the experiment the run is logged under (created when missing).",
    )

    @model_validator(mode="after")
    def _rows_per_pass_needs_packing(self) -> TrainSection:
        if self.packed_rows_per_pass is not None and self.packing is False:
            raise ValueError(
                "packed_rows_per_pass applies to packed batches only: "
                "set packing: true (or leave it unset) or remove packed_rows_per_pass"
            )
        return self

    @model_validator(mode="after")
    def _trackers(self) -> TrainSection:
        from importlib.util import find_spec

        if "wandb" in self.report_to:  # refused by name rather than dropped
            raise ValueError(
                "report_to wandb is not supported: tuneforge has no W&B tracker (the wandb package is "
                "not pinned and offline W&B was not checked with these versions); use tensorboard or mlflow"
            )
        for name in dict.fromkeys(self.report_to):  # pinned in requirements.txt, imported only by runs that use them
            if find_spec(name) is None:
                raise ValueError(
                    f"report_to {name}: the {name} package is not installed here; "
                    f"pip install -r requirements.txt or remove {name}"
                )
        if self.mlflow_tracking_uri is not None and "mlflow" not in self.report_to:
            raise ValueError(
                "mlflow_tracking_uri applies to report_to: [mlflow] only: add mlflow to report_to or remove it"
            )
        return self


# train.* keys that tune one objective: key -> (objective, argument of that objective's constructor)
OBJECTIVE_OPTIONS = {
    "dpo_beta": ("dpo", "beta"),
    "mlm_probability": ("mlm", "probability"),
    "kto_beta": ("kto", "beta"),
    "kto_desirable_weight": ("kto", "desirable_weight"),
    "kto_undesirable_weight": ("kto", "undesirable_weight"),
}
FUSED_LOSS_OBJECTIVES = ("sft", "clm")  # objectives whose loss is causal_lm_loss (train.fused_loss)
REFERENCE_OBJECTIVES = ("dpo", "kto")  # objectives whose reference model is the base with the adapter switched off


class GrpoSection(Section):
    """objective grpo: sample a group of answers per prompt, score them with graders, learn from the group's ranking."""

    group_size: int = Field(
        4,
        ge=2,
        description="Answers sampled per prompt (TRL's num_generations); advantages are "
        "each answer's reward against its group's mean.",
    )
    eval_samples: int | None = Field(
        None, gt=0, description="Answers sampled per validation prompt for the validation reward (null: group_size)."
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature of the answers; the policy's log-probabilities "
        "are taken at the same temperature, as TRL does.",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the answers.")
    max_new_tokens: int = Field(64, gt=0, description="Longest sampled answer (TRL's max_completion_length).")
    beta: float = Field(
        0.0,
        ge=0,
        description="Weight of the KL penalty to the reference (the base, adapter switched "
        "off; k3 estimator). 0 (TRL's default) skips the reference pass.",
    )
    epsilon: float = Field(0.2, gt=0, description="Clip range of the ratio pi/pi_old: [1 - epsilon, 1 + epsilon_high].")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (DAPO's clip-higher); epsilon when null.")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo",
        description="How per-token losses are averaged (TRL's loss_type): grpo: mean per answer, then over "
        "answers (short answers weigh more per token); dr_grpo: sum / (answers x max_new_tokens); "
        "dapo / bnpo: mean over every token of the step.",
    )
    scale_rewards: bool = Field(
        True,
        description="Divide advantages by the group's reward std (GRPO); false: only "
        "subtract the mean (Dr. GRPO: no bias towards easy/hard prompts).",
    )
    graders: list[GraderSpec] = Field(
        default_factory=list,
        description="The reward: graders as in eval.graders (string_check, python, multi...), summed with `weights`.",
    )
    weights: list[float] | None = Field(None, description="Weight of each grader in the reward (1 each when null).")

    @model_validator(mode="after")
    def _weights_match(self) -> GrpoSection:
        problems = name_problems(self.graders, set())
        if self.weights is not None and not all(math.isfinite(w) for w in self.weights):
            problems.append(f"weights: {self.weights} holds a non-finite weight; give finite numbers")
        if self.weights is not None and len(self.weights) != len(self.graders):
            problems.append(
                f"weights: {len(self.weights)} weight(s) for {len(self.graders)} grader(s); give one per "
                "grader or remove weights"
            )
        if problems:
            raise ValueError("; ".join(p.replace("eval.graders", "grpo.graders") for p in problems))
        return self


class EvalSection(Section):
    max_new_tokens: int = Field(64, gt=0, description="Longest generated answer when scoring generations.")
    max_examples: int | None = Field(None, gt=0, description="Score at most this many test examples (all by default).")
    batch_size: int = Field(16, gt=0, description="Prompts generated at once.")
    task: Literal["auto", "qa", "classification", "summarization", "translation", "ner", "tool_calls"] = Field(
        "auto",
        description="Which task metrics to report; auto: classification (accuracy, macro-F1) for text+label data, "
        "tool_calls (tool_call_match, tool_name_match) when answers call tools, else qa (exact match, token F1).",
    )
    metrics: list[str] | None = Field(
        None,
        description="Metric names to report instead of the task's defaults (see `tuneforge.eval.metrics.METRICS`).",
    )
    custom_metric: str | None = Field(
        None,
        description="A user metric 'file.py:function' or 'module:function', "
        "called as f(prediction, reference) -> float.",
    )
    approaches: list[str] = Field(
        ["base", "few_shot", "rag", "fine_tuned", "fine_tuned+rag"],
        description="Approaches to compare on the test split. For objective classification on an encoder (a base "
        "that cannot generate) this default becomes zero_shot_embedding, knn, linear_probe, fine_tuned; the chat "
        "approaches (base, few_shot, rag, fine_tuned+rag) are refused there.",
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description="label -> a sentence describing it, embedded by zero_shot_embedding instead of the label's "
        "name (data can also carry one per example in metadata.label_description).",
    )
    knn_k: int = Field(5, ge=1, description="knn: training examples (nearest frozen embeddings) that vote.")
    knn_vote: Literal["weighted", "majority"] = Field(
        "weighted", description="knn: votes weighted by cosine similarity, or one vote each (ties: higher similarity)."
    )
    probe_steps: int = Field(
        300, ge=1, description="linear_probe: full-batch L-BFGS iterations of the logistic regression."
    )
    probe_l2: float = Field(
        1e-3, ge=0, description="linear_probe: L2 penalty on the weights (added to the mean cross-entropy)."
    )
    few_shot_k: int = Field(
        4, ge=1, description="Training examples put in a few-shot prompt (fewer if the context budget is reached)."
    )
    few_shot_selection: Literal["random", "similar"] = Field(
        "similar", description="Pick few-shot examples at random or by BM25 similarity to the question."
    )
    rag_docs: Path | None = Field(
        None, description="Folder or file of documents to retrieve from; the training split when absent."
    )
    rag_retriever: Literal["bm25", "embeddings", "hybrid"] = Field(
        "bm25", description="Retrieval: BM25, MiniLM embeddings, or both fused by reciprocal rank."
    )
    rag_k: int = Field(3, ge=1, description="Passages put in a RAG prompt (fewer if the context budget is reached).")
    context_budget: int | None = Field(
        None,
        gt=0,
        description="Prompt token budget for few-shot/RAG prompts; model.max_length - max_new_tokens when absent.",
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for confidence intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    slice_fields: list[str] | None = Field(
        None, description="Metadata fields to slice results by; fields with 2-20 values are picked when absent."
    )
    general_text: Path | None = Field(
        None,
        description="General held-out text (file, one document per line or JSONL) for forgetting; "
        "generated text for the demo model.",
    )
    latency_samples: int = Field(8, ge=0, description="Requests timed one at a time per approach for latency.")
    prices: Path | None = Field(
        None, description="Price table YAML (training_per_1k, input_per_1k, output_per_1k) for cost and break-even."
    )
    graders: list[GraderSpec] = Field(
        default_factory=list,
        description="Per-example checks of each answer against its test example (OpenAI's "
        "grader shapes: string_check, regex, json_match, text_similarity, python, "
        "score_model, multi), reported with intervals beside the metrics and ranked "
        "per family (facts, style) in the verdict.",
    )

    @model_validator(mode="after")
    def _grader_names(self) -> EvalSection:
        from tuneforge.eval.metrics import METRICS

        problems = name_problems(self.graders, {*METRICS, "loss", "perplexity"})
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RunConfig(Section):
    """A whole fine-tuning run."""

    objective: Literal["sft", "clm", "classification", "tokens", "mlm", "nsp", "dpo", "kto", "grpo"] = Field(
        "sft",
        description="What is learned: sft (assistant tokens of chats), clm (all tokens of raw text), classification "
        "(text -> label), tokens (NER, BIO tags), mlm (masked tokens, encoders), nsp (next sentence, encoders), "
        "dpo (preference pairs), kto (unpaired answers labelled desirable or undesirable), "
        "grpo (prompts; sampled answers rewarded by grpo.graders).",
    )
    output_dir: Path = Field(
        Path("runs/run"), description="Run directory (config, manifest, metrics, checkpoints, adapter or model)."
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    method: MethodSection = Field(default_factory=default_method_config)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection, description="objective grpo: sampling, reward and loss.")

    @model_validator(mode="after")
    def _method_fits_objective(self) -> RunConfig:
        method = get_method(self.method.name)
        if method.needs_new_head and self.objective not in _HEAD_TASKS:
            raise ValueError(
                f"method '{self.method.name}' trains a new task head: "
                "use objective classification or tokens, or another method"
            )
        if self.objective in REFERENCE_OBJECTIVES and method.reference is None:
            raise ValueError(
                f"objective {self.objective} uses the base with the adapter switched off as its reference "
                f"model: use one of {reference_methods()}, not '{self.method.name}'"
            )
        if self.data.text_blocks != "stream" and self.objective != "clm":  # nothing else cuts text into blocks
            raise ValueError(
                f"data.text_blocks: {self.data.text_blocks} is for objective clm (raw text); "
                f"objective {self.objective} keeps each example whole: remove data.text_blocks"
            )
        if self.objective == "kto" and self.train.batch_size < 2:  # TRL refuses it too
            raise ValueError(
                "objective kto estimates its KL term from the other answers of a micro-batch: "
                "set train.batch_size to 2 or more (with 1, the KL estimate is the answer's own reward)"
            )
        if self.objective == "grpo":
            if self.data.format == "auto":  # RFT records look like chats without their answer: read them as prompts
                self.data.format = "rft"
            if not self.grpo.graders:
                raise ValueError(
                    "objective grpo needs a reward: add grpo.graders (e.g. a string_check against {{item.answer}})"
                )
            if self.grpo.beta > 0 and method.reference is None:
                raise ValueError(
                    f"grpo.beta > 0 uses the base with the adapter switched off as its reference model: "
                    f"use one of {reference_methods()}, not '{self.method.name}', or set grpo.beta: 0"
                )
        elif self.grpo != GrpoSection():
            raise ValueError(
                f"grpo applies to objective grpo only (this config trains {self.objective}): remove it "
                "or set objective: grpo"
            )
        if self.train.fused_loss != "auto" and self.objective not in FUSED_LOSS_OBJECTIVES:
            raise ValueError(
                f"train.fused_loss applies to objectives {' and '.join(FUSED_LOSS_OBJECTIVES)} only (this config "
                f"trains {self.objective}): remove it"
            )
        for key, (objective, _) in OBJECTIVE_OPTIONS.items():
            # a value away from the default (a saved config.yaml spells out every default)
            if getattr(self.train, key) != TrainSection.model_fields[key].default and self.objective != objective:
                raise ValueError(
                    f"train.{key} applies to objective {objective} only (this config trains {self.objective}): "
                    f"remove it or set objective: {objective}"
                )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _refresh_method_union() -> None:
    """A method registered after this module loaded (a plugin, a test) joins the `method:` union."""
    global MethodSection
    MethodSection = _method_union()
    RunConfig.__pydantic_fields__["method"] = FieldInfo.from_annotated_attribute(
        MethodSection, Field(default_factory=default_method_config)
    )
    RunConfig.model_rebuild(force=True)


on_register(_refresh_method_union)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(Problem(f"override '{item}'", "expected key=value", "e.g. train.lr=1e-4"))
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(Problem(f"override '{item}'", f"'{part}' is not a section"))
                break
        else:
            node[parts[-1]] = yaml.safe_load(value)
    if problems:
        raise ConfigError("invalid command-line overrides", problems)
    return raw


def validate_config(raw: dict[str, Any], source: str = "config", check_files: bool = True) -> RunConfig:
    """Validate a config dict; raise ConfigError listing every problem with its key."""
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{source}: {exc.error_count()} problem(s) in the configuration",
            [_problem(source, e) for e in exc.errors()],
        ) from None
    if check_files:
        problems = [
            Problem(
                f"{source}: data.{key}",
                f"file not found: {path}",
                "fix the path (relative paths are from the config file's folder)",
            )
            for key, path in (("train", cfg.data.train), ("validation", cfg.data.validation), ("test", cfg.data.test))
            if path is not None and not Path(path).exists()
        ]
        if problems:
            raise ConfigError(f"{source}: {len(problems)} missing data file(s)", problems)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config; relative data paths resolve against the config's folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"config file not found: {path}", [Problem(str(path), "no such file", "pass the path of a YAML run config")]
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML", [Problem(str(path), str(exc).replace("\n", " "))]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections", [])
    raw = apply_overrides(raw, overrides or [])
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(path.parent / data[key])
        for section, key, named in (("retrieval", "corpus", "train"), ("replay", "source", "demo-general")):
            value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str) and value != named and not Path(value).is_absolute():
                data[section][key] = str(path.parent / value)
    return validate_config(raw, source=str(path))


def _problem(source: str, err: dict[str, Any]) -> Problem:
    loc = list(err["loc"])
    if loc[:1] == ["method"] and len(loc) > 1:
        loc.pop(1)  # pydantic puts the discriminator's value (the method name) in the path
    # ... and each grader's type after its place (eval.graders.2.string_check.operation)
    loc = [p for i, p in enumerate(loc) if not (p in GRADER_TYPES and i >= 2 and loc[i - 2] == "graders")]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = key.split(".", 1)[0] if "." in key else "top level"
        command = "tuneforge config-help" + (f" {section}" if "." in key else "")
        return Problem(
            f"{source}: {key}",
            "unknown key",
            f"remove it or check the spelling; `{command}` lists the keys of {section}",
        )
    if kind == "missing":
        return Problem(f"{source}: {key}", "required key is missing", "add it")
    got = err.get("input")
    return Problem(f"{source}: {key}", f"{err['msg']} (got {got!r})" if not isinstance(got, dict) else err["msg"])


def config_help(section: str | None = None) -> str:
    """Every key of a run config, section by section, with its type, default and help text (`tuneforge config-help`).

    Read from the pydantic schema itself, so it lists exactly what `load_config` accepts; the `method:`
    section lists each registered method's keys under `method (name: NAME)`.
    """
    blocks = {
        "top level": [
            (
                "top level",
                [(k, f) for k, f in RunConfig.model_fields.items() if k != "method" and not _is_section(f.annotation)],
            )
        ]
    }
    for key, info in RunConfig.model_fields.items():
        if key == "method":  # one block per registered method, its `name` in the title
            blocks[key] = [
                b
                for c in method_configs()
                for b in _blocks(f"method (name: {c.model_fields['name'].default})", c, "name")
            ]
        elif _is_section(info.annotation):
            blocks[key] = _blocks(key, info.annotation)
    if section is not None and section not in blocks:
        raise ConfigError(
            f"unknown config section '{section}'",
            [Problem("config-help SECTION", f"'{section}' is not a section", f"use one of: {', '.join(blocks)}")],
        )
    lines = []
    for name, members in blocks.items():
        for title, fields in members if section in (None, name) else []:
            lines += [f"{title}:", *([_key_help(k, f) for k, f in fields] or ["  (no other keys)"]), ""]
    return "\n".join(lines)


def _blocks(title: str, model: type[BaseModel], skip: str = "") -> list[tuple[str, list[tuple[str, FieldInfo]]]]:
    """(title, keys) of a section, then of each section nested in it (`train.distributed`)."""
    fields = model.model_fields.items()
    out = [(title, [(k, f) for k, f in fields if k != skip and not _is_section(f.annotation)])]
    return out + [b for k, f in fields if _is_section(f.annotation) for b in _blocks(f"{title}.{k}", f.annotation)]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def _key_help(key: str, info: FieldInfo) -> str:
    if info.is_required():
        default = "required"
    else:
        value = info.get_default(call_default_factory=True)
        default = "default " + json.dumps(str(value) if isinstance(value, Path) else value)  # as YAML reads it
    return f"  {key} ({_type_text(info.annotation)}, {default})\n      {info.description or ''}"


def _type_text(kind: Any) -> str:
    """A type as a config author reads it: `int | null`, `list[str] | all-linear`, `auto | cpu | cuda`."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_text(a) for a in args)}]"
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))
