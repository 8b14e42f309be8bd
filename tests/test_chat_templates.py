"""Assistant label masks over the real chat templates of many families (issue 12, parts 1 and 2).

For each family: the decoded labelled tokens are exactly each assistant content plus that turn's
end-of-turn token, per turn, with and without a system prompt; what a template refuses is a
located error (file:line, template, fix), never a jinja2 traceback and never a wrong mask.
"""

from __future__ import annotations

import json
import math

import pytest

from families import FAMILIES, family_tokenizer, labelled_runs
from tuneforge.data.readers import read_examples
from tuneforge.data.tokenize import IGNORE, assistant_spans, encode_conversation, encode_prompt
from tuneforge.data.types import Conversation, Message
from tuneforge.data.validate import validate_file
from tuneforge.errors import DataError

CHAT_FAMILIES = [name for name, f in FAMILIES.items() if f.template]
SYSTEM = Message("system", "You are a concise support agent.")
TURNS = [
    Message("user", "How do I reset my password?"),
    Message("assistant", "Open settings, choose security and press reset."),
    Message("user", "Thanks, that worked."),
    Message("assistant", "We are open from nine to five."),
]
ONE_TURN = TURNS[:2]


def _conv(messages, line=7, file="data/train.jsonl"):
    conv = Conversation(list(messages), {"source_line": line})
    conv.source = f"{file}:{line}"
    return conv


def _runs(name, conv, system_prompt="keep"):
    tok = family_tokenizer(name)
    enc = encode_conversation(tok, conv, 4096, system_prompt)
    return labelled_runs(tok, enc.input_ids, enc.labels)


def _expected(name, conv):
    fam = FAMILIES[name]
    return [m.content + fam.end_of_turn for m in conv.messages if m.role == "assistant" and m.weight != 0]


def _same(name, got, want):
    """Decoded runs equal the contents + end-of-turn; a family whose template writes whitespace before the
    answer (Mistral's " ") may have that whitespace joined to the answer's first token."""
    prefix = FAMILIES[name].answer_prefix
    assert [g[len(prefix) :] if prefix and g.startswith(prefix) else g for g in got] == want


@pytest.mark.parametrize("name", CHAT_FAMILIES)
@pytest.mark.parametrize("messages", [ONE_TURN, TURNS], ids=["one-turn", "multi-turn"])
def test_labels_are_exactly_the_answers_and_end_of_turn(name, messages):
    conv = _conv(messages)
    _same(name, _runs(name, conv), _expected(name, conv))


@pytest.mark.parametrize("name", CHAT_FAMILIES)
@pytest.mark.parametrize("messages", [ONE_TURN, TURNS], ids=["one-turn", "multi-turn"])
def test_system_prompt_per_family(name, messages):
    fam, conv = FAMILIES[name], _conv([SYSTEM, *messages])
    if fam.system in ("native", "folded"):
        _same(name, _runs(name, conv), _expected(name, conv))
        text, _ = assistant_spans(family_tokenizer(name), conv)
        assert SYSTEM.content in text  # kept, where the template puts it
    else:  # gemma2 refuses the role; mistral writes the system prompt only before a final user turn
        with pytest.raises(DataError) as err:
            _runs(name, conv)
        problem = err.value.problems[0]
        assert problem.where == "data/train.jsonl:7"
        assert f"tiny-{name}" in problem.message and "data.system_prompt: fold" in problem.fix
        assert "Traceback" not in str(err.value)
    folded = _runs(name, conv, "fold")  # every family trains with the system prompt folded into the first user turn
    _same(name, folded, _expected(name, conv))
    text, _ = assistant_spans(family_tokenizer(name), conv, "fold")
    assert f"{SYSTEM.content}\n\n{TURNS[0].content}" in text
    _same(name, _runs(name, conv, "drop"), _expected(name, conv))
    assert SYSTEM.content not in assistant_spans(family_tokenizer(name), conv, "drop")[0]


def test_mistral_answers_are_trained_whole_with_a_system_prompt():
    """The old prefix-by-prefix masks labelled only ' press reset.</s>' here and nothing of the second answer
    (the prompt rendering carries the system prompt, the full conversation does not)."""
    conv = _conv([SYSTEM, *TURNS])
    with pytest.raises(DataError, match="drops messages\\[0\\]"):
        _runs("mistral-v0.3", conv)
    got = _runs("mistral-v0.3", conv, "fold")
    _same(
        "mistral-v0.3",
        got,
        ["Open settings, choose security and press reset.</s>", "We are open from nine to five.</s>"],
    )
    assert " press reset.</s>" not in got


def test_mistral_answer_token_may_absorb_the_template_space():
    """' ' + answer: a token joining the template's space to the answer's first word is trained whole."""
    tok = family_tokenizer("mistral-v0.3")
    conv = _conv([Message("user", "How do I reset my password?"), Message("assistant", "Thanks, that worked.")])
    text, spans = assistant_spans(tok, conv)
    assert text[spans[0][0] - 1 : spans[0][0]] == " " and text[spans[0][0] : spans[0][1]] == "Thanks, that worked.</s>"
    enc = encode_conversation(tok, conv, 4096)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first = next(k for k, label in enumerate(enc.labels) if label != IGNORE)
    assert offsets[first][0] == spans[0][0] - 1  # " Thanks" is one token here, and it is labelled
    assert labelled_runs(tok, enc.input_ids, enc.labels) == [" Thanks, that worked.</s>"]


