"""`tuneforge quickstart`: the whole story on the embedded default, in a few minutes on a CPU.

1. a base model (the demo Llama, pretrained once and cached),
2. a company's support-desk data in OpenAI chat JSONL, split train/validation/test,
3. full fine-tuning with assistant-only loss, validated while it trains, with retrieved passages in
   the prompts (RAFT, `data.retrieval`) and general chats replayed against forgetting (`data.replay`),
4. `tuneforge eval` on the held-out test split: base (zero-shot), few-shot, RAG, fine-tuned and
   fine-tuned+RAG, with bootstrap intervals, slices, forgetting, cost and a verdict.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from tuneforge.config import (
    DataSection,
    EvalSection,
    FullMethod,
    ModelSection,
    ReplaySection,
    RetrievalSection,
    RunConfig,
    TrainSection,
)
from tuneforge.data.readers import write_jsonl
from tuneforge.data.synthetic import support_desk_dataset
from tuneforge.eval.evaluate import EvalTarget, run_eval
from tuneforge.eval.graders.spec import StringCheck
from tuneforge.train import train
from tuneforge.train.pretrain import ensure_demo_model

REPORTED = ("loss", "perplexity", "exact_match", "token_f1", "fact_accuracy")
# does the answer state its fact ("$49", "in 2 days")? Token F1 rewards the house template; this checks the facts
FACT_ACCURACY = StringCheck(
    name="fact_accuracy", input="{{sample.output_text}}", reference="{{item.fact}}", operation="ilike", family="facts"
)
QUICKSTART_APPROACHES = ("base", "few_shot", "rag", "fine_tuned", "fine_tuned+rag")
FORGETTING_BUDGET_PERCENT = 50  # data.replay's aim: general-text perplexity at most +50% of the base's
REPLAY_SHARE = 0.3  # data.replay.share: general chats' share of the fine-tune's training examples
RAG_K = 2  # passages in a RAG prompt: at test time (eval.rag_k) and in training (data.retrieval.k)


def write_support_splits(folder: Path, n: int = 900, seed: int = 0) -> dict[str, Path]:
    """Generate the support-desk dataset and split it 80/10/10 into JSONL files."""
    examples = support_desk_dataset(n, seed)
    random.Random(seed).shuffle(examples)
    n_val = n_test = n // 10
    splits = {
        "test": examples[:n_test],
        "validation": examples[n_test : n_test + n_val],
        "train": examples[n_test + n_val :],
    }
    paths = {}
    for name, rows in splits.items():
        paths[name] = folder / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    return paths


def quickstart_config(run_dir: Path, data: dict[str, Path]) -> RunConfig:
    return RunConfig(
        objective="sft",
        output_dir=run_dir,
        model=ModelSection(name="demo", max_length=256),
        data=DataSection(
            train=data["train"],
            validation=data["validation"],
            test=data["test"],
            # RAFT: the fine-tune learns to read retrieved passages (1 retrieved + 1 random in 80% of the prompts)
            retrieval=RetrievalSection(corpus="train", k=RAG_K, distractors=1, p_oracle=0.8),
            # general chats against forgetting general text (the report's forgetting figure). Measured on the demo
            # base (fresh quickstart, 5 epochs): share 0.1 left general-text perplexity +78.3%, 0.3 -0.9%, 0.5 -8.2%,
            # fact accuracy 1.000 in all three; 0.3 keeps the task the larger part of each batch
            replay=ReplaySection(source="demo-general", share=REPLAY_SHARE),
        ),
        # full fine-tuning: the demo base has 1.55M parameters, so a full step costs little, and it is what stores the
        # facts here. Measured on the demo base (same data, 150 steps): LoRA r16 all-linear ended at validation loss
        # 1.47 (lr 3e-3; 1.48 at lr 1e-2) and fact accuracy 0.09-0.21; full fine-tuning 0.066 and 0.60. On a real
        # pretrained model, LoRA is the usual choice (method: {name: lora}); the rest of this config is unchanged.
        method=FullMethod(),
        train=TrainSection(
            epochs=5,  # 3 epochs left 40% of the facts wrong (right product and topic, wrong value); 5 store them
            batch_size=16,
            lr=2e-3,
            scheduler="cosine",
            warmup_ratio=0.05,
            eval_every=30,
            save_every=60,
            log_every=5,
            early_stopping_patience=3,
            seed=0,
        ),
        eval=EvalSection(
            max_new_tokens=40,
            batch_size=32,
            approaches=list(QUICKSTART_APPROACHES),
            few_shot_k=2,
            rag_k=RAG_K,
            latency_samples=2,
            graders=[FACT_ACCURACY],
        ),
    )


def run_quickstart(out: Path, progress: bool = True, say=print) -> dict[str, Any]:
    started = time.perf_counter()
    say("1/4 base model: the demo Llama (pretrained on a generated general corpus)")
    ensure_demo_model(progress=progress)

    run_dir = out / time.strftime("quickstart-%Y%m%d-%H%M%S")
    say(f"2/4 task data: Lumora support desk, OpenAI chat JSONL in {run_dir / 'data'}")
    data = write_support_splits(run_dir / "data")
    cfg = quickstart_config(run_dir, data)

    say("3/4 full fine-tuning (assistant tokens only, retrieved passages in the prompts, validated while training)")
    result = train(cfg, progress=progress)

    say("4/4 tuneforge eval: base, few-shot, RAG, fine-tuned and fine-tuned+RAG on the held-out test split")
    report = run_eval(EvalTarget(cfg, run_dir), run_dir, say=say)
    approaches = {a["name"]: a for a in report["approaches"]}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary = {
        "run_dir": str(run_dir),
        **{name: {k: a["metrics"][k]["mean"] for k in REPORTED} for name, a in approaches.items()},
        "intervals": {name: a["metrics"] for name, a in approaches.items()},
        "prompt_tokens_per_request": {name: a["prompt_tokens_per_request"] for name, a in approaches.items()},
        "verdict": report["verdict"]["summary"],
        "winners": {
            family: {k: v[k] for k in ("metric", "winner", "tied_with")}
            for family, v in report["verdict"]["families"].items()
        },
        "test_examples": report["test_examples"],
        "forgetting": {
            "general_perplexity": {k: v["mean"] for k, v in report["forgetting"].get("perplexity", {}).items()},
            "change_percent_vs_base": report["forgetting"].get("change_percent_vs_base", {}),
            "budget_percent": FORGETTING_BUDGET_PERCENT,
        },
        "training_data": {k: manifest["datasets"][k] for k in ("retrieval", "replay") if k in manifest["datasets"]},
        "train_status": result.status,
        "train_steps": result.steps,
        "eval_seconds": report["seconds"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "comparison.json").write_text(json.dumps(summary, indent=2))
    return summary
