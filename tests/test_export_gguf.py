"""GGUF export (issue 19, part 1): read back with the gguf package's reader and run by llama.cpp itself.

Each family is a tiny `from_config` model of its real architecture (2 layers, hidden 64) with the family's
tokenizer from tests/families.py and a random LoRA update (B not zero) merged in, so the checked weights are
not the base's. The reader checks names, shapes, types and values against the merged Hugging Face weights
(Q/K rows permuted for llama-arch rotary, Gemma's 1 + w norms), and the tokenizer metadata. llama.cpp
(llama-cpp-python) loads each file and gives the greedy tokens of the merged model for a few prompts (f16)
and logits within f16 rounding; q8_0 agrees on most tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from families import FAMILIES, build_family_tokenizer
from tuneforge.export.gguf import ExportError, export_gguf, gguf_file_name

_DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,  # peaked logits: a greedy token is not a near tie that f16 rounding flips
)
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16)  # llama.cpp scales queries by 1/sqrt(head_dim)
CASES = {  # name -> (tests/families.py tokenizer, transformers model_type, extra config)
    "llama": ("llama3", "llama", {}),
    "qwen2": ("qwen2.5", "qwen2", {}),
    "qwen3": ("qwen3", "qwen3", {"head_dim": 16}),
    "mistral": ("mistral-v0.3", "mistral", {}),
    "gemma2": ("gemma2", "gemma2", _GEMMA),
    "gemma3": ("gemma3", "gemma3_text", _GEMMA),
    "phi3": ("phi3", "phi3", {}),
}
PROMPTS = [
    [{"role": "user", "content": "How do I reset my password?"}],
    [{"role": "user", "content": "What are your opening hours?"}],
    [{"role": "user", "content": "Can I change the delivery address after ordering?"}],
]
NEW_TOKENS = 8


def _build(name: str, folder, **overrides):
    family, model_type, extra = CASES[name]
    tok = build_family_tokenizer(FAMILIES[family])
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), **{**_DECODER, **extra, **overrides}, **ids)
    model = _merge_random_lora(AutoModelForCausalLM.from_config(config))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model.eval(), tok


def _merge_random_lora(model):
    """A LoRA update with both factors random (peft's init_lora_weights=False), folded in."""
    from peft import LoraConfig, get_peft_model

    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if "Phi3" in type(model).__name__ else None
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets or "all-linear")
    return get_peft_model(model, lora).merge_and_unload()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (merged HF model, tokenizer, gguf folder), built once per family."""
    built = {}

    def get(name):
        if name not in built:
            folder = tmp_path_factory.mktemp(f"gguf-{name}")
            model, tok = _build(name, folder / "hf")
            export_gguf(folder / "hf", folder / "gguf", ["f16", "q8_0"])
            built[name] = model, tok, folder / "gguf"
        return built[name]

    return get


def _permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _expected(model, name: str) -> dict[str, np.ndarray]:
    """The merged HF weights under their llama.cpp names and layouts, written out independently of the exporter."""
    config = model.config
    out = {}
    tied = config.tie_word_embeddings
    for hf, tensor in model.state_dict().items():
        w = tensor.float().numpy()
        if hf == "lm_head.weight":
            if not tied:
                out["output.weight"] = w
            continue
        if hf == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
            continue
        if hf == "model.norm.weight":
            out["output_norm.weight"] = w + 1 if name.startswith("gemma") else w
            continue
        layer, rest = hf.removeprefix("model.layers.").split(".", 1)
        gemma = name.startswith("gemma")
        table = {
            "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.q_proj.bias": "attn_q.bias",
            "self_attn.k_proj.bias": "attn_k.bias",
            "self_attn.v_proj.bias": "attn_v.bias",
            "self_attn.o_proj.weight": "attn_output.weight",
            "self_attn.qkv_proj.weight": "attn_qkv.weight",
            "self_attn.q_norm.weight": "attn_q_norm.weight",
            "self_attn.k_norm.weight": "attn_k_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.gate_up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
            "input_layernorm.weight": "attn_norm.weight",
            "post_attention_layernorm.weight": "post_attention_norm.weight" if gemma else "ffn_norm.weight",
            "pre_feedforward_layernorm.weight": "ffn_norm.weight",
            "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        }
        if name in ("llama", "mistral") and rest == "self_attn.q_proj.weight":
            w = _permute(w, config.num_attention_heads)
        if name in ("llama", "mistral") and rest == "self_attn.k_proj.weight":
            w = _permute(w, config.num_key_value_heads)
        if gemma and rest.endswith("norm.weight"):
            w = w + 1
        out[f"blk.{layer}.{table[rest]}"] = w
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_the_file_reads_back_with_the_merged_weights_and_the_tokenizer(name, exported):
    import gguf

    model, tok, folder = exported(name)
    expected = _expected(model, name)
    for quant, tol in (("f16", 1e-3), ("q8_0", 0.02)):
        reader = gguf.GGUFReader(str(folder / gguf_file_name(quant)))
        tensors = {t.name: t for t in reader.tensors}
        assert set(tensors) == set(expected), quant
        for tname, want in expected.items():
            t = tensors[tname]
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
            if want.ndim == 1:
                assert t.tensor_type == gguf.GGMLQuantizationType.F32  # norms and biases stay f32
                np.testing.assert_array_equal(got, want)
            else:
                want_type = gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0
                assert t.tensor_type == want_type, tname
                scale = np.abs(want).max()
                assert np.abs(got - want).max() <= tol * scale, (quant, tname)
        fields = reader.fields
        tokens = [
            bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data
        ]
        vocab = tok.get_vocab()
        assert tokens == sorted(vocab, key=vocab.get)
        merges = fields["tokenizer.ggml.merges"]
        assert len(merges.data) == len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"])
        assert _scalar(fields, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
        if tok.bos_token_id is not None:
            assert _scalar(fields, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
        assert _string(fields, "tokenizer.chat_template") == tok.chat_template
        # transformers' Qwen2 tokenizer class sets Qwen 2's split regex on load; the others keep GPT-2's
        assert _string(fields, "tokenizer.ggml.model") == "gpt2"
        assert _string(fields, "tokenizer.ggml.pre") == ("qwen2" if name == "qwen2" else "gpt-2")
        types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
        added = {a["id"]: a["special"] for a in json.loads(tok.backend_tokenizer.to_str())["added_tokens"]}
        assert types == [
            (gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
            if i in added
            else gguf.TokenType.NORMAL
            for i in range(len(vocab))
        ]
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and f'PARAMETER stop "{tok.eos_token}"' in modelfile


def _scalar(fields, key):
    return int(fields[key].parts[fields[key].data[0]][0])


def _string(fields, key):
    return bytes(fields[key].parts[fields[key].data[0]]).decode()


def test_families_and_settings_llama_cpp_would_run_differently_are_refused_before_any_work(tmp_path):
    _build("llama", tmp_path / "ok")
    gpt2_tok = build_family_tokenizer(FAMILIES["gpt2"])
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", vocab_size=len(gpt2_tok), n_embd=64, n_layer=2, n_head=4, n_positions=64)
    )
    gpt2.save_pretrained(tmp_path / "gpt2")
    gpt2_tok.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ExportError, match="cannot write a gpt2 model as GGUF") as refused:
        export_gguf(tmp_path / "gpt2", tmp_path / "out-gpt2")
    assert "GGUF export covers gemma2, gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen3" in str(refused.value)
    assert not (tmp_path / "out-gpt2").exists()  # refused before any work

    _build("gemma2", tmp_path / "gemma2", query_pre_attn_scalar=256)
    with pytest.raises(ExportError, match="query_pre_attn_scalar: 256 != head_dim 16") as refused:
        export_gguf(tmp_path / "gemma2", tmp_path / "out-gemma2")
    assert "set query_pre_attn_scalar: 16" in str(refused.value)

    with pytest.raises(ExportError, match="unknown GGUF type") as refused:
        export_gguf(tmp_path / "ok", tmp_path / "out-bad", ["q3_x"])
    assert "use one of f32, f16, bf16, q8_0" in str(refused.value)


def test_a_sentencepiece_style_tokenizer_is_refused_with_the_reason(tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _build("llama", tmp_path / "m")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}, "▁a": 259}
    spm = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    spm.decoder = decoders.Metaspace()
    PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path / "m")
    with pytest.raises(ExportError, match="with byte fallback \\(SentencePiece style\\) is not exported"):
        export_gguf(tmp_path / "m", tmp_path / "out")


def test_q4_k_m_without_llama_cpp_is_refused_naming_the_types_offered(tmp_path, monkeypatch):
    import tuneforge.export.gguf as module

    monkeypatch.setattr(module, "_llama_cpp_available", lambda: False)
    with pytest.raises(ExportError, match="cannot write these GGUF types") as refused:
        export_gguf(tmp_path / "nothing-needed", tmp_path / "out", ["f16", "q4_k_m"])
    text = str(refused.value)
    assert "--quant q4_k_m: the gguf package quantizes only f32/f16/bf16/q8_0" in text
    assert "llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M" in text


# ----------------------------------------------------------------------------------------------- llama.cpp


def _prompt_ids(tok, messages) -> tuple[str, list[int]]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, tok(text, add_special_tokens=False)["input_ids"]


def _hf_greedy(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """(logits of the prompt positions, n greedy tokens) of the merged HF model, without stopping at EOS."""
    seq = list(ids)
    with torch.no_grad():
        prompt_logits = model(torch.tensor([seq])).logits[0].float().numpy()
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return prompt_logits, seq[len(ids) :]


def _llama_cpp_greedy(llm, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)])
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return prompt_logits, out


def _load_llama_cpp(path):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)


def _round_trip(model, tok, path, prompts=PROMPTS) -> tuple[int, int, float, int]:
    """(greedy tokens that agree, tokens, max |logit difference| / max |logit|, prompt positions whose top-1 agree)."""
    llm = _load_llama_cpp(path)
    same = total = top1 = 0
    worst = 0.0
    for messages in prompts:
        text, ids = _prompt_ids(tok, messages)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # llama.cpp's tokenizer agrees
        hf_logits, hf_tokens = _hf_greedy(model, ids, NEW_TOKENS)
        cpp_logits, cpp_tokens = _llama_cpp_greedy(llm, ids, NEW_TOKENS)
        prefix = next((i for i, (a, b) in enumerate(zip(hf_tokens, cpp_tokens)) if a != b), NEW_TOKENS)
        same, total = same + prefix, total + NEW_TOKENS
        worst = max(worst, float(np.abs(cpp_logits - hf_logits).max() / np.abs(hf_logits).max()))
        top1 += int((cpp_logits.argmax(-1) == hf_logits.argmax(-1)).sum())
    llm.close()
    return same, total, worst, top1


@pytest.mark.slow  # llama.cpp loads two files per family: ~3-5 s each family alone
@pytest.mark.parametrize("name", list(CASES))
def test_llama_cpp_runs_the_file_with_the_merged_models_greedy_tokens(name, exported):
    model, tok, folder = exported(name)
    same, total, worst, _ = _round_trip(model, tok, folder / gguf_file_name("f16"))
    assert same == total, f"f16: {same}/{total} greedy tokens as the merged HF model"
    assert worst < 0.01, f"f16 logits differ by {worst:.4f} of their range"
    same, total, worst, top1 = _round_trip(model, tok, folder / gguf_file_name("q8_0"), PROMPTS[:1])
    positions = len(_prompt_ids(tok, PROMPTS[0])[1])
    assert top1 >= 0.8 * positions and worst < 0.1, f"q8_0: top-1 {top1}/{positions}, logits off by {worst:.4f}"


@pytest.mark.slow  # a 2-step LoRA run on the tiny Llama, exported by the CLI, 3 files through llama.cpp: ~10 s
def test_the_cli_exports_a_trained_lora_run_that_llama_cpp_runs(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app
    from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection
    from tuneforge.models.loading import load_for_inference
    from tuneforge.train.recipe import train

    _build("llama", tmp_path / "base")
    row = {"messages": [PROMPTS[1][0], {"role": "assistant", "content": "We are open from nine to five."}]}
    (tmp_path / "train.jsonl").write_text((json.dumps(row) + "\n") * 16)
    cfg = RunConfig(
        objective="sft",
        output_dir=tmp_path / "run",
        method=LoraMethod(r=4, alpha=8),
        train=TrainSection(max_steps=2, batch_size=8, lr=5e-3, eval_every=100, save_every=100, warmup_ratio=0.0),
        model=ModelSection(name=str(tmp_path / "base"), max_length=64),
        data=DataSection(train=tmp_path / "train.jsonl", validation_fraction=0.0),
    )
    run_dir = train(cfg, progress=False).run_dir
    out = tmp_path / "gguf"
    args = ["export", str(run_dir), "--out", str(out), "--format", "gguf", "--quant", "q8_0", "--quant", "q4_k_m"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for quant in ("q8_0", "f16", "q4_k_m"):  # f16 too: llama.cpp's quantizer makes q4_k_m from it
        assert f"{out / gguf_file_name(quant)}\t{quant}" in result.output
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text()  # the first --quant is the one Ollama gets
    refused = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--quant", "q8_0"])
    assert refused.exit_code != 0 and "--quant applies to --format gguf only" in refused.output
    merged, tok = load_for_inference(run_dir, merge=True)
    same, total, worst, _ = _round_trip(merged, tok, out / gguf_file_name("f16"))
    assert same == total and worst < 0.01, f"f16 of the trained run: {same}/{total} tokens, logits off by {worst:.4f}"
    positions = len(_prompt_ids(tok, PROMPTS[0])[1])
    _, _, _, top1 = _round_trip(merged, tok, out / gguf_file_name("q8_0"), PROMPTS[:1])
    assert top1 >= 0.8 * positions, f"q8_0 of the trained run: top-1 {top1}/{positions}"
    _, _, _, top1 = _round_trip(merged, tok, out / gguf_file_name("q4_k_m"), PROMPTS[:1])
    assert top1 >= 0.5 * positions, f"q4_k_m of the trained run: top-1 {top1}/{positions}"
