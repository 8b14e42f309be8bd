"""tuneforge serve vs llama.cpp's own server (llama-cpp-python's OpenAI-compatible llama_cpp.server), CPU.

    .venv/bin/python bench/llamacpp_serving.py                    # hidden 512, 8 layers (~30M params), 3 repeats
    .venv/bin/python bench/llamacpp_serving.py --quick

One Llama built with from_config (the demo tokenizer, 2048 tokens) is installed as tuneforge's 'demo' base
and exported with `tuneforge.export.gguf` as f16 and q8_0. Each server runs in its own process (peak RSS
is its own): tuneforge serve on the HF folder (float32, its CPU dtype), llama_cpp.server on each GGUF file.
The three are measured interleaved (repeat r runs them in a rotated order) so that other load on the
machine hits all alike; the table gives medians over repeats.

Per server: time to first streamed token (TTFT), new tokens/s of one streamed request after its first
token (batch 1 decode), new tokens/s of 8 concurrent clients (all completion tokens / wall time), and peak
RSS. Batch-1 decoding reads every weight once per token, so bandwidth / weight bytes is its bound: the
memory bandwidth is measured here (numpy copy of 512 MiB, read + write bytes / s, median of 5) and each
server's batch-1 rate is given as a fraction of that bound.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "How long is the warranty on the Cam Pro, and can I extend it?"


def build(home: Path, hidden: int, layers: int) -> tuple[Path, dict[str, Path], int]:
    """(HF folder installed as the demo base, {quant: gguf file}, parameters)."""
    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.export.gguf import export_gguf
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    texts = [m.content for c in support_desk_dataset(200, 0) for m in c.messages]
    tok = build_tokenizer(texts, vocab_size=2048)
    folder = home / "models" / "demo"
    model = build_tiny_llama(tok, hidden=hidden, layers=layers, heads=8, max_positions=1024)
    save_model_folder(model, tok, folder)
    (folder / ".complete").write_text("ok\n")
    result = export_gguf(folder, home / "gguf", ["f16", "q8_0"])
    return folder, {f.quant: f.path for f in result.files}, sum(p.numel() for p in model.parameters())


def bandwidth() -> float:
    """Bytes/s of a large array copy (each byte read once and written once), median of 5."""
    import numpy as np

    a = np.ones(512 * 2**20 // 8)
    b = np.empty_like(a)
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        rates.append(2 * a.nbytes / (time.perf_counter() - t0))
    return statistics.median(rates)


def serve_tuneforge(home: Path, port: int, key_file: Path, threads: int) -> None:
    """Child process: the tuneforge service on 127.0.0.1:port with one API key (written to key_file)."""
    import uvicorn

    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    settings = ServeSettings(
        database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=threads
    )
    store = Store(settings.database_url)
    app = create_app(settings, store)
    key_file.write_text(keys.create_key(store, "bench")[1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start(kind: str, home: Path, gguf: dict[str, Path], port: int, threads: int) -> tuple[subprocess.Popen, str, str]:
    """(process, base URL, API key) of one server, once it answers."""
    import openai

    env = {**os.environ, "TUNEFORGE_HOME": str(home)}
    if kind == "tuneforge":
        key_file = home / f"key-{port}"
        cmd = [sys.executable, __file__, "--child", str(home), str(port), str(key_file), str(threads)]
    else:
        key_file = None
        cmd = [
            *(sys.executable, "-m", "llama_cpp.server", "--model", str(gguf[kind.removeprefix("llama.cpp-")])),
            *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads)),
            *("--n_threads_batch", str(threads), "--model_alias", "demo", "--chat_format", "chatml"),
        ]
    log = home / f"server-{port}.log"  # a file, not a pipe: llama.cpp's load log would fill a pipe and block it
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()[-2000:]}")
        key = key_file.read_text() if key_file and key_file.exists() else "none"
        if key_file is None or key_file.exists():
            try:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
                client.models.list()
                return proc, f"http://127.0.0.1:{port}/v1", key
            except (openai.APIConnectionError, openai.APIStatusError):
                pass  # still starting (not listening yet, or models not loaded): poll again
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(url: str, key: str, max_tokens: int, n: int) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)

    def ask(i: int, stream: bool):
        return client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": f"{QUESTION} ({i})"}],
            max_tokens=max_tokens,
            temperature=0,
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )

    ask(0, False)  # load and warm
    ttft, decode = [], []
    for i in range(n):
        t0, first, chunks = time.perf_counter(), None, 0
        for chunk in ask(i, True):
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        ttft.append((first - t0) * 1000)
        if chunks > 1:
            decode.append((chunks - 1) / (end - first))
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        usages = list(pool.map(lambda i: ask(100 + i, False).usage.completion_tokens, range(2 * 8)))
    return {
        "ttft_ms": statistics.median(ttft),
        "batch1_tokens_per_s": statistics.median(decode),
        "concurrent8_tokens_per_s": sum(usages) / (time.perf_counter() - t0),
        "concurrent8_mean_tokens": statistics.mean(usages),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=6, help="sequential streamed requests per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        home, port, key_file, threads = args.child
        os.environ["TUNEFORGE_HOME"] = home
        serve_tuneforge(Path(home), int(port), Path(key_file), int(threads))
        return
    if args.quick:
        args.requests, args.repeats, args.max_tokens = 3, 1, 32
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import free_port
    from tuneforge.export.gguf import weight_bytes

    home = Path(tempfile.mkdtemp(prefix="tf-bench-llamacpp-"))
    os.environ["TUNEFORGE_HOME"] = str(home)
    folder, gguf, params = build(home, args.hidden, args.layers)
    bw = bandwidth()
    weights = {"tuneforge": 4 * params, **{f"llama.cpp-{q}": weight_bytes(p) for q, p in gguf.items()}}
    kinds = list(weights)
    print(
        f"model: Llama hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M params; {args.max_tokens} new "
        f"tokens per request; {args.requests} streamed requests + 16 over 8 clients per repeat; {args.repeats} "
        f"repeats interleaved; {args.threads} threads per server; memory bandwidth {bw / 1e9:.1f} GB/s (copy)",
        flush=True,
    )
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            proc, url, key = start(kind, home, gguf, free_port(), args.threads)
            try:
                result = measure(url, key, args.max_tokens, args.requests)
                result["peak_rss_mib"] = peak_rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
            runs[kind].append(result)
            print(f"repeat {r + 1} {kind}: {json.dumps({k: round(v, 2) for k, v in result.items()})}", flush=True)
    table = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    base = table["tuneforge"]
    print(
        f"\n{'server':18s} {'weights MiB':>11s} {'TTFT ms':>8s} {'b1 tok/s':>9s} {'bound':>7s} "
        f"{'of bound':>8s} {'8-conc tok/s':>12s} {'RSS MiB':>8s}"
    )
    for kind, m in table.items():
        bound = bw / weights[kind]
        print(
            f"{kind:18s} {weights[kind] / 2**20:11.1f} {m['ttft_ms']:8.1f} {m['batch1_tokens_per_s']:9.1f} "
            f"{bound:7.0f} {m['batch1_tokens_per_s'] / bound:8.1%} {m['concurrent8_tokens_per_s']:12.1f} "
            f"{m['peak_rss_mib']:8.0f}"
        )
    for kind in kinds[1:]:
        m = table[kind]
        print(
            f"{kind} / tuneforge: batch-1 decode x{m['batch1_tokens_per_s'] / base['batch1_tokens_per_s']:.2f}, "
            f"8 concurrent x{m['concurrent8_tokens_per_s'] / base['concurrent8_tokens_per_s']:.2f}, "
            f"TTFT x{m['ttft_ms'] / base['ttft_ms']:.2f}, RSS x{m['peak_rss_mib'] / base['peak_rss_mib']:.2f}"
        )
    print(json.dumps({"bandwidth_bytes_per_s": bw, "weight_bytes": weights, "medians": table}))


if __name__ == "__main__":
    main()
