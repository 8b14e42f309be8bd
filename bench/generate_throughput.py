"""Generation throughput: tuneforge's `generate_batch` vs `transformers` `generate`, and the
service under concurrent requests.

    .venv/bin/python bench/generate_throughput.py           # median of 5 repeats
    .venv/bin/python bench/generate_throughput.py --quick   # 1 repeat, 16 new tokens

Same model as bench/train_throughput.py (Llama ~26M parameters from_config, fp32, CPU),
greedy decoding with the KV cache, prompts taken from held-out chats. Both sides produce
the same tokens (greedy, same weights), so tokens/s compare like for like.

In-process, each generate call of one side is paired with the same call of the other (which
goes first alternates), so contention from other users hits both alike. The server part starts the tuneforge service
(tuneforge.serve) on 127.0.0.1 with the same model as its 'demo' base and sends the same 8
chat requests serially, then all 8 at once (the engine micro-batches them).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def prompts_from(work: Path, n: int) -> list[list[dict]]:
    """System + first user message of held-out chats: the prompt up to the first answer."""
    chats = json.loads((work / "heldout.json").read_text())
    return [c[:2] for c in chats[:n]]


def hf_generate(model, tokenizer, prompts: list[list[dict]], new_tokens: int) -> int:
    """The plain transformers baseline: chat template, left padding, model.generate (greedy, KV cache)."""

    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc["input_ids"].shape[1] :]
    stops = set(model.generation_config.eos_token_id or [])
    count = 0
    for row in new.tolist():
        ended = next((k for k, t in enumerate(row) if t in stops), None)
        count += len(row) if ended is None else ended + 1
    return count


def tf_generate(model, tokenizer, prompts: list[list[dict]], new_tokens: int) -> int:
    from tuneforge.models.generate import generate_batch

    return sum(r.completion_tokens for r in generate_batch(model, tokenizer, prompts, max_new_tokens=new_tokens))


def in_process(work: Path, repeats: int, new_tokens: int) -> dict[str, list[float]]:
    """Paired measurement: every call of one side is followed (or preceded) by the same call of the other."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    prompts = prompts_from(work, 8)
    sides = {"hf": hf_generate, "tf": tf_generate}
    rates: dict[str, list[float]] = {}
    with torch.no_grad():
        for fn in sides.values():  # warm-up (first-call overheads, allocator)
            fn(model, tokenizer, prompts[:2], new_tokens)
        for batch in (1, 8):
            calls = [prompts[i : i + batch] for i in range(0, len(prompts), batch)] * (2 if batch == 8 else 1)
            for r in range(repeats):
                tokens, seconds = {k: 0 for k in sides}, {k: 0.0 for k in sides}
                for k, call in enumerate(calls):  # alternate which side goes first
                    for side in ("hf", "tf") if (k + r) % 2 == 0 else ("tf", "hf"):
                        t = time.perf_counter()
                        tokens[side] += sides[side](model, tokenizer, call, new_tokens)
                        seconds[side] += time.perf_counter() - t
                for side in sides:
                    rates.setdefault(f"{side}_b{batch}", []).append(tokens[side] / seconds[side])
                print(
                    f"  repeat {r + 1}/{repeats} batch {batch}: "
                    + ", ".join(f"{k} {tokens[k] / seconds[k]:.1f} tok/s" for k in sides),
                    file=sys.stderr,
                    flush=True,
                )
    return rates


def server(work: Path, repeats: int, new_tokens: int) -> dict[str, list[float]]:
    """Serial vs 8 concurrent chat requests through the service's HTTP API (openai client)."""
    home = Path(tempfile.mkdtemp(prefix="tf-bench-gen-"))
    os.environ["TUNEFORGE_HOME"] = str(home)
    import shutil

    import openai

    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import serve_in_thread  # the tests' helper: the benchmark serves as the tests do

    demo = home / "models" / "demo"
    shutil.copytree(work / "model", demo)
    (demo / ".complete").write_text("ok\n")
    settings = ServeSettings(database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve")
    store = Store(settings.database_url)
    app = create_app(settings, store)
    _, key = keys.create_key(store, "bench")
    prompts = prompts_from(work, 8)
    rates: dict[str, list[float]] = {"serial": [], "concurrent_8": []}
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)

        def ask(messages) -> int:
            reply = client.chat.completions.create(
                model="demo", messages=messages, max_tokens=new_tokens, temperature=0
            )
            return reply.usage.completion_tokens

        ask(prompts[0])  # loads the model
        for r in range(repeats):
            t = time.perf_counter()
            tokens = sum(ask(p) for p in prompts)
            rates["serial"].append(tokens / (time.perf_counter() - t))
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(len(prompts)) as pool:
                tokens = sum(pool.map(ask, prompts))
            rates["concurrent_8"].append(tokens / (time.perf_counter() - t))
            print(
                f"  repeat {r + 1}/{repeats} server: serial {rates['serial'][-1]:.1f}, "
                f"concurrent {rates['concurrent_8'][-1]:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repeat, 16 new tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="1 avoids OpenMP barrier stalls on a shared machine")
    p.add_argument("--no-server", action="store_true", help="skip the HTTP service part")
    p.add_argument(
        "--work",
        default="/tmp/tuneforge-bench-train",
        help="cache for the generated model and data (shared with train_throughput)",
    )
    args = p.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 1, 16
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    meta = C.build_assets(work, 2000)
    print(
        f"model: Llama {meta['layers']} layers, hidden {meta['hidden']}, {meta['params'] / 1e6:.1f}M parameters, fp32; "
        f"{args.new_tokens} new tokens per prompt, greedy; {args.repeats} repeats, {args.threads} threads",
        flush=True,
    )
    rates = in_process(work, args.repeats, args.new_tokens)
    if not args.no_server:
        try:
            rates |= server(work, args.repeats, args.new_tokens)
        except Exception as exc:  # the service is another area's code: report, don't hide the rest
            print(f"server benchmark not run: {type(exc).__name__}: {exc}")
    rows = [[name, f"{C.median(v):.1f}", C.spread(v), " ".join(f"{x:.0f}" for x in v)] for name, v in rates.items()]
    C.print_table(
        "generated tokens/s (medians; ± = half the max-min range, relative)", ["config", "tok/s", "noise", "runs"], rows
    )
    ratios = [
        ("tf_b1", "hf_b1", "tuneforge / transformers, batch 1"),
        ("tf_b8", "hf_b8", "tuneforge / transformers, batch 8"),
        ("concurrent_8", "serial", "server: 8 concurrent / serial"),
    ]
    C.print_table(
        "ratios",
        ["pair", "ratio"],
        [
            [label, f"{C.median(rates[a]) / C.median(rates[b]):.2f}"]
            for a, b, label in ratios
            if a in rates and b in rates
        ],
    )


if __name__ == "__main__":
    main()
