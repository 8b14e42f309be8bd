"""Pretraining from scratch: train a tokenizer, build a Llama, train it with the clm objective.

`tuneforge pretrain CONFIG` runs it on any text; `ensure_demo_model()` runs it once on a
generated corpus and caches the result as the `demo` base model: varied general sentences, short
general chats (so the base knows the chat format), chats that answer from passages in the
system message (the RAG layout) and chats that answer in the pattern of earlier turns (the
few-shot layout), about invented products whose facts change in every chat - so zero-shot,
few-shot and RAG are real contenders for the quickstart, and no support-desk fact is memorised.
A demo pretrained by an earlier recipe (`models.demo.DEMO_RECIPE`) is rebuilt.
"""

from __future__ import annotations

import fcntl
import functools
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from tuneforge.config import (
    ConfigError,
    DataSection,
    FullMethod,
    ModelSection,
    RunConfig,
    Section,
    TrainSection,
    _problem,
)
from tuneforge.data.readers import read_examples
from tuneforge.data.synthetic import demonstration_chat, general_chat, general_corpus, reading_chat
from tuneforge.data.types import Conversation, TextExample
from tuneforge.errors import Problem
from tuneforge.models.demo import (
    CHAT_TEMPLATE,
    DEMO_RECIPE,
    build_tiny_llama,
    build_tokenizer,
    demo_model_built,
    demo_model_dir,
    demo_model_stale,
    save_model_folder,
)
from tuneforge.train.rundir import RunDir


class ArchitectureSection(Section):
    hidden: int = Field(160, gt=0, description="Hidden size.")
    layers: int = Field(4, gt=0, description="Transformer blocks.")
    heads: int = Field(5, gt=0, description="Attention heads (hidden must divide by it).")
    kv_heads: int | None = Field(None, gt=0, description="Key/value heads (grouped-query attention); default = heads.")
    intermediate: int | None = Field(None, gt=0, description="MLP width; default ~8/3 x hidden.")
    max_positions: int = Field(512, gt=0, description="Longest context the model supports.")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary size of the tokenizer trained on the corpus.")


class PretrainConfig(Section):
    corpus: Path | None = Field(
        None, description="Text file (documents separated by blank lines) or JSONL; null = generate a general corpus."
    )
    generated_documents: int = Field(5000, gt=0, description="Documents to generate when corpus is null.")
    generated_chats: int = Field(3000, ge=0, description="General chat transcripts mixed into the generated corpus.")
    generated_reading: int = Field(
        0, ge=0, description="Chats that answer a question from passages in the system message (the RAG layout)."
    )
    generated_demonstrations: int = Field(
        0, ge=0, description="Chats that answer a question in the pattern of earlier question/answer turns (few-shot)."
    )
    output: Path = Field(
        ..., description="Folder of the finished HF model (config, safetensors, tokenizer, chat template)."
    )
    tokenizer_documents: int = Field(4000, gt=0, description="Documents the BPE tokenizer is trained on.")
    block_size: int = Field(128, gt=8, description="Tokens per packed training block.")
    text_blocks: Literal["stream", "documents"] = Field(
        "stream",
        description="stream: documents joined and cut into full blocks (group_texts); documents: each document "
        "whole in a packed row with its own attention block (cut only where longer than block_size) - for corpora "
        "of chats whose question, passages and answer must be seen together.",
    )
    seed: int = Field(0, description="Seed for the corpus, tokenizer order and initialisation.")
    architecture: ArchitectureSection = Field(default_factory=ArchitectureSection)
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(
            epochs=2,
            batch_size=16,
            lr=3e-3,
            warmup_ratio=0.05,
            scheduler="cosine",
            eval_every=200,
            save_every=400,
            log_every=20,
            weight_decay=0.01,
        )
    )


def load_pretrain_config(path: Path, overrides: list[str] | None = None) -> PretrainConfig:
    from tuneforge.config import apply_overrides

    if not path.exists():
        raise ConfigError(f"config file not found: {path}", [Problem(str(path), "no such file")])
    raw = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    for key in ("corpus", "output"):
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    try:
        return PretrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: {exc.error_count()} problem(s)", [_problem(str(path), e) for e in exc.errors()]
        ) from None


