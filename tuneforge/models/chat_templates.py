"""Chat templates for models that ship without one (GPT-2, Pythia, OPT and other base models), chosen with
`model.chat_template: NAME | path.jinja`, and the prompt rules saved beside every artifact.

The built-in templates are written from the public descriptions of each family's template (the
tokenizer_config.json of the model named beside each one), reduced to what they render for plain
role/content messages. Every template closes an assistant turn with a special token, which is what the
label masks (`data.chat_spans`) train and what generation stops at.

Special tokens a template writes that the tokenizer lacks are added to it as special tokens; the model's
embedding matrix (and an untied output layer) then grows by as many rows, each initialised to the mean of
the existing rows (Hewitt, "Initializing new word embeddings", 2021: no token starts out likelier than the
average; no random noise, so a base resized again on load gets the same rows). Adapter methods keep those
rows frozen and peft writes the resized matrices into the adapter (`save_embedding_layers`); full and
partial fine-tuning write the whole model.

The chosen template is saved with the tokenizer in the artifact folder (chat_template.jinja) and the
run's `data.system_prompt` policy in its tokenizer_config.json (`tuneforge_system_prompt`), so
generate, eval, export and serve render prompts as training did.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.tool_calls import TOOLS_PROMPT
from tuneforge.errors import ConfigError, Problem

POLICY_KEY = "tuneforge_system_prompt"  # tokenizer_config.json key holding the run's data.system_prompt
_MARKER = re.compile(r"<\|[A-Za-z0-9_.-]+\|>")  # `<|name|>` control tokens written by a template from a file


@dataclass(frozen=True)
class BuiltinTemplate:
    name: str
    source: str  # the model whose template it follows
    jinja: str
    special_tokens: tuple[str, ...]  # tokens the template writes that must be single special tokens
    needs_eos: bool = False  # closes assistant turns with the tokenizer's own eos_token


# ChatML; with tools, Qwen 2.5's layout (data.tool_calls.TOOLS_PROMPT in the system turn, <tool_call> blocks,
# results as <tool_response> blocks of one user turn): the same text as the fallback rendering of any template.
_TOOLS_HEAD, _TOOLS_TAIL = (json.dumps(part) for part in TOOLS_PROMPT.format(tools="\0").split("\0"))
_CHATML = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ " + _TOOLS_HEAD + " }}{% for tool in tools %}{{ (tool | tojson) + ('' if loop.last else '\n') }}{% endfor %}"
    "{{ " + _TOOLS_TAIL + " + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n' if loop.first or messages[loop.index0 - 1]['role'] != 'tool' else '\n' }}"
    "{{ '<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] + '\n' if message['content'] else '') }}"
    "{% for call in message.tool_calls %}{% set f = call.function if call.function is defined else call %}"
    '{{ \'<tool_call>\n{"name": "\' + f.name + \'", "arguments": \' }}'
    "{{ (f.arguments if f.arguments is string else f.arguments | tojson) + '}\n</tool_call>' }}"
    "{{ '' if loop.last else '\n' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Mistral-7B-Instruct: the system prompt opens the first user turn (v0.2's placement); roles must alternate.
_MISTRAL = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('After the optional system message, roles must alternate user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)
# gemma-3-it: the assistant is "model"; the system prompt is folded into the first user turn.
_GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Phi-3-mini-instruct, without the EOS token after the last message (<|end|> closes every turn).
_PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# Stanford Alpaca's prompt, turn by turn; the tokenizer's EOS closes each response.
_ALPACA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

BUILTIN: dict[str, BuiltinTemplate] = {
    t.name: t
    for t in (
        BuiltinTemplate("chatml", "Qwen2.5-Instruct / OpenAI ChatML", _CHATML, ("<|im_start|>", "<|im_end|>")),
        BuiltinTemplate(
            "llama3", "Meta-Llama-3-8B-Instruct", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        ),
        BuiltinTemplate("mistral", "Mistral-7B-Instruct-v0.2/v0.3", _MISTRAL, ("[INST]", "[/INST]"), needs_eos=True),
        BuiltinTemplate("gemma", "gemma-3-it", _GEMMA, ("<start_of_turn>", "<end_of_turn>")),
        BuiltinTemplate(
            "phi3", "Phi-3-mini-4k-instruct", _PHI3, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
        ),
        BuiltinTemplate("alpaca", "Stanford Alpaca", _ALPACA, (), needs_eos=True),
    )
}


def resolve_template(value: str, where: str = "model.chat_template") -> tuple[str, tuple[str, ...], bool]:
    """(jinja text, special tokens it needs, needs an EOS token) of a built-in name or a .jinja file."""
    if value in BUILTIN:
        t = BUILTIN[value]
        return t.jinja, t.special_tokens, t.needs_eos
    path = Path(value).expanduser()
    if path.suffix == ".jinja" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read the chat template {value}",
                [Problem(where, str(exc), "give an existing .jinja file or a built-in name: " + ", ".join(BUILTIN))],
            ) from None
        return text, tuple(dict.fromkeys(_MARKER.findall(text))), "eos_token" in text
    raise ConfigError(
        f"{where}: unknown chat template {value!r}",
        [
            Problem(
                where,
                f"{value!r} is neither a built-in template nor a .jinja file",
                f"use one of {', '.join(BUILTIN)} or the path of a .jinja file",
            )
        ],
    )


def use_chat_template(tokenizer: Any, value: str, where: str = "model.chat_template") -> list[str]:
    """Give `tokenizer` the template `value` (it replaces the tokenizer's own); returns the special tokens
    that were added to the vocabulary for it (the model's embeddings must grow: `fit_embeddings`)."""
    text, needed, needs_eos = resolve_template(value, where)
    if needs_eos and tokenizer.eos_token is None:
        raise ConfigError(
            f"{where}: the template {value!r} closes each answer with the EOS token, which this tokenizer lacks",
            [Problem(where, "the tokenizer has no eos_token", "choose chatml (it brings its own end-of-turn token)")],
        )
    vocab = tokenizer.get_vocab()
    missing = [t for t in needed if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = text
    return missing


ADDED_ROWS = "tuneforge_added_rows"  # model attribute: the embedding rows fit_embeddings added (not saved)


def fit_embeddings(model: Any, tokenizer: Any) -> int:
    """Grow the input embeddings (and an untied output layer) to the tokenizer's length, new rows set to the
    mean of the old ones; returns how many rows were added (0 when the vocabulary already fits)."""
    import torch

    embeddings = model.get_input_embeddings()
    old = embeddings.weight.shape[0]  # (V, H)
    if len(tokenizer) <= old:
        return 0
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    setattr(model, ADDED_ROWS, list(range(old, len(tokenizer))))  # adapter methods train these rows (peft_family)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m}.values():
            weight = layer.weight  # (V', H)
            weight[old:] = weight[:old].float().mean(dim=0).to(weight.dtype)
            bias = getattr(layer, "bias", None)
            if bias is not None and bias.shape[0] == weight.shape[0]:
                bias[old:] = bias[:old].float().mean().to(bias.dtype)
    return len(tokenizer) - old


def prompt_like_training(
    model: Any,
    tokenizer: Any,
    chat_template: str | None,
    system_prompt: str | None = None,
    where: str = "model.chat_template",
) -> None:
    """Prompt a base model as a run trains (eval's base, `generate --chat-template`): its template, the rows
    for the tokens it adds (untrained: the mean of the others) and its system-prompt policy."""
    if chat_template is not None:
        use_chat_template(tokenizer, chat_template, where)
        fit_embeddings(model, tokenizer)
    if system_prompt is not None:
        set_prompt_policy(tokenizer, system_prompt)


def set_prompt_policy(tokenizer: Any, system_prompt: str) -> None:
    """Record the run's data.system_prompt on the tokenizer; saved in its tokenizer_config.json."""
    tokenizer.init_kwargs[POLICY_KEY] = system_prompt


def prompt_policy(tokenizer: Any) -> str:
    """The data.system_prompt a saved tokenizer was trained with ('keep' for any other tokenizer)."""
    value = getattr(tokenizer, "init_kwargs", {}).get(POLICY_KEY, "keep")
    return value if value in ("keep", "fold", "drop") else "keep"


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The special token the chat template writes right after an assistant's answer (Phi-3's <|end|>,
    Gemma's <end_of_turn>, ChatML's <|im_end|>): generation stops there even when it is not the EOS.
    One rendering of a two-turn chat per tokenizer and template (cached)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return []
    cached = _EOT.get(tokenizer)
    if cached is None or cached[0] != template:
        cached = (template, _find_end_of_turn(tokenizer))
        try:
            _EOT[tokenizer] = cached
        except TypeError:  # not weakly referenceable: no cache
            pass
    return list(cached[1])


_EOT: weakref.WeakKeyDictionary[Any, tuple[str, tuple[int, ...]]] = weakref.WeakKeyDictionary()


def _find_end_of_turn(tokenizer: Any) -> tuple[int, ...]:
    import jinja2

    sentinel = "\ue000answer\ue000"
    messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": sentinel}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except (jinja2.TemplateError, ValueError, TypeError):
        return ()
    after = text.split(sentinel, 1)[1] if sentinel in text else ""
    tokens = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.content}
    found = max((t for t in tokens if after.startswith(t)), key=len, default=None)
    return (tokens[found],) if found else ()
