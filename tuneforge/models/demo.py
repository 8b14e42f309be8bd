"""Build small models from scratch: a byte-level BPE tokenizer trained locally and a Llama.

Used for the demo base model (pretrained by `train.pretrain.ensure_demo_model`, which
`tuneforge models pull-demo` runs) and by the tests, which need real architectures at toy
sizes rather than mocks. This module only says where the demo lives; it never builds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tuneforge.config import tuneforge_home

# ChatML, with {% generation %} markers so that TRL and transformers can compute
# assistant-only masks too (`return_assistant_tokens_mask`). The assistant span includes
# <|im_end|> so that the model learns to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (any Unicode input stays encodable)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    return fast


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for CPU; deterministic for a given seed."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=intermediate or int(hidden * 8 / 3 // 8 * 8),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_stop_ids(tokenizer),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = _stop_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _stop_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]


def save_model_folder(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    """Write an HF model folder (config, safetensors, tokenizer, chat template)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def demo_model_dir() -> Path:
    """Where the demo base model lives once built: $TUNEFORGE_HOME/models/demo."""
    return tuneforge_home() / "models" / "demo"


# The demo's recipe (corpus, size, training): a pretrained demo of another recipe is stale and is rebuilt.
# 2: the corpus teaches reading passages (the RAG layout) and following demonstrations (the few-shot layout).
DEMO_RECIPE = "2 reading+demonstrations"


def demo_model_built() -> bool:
    """Whether the demo model is complete (`train.pretrain.ensure_demo_model` marks it last) and of this recipe."""
    folder = demo_model_dir()
    return (folder / ".complete").exists() and (folder / "config.json").exists() and not demo_model_stale()


def demo_model_stale() -> bool:
    """A demo pretrained by an earlier recipe (its pretraining record without this recipe's mark). A demo folder
    written by hand (tests' tiny demos) has no pretraining record and is taken as it is."""
    folder = demo_model_dir()
    recipe = folder / ".recipe"
    if not (folder / "pretrain_manifest.json").exists():
        return False
    return not recipe.exists() or recipe.read_text(encoding="utf-8").strip() != DEMO_RECIPE
