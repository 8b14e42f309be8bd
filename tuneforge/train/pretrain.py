"""Pretraining from scratch: train a tokenizer, build a Llama, train it with the clm objective.

`tuneforge pretrain CONFIG` runs it on any text; `ensure_demo_model()` runs it once on a
generated general corpus (varied sentences plus short general chats, so the base model
knows the chat format) and caches the result as the `demo` base model.
"""

from __future__ import annotations

import fcntl
import random
import shutil
import sys
from pathlib import Path

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
from tuneforge.data.synthetic import general_chat, general_corpus
from tuneforge.data.types import Conversation, TextExample
from tuneforge.errors import Problem
from tuneforge.models.demo import (
    CHAT_TEMPLATE,
    build_tiny_llama,
    build_tokenizer,
    demo_model_built,
    demo_model_dir,
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
    output: Path = Field(
        ..., description="Folder of the finished HF model (config, safetensors, tokenizer, chat template)."
    )
    block_size: int = Field(128, gt=8, description="Tokens per packed training block.")
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
    corpus_file = work / "corpus.txt"
    corpus_file.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts), encoding="utf-8")

    tokenizer = build_tokenizer(texts, cfg.architecture.vocab_size)
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
        data=DataSection(train=corpus_file, validation_fraction=0.02, format="text"),
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


def _render_chatml(messages: list[dict[str, str]]) -> str:
    from jinja2 import Template

    return Template(CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")).render(
        messages=messages
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
        if not (folder / ".complete").exists():
            print(f"Pretraining the demo base model into {folder} (once; cached for later runs)", file=sys.stderr)
            pretrain(PretrainConfig(output=folder), progress=progress)
            (folder / ".complete").write_text("ok\n")
    return folder