def test_qwen3_reasoning_follows_the_template():
    """Reasoning is kept in the last answer (its <think> block trained) and stripped from earlier ones, as
    Qwen 3's template does; an answer without reasoning gets the template's empty <think></think>, untrained."""
    think = "<think>\nCheck the account first.\n</think>\n\n"
    conv = _conv(
        [
            TURNS[0],
            Message("assistant", think + TURNS[1].content),
            TURNS[2],
            Message("assistant", think + TURNS[3].content),
        ]
    )
    assert _runs("qwen3", conv) == [TURNS[1].content + "<|im_end|>", think + TURNS[3].content + "<|im_end|>"]
    text, _ = assistant_spans(family_tokenizer("qwen3"), conv)
    assert text.count("Check the account first.") == 1
    plain = _conv(TURNS)
    text, spans = assistant_spans(family_tokenizer("qwen3"), plain)
    assert text[spans[-1][0] - len("<think>\n\n</think>\n\n") : spans[-1][0]] == "<think>\n\n</think>\n\n"
    assert _runs("qwen3", plain) == _expected("qwen3", plain)
    # ChatML without reasoning handling (Qwen 2.5) writes the content verbatim: all of it is trained
    assert _runs("qwen2.5", conv) == [think + TURNS[1].content + "<|im_end|>", think + TURNS[3].content + "<|im_end|>"]


def test_phi3_eos_after_the_last_message_is_not_trained():
    tok = family_tokenizer("phi3")
    text, spans = assistant_spans(tok, _conv(TURNS))
    assert text.endswith("<|end|>\n<|endoftext|>") and text[spans[-1][0] : spans[-1][1]] == TURNS[3].content + "<|end|>"


def test_weight_zero_and_content_whitespace():
    conv = _conv(
        [
            TURNS[0],
            Message("assistant", TURNS[1].content, weight=0),
            TURNS[2],
            Message("assistant", "  " + TURNS[3].content + "\n"),
        ]
    )
    for name in ("qwen2.5", "llama3", "gemma3"):  # verbatim and trimming templates
        assert _runs(name, conv) == [
            TURNS[3].content + ("\n" if name == "qwen2.5" else "") + FAMILIES[name].end_of_turn
        ]


@pytest.mark.parametrize("name", ["mistral-v0.3", "gemma2", "gemma3"])
def test_roles_that_do_not_alternate_are_located_errors(name):
    conv = _conv([TURNS[0], Message("user", "Are you there?"), TURNS[1]], line=12)
    with pytest.raises(DataError) as err:
        encode_conversation(family_tokenizer(name), conv, 4096)
    problem = err.value.problems[0]
    assert problem.where == "data/train.jsonl:12" and "must alternate" in problem.message
    assert "merge the two consecutive user messages" in problem.fix


def test_template_less_model_is_refused():
    with pytest.raises(DataError, match="has no chat template") as err:
        encode_conversation(family_tokenizer("gpt2"), _conv(ONE_TURN), 4096)
    assert err.value.problems[0].where == "data/train.jsonl:7" and "objective: clm" in err.value.problems[0].fix
    with pytest.raises(DataError, match="has no chat template"):
        encode_prompt(family_tokenizer("gpt2"), [{"role": "user", "content": "hi"}])


def test_template_that_rewrites_content_is_refused():
    base = family_tokenizer("qwen2.5")  # its vocabulary, another template
    other = base.__class__(tokenizer_object=base.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    other.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(DataError, match="does not write message contents verbatim"):
        assistant_spans(other, _conv(ONE_TURN))
    other.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}"
    with pytest.raises(DataError, match="no end-of-turn token"):
        assistant_spans(other, _conv(ONE_TURN))


