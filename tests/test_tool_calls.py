"""Tool calling: the parser for each syntax tuneforge renders, readers of OpenAI's and ShareGPT's layouts,
the rendering with the model's own template (or the fallback), the labels, and the eval metric."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from families import FAMILIES, build_family_tokenizer, labelled_runs
from tool_templates import LLAMA31_TOOLS, MISTRAL_V03_TOOLS, QWEN25_TOOLS
from tuneforge.data import formats
from tuneforge.data.readers import iter_checked, read_examples
from tuneforge.data.token_count import count_tokens
from tuneforge.data.tokenize import encode_conversation, encode_prompt
from tuneforge.data.tool_calls import (
    ParsedToolCalls,
    fallback_messages,
    parse_tool_calls,
    render_call,
    same_calls,
    template_messages,
    tool_format,
)
from tuneforge.data.types import Message, ToolCall
from tuneforge.errors import DataError
from tuneforge.eval.metrics import tool_call_match, tool_name_match
from tuneforge.models.chat_templates import use_chat_template

WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})


# --- parser -----------------------------------------------------------------------------------------------


def test_hermes_calls_and_content():
    call = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    text = f"Let me check.\n<tool_call>\n{call}\n</tool_call>"
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "Let me check."
    assert calls == [WEATHER]
    two = render_call(WEATHER) + "\n" + render_call(ToolCall("get_time", {"tz": "CET"}))
    parsed = parse_tool_calls(two, "hermes")
    assert parsed.content is None and [c.name for c in parsed.calls] == ["get_weather", "get_time"]
    assert parsed.reason is None


def test_plain_answer_is_content():
    assert tuple(parse_tool_calls("It is sunny.", "hermes")) == ("It is sunny.", [])
    assert tuple(parse_tool_calls("{braces} are fine", "llama3")) == ("{braces} are fine", [])
    assert tuple(parse_tool_calls('{"answer": 4}', "llama3")) == ('{"answer": 4}', [])


@pytest.mark.parametrize(
    "text, fmt, reason",
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', "hermes", "invalid JSON"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {}}', "hermes", "not closed"),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', "hermes", "'name'"),
        ('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>', "hermes", "JSON object"),
        ('{"name": "get_weather", "parameters": {"city": "Par', "llama3", "invalid JSON"),
        ('[TOOL_CALLS] [{"name": "f", "arguments": {]', "mistral", "invalid JSON"),
    ],
)
def test_bad_calls_stay_content_with_a_reason(text, fmt, reason):
    parsed = parse_tool_calls(text, fmt)
    assert parsed.content == text and parsed.calls == []
    assert reason in parsed.reason


def test_llama3_and_mistral_syntax():
    content, calls = parse_tool_calls(
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "llama3"
    )
    assert content is None and calls == [WEATHER]
    _, calls = parse_tool_calls('{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}', "llama3")
    assert [(c.name, c.arguments) for c in calls] == [("a", {}), ("b", {"x": 1})]
    parsed = parse_tool_calls(
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": "abc123xyz"}]',
        "mistral",
    )
    assert parsed.content is None and parsed.calls == [ToolCall("get_weather", WEATHER.arguments, "abc123xyz")]
    assert parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>', "hermes").calls[
        0
    ].arguments == {"a": 1}


def test_format_from_template_source():
    assert tool_format(QWEN25_TOOLS) == "hermes"
    assert tool_format(LLAMA31_TOOLS) == "llama3"
    assert tool_format("{{ '[TOOL_CALLS] ' }}") == "mistral"
    assert tool_format(None) == "hermes"  # the fallback


def test_fallback_round_trip():
    """What the fallback renders for an assistant turn parses back into the same calls."""
    msgs = [
        Message("user", "Weather in Paris and the time?"),
        Message("assistant", "Checking.", tool_calls=[WEATHER, ToolCall("get_time", {"tz": "CET"})]),
        Message("tool", '{"temp": 21}', tool_call_id="1"),
        Message("tool", '{"time": "10:00"}', tool_call_id="2"),
        Message("assistant", "21 degrees at 10:00."),
    ]
    out = fallback_messages(msgs, [{"type": "function", "function": {"name": "get_weather"}}])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant"]
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"}}\n</tools>' in out[0]["content"]
    assert (
        out[3]["content"]
        == '<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"time": "10:00"}\n</tool_response>'
    )
    parsed = parse_tool_calls(out[2]["content"], None)
    assert isinstance(parsed, ParsedToolCalls) and parsed.content == "Checking." and parsed.calls == msgs[1].tool_calls


# --- readers ----------------------------------------------------------------------------------------------

CORPUS = Path(__file__).parent / "data_corpus" / "tools"


def test_openai_tool_calls_read():
    convs = read_examples(CORPUS / "openai_tools.jsonl")
    assert len(convs) == 3
    first = convs[0]
    assert first.messages[1].content == "" and first.messages[1].tool_calls == [
        ToolCall("get_current_weather", {"location": "San Francisco, USA", "format": "celsius"}, "call_id")
    ]
    assert [t["function"]["name"] for t in first.tools] == ["get_current_weather"]
    exchange = convs[1]
    assert exchange.parallel_tool_calls is False
    result = exchange.messages[3]
    assert (result.role, result.tool_call_id, result.name) == ("tool", "call_1", "get_current_weather")
    parallel = convs[2].messages  # results answered by id, in another order than the calls
    assert [(m.tool_call_id, m.name) for m in parallel[2:4]] == [
        ("call_b", "get_local_time"),
        ("call_a", "get_current_weather"),
    ]
    again = formats.parse(json.loads(json.dumps(convs[2].to_dict())), "chat")[0]  # what prepare writes reads back
    assert again.messages == convs[2].messages and again.tools == convs[2].tools


def test_legacy_functions_read():
    (conv,) = read_examples(CORPUS / "openai_functions.jsonl")
    assert conv.messages[1].tool_calls == [
        ToolCall("get_current_weather", {"location": "Rome, Italy", "format": "celsius"})
    ]
    assert (conv.messages[2].role, conv.messages[2].name) == ("tool", "get_current_weather")
    assert conv.tools[0] == {
        "type": "function",
        "function": json.loads((CORPUS / "openai_functions.jsonl").read_text())["functions"][0],
    }


def test_glaive_toolcall_read():
    calls, plain = read_examples(CORPUS / "glaive_toolcall.json")
    assert [m.role for m in calls.messages] == ["user", "assistant", "tool", "assistant"]
    assert calls.messages[1].tool_calls == [ToolCall("generate_password", {"length": 12})]
    assert calls.messages[2].name == "generate_password"
    assert calls.tools[0]["type"] == "function" and calls.tools[0]["function"]["name"] == "generate_password"
    assert plain.tools is None  # "[]": no tools


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "bad_tools.jsonl",
            [
                (1, "invalid_arguments", "messages[1].tool_calls[0].function.arguments"),
                (2, "unknown_tool", "messages[1].tool_calls[0]"),
                (3, "orphan_tool_result", "messages[1]"),
                (4, "parallel_tool_calls", "messages[1].tool_calls"),
                (5, "unanswered_tool_call", "messages[1].tool_calls"),
            ],
        ),
        (
            "bad_glaive.json",
            [(2, "invalid_arguments", "conversations[1].value"), (23, "orphan_tool_result", "conversations[1]")],
        ),
    ],
)
def test_tool_mistakes_are_located_errors(name, expected):
    checked = [c for c in iter_checked(CORPUS / name) if c.errors]
    assert [(c.line, e.kind, e.field) for c in checked for e in c.errors] == expected
    assert all(c.example is None and e.fix for c in checked for e in c.errors)
    with pytest.raises(DataError, match=f"{len(expected)} invalid record"):
        read_examples(CORPUS / name)


# --- rendering and labels ---------------------------------------------------------------------------------


def _tokenizer(family: str, template: str | None = None, builtin: str | None = None):
    tok = build_family_tokenizer(FAMILIES[family])
    if template:
        tok.chat_template = template
    if builtin:
        use_chat_template(tok, builtin)
    return tok


def _hermes(*calls: ToolCall) -> str:
    return "\n".join(render_call(c) for c in calls)


def _llama(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "parameters": call.arguments})


@pytest.mark.parametrize(
    "family, template, builtin, eot, write",
    [
        ("qwen2.5", QWEN25_TOOLS, None, "<|im_end|>", _hermes),  # Qwen 2.5's own tools branch
        ("llama3", LLAMA31_TOOLS, None, "<|eot_id|>", _llama),  # Llama 3.1's JSON calls, ipython results
        ("qwen2.5", None, None, "<|im_end|>", _hermes),  # Qwen 2.5 without its tools branch: the fallback
        ("gpt2", None, "chatml", "<|im_end|>", _hermes),  # the built-in chatml's tools branch
    ],
    ids=["qwen2.5-tools", "llama3.1-tools", "qwen2.5-fallback", "builtin-chatml"],
)
def test_labels_are_exactly_the_calls_and_the_answer(family, template, builtin, eot, write):
    tok = _tokenizer(family, template, builtin)
    conv = read_examples(CORPUS / "openai_tools.jsonl")[1]  # system, user, call, result, answer
    enc = encode_conversation(tok, conv, 4096)
    (call,) = conv.messages[2].tool_calls
    assert labelled_runs(tok, enc.input_ids, enc.labels) == [write(call) + eot, "Yes, it is 24 degrees in Paris." + eot]
    text = tok.decode(enc.input_ids)
    assert "get_local_time" in text and '{"temperature": 24}' in text.replace('\\"', '"')  # schemas, results: seen
    assert encode_prompt(tok, [{"role": "user", "content": "hi"}])  # a plain prompt still renders
    assert count_tokens(tok, conv) == len(enc.input_ids)  # validate/report count what training reads


@pytest.mark.parametrize(
    "family, template",
    [("qwen2.5", QWEN25_TOOLS), ("qwen2.5", None), ("gpt2", "chatml")],
    ids=["qwen2.5-tools", "qwen2.5-fallback", "builtin-chatml"],
)
def test_parallel_calls_with_text_are_one_trained_turn(family, template):
    tok = _tokenizer(family, None if template == "chatml" else template, "chatml" if template == "chatml" else None)
    conv = read_examples(CORPUS / "openai_tools.jsonl")[2]
    enc = encode_conversation(tok, conv, 4096)
    calls = conv.messages[1].tool_calls
    assert labelled_runs(tok, enc.input_ids, enc.labels) == [
        "Checking both.\n" + _hermes(*calls) + "<|im_end|>",
        "It is 3 degrees and 10:00 in Oslo.<|im_end|>",
    ]


def test_builtin_chatml_renders_tools_as_the_fallback_does():
    """The built-in chatml with tools writes what the fallback writes through plain ChatML, and what the
    parser reads back; without tools it renders as before."""
    tok = _tokenizer("gpt2", builtin="chatml")
    plain = _tokenizer("gpt2", template=PLAIN_CHATML)
    for conv in read_examples(CORPUS / "openai_tools.jsonl") + read_examples(CORPUS / "glaive_toolcall.json"):
        msgs, tools = template_messages(conv.messages, conv.tools, tok.chat_template)
        native = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
        assert native == plain.apply_chat_template(fallback_messages(conv.messages, conv.tools), tokenize=False)
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert tok.apply_chat_template(turns, tokenize=False) == plain.apply_chat_template(turns, tokenize=False)


PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_template_whose_calls_cannot_be_parsed_back_is_refused():
    odd = QWEN25_TOOLS.replace('\'\\n<tool_call>\\n{"name": "\'', '\'\\nCALL {"name": "\'')
    assert odd != QWEN25_TOOLS
    tok = _tokenizer("qwen2.5", odd)
    conv = read_examples(CORPUS / "openai_tools.jsonl")[1]
    with pytest.raises(DataError) as err:
        encode_conversation(tok, conv, 4096)
    problem = err.value.problems[0]
    assert problem.where.endswith("openai_tools.jsonl:2") and "cannot parse back" in problem.message
    assert "chatml" in problem.fix


def test_llama31_refusals_are_located_with_their_fix():
    """Llama 3.1's template takes one call per message and drops a calling message's text: both refused."""
    tok = _tokenizer("llama3", LLAMA31_TOOLS)
    convs = read_examples(CORPUS / "openai_tools.jsonl")
    with pytest.raises(DataError) as err:
        encode_conversation(tok, convs[2], 4096)  # two calls at once
    assert err.value.problems[0].where.endswith("openai_tools.jsonl:3") and "split them" in err.value.problems[0].fix
    texted = copy.deepcopy(convs[1])
    texted.messages[2].content = "Let me look."
    with pytest.raises(DataError) as err:
        encode_conversation(tok, texted, 4096)
    assert "drops messages[2]" in err.value.problems[0].message and "remove its text" in err.value.problems[0].fix


def _tiny_model(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.slow
def test_tool_calling_sft_run(tmp_path):
    """A few LoRA steps on tool-calling data with Qwen 2.5's template: the records' calls are what is trained."""
    import math

    from tuneforge.config import RunConfig
    from tuneforge.objectives import objective_for
    from tuneforge.train import train

    tok = _tokenizer("qwen2.5", QWEN25_TOOLS)
    _tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = (CORPUS / "openai_tools.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows * 2) + "\n")
    (tmp_path / "val.jsonl").write_text(rows[1] + "\n")
    raw = {
        "objective": "sft",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(tmp_path / "model"), "max_length": 2048},
        "data": {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "val.jsonl")},
        "method": {"name": "lora", "r": 2, "alpha": 4},
        "train": {"max_steps": 3, "batch_size": 2, "eval_every": 3, "save_every": 3, "lr": 5e-3},
    }
    cfg = RunConfig.model_validate(raw)
    feats = objective_for(cfg).encode(read_examples(tmp_path / "train.jsonl"), tok, 2048)
    trained = [run for f in feats[:3] for run in labelled_runs(tok, f.input_ids, f.labels)]
    assert sum("<tool_call>" in run for run in trained) == 3 and not any("<tool_response>" in r for r in trained)
    assert not any(f.truncated for f in feats)
    result = train(cfg, progress=False)
    assert result.status == "completed" and result.steps == 3 and all(map(math.isfinite, result.losses))


# --- eval metric ------------------------------------------------------------------------------------------


def test_tool_call_metrics():
    ref = "Checking.\n" + _hermes(WEATHER, ToolCall("get_time", {"tz": "CET"}))
    reordered = _hermes(
        ToolCall("get_time", {"tz": "CET"}), ToolCall("get_weather", {"unit": "celsius", "city": "Paris"})
    )
    assert tool_call_match(reordered, ref) == 1.0  # call order and key order aside
    assert tool_call_match(_hermes(WEATHER), ref) == 0.5  # one of two calls
    wrong_args = _hermes(WEATHER, ToolCall("get_time", {"tz": "UTC"}))
    assert tool_call_match(wrong_args, ref) == 0.5 and tool_name_match(wrong_args, ref) == 1.0
    extra = _hermes(WEATHER, WEATHER, ToolCall("get_time", {"tz": "CET"}))
    assert tool_call_match(extra, ref) == pytest.approx(2 / 3)
    assert tool_call_match(_llama(WEATHER), _hermes(WEATHER)) == 1.0  # Llama 3.1's syntax is read too
    assert (
        tool_call_match('<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>', _hermes(WEATHER))
        == 0.0
    )
    assert tool_call_match("It is sunny.", "It is sunny.") == 1.0  # neither calls
    assert tool_call_match(_hermes(WEATHER), "It is sunny.") == 0.0  # a call where none was due


def test_eval_scores_tool_calls_with_intervals(tmp_path):
    """Eval data whose answers call tools: the task is tool_calls, references are the calls, and the per-example
    scores get the usual bootstrap interval."""
    from tuneforge.eval.bootstrap import mean_ci
    from tuneforge.eval.evaluate import load_split
    from tuneforge.eval.metrics import PRIMARY, select_metrics

    convs, task = load_split(CORPUS / "openai_tools.jsonl", "auto")
    assert task == "tool_calls" and PRIMARY[task] == "tool_call_match"
    assert [m.name for m in select_metrics(task)] == ["tool_call_match", "tool_name_match"]
    assert same_calls(parse_tool_calls(convs[0].reference, "hermes").calls, convs[0].messages[1].tool_calls)
    assert load_split(CORPUS / "glaive_toolcall.json", "auto")[1] == "qa"  # final answers are text
    metric = select_metrics(task)[0]
    predictions = [convs[0].reference, "I do not know."]
    scores = metric.per_example(predictions, [convs[0].reference, convs[0].reference])
    assert scores == [1.0, 0.0]
    interval = mean_ci(scores * 4, 200)
    assert interval.ci_low < interval.mean == 0.5 < interval.ci_high


def test_tool_calls_in_preference_kto_and_rft_data_are_refused_by_name():
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
    }
    tools = [{"type": "function", "function": {"name": "f"}}]
    pair = {
        "messages": [{"role": "user", "content": "Hi"}],
        "chosen": call,
        "rejected": {"role": "assistant", "content": "No"},
    }
    kto = {"messages": [{"role": "user", "content": "Hi"}, call], "tools": tools, "label": True}
    rft = {
        "messages": [
            {"role": "user", "content": "Hi"},
            call,
            {"role": "tool", "content": "1"},
            {"role": "user", "content": "So?"},
        ],
        "tools": tools,
    }
    for record, fmt in ((pair, "preference"), (kto, "kto"), (rft, "rft")):
        example, issues = formats.parse(record, fmt)
        assert example is None and "tools_unsupported" in [i.kind for i in issues]


@pytest.mark.slow
def test_eval_prompts_and_losses_render_the_tools():
    """score_approach on tool-calling answers: the answer loss covers exactly the tokens training labels (the
    call as the template writes it), the prompt sent carries the tools, and the metric scores the answers."""
    from tuneforge.eval.compare import score_approach

    tok = _tokenizer("qwen2.5", QWEN25_TOOLS)
    model = _tiny_model(tok)
    convs = read_examples(CORPUS / "openai_tools.jsonl")[:1]  # the answer is a call
    result = score_approach("base", "tiny", model, tok, convs, max_new_tokens=4, batch_size=2)
    trained = sum(label != -100 for label in encode_conversation(tok, convs[0], 4096).labels)
    assert result.loss_tokens == [trained]
    asked = len(encode_prompt(tok, [{"role": "user", "content": convs[0].messages[0].content}]))
    assert result.prompt_tokens[0] > asked + 100  # the tool schemas are in the prompt
    assert tool_call_match(result.predictions[0], result.references[0]) == 0.0  # an untrained model calls nothing
    assert tool_call_match(result.references[0], result.references[0]) == 1.0


def test_prepare_keeps_tool_calls_and_tells_arguments_apart(tmp_path):
    """Cleaning leaves a call-only message alone; records that differ only in a call's arguments are not
    duplicates; the prepared splits read back with their calls and tools."""
    from tuneforge.data.prepare import prepare
    from tuneforge.data.prepare_config import load_prepare_config

    row = json.loads((CORPUS / "openai_tools.jsonl").read_text().splitlines()[0])
    rows = []
    for i in range(20):
        args = json.dumps({"location": f"City {i}, Country", "format": "celsius"})
        rows.append(
            {
                **row,
                "messages": [
                    row["messages"][0],
                    {
                        **row["messages"][1],
                        "tool_calls": [
                            {
                                **row["messages"][1]["tool_calls"][0],
                                "function": {"name": "get_current_weather", "arguments": args},
                            }
                        ],
                    },
                ],
            }
        )
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_prepare_config(tmp_path / "calls.jsonl")
    cfg.dedup = cfg.dedup.model_copy(update={"near": False})  # near-duplicates by wording: on purpose here
    manifest = prepare(cfg, tmp_path / "out")
    assert manifest["counts"]["kept"] == 20, manifest["counts"]
    back = [c for s in ("train", "validation", "test") for c in read_examples(tmp_path / "out" / f"{s}.jsonl")]
    assert len(back) == 20 and all(c.tools == back[0].tools for c in back)
    assert sorted(c.messages[1].tool_calls[0].arguments["location"] for c in back) == sorted(
        f"City {i}, Country" for i in range(20)
    )


def test_mistral_v03_tool_calls_are_trained_with_their_ids():
    tok = _tokenizer("mistral-v0.3", MISTRAL_V03_TOOLS)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {
        "id": "abc123xyz",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    record = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "abc123xyz", "content": "21C"},
            {"role": "assistant", "content": "It is 21C."},
        ],
        "tools": tools,
    }
    conv, _ = formats.parse(record, "chat")
    enc = encode_conversation(tok, conv, 4096)
    written = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]'
    assert labelled_runs(tok, enc.input_ids, enc.labels) == [written + "</s>", " It is 21C.</s>"]
    assert parse_tool_calls(written, tok.chat_template).calls == [
        ToolCall("get_weather", {"city": "Paris"}, "abc123xyz")
    ]
    record["messages"][1]["tool_calls"][0]["id"] = record["messages"][2]["tool_call_id"] = "c1"
    with pytest.raises(DataError, match="refuses a conversation") as err:
        encode_conversation(tok, formats.parse(record, "chat")[0], 4096)
    assert "length 9" in err.value.problems[0].message
