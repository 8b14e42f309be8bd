"""GRPO: where a step's time goes (sampling vs training) and completions/s, tuneforge vs TRL's `GRPOTrainer`
(its default generation: transformers `generate`, no vLLM); and what one shared prefill per group saves.

    .venv/bin/python bench/grpo_sampling.py            # 3 interleaved repeats, 6 steps each
    .venv/bin/python bench/grpo_sampling.py --quick    # 1 repeat, 3 steps

Same settings on both sides: a Llama of 4 layers, hidden 128 (from_config, fp32, CPU, 1 torch thread
unless --threads), LoRA r=16 on q/k/v/o, 4 prompts x 4 answers per step (TRL: per_device_train_batch_size 16,
num_generations 4), temperature 1, max 32 new tokens, beta 0 (TRL's default: no reference pass), loss dapo,
the same python reward (answer length, capped). Prompts are support-desk questions under a long system prompt
(~220 tokens), so prefill counts. Each run is a fresh subprocess; runs interleave (A B, then B A ...) so
contention from other users of the machine hits both alike. The first step of each run is excluded
(first-call overheads). Answers are sampled, so lengths may differ between the tools: the table shows each
side's mean completion length.

The prefill part times `decode` alone on the same prompts: G answers per prompt from one prefill (the KV cache
expanded, what tuneforge's grpo does) vs the prompt repeated G times (one prefill per answer, what TRL's
RepeatSampler + generate does), same tokens either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "tuneforge-bench-grpo"
PROMPTS, GROUP, NEW_TOKENS, LR = 4, 4, 32, 1e-4
THREADS = 1  # torch threads on every side (--threads): the same for both tools, few on a shared machine
SYSTEM = (
    "You are the support assistant of Lumora, a maker of smart home devices. Answer in one or two sentences, "
    "state the product fact the customer asks for (price, warranty, delivery time, compatibility), never invent "
    "a fact, and offer to help further. Plans: Basic $9 a month, Plus $19 a month, Pro $49 a month; every device "
    "has a two year warranty; orders ship in two days; returns are free within thirty days of delivery. "
) * 2


def reward(text: str) -> float:
    return min(len(text), 200) / 200


REWARD_SOURCE = "def grade(sample, item):\n    return min(len(sample['output_text']), 200) / 200\n"


def build(work: Path) -> Path:
    """The model folder and the RFT prompts (once)."""
    if (work / "model" / "config.json").exists():
        return work
    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    work.mkdir(parents=True, exist_ok=True)
    convs = support_desk_dataset(400, 0)
    tok = build_tokenizer([SYSTEM] + [m.content for c in convs for m in c.messages], vocab_size=2048)
    save_model_folder(
        build_tiny_llama(tok, hidden=128, layers=4, heads=4, max_positions=512, seed=0), tok, work / "model"
    )
    rows = [
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": c.messages[1].content}]}
        for c in convs[:200]
    ]
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def worker_tuneforge(steps: int) -> dict:
    from tuneforge.config import validate_config
    from tuneforge.objectives.grpo import GroupRelative
    from tuneforge.train import train
    from tuneforge.train.progress import TrainStep

    sampling: list[float] = []
    original = GroupRelative.sample

    def timed(self, model, batch, answers=None):
        t = time.perf_counter()
        out = original(self, model, batch, answers)
        sampling.append(time.perf_counter() - t)
        return out

    GroupRelative.sample = timed
    stamps, lengths = [], []

    def on_event(event):
        if isinstance(event, TrainStep):
            stamps.append(time.perf_counter())
            lengths.append(event.metrics["completion_length"])

    out = tempfile.mkdtemp(prefix="tf-grpo-")
    cfg = validate_config(
        {
            "objective": "grpo",
            "output_dir": out,
            "model": {"name": str(WORK / "model"), "max_length": 512},
            "data": {"train": str(WORK / "prompts.jsonl")},
            "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": C.TARGET_MODULES},
            "train": {
                "max_steps": steps,
                "batch_size": PROMPTS,
                "lr": LR,
                "log_every": 1,
                "save_every": 10_000,
                "warmup_ratio": 0.0,
                "seed": 0,
                "threads": THREADS,
            },
            "grpo": {
                "group_size": GROUP,
                "max_new_tokens": NEW_TOKENS,
                "temperature": 1.0,
                "beta": 0.0,
                "loss_type": "dapo",
                "graders": [{"type": "python", "name": "length", "source": REWARD_SOURCE}],
            },
        }
    )
    start = time.perf_counter()
    train(cfg, progress=False, on_event=on_event)
    bounds = [start, *stamps]
    step_s = [b - a for a, b in zip(bounds, bounds[1:])][1:]  # first step excluded
    return _summary(step_s, sampling[1 : len(step_s) + 1], lengths[1:])


def worker_trl(steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(WORK / "model")
    model = AutoModelForCausalLM.from_pretrained(WORK / "model")
    rows = [json.loads(line) for line in (WORK / "prompts.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["messages"]} for r in rows])
    sampling: list[float] = []
    generate = model.generate

    def timed(*a, **kw):
        t = time.perf_counter()
        out = generate(*a, **kw)
        sampling.append(time.perf_counter() - t)
        return out

    model.generate = timed
    stamps, lengths = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    def length_reward(completions, **kw):
        return [reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"),
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        learning_rate=LR,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        lr_scheduler_type="linear",
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=C.TARGET_MODULES, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=lora,
        callbacks=[Clock()],
    )
    start = time.perf_counter()
    trainer.train()
    bounds = [start, *stamps]
    step_s = [b - a for a, b in zip(bounds, bounds[1:])][1:]
    return _summary(step_s, sampling[1 : len(step_s) + 1], lengths[1:])


def worker_prefill(steps: int) -> dict:
    """decode: G answers from one prefill per prompt vs from G prefills (the prompt repeated)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.generate import decode

    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(WORK / "model")
    model = AutoModelForCausalLM.from_pretrained(WORK / "model").eval()
    rows = [json.loads(line)["messages"] for line in (WORK / "prompts.jsonl").read_text().splitlines()[:PROMPTS]]
    tok.padding_side = "left"
    enc = tok.apply_chat_template(rows, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    times: dict[str, list[float]] = {"shared": [], "repeated": []}
    with torch.no_grad():
        for r in range(steps + 1):
            for name in ("shared", "repeated") if r % 2 == 0 else ("repeated", "shared"):
                torch.manual_seed(r)
                t = time.perf_counter()
                if name == "shared":
                    decode(model, ids, mask, NEW_TOKENS, 1.0, 1.0, [], tok.pad_token_id, repeat=GROUP)
                else:
                    rep = ids.repeat_interleave(GROUP, 0), mask.repeat_interleave(GROUP, 0)
                    decode(model, *rep, NEW_TOKENS, 1.0, 1.0, [], tok.pad_token_id)
                if r:  # the first round warms up
                    times[name].append(time.perf_counter() - t)
    return {"shared_s": C.median(times["shared"]), "repeated_s": C.median(times["repeated"]), "prompt": ids.shape[1]}


def _summary(step_s: list[float], sampling_s: list[float], lengths: list[float]) -> dict:
    step, sample = C.median(step_s), C.median(sampling_s)
    return {
        "step_s": step,
        "sampling_s": sample,
        "sampling_share": sample / step if step else float("nan"),
        "completions_per_s": PROMPTS * GROUP / step if step else float("nan"),
        "completion_length": C.median(lengths) if lengths else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, 3 steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    if args.worker:
        result = {"tuneforge": worker_tuneforge, "trl": worker_trl, "prefill": worker_prefill}[args.worker](steps)
        print("RESULT " + json.dumps(result), flush=True)
        return
    build(WORK)
    results, _ = C.interleaved(
        Path(__file__),
        ["tuneforge", "trl", "prefill"],
        repeats,
        ["--steps", str(steps), "--threads", str(THREADS)],
        THREADS,
        WORK / "last.json",
    )

    def cell(name: str, key: str, fmt: str) -> str:
        values = [r[key] for r in results[name]]
        return f"{C.median(values):{fmt}} {C.spread(values)}"

    rows = [
        [
            name,
            cell(name, "step_s", ".2f"),
            cell(name, "sampling_s", ".2f"),
            cell(name, "sampling_share", ".0%"),
            cell(name, "completions_per_s", ".1f"),
            cell(name, "completion_length", ".1f"),
        ]
        for name in ("tuneforge", "trl")
    ]
    C.print_table(
        f"GRPO step, {PROMPTS} prompts x {GROUP} answers, <= {NEW_TOKENS} new tokens (medians over {repeats} runs)",
        ["tool", "step s", "sampling s", "sampling share", "completions/s", "mean length"],
        rows,
    )
    ratio = C.median([r["completions_per_s"] for r in results["tuneforge"]]) / C.median(
        [r["completions_per_s"] for r in results["trl"]]
    )
    print(f"\ncompletions/s tuneforge / TRL: {ratio:.2f}x")
    shared = C.median([r["shared_s"] for r in results["prefill"]])
    repeated = C.median([r["repeated_s"] for r in results["prefill"]])
    print(
        f"decode of {PROMPTS} prompts ({results['prefill'][0]['prompt']} tokens) x {GROUP} answers: one prefill per "
        f"prompt {shared:.3f}s, one per answer {repeated:.3f}s ({repeated / shared:.2f}x)"
    )


if __name__ == "__main__":
    main()
