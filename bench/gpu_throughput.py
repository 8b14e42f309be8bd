"""GPU training throughput: tuneforge vs TRL's SFTTrainer on a ~0.5B Qwen2-shaped model in bf16.

    .venv/bin/python bench/gpu_throughput.py                  # CUDA: ~75 s of training per tool (~3 min)
    .venv/bin/python bench/gpu_throughput.py --dry-run        # CPU: a tiny Qwen2, 3 steps per tool (the code path)

The model is Qwen2.5-0.5B's shape (24 layers, hidden 896, FFN 4864, 14 heads / 2 KV heads, vocab
151936, tied embeddings: 494M parameters) built with `from_config` (random weights: nothing from a
hub); the tokenizer is trained locally on the generated chats (its ids use the first 2048 rows of
the vocabulary; the LM head still computes all 151936 logits). Both tools: LoRA r=16 alpha=32 on
q,k,v,o, batch 8, max length 1024, assistant-only loss, AdamW, bf16 autocast (tuneforge
train.precision auto; TRL bf16=True), each tool's defaults otherwise (tuneforge packs; TRL pads).
Each tool runs in its own process for `--seconds` of training after 2 warm-up steps; the figure is
supervised (trained) tokens per second, counted from the labels of the batches each tool built.
(tuneforge also trains the newline after each `<|im_end|>`, TRL's mask does not: ~1 token per turn.)
Figures go to stdout and, as JSON, to $OUT/gpu_throughput.json when $OUT is set (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
WARMUP_STEPS = 2
SIZES = {"cuda": (8, 1024), "cpu": (2, 128)}  # (batch, max length): the dry run only walks the code path


def build(work: Path, dry_run: bool) -> dict:
    """The model folder (bf16 safetensors on GPU runs) and train.jsonl, written once per shape."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tuneforge.models.demo import build_tokenizer

    shape = {**QWEN2_05B, **TINY, "vocab_size": 2048} if dry_run else QWEN2_05B
    meta_path = work / "assets.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["shape"] == shape:
        return json.loads(meta_path.read_text())
    work.mkdir(parents=True, exist_ok=True)
    chats = C.mixed_length_chats(16 if dry_run else 2000, seed=0)
    tokenizer = build_tokenizer([m["content"] for c in chats for m in c], vocab_size=2048)
    ids = dict(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**shape, **ids), dtype=torch.float32)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    with open(work / "train.jsonl", "w") as f:
        for c in chats:
            f.write(json.dumps({"messages": c}) + "\n")
    meta = {"shape": shape, "params": sum(p.numel() for p in model.parameters())}
    meta_path.write_text(json.dumps(meta))
    return meta


def _supervised(batch: dict) -> int:
    return int((batch["labels"][..., 1:] != -100).sum())


