"""The decode loop of generate_batch against transformers' generate: same tokens, same draws; and the
streamed path (generate_one) gives the batched path's text exactly."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.data.tokenize import encode_prompt
from tuneforge.models.generate import AnswerText, decode, direct_decoding, generate_batch
from tuneforge.serve.streaming import generate_one

PROMPTS = [
    [{"role": "user", "content": "How much is the Lumora Lantern?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Shipping to Norway?"}],
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # sharper attention than the random init: the next token really depends on the context
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                p.mul_(6)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def left_padded(tokenizer, prompts):
    rows = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask


def hf_new_tokens(model, ids, mask, new, stop, pad, **sampling):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new,
        pad_token_id=pad,
        eos_token_id=stop,
        top_k=None,
        do_sample=bool(sampling),
        **sampling,
    )
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("rows", [1, 3], ids=["batch-1", "left-padded-batch-3"])
def test_greedy_decode_matches_generate_including_stops_and_padding(model_and_tokenizer, rows):
    model, tok = model_and_tokenizer
    ids, mask = left_padded(tok, PROMPTS[:rows])
    pad = tok.pad_token_id
    free = hf_new_tokens(model, ids, mask, 16, [], pad)
    stop = [int(free[0, 4])]  # a token the first row really emits: it must end that row early
    with torch.no_grad():
        expected = hf_new_tokens(model, ids, mask, 16, stop, pad)
        got = decode(model, ids, mask, 16, 0.0, 1.0, stop, pad)
    assert got.shape[1] == expected.shape[1] and torch.equal(got, expected)
    assert stop[0] in got[0].tolist()
    if rows == 1:
        assert got.shape[1] < 16  # stopped when the only row finished


def test_sampling_draws_the_same_tokens_as_generate_for_a_seed(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids, mask = left_padded(tok, PROMPTS)
    torch.manual_seed(11)
    expected = hf_new_tokens(model, ids, mask, 12, [], tok.pad_token_id, temperature=0.7, top_p=0.9)
    torch.manual_seed(11)
    with torch.no_grad():
        got = decode(model, ids, mask, 12, 0.7, 0.9, [], tok.pad_token_id)
    assert torch.equal(got, expected)
    greedy = decode(model, ids, mask, 12, 0.0, 1.0, [], tok.pad_token_id)
    assert not torch.equal(got, greedy)  # the draws really sampled
    assert torch.equal(
        decode(model, ids, mask, 12, 0.7, 1e-6, [], tok.pad_token_id), greedy
    )  # top_p keeps at least the top token


def test_lora_adapters_decode_directly_and_prompt_tuning_falls_back_to_generate(tiny_model_dir, model_and_tokenizer):
    _, tok = model_and_tokenizer
    ids, mask = left_padded(tok, PROMPTS)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    assert direct_decoding(lora)
    with torch.no_grad():
        assert torch.equal(
            decode(lora, ids, mask, 10, 0.0, 1.0, [], tok.pad_token_id),
            hf_new_tokens(lora, ids, mask, 10, [], tok.pad_token_id),
        )
    prompt = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    ).eval()
    assert not direct_decoding(prompt)
    results = generate_batch(prompt, tok, PROMPTS, max_new_tokens=6)
    assert len(results) == 3 and all(0 < r.completion_tokens <= 6 for r in results)


def test_generate_batch_counts_tokens_and_cuts_stop_strings(model_and_tokenizer):
    model, tok = model_and_tokenizer
    first = generate_batch(model, tok, PROMPTS[:1], max_new_tokens=12)[0]
    assert first.finish_reason in ("stop", "length") and first.prompt_tokens > 0 and 0 < first.completion_tokens <= 12
    if len(first.text) > 3:
        cut = generate_batch(model, tok, PROMPTS[:1], max_new_tokens=12, stop=[first.text[2:4]])[0]
        assert cut.finish_reason == "stop" and first.text.startswith(cut.text) and len(cut.text) <= 2


def test_per_row_adapters_decode_as_each_adapter_alone(tiny_model_dir, model_and_tokenizer):
    _, tok = model_and_tokenizer
    ids, mask = left_padded(tok, [PROMPTS[0]] * 3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    model = get_peft_model(base, config, adapter_name="one")
    torch.manual_seed(2)
    model.add_adapter("two", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    pad = tok.pad_token_id
    with torch.no_grad():
        mixed = decode(model, ids, mask, 10, 0.0, 1.0, [], pad, {"adapter_names": ["one", "__base__", "two"]})
        model.set_adapter("one")
        one = decode(model, ids[:1], mask[:1], 10, 0.0, 1.0, [], pad)
        model.set_adapter("two")
        two = decode(model, ids[:1], mask[:1], 10, 0.0, 1.0, [], pad)
        with model.disable_adapter():
            plain = decode(model, ids[:1], mask[:1], 10, 0.0, 1.0, [], pad)
    assert len({tuple(t.tolist()) for t in (one[0], two[0], plain[0])}) == 3  # three different models
    assert torch.equal(mixed, torch.cat([one, plain, two]))


SCRIPTED = ["ĉ", "H", "ell", "o", "Ġthe", "re", "Ġ"]  # "\tHello there ": whitespace at both ends


@pytest.fixture(scope="module")
def scripted(tiny_model_dir):
    """The tiny Llama made to answer any prompt with SCRIPTED and then the end token.

    Attention and MLP outputs are zeroed, so the last hidden state is the (normed) embedding of the
    last token; chain token i embeds as the unit vector e_i and the (untied) head scores the next
    chain token on e_i. The greedy answer is then known exactly, whitespace included."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt_end = encode_prompt(tok, PROMPTS[0])[-1]  # every chat prompt ends with the same header token
    chain = [prompt_end, *tok.convert_tokens_to_ids(SCRIPTED), tok.eos_token_id]
    assert len(set(chain)) == len(chain)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.get_input_embeddings().weight
        head = torch.zeros_like(embed)
        for i, (token, nxt) in enumerate(zip(chain, chain[1:])):
            embed[token] = torch.nn.functional.one_hot(torch.tensor(i), hidden).float()
            head[nxt, i] = 20.0
        model.lm_head.weight = torch.nn.Parameter(head)  # no longer tied to the embeddings
        model.config.tie_word_embeddings = False
    return model, tok


