"""Serving latency and the gain from micro-batching, through the HTTP API with the openai client.

    .venv/bin/python bench/serve_latency.py                # hidden 256, 4 layers, 40 requests per setting
    .venv/bin/python bench/serve_latency.py --quick

A Llama built with from_config (demo tokenizer) is installed as the 'demo' base and a LoRA
adapter (random, non-zero) as a fine-tuned model of it, in a temporary $TUNEFORGE_HOME.
Measured: sequential chat latency (base, adapter), time to first streamed token, and the
throughput of 8 concurrent clients with batching on (window 10 ms, up to 8) and off.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(home: Path, hidden: int, layers: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    texts = [m.content for c in support_desk_dataset(200, 0) for m in c.messages]
    tok = build_tokenizer(texts, vocab_size=1024)
    folder = home / "models" / "demo"
    model = build_tiny_llama(tok, hidden=hidden, layers=layers, heads=4)
    save_model_folder(model, tok, folder)
    (folder / ".complete").write_text("ok\n")
    peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    adapter = home / "adapter"
    peft.save_pretrained(adapter)
    return adapter


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"median {statistics.median(ms):7.1f} ms   p95 {ms[int(0.95 * (len(ms) - 1))]:7.1f} ms"


def report(label: str, results: dict) -> None:
    extra = f"   {results[label + '_rps']:.2f} req/s" if label + "_rps" in results else ""
    print(f"{label:26s} {summary(results[label])}{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for generation (default: torch's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 8 if args.quick else args.requests
    if args.quick:
        args.max_tokens = 16
    home = Path(tempfile.mkdtemp(prefix="tf-bench-serve-"))
    os.environ["TUNEFORGE_HOME"] = str(home)
    import openai

    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.ids import now
    from tuneforge.serve.settings import ServeSettings
    from tuneforge.serve.tables import FineTunedModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import serve_in_thread  # the tests' helper: the benchmark serves as the tests do

    adapter = build(home, args.hidden, args.layers)
    settings = ServeSettings(
        database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=args.threads
    )
    store = Store(settings.database_url)
    app = create_app(settings, store)
    _, key = keys.create_key(store, "bench")
    project = keys.authenticate(store, key).project_id
    with store.session() as s:
        s.add(
            FineTunedModel(
                id="ft:demo:bench:0001",
                project_id=project,
                job_id="-",
                base_model="demo",
                kind="adapter",
                path=str(adapter),
                created_at=now(),
            )
        )
    results = {}
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        msgs = [{"role": "user", "content": "How long is the warranty on the Cam Pro?"}]

        def ask(model, i=0):
            return c.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"{msgs[0]['content']} ({i})"}],
                max_tokens=args.max_tokens,
                temperature=0,
            )

        print(
            f"model: Llama hidden {args.hidden}, {args.layers} layers; {args.max_tokens} new tokens per request; "
            f"{n} requests per setting; "
            f"torch threads {args.threads or 'default'}",
            flush=True,
        )
        for model in ("demo", "ft:demo:bench:0001"):
            ask(model)  # load
            results[model] = [timed(lambda model=model: ask(model)) for _ in range(n)]
            report(model, results)
        ttft = []
        for _ in range(n):
            t0, first = time.perf_counter(), None
            for chunk in c.chat.completions.create(
                model="ft:demo:bench:0001", messages=msgs, max_tokens=args.max_tokens, temperature=0, stream=True
            ):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = (time.perf_counter() - t0) * 1000
            ttft.append(first)  # the stream is read to the end so that the connection is reused
        results["stream_first_token"] = ttft
        report("stream_first_token", results)
        for label, batch in (("concurrent_8_batched", 8), ("concurrent_8_unbatched", 1)):
            settings.max_batch_size = batch
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(8) as pool:
                latencies = list(pool.map(lambda i: timed(lambda: ask("ft:demo:bench:0001", i)), range(n * 2)))
            results[label] = latencies
            results[label + "_rps"] = n * 2 / (time.perf_counter() - t0)
            report(label, results)
    print(json.dumps({k: (statistics.median(v) if isinstance(v, list) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