def pretrain(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Build and pretrain a model; returns the finished model folder."""
    from tuneforge.train.recipe import train

    work = cfg.output.parent / f".{cfg.output.name}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    texts = _corpus(cfg)
    corpus_file = work / "corpus.jsonl"  # JSONL keeps the blank lines inside chats (the RAG layout has them)
    corpus_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")

    # the corpus is shuffled: a few thousand documents give the same merges at a fraction of the time
    tokenizer = build_tokenizer(texts[: cfg.tokenizer_documents], cfg.architecture.vocab_size)
    arch = cfg.architecture
    model = build_tiny_llama(
        tokenizer, arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.intermediate, arch.max_positions, cfg.seed
    )
    save_model_folder(model, tokenizer, work / "init")

    run_cfg = RunConfig(
        objective="clm",
        output_dir=work / "run",
        method=FullMethod(),
        model=ModelSection(name=str(work / "init"), max_length=cfg.block_size),
        data=DataSection(train=corpus_file, validation_fraction=0.02, format="text", text_blocks=cfg.text_blocks),
        train=cfg.train.model_copy(update={"seed": cfg.seed}),
    )
    result = train(run_cfg, progress=progress)
    shutil.rmtree(cfg.output, ignore_errors=True)
    shutil.copytree(result.run_dir / "model", cfg.output)
    shutil.copy(result.run_dir / "manifest.json", cfg.output / "pretrain_manifest.json")
    RunDir(result.run_dir).copy_metrics(cfg.output / "pretrain_metrics.jsonl")
    shutil.rmtree(work, ignore_errors=True)
    return cfg.output


def _corpus(cfg: PretrainConfig) -> list[str]:
    if cfg.corpus is None:
        rng = random.Random(cfg.seed)
        chats = [_render_chatml(general_chat(rng)) for _ in range(cfg.generated_chats)]
        chats += [_render_chatml(reading_chat(rng)) for _ in range(cfg.generated_reading)]
        chats += [_render_chatml(demonstration_chat(rng)) for _ in range(cfg.generated_demonstrations)]
        docs = general_corpus(cfg.generated_documents, cfg.seed) + chats
        rng.shuffle(docs)
        return docs
    examples = read_examples(cfg.corpus)
    return [
        ex.text
        if isinstance(ex, TextExample)
        else _render_chatml([{"role": m.role, "content": m.content} for m in ex.messages])
        for ex in examples
        if isinstance(ex, (TextExample, Conversation))
    ]


@functools.cache
def _chatml():
    from jinja2 import Template

    return Template(CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""))


def _render_chatml(messages: list[dict[str, str]]) -> str:
    return _chatml().render(messages=messages)


def demo_pretrain_config(folder: Path) -> PretrainConfig:
    """The demo's recipe (`models.demo.DEMO_RECIPE` names it): general text and chats, reading passages and following
    demonstrations, in blocks long enough to hold a RAG or few-shot prompt with its answer."""
    return PretrainConfig(
        output=folder,
        generated_documents=3000,
        generated_chats=1500,
        generated_reading=3000,
        generated_demonstrations=2000,
        block_size=256,
        # epochs as a float, as validation makes it: model_copy skips validation and an int warns when serialised
        train=PretrainConfig.model_fields["train"].default_factory().model_copy(update={"epochs": 1.0}),
    )


def ensure_demo_model(progress: bool = True) -> Path:
    """The demo model, built once (about a minute on 2 CPU cores) under a file lock, then cached.

    Called only at the edges that need it (`tuneforge models pull-demo`, quickstart, service
    start-up); resolving the name 'demo' never builds it.
    """
    folder = demo_model_dir()
    if demo_model_built():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several workers may ask at once; one builds
        if not demo_model_built():
            why = "its recipe changed: rebuilding" if demo_model_stale() else "once; cached for later runs"
            print(f"Pretraining the demo base model into {folder} ({why})", file=sys.stderr)
            (folder / ".complete").unlink(missing_ok=True)
            pretrain(demo_pretrain_config(folder), progress=progress)
            (folder / ".recipe").write_text(DEMO_RECIPE + "\n")
            (folder / ".complete").write_text("ok\n")
    return folder
