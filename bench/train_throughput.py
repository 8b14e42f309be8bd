"""Training throughput: tuneforge vs TRL SFTTrainer (+peft), side by side in one run.

    .venv/bin/python bench/train_throughput.py            # full run (median of 3 repeats)
    .venv/bin/python bench/train_throughput.py --quick    # a few steps, one repeat

Same model (Llama, ~26M parameters, built with from_config), same generated chat data of
mixed lengths, same hyperparameters (LoRA r=16 alpha=32 dropout=0 on q,k,v,o; batch 8; max
length 512; assistant-only loss; AdamW, linear schedule; fp32 on CPU: TRL's bf16 default
runs at 1/8 of the fp32 matmul rate on CPUs without AMX, so both sides run fp32).

Configurations (each run in a fresh subprocess, interleaved across repeats):
  tf_lora_packed   tuneforge, LoRA, its defaults: packing (the same 8 examples per micro-batch packed
                   into rows of <= 512 tokens with per-example positions and attention blocks),
                   rows per forward/backward from the CPU activation budget (one row for this model)
  tf_lora_allrows  as tf_lora_packed with every packed row of the micro-batch in one pass
  tf_lora_rows2    as tf_lora_packed with two packed rows per pass
  tf_lora          tuneforge, LoRA, packing off (padded batches of 8 examples)
  trl_lora         TRL SFTTrainer defaults (gradient checkpointing on, fused chunked LM head)
  trl_lora_pack8   TRL packing (BFD, padding-free), batch 8 rows
  trl_lora_pack1   TRL packing, batch 1 row x gradient accumulation 8 (TRL's best on CPU)
  tf_full / trl_full   full fine-tuning, tuneforge defaults vs TRL defaults
  tf_full_allrows  as tf_full with every packed row of the micro-batch in one pass
  tf_lora_drop / trl_lora_pack1_drop   LoRA with dropout 0.05 (peft's default placement: on the input of lora_A)
  tf_lora_auto     as tf_lora_packed with train.threads auto (fewer threads when other processes load the CPU);
                   every other tuneforge configuration runs with train.threads = --threads, as TRL does
  tf_lora_compiled / tf_lora_drop_compiled / tf_full_compiled   as tf_lora_packed / tf_lora_drop / tf_full with
                   train.compile on (decoder layers compiled in place); every other tuneforge configuration runs
                   with train.compile off. The first step (most of the compiling) is excluded like every first step;
                   "compile s" is what the run's manifest.json records (all compiling, a row-length recompile too)

--busy starts one spin-loop neighbour process for the whole run (a CPU that someone else is using).
Each row's "util" is the share of the matmul peak by tuneforge's own convention (train/utilisation.py:
(4 N + 2 N_trained) per real token + causal attention, i.e. ~4N for LoRA, 6N for full); "MFU" keeps the
PaLM 6N convention for every tool; "tf util" is what the tuneforge run itself wrote to manifest.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = {
    "tf_lora_packed": dict(tool="tuneforge", method="lora", packing=True),
    "trl_lora": dict(tool="trl", method="lora", packing=False, batch=8, accum=1),
    "trl_lora_pack1": dict(tool="trl", method="lora", packing=True, batch=1, accum=8),
    "tf_lora_allrows": dict(tool="tuneforge", method="lora", packing=True, rows_per_pass=64),
    "tf_lora_rows2": dict(tool="tuneforge", method="lora", packing=True, rows_per_pass=2),
    "tf_lora": dict(tool="tuneforge", method="lora", packing=False),
    "trl_lora_pack8": dict(tool="trl", method="lora", packing=True, batch=8, accum=1),
    "tf_full": dict(tool="tuneforge", method="full", packing=True),
    "tf_full_allrows": dict(tool="tuneforge", method="full", packing=True, rows_per_pass=64),
    "trl_full": dict(tool="trl", method="full", packing=False, batch=8, accum=1),
    "tf_lora_drop": dict(tool="tuneforge", method="lora", packing=True, dropout=0.05),
    "trl_lora_pack1_drop": dict(tool="trl", method="lora", packing=True, batch=1, accum=8, dropout=0.05),
    "tf_lora_auto": dict(tool="tuneforge", method="lora", packing=True, threads="auto"),
    "tf_lora_compiled": dict(tool="tuneforge", method="lora", packing=True, compile="on"),
    "tf_lora_drop_compiled": dict(tool="tuneforge", method="lora", packing=True, dropout=0.05, compile="on"),
    "tf_full_compiled": dict(tool="tuneforge", method="full", packing=True, compile="on"),
}
# ratio rows: (tuneforge config, TRL config)
RATIOS = [
    ("tf_lora_packed", "trl_lora"),
    ("tf_lora_packed", "trl_lora_pack1"),
    ("tf_lora_packed", "trl_lora_pack8"),
    ("tf_lora_allrows", "trl_lora"),
    ("tf_lora_rows2", "trl_lora"),
    ("tf_lora", "trl_lora"),
    ("tf_full", "trl_full"),
    ("tf_full_allrows", "trl_full"),
    ("tf_lora_drop", "trl_lora_pack1_drop"),
    ("tf_lora_auto", "trl_lora_pack1"),
    ("tf_lora_auto", "tf_lora_packed"),
    ("tf_lora_compiled", "trl_lora_pack1"),
    ("tf_lora_compiled", "tf_lora_packed"),
    ("tf_lora_drop_compiled", "trl_lora_pack1_drop"),
    ("tf_lora_drop_compiled", "tf_lora_drop"),
    ("tf_full_compiled", "tf_full"),
]
LR = {"lora": 5e-4, "full": 1e-4}
WARMUP_STEPS = 1  # excluded from throughput (allocator warm-up, first-call overheads)


# ---------------------------------------------------------------- workers (one config per process)


class Tally:
    """Per micro-batch token counts, recorded where each tool builds its batches."""

    def __init__(self, pad_id: int | None = None):
        self.pad_id = pad_id  # tuneforge's packed rows end in padding; TRL's padding-free rows have none
        self.micro: list[dict] = []

    def record(self, batch: dict) -> None:
        import torch

        ids, labels = batch["input_ids"], batch["labels"]
        if "attention_mask" in batch:  # padded rows
            real_mask = batch["attention_mask"].bool()
            seg_len = real_mask.sum(1)
        else:  # packed rows: a document starts wherever the position restarts at 0
            real_mask = ids != self.pad_id if self.pad_id is not None else torch.ones_like(ids, dtype=torch.bool)
            seg = (batch["position_ids"] == 0).flatten().long().cumsum(0)
            seg_len = torch.bincount(seg, weights=real_mask.flatten().double())
        self.micro.append(
            {
                "real": int(real_mask.sum()),
                "sup": int((labels[..., 1:] != -100).sum()),
                "sq": int((seg_len.double() ** 2).sum()),
            }
        )


def _finish(
    tally: Tally, step_times: list[float], accum: list[int], peak_before: int, rss_before: int, loss: float, extra: dict
) -> dict:
    steps = []
    i = 0
    for n in accum:
        chunk = tally.micro[i : i + n]
        i += n
        steps.append({k: sum(m[k] for m in chunk) for k in ("real", "sup", "sq")})
    return {
        "step_s": step_times,
        "steps": steps[: len(step_times)],
        "peak_rss": C.peak_rss_bytes(),
        "rss_before": rss_before,
        "peak_before": peak_before,
        "heldout_loss": loss,
        **extra,
    }


def worker_tuneforge(name: str, spec: dict, args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from tuneforge.config import DataSection, FullMethod, LoraMethod, ModelSection, RunConfig, TrainSection
    from tuneforge.models.loading import load_for_inference
    from tuneforge.train import recipe
    from tuneforge.train.progress import Event, Message, TrainStep

    tally = Tally(AutoTokenizer.from_pretrained(Path(args.work) / "model").pad_token_id)

    class Counting:  # the recipe's own objective, counting what each micro-batch holds
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def collate(self, feats, pad_id):
            batch = self.inner.collate(feats, pad_id)
            tally.record(batch)
            return batch

        def pack(self, feats, pad_id, capacity):  # the recipe's layout with train.packing
            batch = self.inner.pack(feats, pad_id, capacity)
            tally.record(batch)
            return batch

    real_objective_for = recipe.objective_for
    recipe.objective_for = lambda cfg: Counting(real_objective_for(cfg))
    work = Path(args.work)
    out = work / "runs" / f"{name}-{time.time_ns()}"
    method = (
        LoraMethod(r=16, alpha=32, dropout=spec.get("dropout", 0.0), target_modules=C.TARGET_MODULES)
        if spec["method"] == "lora"
        else FullMethod()
    )
    cfg = RunConfig(
        objective="sft",
        output_dir=out,
        model=ModelSection(name=str(work / "model"), max_length=512, dtype="float32"),
        data=DataSection(train=work / "train.jsonl", validation_fraction=0.0),
        method=method,
        train=TrainSection(
            max_steps=args.steps,
            batch_size=8,
            grad_accum=1,
            lr=LR[spec["method"]],
            warmup_ratio=0.1,
            log_every=1,
            save_every=10**6,
            eval_every=10**6,
            seed=0,
            packing=spec["packing"],
            device="cpu",
            packed_rows_per_pass=spec.get("rows_per_pass"),
            threads=spec.get("threads", args.threads),
            compile=spec.get("compile", "off"),
        ),
    )
    stamps: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, TrainStep):
            stamps.append(time.perf_counter())
        elif isinstance(event, Message) and not stamps:
            start[0] = time.perf_counter()  # the last message before the first step opens the loop

    start = [0.0]
    rss_before, peak_before = C.rss_bytes(), C.peak_rss_bytes()
    result = recipe.train(cfg, on_event=on_event, progress=False)
    step_times = [b - a for a, b in zip(start + stamps, stamps)]
    stats = _finish(
        tally,
        step_times,
        [1] * len(step_times),
        peak_before,
        rss_before,
        float("nan"),
        {"final_train_loss": result.losses[-1]},
    )
    model, tokenizer = load_for_inference(out, device=torch.device("cpu"))
    stats["heldout_loss"] = C.heldout_loss(model, tokenizer, json.loads((work / "heldout.json").read_text()))
    manifest = json.loads((out / "manifest.json").read_text())
    stats["tf_util"] = manifest["utilisation"]
    stats["compile_s"] = manifest.get("compile", {}).get("compile_s", 0.0)
    return stats


def worker_trl(name: str, spec: dict, args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    work = Path(args.work)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    rows = [json.loads(line) for line in open(work / "train.jsonl")]
    dataset = Dataset.from_list(rows)
    rss_before, peak_before = C.rss_bytes(), C.peak_rss_bytes()
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    peft_config = (
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=spec.get("dropout", 0.0),
            target_modules=C.TARGET_MODULES,
            task_type="CAUSAL_LM",
        )
        if spec["method"] == "lora"
        else None
    )
    config = SFTConfig(
        output_dir=str(work / "runs" / f"{name}-{time.time_ns()}"),
        use_cpu=True,
        bf16=False,
        max_steps=args.steps,
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["accum"],
        max_length=512,
        assistant_only_loss=True,
        packing=spec["packing"],
        learning_rate=LR[spec["method"]],
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    tally = Tally(tokenizer.pad_token_id)
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tally.record(batch)
        return batch

    trainer.data_collator = counting
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    trainer.train()
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    stats = _finish(tally, step_times, [spec["accum"]] * len(step_times), peak_before, rss_before, float("nan"), {})
    stats["heldout_loss"] = C.heldout_loss(trainer.model, tokenizer, json.loads((work / "heldout.json").read_text()))
    return stats


def worker(name: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # import every library up front so "RSS before" has the same baseline for both tools
    import peft  # noqa: F401
    import trl  # noqa: F401

    import tuneforge.train.recipe  # noqa: F401

    spec = CONFIGS[name]
    stats = (worker_tuneforge if spec["tool"] == "tuneforge" else worker_trl)(name, spec, args)
    print("RESULT " + json.dumps(stats), flush=True)


# ---------------------------------------------------------------- driver


def summarise(runs: list[dict], meta: dict, peak: float, method: str) -> dict:
    """Per-repeat figures (steps after warm-up) -> medians across repeats."""
    per = []
    n_params = meta["params"]
    d, layers = meta["hidden"], meta["layers"]
    n_matmul = n_params - meta["vocab"] * d  # the (tied) embedding counts once, as the LM head
    for r in runs:
        times = r["step_s"][WARMUP_STEPS:]
        steps = r["steps"][WARMUP_STEPS:]
        t = sum(times)
        real, sup, sq = (sum(s[k] for s in steps) for k in ("real", "sup", "sq"))
        # model FLOPs (PaLM appendix B convention): 6 N per real token + causal attention
        # 6 * layers * d * len per token, i.e. 6*layers*d*sum(len^2) per sequence set; padding counts as nothing
        flops = 6 * n_matmul * real + 6 * layers * d * sq
        # tuneforge's convention: (4 N + 2 N_trained) per token; LoRA r16 on q/k/v/o trains r (d + d) per module
        n_trained = n_matmul if method == "full" else layers * 4 * 16 * 2 * d
        work = (4 * n_matmul + 2 * n_trained) * real + 6 * layers * d * sq
        own = r.get("tf_util", {}).get("peak_share")
        per.append(
            {
                "sup_tps": sup / t,
                "real_tps": real / t,
                "step_s": C.median(times),
                "peak_mb": r["peak_rss"] / 2**20,
                "train_mb": (r["peak_rss"] - r["rss_before"]) / 2**20,
                "loss": r["heldout_loss"],
                "mfu": flops / t / (peak * 1e9),
                "util": work / t / (peak * 1e9),
                "tf_util": own if own is not None else float("nan"),
                "threads": r.get("tf_util", {}).get("threads", float("nan")),
                "sup_per_step": sup / len(steps),
                "compile_s": r.get("compile_s", float("nan")),
            }
        )
    return {k: C.median([p[k] for p in per]) for k in per[0]} | {
        "spread": {k: C.spread([p[k] for p in per]) for k in per[0]}
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 steps, 1 repeat: a smoke run")
    p.add_argument(
        "--steps", type=int, default=6, help="optimizer steps per run (the first is excluded from throughput)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", action="store_true", help="one spin-loop neighbour process runs for the whole benchmark")
    p.add_argument(
        "--configs",
        default="tf_lora_packed,tf_lora_allrows,trl_lora,trl_lora_pack1,tf_lora,tf_full,trl_full",
        help="comma-separated subset of: "
        + ", ".join(CONFIGS)
        + " (trl_lora_pack8 is off by default: very slow on CPU)",
    )
    p.add_argument("--work", default="/tmp/tuneforge-bench-train", help="cache for the generated model and data")
    p.add_argument(
        "--report-only", action="store_true", help="print the tables of the last (possibly partial) run again"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    if args.quick:
        args.steps, args.repeats = 3, 1
    configs = [c for c in args.configs.split(",") if c]
    meta = C.build_assets(Path(args.work), 2000)
    runs = "" if args.report_only else f"; {args.steps} steps x {args.repeats} repeats, {args.threads} threads"
    print(
        f"model: Llama {meta['layers']} layers, hidden {meta['hidden']}, vocab {meta['vocab']}, "
        f"{meta['params'] / 1e6:.1f}M parameters{runs}",
        flush=True,
    )
    saved = Path(args.work) / "last_results.json"
    if args.report_only:
        loaded = json.loads(saved.read_text())
        results, peaks = loaded["raw"], loaded["peaks"]
    else:
        passed = ["--steps", str(args.steps), "--threads", str(args.threads), "--work", args.work]
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
        try:
            results, peaks = C.interleaved(Path(__file__), configs, args.repeats, passed, args.threads, saved)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    summary = {c: summarise(r, meta, C.median(peaks), CONFIGS[c]["method"]) for c, r in results.items() if r}
    print_report(summary, peaks, args)


def print_report(summary: dict, peaks: list[float], args) -> None:
    print(
        f"\nfp32 matmul peak (1024^3 GEMM, {args.threads} threads): median {C.median(peaks):.1f} GFLOP/s, "
        f"runs {[round(x, 1) for x in peaks]}"
    )
    header = [
        "config",
        "sup tok/s",
        "real tok/s",
        "step s",
        "sup tok/step",
        "peak RSS MB",
        "train MB",
        "held-out loss",
        "MFU",
        "util",
        "tf util",
        "tf threads",
        "compile s",
    ]
    rows = [
        [
            c,
            f"{s['sup_tps']:.1f} {s['spread']['sup_tps']}",
            f"{s['real_tps']:.1f}",
            f"{s['step_s']:.2f}",
            f"{s['sup_per_step']:.0f}",
            f"{s['peak_mb']:.0f}",
            f"{s['train_mb']:.0f}",
            f"{s['loss']:.4f}",
            f"{100 * s['mfu']:.1f}%",
            f"{100 * s['util']:.1f}%",
            f"{100 * s['tf_util']:.1f}%" if s["tf_util"] == s["tf_util"] else "-",
            f"{s['threads']:.0f}" if s["threads"] == s["threads"] else "-",
            f"{s['compile_s']:.0f}" if s["compile_s"] == s["compile_s"] and s["compile_s"] else "-",
        ]
        for c, s in summary.items()
    ]
    C.print_table("medians over repeats (± = half the max-min range, relative)", header, rows)
    ratio_rows = []
    for a, b in RATIOS:
        if a in summary and b in summary:
            x, y = summary[a], summary[b]
            ratio_rows.append(
                [
                    f"{a} / {b}",
                    f"{x['sup_tps'] / y['sup_tps']:.2f}",
                    f"{x['real_tps'] / y['real_tps']:.2f}",
                    f"{x['step_s'] / y['step_s']:.2f}",
                    f"{x['peak_mb'] / y['peak_mb']:.2f}",
                    f"{x['train_mb'] / y['train_mb']:.2f}",
                    f"{x['loss'] - y['loss']:+.4f}",
                ]
            )
    C.print_table(
        "ratios tuneforge / TRL",
        ["pair", "sup tok/s", "real tok/s", "step time", "peak RSS", "train MB", "loss diff"],
        ratio_rows,
    )
    print(
        "\nMFU = (6 N real_tokens + 6 L d sum(len^2)) / time / matmul peak, N = matmul parameters "
        "(tied embedding counted once as the LM head), PaLM convention; padding is not counted.\n"
        "util = ((4 N + 2 N_trained) real_tokens + 6 L d sum(len^2)) / time / matmul peak (~4N for LoRA); "
        "tf util = the same share as the tuneforge run computed it (its own cached peak probe).\n"
        "train MB = peak RSS minus RSS before the model was loaded. held-out loss: same evaluator, 64 chats."
    )


if __name__ == "__main__":
    main()