def streamed(model, tok, prompt, **kw):
    pieces: list[str] = []
    result = generate_one(
        model, tok, encode_prompt(tok, prompt), temperature=0.0, top_p=1.0, seed=None, on_text=pieces.append, **kw
    )
    return "".join(pieces), result


@pytest.mark.parametrize("stop, expected", [(None, "\tHello there "), (["there"], "\tHello "), (["o"], "\tHell")])
def test_streamed_and_batched_answers_are_the_same_text(scripted, stop, expected):
    model, tok = scripted
    batched = generate_batch(model, tok, PROMPTS[:1], max_new_tokens=16, stop=stop)[0]
    joined, one = streamed(model, tok, PROMPTS[0], max_new_tokens=16, stop=stop)
    assert batched.text == one.text == joined == expected  # leading tab and trailing space kept by both
    assert batched.finish_reason == one.finish_reason == "stop"
    if stop is None:
        assert batched.completion_tokens == one.completion_tokens == len(SCRIPTED) + 1  # the end token counts


def test_streamed_and_batched_answers_match_on_a_real_greedy_model(model_and_tokenizer):
    model, tok = model_and_tokenizer
    for prompt in PROMPTS:
        batched = generate_batch(model, tok, [prompt], max_new_tokens=12)[0]
        joined, one = streamed(model, tok, prompt, max_new_tokens=12, stop=None)
        assert batched.text == one.text == joined
        assert (batched.finish_reason, batched.completion_tokens) == (one.finish_reason, one.completion_tokens)


def test_answer_text_pieces_join_to_the_whole_text(tiny_tokenizer):
    ids = tiny_tokenizer("  Grüße, see you soon \n", add_special_tokens=False)["input_ids"]
    answer = AnswerText(tiny_tokenizer, stop=["soon"])
    pieces = [answer.add([token]) for token in ids]
    pieces.append(answer.add([], last=True))
    assert "".join(pieces) == answer.text == "  Grüße, see you " and answer.stopped
    assert all("\ufffd" not in p for p in pieces)  # a half UTF-8 character is held back, not sent
