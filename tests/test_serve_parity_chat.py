"""chat/completions parity with OpenAI, through the official client on the tiny demo model: penalties and
logit_bias (golden logits arithmetic), n, seed, logprobs (= log_softmax of the model's logits), response_format
with constrained decoding (JSON that validates), tools / tool_choice with parsed tool_calls, streamed and not."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import torch

from helpers import tiny_service
from tuneforge.models.generate import Controls, Steer, encode_chat, generate_ids
from tuneforge.serve import keys

MSGS = [{"role": "user", "content": "How much is the Lumora Lantern?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "plan": {"enum": ["free", "pro", "team"]},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["billing", "shipping"]}, "maxItems": 2},
    },
    "required": ["plan", "urgent", "tags"],
    "additionalProperties": False,
}  # every value is bounded: a random model must finish the object within a few dozen tokens
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ORDER = {
    "type": "function",
    "function": {
        "name": "order_status",
        "parameters": {"type": "object", "properties": {"rush": {"type": "boolean"}}, "required": ["rush"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, app, _):
        # The tools prompt (the fallback's Qwen wording plus schemas) is ~500 tokens with the demo's 512-entry
        # vocabulary: give the demo (rotary positions) a longer context before its first request loads it.
        config = home / "models" / "demo" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "max_position_embeddings": 2048}))
        _, key = keys.create_key(store, "parity")
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        yield {"client": client, "home": home, "app": app}


@pytest.fixture(scope="module")
def demo(server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = server["home"] / "models" / "demo"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


# ---- the logits arithmetic, with golden numbers


def test_penalties_and_bias_follow_openais_formula():
    controls = Controls(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((1, 2.0), (4, -100.0)))
    steer = Steer(controls, batch=2, vocab=5, device="cpu", tokenizer=None, stop_ids=[])
    running = torch.zeros(2, dtype=torch.bool)
    for row0, row1 in [(2, 0), (2, 0), (3, 0)]:  # row 0 generated 2, 2, 3; row 1 generated 0 three times
        steer.advance(torch.tensor([row0, row1]), running)
    steer.advance(torch.tensor([1, 1]), torch.tensor([False, True]))  # a finished row counts nothing more
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5], [1.0, 2.0, 3.0, 4.0, 0.5]])
    got = steer.scores(logits, running)
    # row 0: counts [0, 1, 2, 1, 0]: j -= 0.25 * count + 0.5 * (count > 0); bias +2 on 1, -100 on 4
    # row 1: counts [3, 0, 0, 0, 0]
    expected = torch.tensor([[1.0, 3.25, 2.0, 3.25, -99.5], [-0.25, 4.0, 3.0, 4.0, -99.5]])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(logits[0], torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5]))  # the model's logits untouched


def test_negative_penalties_reward_repeats():
    steer = Steer(Controls(presence_penalty=-1.0, frequency_penalty=-2.0), 1, 3, "cpu", None, [])
    steer.advance(torch.tensor([1]), torch.zeros(1, dtype=torch.bool))
    torch.testing.assert_close(
        steer.scores(torch.zeros(1, 3), torch.zeros(1, dtype=torch.bool)), torch.tensor([[0.0, 3.0, 0.0]])
    )


def test_logprobs_are_the_log_softmax_of_the_models_logits(demo):
    model, tok = demo
    prompt = encode_chat(tok, MSGS)
    controls = Controls(top_logprobs=3, frequency_penalty=1.5, logit_bias=((7, 3.0),))
    (result,) = generate_ids(model, tok, [prompt], max_new_tokens=6, temperature=0.0, top_p=1.0, controls=controls)
    ids = [e.token for e in result.logprobs]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]  # (T, V): the step of each
    reference = logits.float().log_softmax(-1)
    for step, entry in enumerate(result.logprobs):
        assert entry.logprob == pytest.approx(float(reference[step, entry.token]), abs=1e-5)
        top = reference[step].topk(3)
        assert [t for t, _, _ in entry.top] == top.indices.tolist()
        assert [lp for _, lp, _ in entry.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert b"".join(e.bytes for e in result.logprobs).decode() == result.text


@pytest.mark.slow
def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch(demo):
    model, tok = demo
    a, b = encode_chat(tok, MSGS), encode_chat(tok, [{"role": "user", "content": "Ship to Oslo?"}])
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0)
    alone = generate_ids(model, tok, [a], seeds=[5], **kw)[0]
    beside = generate_ids(model, tok, [b, a], seeds=[9, 5], **kw)[1]
    assert beside.text == alone.text
    assert generate_ids(model, tok, [a], seeds=[6], **kw)[0].text != alone.text


def test_a_template_that_fails_on_tools_is_named(demo):
    from tuneforge.models.generate import ToolsNotRendered

    _, tok = demo
    broken = tok.__class__.from_pretrained(tok.name_or_path)
    broken.chat_template = "{% if tools %}{{ raise_exception('no tools here') }}{% endif %}{# tool_calls #}"
    with pytest.raises(ToolsNotRendered, match="no tools here"):
        encode_chat(broken, {"messages": MSGS, "tools": [WEATHER]})


# ---- the service, through the official client


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"a": 1}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"n": 129}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}}, None),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
        ({"functions": [WEATHER["function"]]}, "functions"),
    ],
)
def test_out_of_range_or_unusable_options_are_400s_naming_the_field(server, kw, param):
    with pytest.raises(openai.BadRequestError) as exc:
        server["client"].chat.completions.create(model="demo", messages=MSGS, max_tokens=2, **kw)
    assert exc.value.body["param"] == (param or "response_format.json_schema")


@pytest.mark.slow
def test_logit_bias_forces_a_token_and_n_runs_128_choices(server, demo):
    _, tok = demo
    token = tok.convert_tokens_to_ids("ĠLumora") if "ĠLumora" in tok.get_vocab() else tok("the")["input_ids"][0]
    r = server["client"].chat.completions.create(
        model="demo", messages=MSGS, max_tokens=4, temperature=0, logit_bias={str(token): 100}, logprobs=True
    )
    assert [t.bytes for t in r.choices[0].logprobs.content] == [list(tok.decode([token]).encode())] * 4
    many = server["client"].chat.completions.create(model="demo", messages=MSGS, max_tokens=2, n=128, seed=3)
    assert [c.index for c in many.choices] == list(range(128))
    assert 128 <= many.usage.completion_tokens <= 256 and len({c.message.content for c in many.choices}) > 1


def test_penalties_change_a_greedy_answer_as_the_decode_loop_does(server, demo):
    model, tok = demo
    ask = dict(model="demo", messages=MSGS, max_tokens=24, temperature=0)
    plain = server["client"].chat.completions.create(**ask).choices[0].message.content
    penalised = server["client"].chat.completions.create(**ask, frequency_penalty=2, presence_penalty=1)
    local = generate_ids(
        model,
        tok,
        [encode_chat(tok, MSGS)],
        max_new_tokens=24,
        temperature=0.0,
        top_p=1.0,
        controls=Controls(presence_penalty=1.0, frequency_penalty=2.0),
    )[0]
    assert penalised.choices[0].message.content == local.text != plain


def test_chat_logprobs_streamed_and_not_are_the_models(server, demo):
    model, tok = demo
    ask = dict(model="demo", messages=MSGS, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    r = server["client"].chat.completions.create(**ask)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)
    ids = [tok.convert_tokens_to_ids(tok.tokenize(t.token))[0] for t in content]
    prompt = encode_chat(tok, MSGS)
    with torch.no_grad():
        reference = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    assert [t.logprob for t in content] == pytest.approx([float(reference[k, i]) for k, i in enumerate(ids)], abs=1e-4)
    chunks = list(server["client"].chat.completions.create(**ask, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 5)) for t in streamed] == [(t.token, round(t.logprob, 5)) for t in content]


def test_completions_logprobs(server):
    c = server["client"].completions.create(model="demo", prompt="Hello", max_tokens=5, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(top) == 3 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError):
        server["client"].completions.create(model="demo", prompt="Hello", max_tokens=2, logprobs=6)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate(server, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA, "strict": True}}
    ask = dict(model="demo", messages=MSGS, max_tokens=60, temperature=1.0, seed=1, n=3, response_format=fmt)
    if stream:
        texts = [""] * 3
        for chunk in server["client"].chat.completions.create(**ask, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    else:
        r = server["client"].chat.completions.create(**ask)
        assert {c.finish_reason for c in r.choices} == {"stop"}
        texts = [c.message.content for c in r.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_answers_are_objects(server):
    r = server["client"].chat.completions.create(
        model="demo",
        messages=MSGS,
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_object"},
        logit_bias={str(i): -5 for i in range(3, 60)},  # nudge away from the first ids so the object gets closed
        frequency_penalty=2,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens, as OpenAI's may be: still a JSON prefix
        assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "order_status"}}])
def test_required_or_named_tool_choice_gives_a_valid_call(server, stream, choice):
    ask = dict(model="demo", messages=MSGS, max_tokens=120, temperature=1.0, seed=2, tools=[WEATHER, ORDER])
    if stream:
        chunks = list(server["client"].chat.completions.create(**ask, tool_choice=choice, stream=True))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    else:
        r = server["client"].chat.completions.create(**ask, tool_choice=choice)
        calls, finish = r.choices[0].message.tool_calls, [r.choices[0].finish_reason]
        assert r.choices[0].message.content is None
    assert finish == ["tool_calls"] and len(calls) == 1 and calls[0].id.startswith("call_")
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ORDER)}
    if isinstance(choice, dict):
        assert calls[0].function.name == "order_status"
    jsonschema.validate(json.loads(calls[0].function.arguments), tools[calls[0].function.name])


def test_tools_are_rendered_and_a_call_round_trips(server):
    client = server["client"]
    plain = client.chat.completions.create(model="demo", messages=MSGS, max_tokens=1)
    offered = client.chat.completions.create(
        model="demo", messages=MSGS, max_tokens=1, tools=[WEATHER], tool_choice="none"
    )
    assert offered.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool schema is in the prompt
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = [
        *MSGS,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
    ]
    follow = client.chat.completions.create(model="demo", messages=history, max_tokens=3, tools=[WEATHER])
    assert follow.usage.prompt_tokens > offered.usage.prompt_tokens
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_prompt_tuned_models_take_row_seeds_but_no_controls(demo):
    import copy

    from peft import PromptTuningConfig, get_peft_model

    from tuneforge.models.generate import generate_batch

    model, tok = demo
    prompted = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    kw = dict(max_new_tokens=5, temperature=1.0)
    alone = generate_batch(prompted.eval(), tok, [MSGS], seeds=[4], **kw)[0]
    assert generate_batch(prompted, tok, [[{"role": "user", "content": "Oslo?"}], MSGS], seeds=[1, 4], **kw)[1] == alone
    with pytest.raises(ValueError, match="no controls"):
        generate_batch(prompted, tok, [MSGS], controls=Controls(frequency_penalty=1.0), **kw)