def worker_tuneforge(work: Path, seconds: float, max_steps: int, device: str) -> dict:
    from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection
    from tuneforge.train.progress import TrainStep
    from tuneforge.train.recipe import train

    stamps: list[tuple[float, int]] = []  # (time, trained tokens so far) after each optimizer step

    def on_event(event) -> None:
        if isinstance(event, TrainStep):
            stamps.append((time.perf_counter(), event.tokens))

    def should_stop() -> bool:
        return len(stamps) > WARMUP_STEPS and stamps[-1][0] - stamps[WARMUP_STEPS][0] > seconds

    cfg = RunConfig(
        objective="sft",
        output_dir=work / "runs" / f"tuneforge-{time.time_ns()}",
        model=ModelSection(name=str(work / "model"), max_length=SIZES[device][1]),
        data=DataSection(train=work / "train.jsonl", validation_fraction=0.0),
        method=LoraMethod(r=16, alpha=32, dropout=0.0, target_modules=C.TARGET_MODULES),
        train=TrainSection(
            max_steps=max_steps,
            batch_size=SIZES[device][0],
            lr=2e-4,
            warmup_ratio=0.0,
            log_every=1,
            save_every=10**6,
            eval_every=10**6,
            seed=0,
            device=device,
        ),
    )
    result = train(cfg, on_event=on_event, should_stop=should_stop, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    return _rate(stamps) | {"precision": manifest["precision"], "layout": manifest["batch_layout"]["why"]}


def worker_trl(work: Path, seconds: float, max_steps: int, device: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = device == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    dataset = Dataset.from_list([json.loads(line) for line in open(work / "train.jsonl")])
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16 if cuda else torch.float32)
    config = SFTConfig(
        output_dir=str(work / "runs" / f"trl-{time.time_ns()}"),
        use_cpu=not cuda,
        bf16=cuda,
        max_steps=max_steps,
        per_device_train_batch_size=SIZES[device][0],
        max_length=SIZES[device][1],
        assistant_only_loss=True,
        learning_rate=2e-4,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=C.TARGET_MODULES)
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    collate, counted = trainer.data_collator, [0]

    def counting(examples):
        batch = collate(examples)
        counted[0] += _supervised(batch)
        return batch

    trainer.data_collator = counting
    stamps: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), counted[0]))
            if len(stamps) > WARMUP_STEPS and stamps[-1][0] - stamps[WARMUP_STEPS][0] > seconds:
                control.should_training_stop = True

    trainer.add_callback(Clock())
    trainer.train()
    return _rate(stamps)


def _rate(stamps: list[tuple[float, int]]) -> dict:
    """Supervised tokens/s over the steps after warm-up."""
    (t0, n0), (t1, n1) = stamps[min(WARMUP_STEPS, len(stamps) - 2)], stamps[-1]
    return {"tokens_per_s": (n1 - n0) / max(t1 - t0, 1e-9), "steps": len(stamps), "measured_s": t1 - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny Qwen2, 3 steps per tool: the code path only")
    p.add_argument("--seconds", type=float, default=75.0, help="measured training time per tool")
    p.add_argument("--work", default="/tmp/tuneforge-bench-gpu", help="cache for the generated model and data")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_throughput.json ($OUT)")
    p.add_argument("--in-process", action="store_true", help="run both tools in this process (tests)")
    p.add_argument("--worker", choices=["tuneforge", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work) / ("tiny" if args.dry_run else "qwen2-0.5b")
    device = "cpu" if args.dry_run else "cuda"
    max_steps = WARMUP_STEPS + 1 if args.dry_run else 10**5
    if args.worker:
        fn = worker_tuneforge if args.worker == "tuneforge" else worker_trl
        print("RESULT " + json.dumps(fn(work, args.seconds, max_steps, device)), flush=True)
        return {}
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_throughput: no CUDA device (use --dry-run for the CPU code path)")
    meta = build(work, args.dry_run)
    results = {}
    for tool in ("tuneforge", "trl"):
        started = time.perf_counter()
        if args.in_process:
            fn = worker_tuneforge if tool == "tuneforge" else worker_trl
            results[tool] = fn(work, args.seconds, max_steps, device)
        else:
            passed = ["--work", args.work, "--seconds", str(args.seconds)] + (["--dry-run"] if args.dry_run else [])
            results[tool] = _subprocess(tool, passed)
        results[tool]["wall_s"] = time.perf_counter() - started
        print(f"{tool:<10} {results[tool]['tokens_per_s']:10.1f} supervised tok/s ({results[tool]['steps']} steps)")
    ratio = results["tuneforge"]["tokens_per_s"] / max(results["trl"]["tokens_per_s"], 1e-9)
    print(f"ratio tuneforge / TRL: {ratio:.2f} (one run each; {meta['params'] / 1e6:.0f}M parameters, {device})")
    report = {"model": meta, "device": device, "dry_run": args.dry_run, "results": results, "ratio": ratio}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_throughput.json").write_text(json.dumps(report, indent=2))
    return report


def _subprocess(tool: str, passed: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, *passed]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
    raise RuntimeError(f"{tool} failed (exit {proc.returncode}):\n{tail}")


if __name__ == "__main__":
    main()
