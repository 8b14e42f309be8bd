"""Constrained decoding: the bytes each token spells, and grammars (JSON, a JSON schema, a tool call) compiled
into per-row matchers that mask the logits of the decode loop in `tuneforge.models.generate`."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass


@functools.cache
def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what the ByteLevel pre-tokenizer writes for each byte): char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    order, chars = list(printable), list(printable)
    for b in range(256):
        if b not in printable:
            order.append(b)
            chars.append(256 + len(chars) - len(printable))
    return {chr(c): b for b, c in zip(order, chars)}


def _decoder_type(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return decoder.get("type")


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The UTF-8 bytes one token adds to the text (part of a character for some byte-level tokens)."""
    cache = tokenizer.__dict__.setdefault("_tuneforge_token_bytes", {})
    if token_id not in cache:
        piece = tokenizer.convert_ids_to_tokens(token_id)
        table = _byte_level_chars() if _decoder_type(tokenizer) == "ByteLevel" else None
        if piece is not None and table is not None and all(c in table for c in piece):
            cache[token_id] = bytes(table[c] for c in piece)
        elif piece is not None and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            cache[token_id] = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        else:
            cache[token_id] = tokenizer.decode([token_id]).encode()
    return cache[token_id]


@dataclass(frozen=True)
class Grammar:
    """What an answer must be, compiled by xgrammar. `bench/constrained_decoding.py` (CPU, shared machine):
    per token xgrammar and outlines-core are close (512 tokens: ~120 vs ~60 us; 4000 tokens: 78 vs 67 us),
    llguidance 4-7x slower; but outlines-core builds its index per schema in 130 s at 4000 tokens (xgrammar
    1 s, llguidance 6 s), and a request's schema is compiled when it arrives. Hashable: requests with the
    same grammar can share a batch.

    kind: "json_object" (any JSON object), "json_schema" (`source`: the schema as JSON) or "tool_call"
    (`source`: the call's JSON schema; `wrap`: the template's text around it, e.g. hermes <tool_call> tags).
    JSON is written without free whitespace, so a weak model cannot spend its tokens on blank lines.
    """

    kind: str
    source: str = ""
    wrap: tuple[str, str] = ("", "")

    def matcher(self, tokenizer, vocab: int, stop_ids: list[int]) -> Matcher:
        return Matcher(_compiled(tokenizer, vocab, tuple(stop_ids), self), vocab)


class Matcher:
    """One row's place in its grammar: masks the logits of tokens that cannot come next; once the output is
    complete only the stop tokens remain."""

    def __init__(self, compiled, vocab: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self._m = xgr.GrammarMatcher(compiled)
        self._mask = xgr.allocate_token_bitmask(1, vocab)  # (1, ceil(V / 32)) int32

    def mask(self, logits, row: int) -> None:
        """Set the disallowed tokens of logits[row] (a float (B, V) tensor) to -inf, in place."""
        self._m.fill_next_token_bitmask(self._mask, 0)
        self._xgr.apply_token_bitmask_inplace(logits[row : row + 1], self._mask)

    def accept(self, token: int) -> None:
        if not self._m.is_terminated():
            self._m.accept_token(token)


class GrammarError(ValueError):
    """A schema the grammar compiler refuses (its message says why)."""


def _compiled(tokenizer, vocab: int, stop_ids: tuple[int, ...], grammar: Grammar):
    """Compile once per tokenizer, vocabulary and grammar (a schema compiles in ~0.1-1 s on CPU)."""
    import xgrammar as xgr

    cache = tokenizer.__dict__.setdefault("_tuneforge_grammars", {})
    key = (vocab, stop_ids)
    if key not in cache:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=list(stop_ids))
        cache[key] = (xgr.GrammarCompiler(info, max_threads=1), {})
    compiler, done = cache[key]
    if grammar not in done:
        if len(done) >= 64:  # bounded: every distinct schema of every client would otherwise stay
            done.pop(next(iter(done)))
        try:
            source, (before, after) = grammar.source, grammar.wrap
            if grammar.kind == "json_object":
                source = json.dumps({"type": "object"})
            elif grammar.kind == "tool_call":
                source, (before, after) = _call_schema(grammar.source, getattr(tokenizer, "chat_template", None))
            g = xgr.Grammar.from_json_schema(source, any_whitespace=False, strict_mode=True)
            parts = [_literal(before)] if before else []
            parts += [g] + ([_literal(after)] if after else [])
            done[grammar] = compiler.compile_grammar(xgr.Grammar.concat(*parts) if len(parts) > 1 else g)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GrammarError(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__) from exc
    return done[grammar]


def _call_schema(functions: str, template: str | None) -> tuple[str, tuple[str, str]]:
    """One call of one of `functions` ([{"name", "parameters"}] as JSON) in the syntax the chat template
    writes (`tuneforge.data.tool_calls.tool_format`): the call's JSON schema and the text around it."""
    from tuneforge.data.tool_calls import tool_format

    fmt = tool_format(template)
    if fmt == "mistral":
        raise GrammarError("mistral's [TOOL_CALLS] is a special token a grammar cannot write; use tool_choice auto")
    key, wrap = ("parameters", ("", "")) if fmt == "llama3" else ("arguments", ("<tool_call>\n", "\n</tool_call>"))
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, key: f["parameters"]},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for f in json.loads(functions)
    ]
    return json.dumps(calls[0] if len(calls) == 1 else {"anyOf": calls}), wrap


def _literal(text: str):
    import xgrammar as xgr

    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")


def validate_schema(schema: dict) -> None:
    """Refuse a schema that is not a JSON schema (jsonschema's meta-schema check)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top level)"
        raise GrammarError(f"not a valid JSON schema at {where}: {exc.message}") from None
