"""Does GRPO add what SFT left half-learned? SFT, then GRPO from the SFT model, compared on held-out prompts.

    python examples/grpo_facts/run.py [--out runs/grpo_facts] [--sft-steps 120] [--grpo-steps 60]

1. data: Lumora support-desk chats (`tuneforge.data.synthetic`), split into SFT chats, RFT prompts (system + user
   turn, plus the `fact` the answer must state) and a held-out test split whose questions occur in neither.
2. SFT (sft.yaml): a short LoRA run on the demo model - it learns the house style and some of the facts.
3. the SFT adapter merged into a standalone folder (`tuneforge export`), the base of step 4 and its KL reference.
4. GRPO (grpo.yaml): sampled answers rewarded 1 when they state the prompt's fact (string_check ilike).
5. `tuneforge eval` of the SFT run with the GRPO run beside it (`--run`): fact_accuracy on the test split, each with
   its bootstrap interval, and the paired difference GRPO - SFT with its interval.

The same as commands:

    python examples/grpo_facts/run.py --data-only --out runs/grpo_facts
    tuneforge train examples/grpo_facts/sft.yaml --set data.train=runs/grpo_facts/data/sft_train.jsonl ...
    tuneforge export runs/grpo_facts/sft --out runs/grpo_facts/sft_merged
    tuneforge train examples/grpo_facts/grpo.yaml ...
    tuneforge eval runs/grpo_facts/sft --run runs/grpo_facts/grpo --approaches fine_tuned

Writes results.json under --out (the eval report, eval_report.html, goes to --out/eval).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from tuneforge.config import load_config
from tuneforge.data.readers import write_jsonl
from tuneforge.data.synthetic import support_desk_dataset
from tuneforge.eval.evaluate import resolve_target, run_eval
from tuneforge.models.loading import load_for_inference
from tuneforge.train import train
from tuneforge.train.pretrain import ensure_demo_model

HERE = Path(__file__).parent
SPLITS = {"test": 120, "sft_val": 24, "sft_train": 160, "rft_val": 16, "rft_train": 240}


def make_data(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Disjoint splits of distinct questions; RFT records are OpenAI's RFT JSONL (messages + the grader's field)."""
    chats = support_desk_dataset(sum(SPLITS.values()), seed)
    random.Random(seed).shuffle(chats)
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, n in SPLITS.items():
        rows, start = chats[start : start + n], start + n
        paths[name] = folder / f"{name}.jsonl"
        if name.startswith("rft"):
            records = [{"messages": [m.to_dict() for m in c.messages[:2]], "fact": c.metadata["fact"]} for c in rows]
            paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            write_jsonl(rows, paths[name])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/grpo_facts"))
    p.add_argument("--sft-steps", type=int, default=None, help="train.max_steps of the SFT run (sft.yaml's if unset)")
    p.add_argument("--grpo-steps", type=int, default=None, help="train.max_steps of the GRPO run (grpo.yaml's)")
    p.add_argument("--data-only", action="store_true", help="write the data splits and stop")
    args = p.parse_args()
    out = args.out.resolve()
    data = make_data(out / "data")
    if args.data_only:
        print(json.dumps({k: str(v) for k, v in data.items()}, indent=2))
        return
    ensure_demo_model()
    times = {}

    started = time.perf_counter()
    sft_set = [f"output_dir={out / 'sft'}", f"data.train={data['sft_train']}", f"data.validation={data['sft_val']}"]
    sft_set += [f"data.test={data['test']}"] + ([f"train.max_steps={args.sft_steps}"] if args.sft_steps else [])
    train(load_config(HERE / "sft.yaml", sft_set), progress=False)
    times["sft_s"] = time.perf_counter() - started

    merged = out / "sft_merged"  # what `tuneforge export` writes
    model, tok = load_for_inference(out / "sft", merge=True)
    model.save_pretrained(merged)
    tok.save_pretrained(merged)

    started = time.perf_counter()
    grpo_set = [f"output_dir={out / 'grpo'}", f"model.name={merged}", f"data.train={data['rft_train']}"]
    grpo_set += [f"data.validation={data['rft_val']}"] + (
        [f"train.max_steps={args.grpo_steps}"] if args.grpo_steps else []
    )
    grpo = train(load_config(HERE / "grpo.yaml", grpo_set), progress=False)
    times["grpo_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report = run_eval(resolve_target(out / "sft", [out / "grpo"]), out / "eval", approaches=["fine_tuned"])
    times["eval_s"] = time.perf_counter() - started
    summary = summarise(report, grpo.run_dir)
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def summarise(report: dict, grpo_run: Path) -> dict:
    """fact_accuracy of each run with its interval, the paired GRPO - SFT difference, and the GRPO run's rewards."""
    approaches = {a["name"]: a for a in report["approaches"]}
    out = {"test_examples": report["test_examples"], "fact_accuracy": {}}
    for name, a in approaches.items():
        out["fact_accuracy"][name] = a["metrics"]["fact_accuracy"]
    facts = report["verdict"]["families"].get("facts", {})
    out["paired_difference"] = facts.get("differences")  # "A - B": mean, 95% interval, p_better (paired bootstrap)
    out["verdict"] = report["verdict"]["summary"]
    records = [json.loads(line) for line in (grpo_run / "metrics.jsonl").read_text().splitlines()]
    out["grpo_train_reward"] = [r["metrics"]["reward"] for r in records if r["type"] == "train" and "metrics" in r]
    out["grpo_valid_reward"] = [r["reward"] for r in records if r["type"] == "eval" and "reward" in r]
    return out


if __name__ == "__main__":
    main()
