"""model.chat_template (issue 12, part 3): built-in templates for models without one, the special tokens
they add (and the embedding rows for them), and the refusals that name the key and the fix."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from families import family_tokenizer, labelled_runs
from tuneforge.config import ModelSection
from tuneforge.data.tokenize import encode_conversation, encode_prompt
from tuneforge.data.types import Conversation, Message
from tuneforge.data.validate import validate_file
from tuneforge.errors import ConfigError
from tuneforge.models.chat_templates import (
    BUILTIN,
    end_of_turn_ids,
    fit_embeddings,
    prompt_policy,
    set_prompt_policy,
    use_chat_template,
)

TURNS = [
    Message("system", "You are a concise support agent."),
    Message("user", "How do I reset my password?"),
    Message("assistant", "Open settings, choose security and press reset."),
    Message("user", "Thanks, that worked."),
    Message("assistant", "We are open from nine to five."),
]
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral": "<|endoftext|>",
    "gemma": "<end_of_turn>",
    "phi3": "<|end|>",
    "alpaca": "<|endoftext|>",
}


def _base_tokenizer():
    return copy.deepcopy(family_tokenizer("gpt2"))  # a GPT-2 style vocabulary without a chat template


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_templates_train_exactly_the_answers_and_their_end_of_turn_token(name):
    tok = _base_tokenizer()
    before = len(tok)
    added = use_chat_template(tok, name)
    assert added == list(BUILTIN[name].special_tokens) and len(tok) == before + len(added)
    enc = encode_conversation(tok, Conversation(list(TURNS), {"source_line": 3}), 4096)
    runs = labelled_runs(tok, enc.input_ids, enc.labels)
    prefix = " " if name == "mistral" else ""  # the space after [/INST] joins the answer's first token
    want = [m.content + END_OF_TURN[name] for m in TURNS if m.role == "assistant"]
    assert [r.removeprefix(prefix) for r in runs] == want
    text = tok.decode(enc.input_ids)
    assert TURNS[0].content in text  # every template keeps the system prompt (its own turn or the first user turn)
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids(END_OF_TURN[name])]
    prompt = tok.decode(encode_prompt(tok, [{"role": "user", "content": "Hi"}]))
    assert prompt.endswith(("\n", " [/INST]")) and "Hi" in prompt


def test_an_unknown_template_is_refused_by_the_config_with_the_choices():
    with pytest.raises(ValidationError, match="chatml, llama3, mistral, gemma, phi3, alpaca"):
        ModelSection(chat_template="chatlm")
    with pytest.raises(ConfigError) as err:
        use_chat_template(_base_tokenizer(), "chatlm")
    assert err.value.problems[0].where == "model.chat_template" and "chatml" in err.value.problems[0].fix


def test_a_jinja_file_adds_the_control_tokens_it_writes(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(
        "{% for m in messages %}{{ '<|turn|>' + m['role'] + ': ' + m['content'] + '<|stop|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|turn|>assistant: ' }}{% endif %}"
    )
    assert ModelSection(chat_template=str(path)).chat_template == str(path)
    tok = _base_tokenizer()
    assert use_chat_template(tok, str(path)) == ["<|turn|>", "<|stop|>"]
    enc = encode_conversation(tok, Conversation(TURNS[1:3]), 4096)
    assert labelled_runs(tok, enc.input_ids, enc.labels) == [TURNS[2].content + "<|stop|>"]


def test_alpaca_needs_an_eos_token():
    tok = _base_tokenizer()
    tok.eos_token = None
    with pytest.raises(ConfigError, match="EOS") as err:
        use_chat_template(tok, "alpaca")
    assert "chatml" in err.value.problems[0].fix


def test_new_rows_are_the_mean_of_the_old_ones_in_tied_and_untied_models():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = _base_tokenizer()
    old = len(tok)
    use_chat_template(tok, "phi3")
    tied = GPT2LMHeadModel(GPT2Config(vocab_size=old, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    untied = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=old,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=False,
        )
    )
    for model in (tied, untied):
        layers = [model.get_input_embeddings(), model.get_output_embeddings()]
        means = [layer.weight[:old].mean(dim=0).detach().clone() for layer in layers]
        assert fit_embeddings(model, tok) == 4 and fit_embeddings(model, tok) == 0
        for layer, mean in zip((model.get_input_embeddings(), model.get_output_embeddings()), means):
            assert layer.weight.shape[0] == len(tok)
            torch.testing.assert_close(layer.weight[old:], mean.expand(4, -1))
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()  # still tied


def test_the_system_prompt_policy_is_saved_with_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = _base_tokenizer()
    use_chat_template(tok, "chatml")
    assert prompt_policy(tok) == "keep"
    set_prompt_policy(tok, "fold")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert prompt_policy(again) == "fold" and again.chat_template == tok.chat_template and len(again) == len(tok)


def test_validate_with_a_template_less_model_fails_with_the_chat_template_fix(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    report = validate_file(path, tokenizer=family_tokenizer("gpt2"), min_examples=1)
    assert report.errors and report.errors[0].kind == "chat_template" and report.errors[0].line == 1
    assert "model.chat_template: chatml" in report.errors[0].fix
    tok = _base_tokenizer()
    use_chat_template(tok, "chatml")
    assert not validate_file(path, tokenizer=tok, min_examples=1).errors


def test_generate_cli_takes_a_chat_template_for_a_base_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from typer.testing import CliRunner

    from tuneforge.cli.main import app

    tok = _base_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp_path
    )
    tok.save_pretrained(tmp_path)
    refused = CliRunner().invoke(app, ["generate", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "3"])
    assert refused.exit_code != 0 and "model.chat_template: chatml" in str(refused.exception.problems[0].fix)
    answered = CliRunner().invoke(
        app, ["generate", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "3", "--chat-template", "chatml"]
    )
    assert answered.exit_code == 0, answered.output
