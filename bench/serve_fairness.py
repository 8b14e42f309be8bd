"""Fairness under one abusive client: 16 concurrent short chat clients, alone and beside one client
that keeps sending a 100 KB prompt. Printed: the short requests' p50/p99 in each run and the p99 ratio
(with / without), and what the long client got back.

    .venv/bin/python bench/serve_fairness.py                    # the demo's 512-token context: refused (400)
    .venv/bin/python bench/serve_fairness.py --context 32768    # a context the 100 KB prompt fits in
    .venv/bin/python bench/serve_fairness.py --quick

A 2-layer Llama built with from_config is the 'demo' base in a temporary $TUNEFORGE_HOME; the server
runs in this process on 127.0.0.1 (uvicorn in a thread), clients are httpx threads.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(home: Path, hidden: int, context: int) -> None:
    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    texts = [m.content for c in support_desk_dataset(200, 0) for m in c.messages]
    tok = build_tokenizer(texts, vocab_size=1024)
    folder = home / "models" / "demo"
    save_model_folder(build_tiny_llama(tok, hidden=hidden, layers=2, max_positions=context), tok, folder)
    (folder / ".complete").write_text("ok\n")


def pct(ms: list[float], q: float) -> float:
    ms = sorted(ms)
    return ms[min(len(ms) - 1, int(q * len(ms)))]


def run(url: str, key: str, clients: int, per_client: int, long_kb: int | None) -> tuple[list, collections.Counter]:
    """Short clients' latencies (ms), and the long client's status codes when `long_kb` is set."""
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {key}"}
    done = threading.Event()
    long_status: collections.Counter = collections.Counter()

    def short(i: int) -> list[float]:
        out = []
        with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
            for k in range(per_client):
                t0 = time.perf_counter()
                messages = [{"role": "user", "content": f"where is parcel {i}-{k}?"}]
                r = http.post(
                    "/v1/chat/completions",
                    json={"model": "demo", "max_tokens": 2, "temperature": 0, "messages": messages},
                )
                r.raise_for_status()
                out.append((time.perf_counter() - t0) * 1000)
        return out

    def abuser() -> None:
        prompt = ("where is my parcel? " * (long_kb * 1024 // 20 + 1))[: long_kb * 1024]
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            while not done.is_set():
                r = http.post(
                    "/v1/chat/completions",
                    json={"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]},
                )
                long_status[r.status_code] += 1

    side = threading.Thread(target=abuser, daemon=True) if long_kb else None
    if side:
        side.start()
        time.sleep(0.5)  # the long client is already in the queue when the short ones start
    with cf.ThreadPoolExecutor(clients) as pool:
        latencies = [ms for out in pool.map(short, range(clients)) for ms in out]
    done.set()
    if side:
        side.join(timeout=600)
    return latencies, long_status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--long-kb", type=int, default=100)
    parser.add_argument("--context", type=int, default=512, help="the model's max_position_embeddings")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating without/with runs")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.per_client, args.repeats = 3, 1
    home = Path(tempfile.mkdtemp(prefix="tf-bench-fair-"))
    os.environ["TUNEFORGE_HOME"] = str(home)
    from helpers import serve_in_thread
    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    build(home, args.hidden, args.context)
    settings = ServeSettings(database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=1)
    store = Store(settings.database_url)
    _, key = keys.create_key(store, "bench")
    alone, beside, long_status = [], [], collections.Counter()
    with serve_in_thread(create_app(settings, store)) as url:
        run(url, key, 4, 1, None)  # warm-up: the model is loaded
        for _ in range(args.repeats):
            alone += run(url, key, args.clients, args.per_client, None)[0]
            ms, status = run(url, key, args.clients, args.per_client, args.long_kb)
            beside += ms
            long_status.update(status)
    print(f"{args.clients} short clients x {args.per_client} requests x {args.repeats} repeats, context {args.context}")
    for label, ms in (("alone", alone), (f"beside a {args.long_kb} KB prompt", beside)):
        print(f"  {label:28s} p50 {pct(ms, 0.5):8.1f} ms   p99 {pct(ms, 0.99):8.1f} ms   (n={len(ms)})")
    print(f"  short requests' p99 ratio (with / without): {pct(beside, 0.99) / pct(alone, 0.99):.2f}")
    print(f"  the long client's answers: {dict(long_status)}  (mean of shorts alone {statistics.mean(alone):.1f} ms)")


if __name__ == "__main__":
    main()
