"""Tokenizers of real model families, trained locally: each carries the family's special tokens and
its real chat template (written here from the public descriptions in each model's tokenizer_config.json).

Nothing loads from a hub: a byte-level BPE vocabulary of ~400 tokens is trained on a few sentences,
which takes milliseconds; the chat template is what decides the label masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Meta-Llama-3-8B-Instruct: every content trimmed, <|eot_id|> closes each turn.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5-Instruct (the branch without tools): ChatML with a default system prompt.
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not '
    'loop.first) or (message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Qwen3 (the branch without tools): reasoning is stripped from turns before the last user query;
# answers after it get a <think> block (empty when there is no reasoning).
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + "
    "messages[0].content + '<|im_end|>\n' }}{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    '{%- if ns.multi_step_tool and message.role == "user" and message.content is string and '
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = "
    "message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) %}'
    "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
    '{%- elif message.role == "assistant" %}'
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\n<think>\n' + "
    "reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)

# Mistral-7B-Instruct-v0.3 (without tools): roles must alternate; the system prompt goes into the
# user turn only when that turn is the LAST message, so a conversation ending with an answer
# renders without it.
MISTRAL_V03 = (
    '{%- if messages[0]["role"] == "system" %}'
    '{%- set system_message = messages[0]["content"] %}{%- set loop_messages = messages[1:] %}'
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- set ns = namespace() %}{%- set ns.index = 0 %}"
    "{%- for message in loop_messages %}"
    '{%- if (message["role"] == "user") != (ns.index % 2 == 0) %}'
    '{{- raise_exception("After the optional system message, conversation '
    'roles must alternate user/assistant/user/assistant/...") }}'
    "{%- endif %}{%- set ns.index = ns.index + 1 %}"
    "{%- endfor %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    '{%- if message["role"] == "user" %}'
    "{%- if loop.last and system_message is defined %}"
    '{{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}'
    '{%- else %}{{- "[INST] " + message["content"] + "[/INST]" }}{%- endif %}'
    '{%- elif message["role"] == "assistant" %}'
    '{{- " " + message["content"]|trim + eos_token}}'
    "{%- else %}"
    '{{- raise_exception("Only user and assistant roles are supported, '
    'with the exception of an initial optional system message!") }}'
    "{%- endif %}"
    "{%- endfor %}"
)

# gemma-2-9b-it: no system role at all, roles must alternate, the assistant is called "model".
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ "
    "raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = "
    "'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# gemma-3-it (text only): the system prompt is folded into the first user turn by the template itself.
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    '{%- else -%}{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}'
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    '{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}'
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" "
    "-%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

# Phi-3-mini-4k-instruct: <|end|> closes each turn; the EOS token follows the last message.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' "
    "%}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + "
    "message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str | None
    special_tokens: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None = None
    end_of_turn: str = ""  # what the template emits right after each assistant content
    system: str = "native"  # native | folded (the template folds it) | rejected | last_user (dropped from answers)
    answer_prefix: str = ""  # template whitespace the first answer token absorbs (Mistral's " ")
    extra_tokens: tuple[str, ...] = ()  # added, not special (Qwen 3's <think>)


FAMILIES = {
    "llama3": Family(
        "llama3",
        LLAMA3,
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ),
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        bos="<|begin_of_text|>",
        end_of_turn="<|eot_id|>",
    ),
    "qwen2.5": Family(
        "qwen2.5",
        QWEN25,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        end_of_turn="<|im_end|>",
    ),
    "qwen3": Family(
        "qwen3",
        QWEN3,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        end_of_turn="<|im_end|>",
        extra_tokens=("<think>", "</think>"),
    ),
    "mistral-v0.3": Family(
        "mistral-v0.3",
        MISTRAL_V03,
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        eos="</s>",
        pad="<unk>",
        bos="<s>",
        end_of_turn="</s>",
        system="last_user",
        answer_prefix=" ",
    ),
    "gemma2": Family(
        "gemma2",
        GEMMA2,
        ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        eos="<eos>",
        pad="<pad>",
        bos="<bos>",
        end_of_turn="<end_of_turn>",
        system="rejected",
    ),
    "gemma3": Family(
        "gemma3",
        GEMMA3,
        ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        eos="<eos>",
        pad="<pad>",
        bos="<bos>",
        end_of_turn="<end_of_turn>",
        system="folded",
    ),
    "phi3": Family(
        "phi3",
        PHI3,
        ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        bos="<s>",
        end_of_turn="<|end|>",
    ),
    "gpt2": Family("gpt2", None, ("<|endoftext|>",), eos="<|endoftext|>", pad="<|endoftext|>"),
}

CORPUS = [
    "How do I reset my password?",
    "Open settings, choose security and press reset.",
    "Thanks, that worked.",
    "You are a concise support agent.",
    "What are your opening hours?",
    "We are open from nine to five.",
    "Can I change the delivery address after ordering?",
    "Yes, until the parcel ships.",
    "The user asks about a parcel.",
    "Let me think about the order status first.",
    "Thanks Thanks, that worked. Thanks",
    "def add(a, b):\n    return a + b\n",
    "Ça marche très bien, merci !",
]


def build_family_tokenizer(family: Family, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    named = {family.eos, family.pad, *([family.bos] if family.bos else [])}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=family.eos,
        pad_token=family.pad,
        bos_token=family.bos,
        additional_special_tokens=[t for t in family.special_tokens if t not in named],
    )
    if family.extra_tokens:
        fast.add_tokens(list(family.extra_tokens))
    fast.chat_template = family.template
    fast.name_or_path = f"tiny-{family.name}"
    fast.model_max_length = 4096
    return fast


_BUILT: dict[str, PreTrainedTokenizerFast] = {}


def family_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """One tokenizer per family per test session (training is the only cost)."""
    if name not in _BUILT:
        _BUILT[name] = build_family_tokenizer(FAMILIES[name])
    return _BUILT[name]


def labelled_runs(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each contiguous run of labelled tokens (one per trained assistant turn)."""
    runs: list[list[int]] = []
    prev = False
    for i, label in zip(input_ids, labels):
        if label != -100:
            assert label == i
            if not prev:
                runs.append([])
            runs[-1].append(i)
        prev = label != -100
    return [tokenizer.decode(r) for r in runs]