def test_token_across_the_answer_edge_is_refused():
    """A template that glues the answer to its role name leaves no token boundary where the answer starts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(
        ["assistantHello"] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|end|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>")
    tok.chat_template = "{% for m in messages %}{{ m.role }}{{ m.content }}<|end|>{% endfor %}"
    with pytest.raises(DataError, match="a token crosses the edge") as err:
        encode_conversation(tok, _conv([Message("user", "Hi"), Message("assistant", "Hello")]), 64)
    assert err.value.problems[0].where == "data/train.jsonl:7"


def _write(path, convs):
    path.write_text(
        "".join(json.dumps({"messages": [{"role": m.role, "content": m.content} for m in c]}) + "\n" for c in convs)
    )
    return path


def test_source_location_comes_from_the_reader(tmp_path):
    path = _write(tmp_path / "chat.jsonl", [ONE_TURN, TURNS])
    examples = read_examples(path)
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:2"]
    assert "source" not in examples[0].to_dict()


def test_validate_with_model_reports_template_refusals(tmp_path):
    path = _write(tmp_path / "d.jsonl", [ONE_TURN, [SYSTEM, *ONE_TURN], [TURNS[0], TURNS[2], TURNS[1]]])
    report = validate_file(path, tokenizer=family_tokenizer("gemma2"), min_examples=1)
    errors = [(e.line, e.kind) for e in report.errors]
    assert errors == [(2, "chat_template"), (3, "chat_template")]
    assert "data.system_prompt: fold" in report.errors[0].fix and "alternate" in report.errors[1].message
    folded = validate_file(path, tokenizer=family_tokenizer("gemma2"), min_examples=1, system_prompt="fold")
    assert [(e.line, e.kind) for e in folded.errors] == [(3, "chat_template")]
    dropped = validate_file(path, tokenizer=family_tokenizer("gemma2"), min_examples=1, system_prompt="drop")
    assert [(w.line, w.kind) for w in dropped.warnings] == [(2, "system_prompt_dropped")]
    mistral = validate_file(path, tokenizer=family_tokenizer("mistral-v0.3"), min_examples=1)
    assert [(e.line, e.kind) for e in mistral.errors] == [(2, "chat_template"), (3, "chat_template")]
    assert "drops messages[0]" in mistral.errors[0].message
    base = validate_file(path, tokenizer=family_tokenizer("gpt2"), min_examples=1)
    assert {e.kind for e in base.errors} == {"chat_template"} and "no chat template" in base.errors[0].message


def test_validate_cli_system_prompt_option(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app as root

    family_tokenizer("gemma2").save_pretrained(tmp_path / "tok")
    path = _write(tmp_path / "d.jsonl", [[SYSTEM, *ONE_TURN]])
    runner = CliRunner()
    refused = runner.invoke(
        root, ["data", "validate", str(path), "--model", str(tmp_path / "tok"), "--min-examples", "1"]
    )
    assert refused.exit_code == 1 and "chat_template" in refused.output and "d.jsonl:1" in refused.output
    assert "Traceback" not in refused.output
    ok = runner.invoke(
        root,
        [
            "data",
            "validate",
            str(path),
            "--model",
            str(tmp_path / "tok"),
            "--min-examples",
            "1",
            "--system-prompt",
            "fold",
        ],
    )
    assert ok.exit_code == 0, ok.output


def test_sft_objective_lists_every_refused_record(tmp_path):
    from tuneforge.config import RunConfig
    from tuneforge.objectives import objective_for

    path = _write(tmp_path / "train.jsonl", [[SYSTEM, *ONE_TURN], ONE_TURN, [SYSTEM, *TURNS]])
    examples = read_examples(path)
    cfg = RunConfig.model_validate({"model": {"name": "demo"}, "data": {"train": str(path)}})
    with pytest.raises(DataError, match="2 of 3 conversation") as err:
        objective_for(cfg).encode(examples, family_tokenizer("gemma2"), 256)
    assert [p.where for p in err.value.problems] == [f"{path}:1", f"{path}:3"]
    cfg = RunConfig.model_validate({"model": {"name": "demo"}, "data": {"train": str(path), "system_prompt": "fold"}})
    feats = objective_for(cfg).encode(examples, family_tokenizer("gemma2"), 256)
    assert len(feats) == 3 and all(any(label != IGNORE for label in f.labels) for f in feats)


def test_train_reports_refused_records_and_trains_with_fold(tmp_path):
    """`train` on a Gemma 2 tokenizer: records with a system prompt are located errors; fold trains them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.config import RunConfig
    from tuneforge.train import train

    tok = family_tokenizer("gemma2")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.convert_tokens_to_ids("<end_of_turn>"),
            bos_token_id=tok.bos_token_id,
        )
    )
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    train_file = _write(tmp_path / "train.jsonl", [ONE_TURN, [SYSTEM, *TURNS]] * 4)
    val_file = _write(tmp_path / "val.jsonl", [TURNS])
    raw = {
        "objective": "sft",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(tmp_path / "model"), "max_length": 128},
        "data": {"train": str(train_file), "validation": str(val_file)},
        "method": {"name": "lora", "r": 2, "alpha": 4},
        "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "save_every": 2},
    }
    with pytest.raises(DataError) as err:
        train(RunConfig.model_validate(raw), progress=False)
    assert [p.where for p in err.value.problems] == [f"{train_file}:{n}" for n in (2, 4, 6, 8)]
    assert "System role not supported" in err.value.problems[0].message and "fold" in err.value.problems[0].fix
    raw["data"]["system_prompt"] = "fold"
    result = train(RunConfig.model_validate(raw), progress=False)
    assert result.status == "completed" and result.steps == 2 and all(map(math.isfinite, result.losses))


def test_system_message_inside_the_conversation_gets_its_own_fix():
    conv = _conv([*ONE_TURN, Message("system", "Answer in French."), *TURNS[2:]])
    with pytest.raises(DataError) as err:
        encode_conversation(family_tokenizer("gemma2"), conv, 4096, "fold")  # fold moves only the leading system prompt
    assert "messages[2] is a system message inside the conversation" in err.value.problems[0].fix
    _same("qwen2.5", _runs("qwen2.5", conv), _expected("qwen2.5", conv))  # ChatML writes it where it is
