"""Constrained decoding on CPU: xgrammar vs llguidance vs outlines-core inside our KV-cache decode loop.

A random tiny Llama (2 layers, hidden 64) with the demo's byte-level BPE tokenizer decodes greedily under a
JSON schema; each library's step (fill the allowed-token mask, apply it to the (1, V) logits, accept the chosen
token) is timed apart from the model's forward. Prints the grammar compile time, the median per-token mask time
and each library's ratio to the fastest. The machine is shared: run it twice and read medians, not minima.

    .venv/bin/python bench/constrained_decoding.py [--vocab 512] [--tokens 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "plan": {"enum": ["free", "pro", "team"]},
    },
    "required": ["name", "age", "tags", "plan"],
    "additionalProperties": False,
}


class XGrammar:
    name = "xgrammar 0.2.9"

    def __init__(self, tok, vocab: int, stops: list[int]) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=stops)
        self.compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        self.vocab = vocab

    def start(self):
        self.matcher = self.xgr.GrammarMatcher(self.compiled)
        self.mask = self.xgr.allocate_token_bitmask(1, self.vocab)

    def step(self, logits: torch.Tensor) -> None:
        self.matcher.fill_next_token_bitmask(self.mask, 0)
        self.xgr.apply_token_bitmask_inplace(logits, self.mask)

    def accept(self, token: int) -> bool:
        assert self.matcher.accept_token(token)
        return self.matcher.is_terminated()


class LLGuidance:
    name = "llguidance 1.9.1"

    def __init__(self, tok, vocab: int, stops: list[int]) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=stops[0])
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(SCHEMA), defaults={"whitespace_flexible": False}
        )
        self.vocab = vocab

    def start(self):
        self.matcher = self.ll.LLMatcher(self.tokenizer, self.grammar)
        self.mask = self.llt.allocate_token_bitmask(1, self.vocab)

    def step(self, logits: torch.Tensor) -> None:
        self.llt.fill_next_token_bitmask(self.matcher, self.mask, 0)
        self.llt.apply_token_bitmask_inplace(logits, self.mask)

    def accept(self, token: int) -> bool:
        assert self.matcher.consume_token(token), self.matcher.get_error()
        return self.matcher.is_stopped()


class OutlinesCore:
    name = "outlines-core 0.2.14"

    def __init__(self, tok, vocab: int, stops: list[int]) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        from tuneforge.models.constrained import token_bytes

        self.oc = outlines_core
        table: dict[bytes, list[int]] = {}
        special = set(tok.all_special_ids)
        for i in range(len(tok)):
            if i not in special:
                table.setdefault(token_bytes(tok, i), []).append(i)
        vocabulary = outlines_core.Vocabulary(stops[0], table)
        self.index = outlines_core.Index(build_regex_from_schema(json.dumps(SCHEMA)), vocabulary)
        self.vocab = vocab

    def start(self):
        self.guide = self.oc.Guide(self.index)
        self.allowed = torch.zeros(self.vocab, dtype=torch.bool)

    def step(self, logits: torch.Tensor) -> None:
        self.allowed.zero_()
        self.allowed[self.guide.get_tokens()] = True
        logits.masked_fill_(~self.allowed, float("-inf"))

    def accept(self, token: int) -> bool:
        self.guide.advance(token)
        return self.guide.is_finished()


def run(lib, model, prompt: torch.Tensor, max_tokens: int, stops: list[int]) -> tuple[list[float], str]:
    from transformers import DynamicCache

    lib.start()
    times, chosen = [], []
    out = model(input_ids=prompt, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    for step in range(max_tokens):
        logits = out.logits[:, -1].float().clone()  # (1, V)
        t0 = time.perf_counter()
        lib.step(logits)
        token = int(logits.argmax(-1))
        done = token in stops or lib.accept(token)
        times.append(time.perf_counter() - t0)
        if token in stops or done:
            break
        chosen.append(token)
        out = model(
            input_ids=torch.tensor([[token]]),
            past_key_values=out.past_key_values,
            use_cache=True,
            cache_position=torch.tensor([prompt.shape[1] + step]),
        )
    return times, chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=512, help="BPE vocabulary to train (over 1000: on code too)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer

    texts = [m.content for c in support_desk_dataset(200, seed=0) for m in c.messages]
    if args.vocab > 1000:  # the support-desk text has too few distinct pairs: add transformers' own source
        import pathlib

        import transformers

        files = sorted(pathlib.Path(transformers.__file__).parent.glob("models/*/modeling_*.py"))[:60]
        texts += [f.read_text() for f in files]
    tok = build_tokenizer(texts, vocab_size=args.vocab)
    torch.manual_seed(0)
    model = build_tiny_llama(tok, hidden=64, layers=2).eval()
    vocab = model.config.vocab_size
    stops = [tok.eos_token_id]
    prompt = torch.tensor([tok("Give me the customer as JSON:")["input_ids"]])
    print(
        f"vocab {len(tok)} (logits {vocab}), greedy, up to {args.tokens} tokens, {args.runs} runs, 1 thread", flush=True
    )
    rows = []
    for cls in (XGrammar, LLGuidance, OutlinesCore):
        t0 = time.perf_counter()
        lib = cls(tok, vocab, stops)
        compile_s = time.perf_counter() - t0
        print(f"  {cls.name}: compiled in {compile_s:.2f} s", flush=True)
        per_token, text = [], ""
        with torch.inference_mode():
            for _ in range(args.runs):
                times, chosen = run(lib, model, prompt, args.tokens, stops)
                per_token.extend(times)
                text = tok.decode(chosen)
        rows.append((cls.name, compile_s, statistics.median(per_token), len(per_token) / args.runs, text))
    best = min(r[2] for r in rows)
    print(f"{'library':<22}{'compile s':>10}{'mask us/token':>15}{'ratio':>7}{'tokens':>8}  output")
    for name, compile_s, med, n, text in rows:
        print(f"{name:<22}{compile_s:>10.3f}{med * 1e6:>15.1f}{med / best:>7.2f}{n:>8.0f}  {text[:60]!r}")


if __name__ == "__main__":
    main()
