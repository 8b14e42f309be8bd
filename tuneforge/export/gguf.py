"""GGUF export for llama.cpp and Ollama (`tuneforge export RUN --format gguf --quant f16`).

The fine-tune is merged into its base (the same path as the Hugging Face export), then every tensor is
written with the llama.cpp project's own `gguf` writer under the name and layout llama.cpp's loader
expects, as its `convert_hf_to_gguf.py` does:

- names through `gguf.TensorNameMap` (model.layers.0.self_attn.q_proj -> blk.0.attn_q);
- Llama and Mistral (llama.cpp's `llama` arch rotates interleaved pairs) get Q and K rows permuted back
  from Hugging Face's half-split rotary layout; Qwen, Gemma and Phi-3 use the half-split (NeoX) rotary
  in llama.cpp too and are written as they are;
- Gemma's RMSNorm scales by (1 + w): the norm weights are written as 1 + w, which llama.cpp multiplies;
- tied embeddings write no output.weight (llama.cpp reuses token_embd);
- 1-D tensors (norms, biases) stay f32, as llama.cpp keeps them.

The tokenizer goes in the metadata: the byte-level BPE vocabulary, merges, token types (special tokens
as control, added tokens as user-defined), bos/eos/pad ids, whether the tokenizer adds BOS, its
pre-tokenizer by name, and `tokenizer.chat_template`. An Ollama `Modelfile` is written beside the file.

Quantization: f32, f16, bf16 and q8_0 are written by `gguf.quants` (pure numpy, like
convert_hf_to_gguf's --outtype). The gguf package quantizes no K-quant; q4_k_m (and the other llama.cpp
types) are made by llama.cpp's own quantizer (`llama_model_quantize`) from the f16 file when
llama-cpp-python is installed, and refused with that reason when it is not.

A family, tokenizer or config llama.cpp would run differently is refused before any work, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import ModelLoadError, Problem, TuneforgeError


class ExportError(TuneforgeError):
    """The model cannot be written as GGUF (family, tokenizer, config or quantization type)."""


# transformers model_type -> (gguf arch, llama.cpp rotates interleaved pairs, norms stored as w - 1)
ARCHES: dict[str, tuple[str, bool, bool]] = {
    "llama": ("LLAMA", True, False),
    "mistral": ("LLAMA", True, False),  # convert_hf_to_gguf writes Mistral as the llama arch
    "qwen2": ("QWEN2", False, False),
    "qwen3": ("QWEN3", False, False),
    "gemma2": ("GEMMA2", False, True),
    "gemma3_text": ("GEMMA3", False, True),
    "gemma3": ("GEMMA3", False, True),
    "phi3": ("PHI3", False, False),
}
NUMPY_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here by gguf.quants
LLAMA_CPP_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")  # llama.cpp's own
QUANT_TYPES = NUMPY_TYPES + LLAMA_CPP_TYPES
# pre-tokenizer regexes of tokenizer.json -> llama.cpp's name for them (tokenizer.ggml.pre)
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {GPT2_REGEX: "gpt-2", LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}
MODELFILE = "Modelfile"


@dataclass
class GgufFile:
    path: Path
    quant: str
    bytes: int
    kept_f16: list[str] = field(default_factory=list)  # tensors whose rows do not split into q8_0 blocks


@dataclass
class GgufExport:
    files: list[GgufFile]
    modelfile: Path
    arch: str


def gguf_file_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def export_gguf(source: str | Path, out: Path, quants: list[str] | tuple[str, ...] = ("f16",)) -> GgufExport:
    """Merge a run's fine-tune (or take a model folder as it is) and write one GGUF file per quant type."""
    from tuneforge.models.artifact import find_artifact, read_artifact
    from tuneforge.models.loading import load_for_inference, load_tokenizer

    quants = _check_quants(list(dict.fromkeys(quants)))
    artifact = find_artifact(source) if Path(str(source)).is_dir() else None
    if artifact is None and not (Path(str(source)) / "config.json").exists():
        read_artifact(source)  # raises the located "not a run directory" error
    if artifact is not None and not artifact.can_merge:
        raise ModelLoadError(
            f"a {artifact.method} run cannot be merged into a standalone model, so not written as GGUF",
            [
                Problem(
                    str(source),
                    f"{artifact.method} keeps extra modules or virtual tokens that llama.cpp cannot load",
                    "serve the run directory with tuneforge serve, or train with lora/full",
                )
            ],
        )
    config = _base_config(artifact.base_source() if artifact else str(source))
    tokenizer = load_tokenizer(source)
    _check_exportable(config, tokenizer, where=str(source))  # before the merge: refusals cost nothing
    model, tokenizer = load_for_inference(source, merge=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[GgufFile] = []
    numpy_quants = [q for q in quants if q in NUMPY_TYPES]
    if any(q in LLAMA_CPP_TYPES for q in quants) and "f16" not in numpy_quants:
        numpy_quants.append("f16")  # the quantizer's input; kept, it is the reference file
    tensors = _tensors(model, config)
    for quant in numpy_quants:
        files.append(write_gguf(tensors, config, tokenizer, out / gguf_file_name(quant), quant, _name(source)))
    for quant in quants:
        if quant in LLAMA_CPP_TYPES:
            files.append(_llama_cpp_quantize(out / gguf_file_name("f16"), out / gguf_file_name(quant), quant))
    preferred = next(f for f in files if f.quant == quants[0])
    modelfile = write_modelfile(out / MODELFILE, preferred.path, tokenizer)
    return GgufExport(files, modelfile, ARCHES[config.model_type][0].lower())


def _name(source: str | Path) -> str:
    return Path(str(source)).resolve().name


def _check_quants(quants: list[str]) -> list[str]:
    problems = []
    llama_cpp = _llama_cpp_available()
    for quant in quants:
        if quant not in QUANT_TYPES:
            problems.append(Problem(f"--quant {quant}", "unknown GGUF type", f"use one of {', '.join(QUANT_TYPES)}"))
        elif quant in LLAMA_CPP_TYPES and not llama_cpp:
            problems.append(
                Problem(
                    f"--quant {quant}",
                    "the gguf package quantizes only f32/f16/bf16/q8_0 (it reads K-quants but cannot write them); "
                    "this type needs llama.cpp's quantizer, from llama-cpp-python, which is not installed",
                    f"use {', '.join(NUMPY_TYPES)}, install llama-cpp-python, or run "
                    f"`llama-quantize model-f16.gguf model-{quant}.gguf {quant.upper()}`",
                )
            )
    if not quants:
        problems.append(Problem("--quant", "no type given", "use --quant f16 (or q8_0, ...)"))
    if problems:
        raise ExportError("cannot write these GGUF types", problems)
    return quants


def _llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _base_config(source: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not read the model config of {source}", [Problem(source, str(exc)[:300])]
        ) from None
    return getattr(config, "text_config", None) if config.model_type == "gemma3" else config


def _check_exportable(config, tokenizer, where: str) -> None:
    """Every reason llama.cpp would load this model differently from transformers, collected."""
    model_type = config.model_type
    if model_type not in ARCHES:
        raise ExportError(
            f"cannot write a {model_type} model as GGUF",
            [
                Problem(
                    f"{where}: config.json model_type",
                    f"{model_type} is not an exported family",
                    f"GGUF export covers {', '.join(sorted(ARCHES))}; export --format hf and convert with llama.cpp",
                )
            ],
        )
    problems = _config_problems(config, where) + _tokenizer_problems(tokenizer, where)
    if problems:
        raise ExportError(f"this {model_type} model cannot be written as GGUF as llama.cpp would run it", problems)


def _rope(config) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "full_attention" in params:  # gemma3: one rotary per layer type
        return params
    return {"full_attention": params}


def _config_problems(config, where: str) -> list[Problem]:
    problems: list[Problem] = []
    key = f"{where}: config.json"
    model_type = config.model_type
    for layer_type, rope in _rope(config).items():
        if rope.get("rope_type", "default") != "default":
            problems.append(
                Problem(
                    f"{key} rope_parameters.{layer_type}",
                    f"rope_type {rope.get('rope_type')} (scaled rotary) is not written",
                    "export models with the default rotary",
                )
            )
    if getattr(config, "partial_rotary_factor", None) not in (None, 1.0) and model_type != "phi3":
        problems.append(Problem(f"{key} partial_rotary_factor", "partial rotary is not written for this family"))
    if model_type == "mistral" and (window := config.sliding_window) and window < config.max_position_embeddings:
        problems.append(
            Problem(
                f"{key} sliding_window",
                f"{window} < max_position_embeddings {config.max_position_embeddings}: llama.cpp's llama arch "
                "attends over the whole context",
                "set sliding_window to null or at least max_position_embeddings",
            )
        )
    if model_type in ("qwen2", "qwen3") and getattr(config, "use_sliding_window", False):
        problems.append(Problem(f"{key} use_sliding_window", "true: llama.cpp's qwen arch has no sliding window"))
    if model_type in ("llama", "mistral") and (
        getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    ):
        problems.append(Problem(f"{key} attention_bias/mlp_bias", "biases are not in llama.cpp's llama arch"))
    if model_type.startswith("gemma"):
        head_dim = config.head_dim
        if config.query_pre_attn_scalar != head_dim:
            problems.append(
                Problem(
                    f"{key} query_pre_attn_scalar",
                    f"{config.query_pre_attn_scalar} != head_dim {head_dim}: llama.cpp scales queries by "
                    "1/sqrt(head_dim) for this size",
                    f"set query_pre_attn_scalar: {head_dim}",
                )
            )
        every = 2 if model_type == "gemma2" else 6  # llama.cpp's sliding-window pattern of the family
        expected = [
            "full_attention" if (i % 2 == 1 if every == 2 else (i + 1) % 6 == 0) else "sliding_attention"
            for i in range(config.num_hidden_layers)
        ]
        if getattr(config, "layer_types", None) and list(config.layer_types) != expected:
            problems.append(
                Problem(
                    f"{key} layer_types",
                    f"{config.layer_types} is not llama.cpp's {model_type} pattern {expected}",
                    "export a model with the family's own layer pattern",
                )
            )
    if model_type == "phi3" and (window := getattr(config, "sliding_window", None)):
        if window < config.max_position_embeddings:
            problems.append(Problem(f"{key} sliding_window", f"{window}: not written", "set sliding_window to null"))
    return problems


def _tokenizer_json(tokenizer) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _pre_tokenizer_name(tj: dict[str, Any]) -> str | None:
    """llama.cpp's name of a byte-level BPE pre-tokenizer (its regex), None for one it does not know."""
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = []
    for step in steps:
        if step.get("type") == "ByteLevel":
            if step.get("use_regex", True):
                regexes.append(GPT2_REGEX)
            if step.get("add_prefix_space"):
                return None
        elif step.get("type") == "Split":
            regexes.append(step.get("pattern", {}).get("Regex"))
        else:
            return None
    return PRE_TOKENIZERS.get(regexes[0]) if len(regexes) == 1 else None


def _tokenizer_problems(tokenizer, where: str) -> list[Problem]:
    tj = _tokenizer_json(tokenizer)
    key = f"{where}: tokenizer.json"
    if tj is None:
        return [Problem(key, "no fast tokenizer (tokenizer.json)", "save the tokenizer with a tokenizer.json")]
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        return [
            Problem(
                f"{key} model",
                f"a {model.get('type')} tokenizer"
                + (" with byte fallback (SentencePiece style)" if model.get("byte_fallback") else "")
                + " is not exported: GGUF export writes byte-level BPE vocabularies (llama.cpp's gpt2 model)",
                "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py",
            )
        ]
    if tj.get("normalizer") not in (None, {"type": "NFC"}):
        return [Problem(f"{key} normalizer", f"{tj['normalizer'].get('type')} is not written by GGUF export")]
    if _pre_tokenizer_name(tj) is None:
        return [
            Problem(
                f"{key} pre_tokenizer",
                "not one llama.cpp knows by name here (GPT-2, Llama 3 or Qwen 2 byte-level regexes)",
                "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py",
            )
        ]
    return []


# ----------------------------------------------------------------------------------------------- tensors


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's half-split rotary rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, config) -> list[tuple[str, np.ndarray]]:
    """(gguf name, float32 array) of every weight llama.cpp loads, in llama.cpp's layout."""
    import gguf

    arch_name, permute_qk, plus_one = ARCHES[config.model_type]
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch_name), config.num_hidden_layers)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: list[tuple[str, np.ndarray]] = []
    unknown = []
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # the same matrix as the embedding: llama.cpp reuses token_embd
        name = names.get_name(hf_name.removeprefix("language_model."), try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(hf_name)
            continue
        data = tensor.detach().float().cpu().numpy()
        if permute_qk and hf_name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif permute_qk and hf_name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        if plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0  # gemma's x * (1 + w)
        out.append((name, data))
    if unknown:
        raise ExportError(
            "the merged model has tensors llama.cpp's loader has no name for",
            [Problem(n, "no GGUF name", "this checkpoint is not a plain model of its family") for n in unknown[:10]],
        )
    return out


# ----------------------------------------------------------------------------------------------- writer


def write_gguf(tensors, config, tokenizer, path: Path, quant: str, name: str) -> GgufFile:
    import gguf

    arch_name = ARCHES[config.model_type][0]
    arch = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch_name)]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    _write_hparams(writer, config)
    vocab_rows = next(t.shape[0] for n, t in tensors if n == "token_embd.weight")
    _write_tokenizer(writer, tokenizer, vocab_rows)
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    kept = []
    for tname, data in tensors:
        if data.ndim == 1 or quant == "f32":
            writer.add_tensor(tname, data.astype(np.float32))
        elif quant == "f16":
            writer.add_tensor(tname, data.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType.BF16 if quant == "bf16" else gguf.GGMLQuantizationType.Q8_0
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if data.shape[-1] % block:
                kept.append(tname)
                writer.add_tensor(tname, data.astype(np.float16))  # as convert_hf_to_gguf falls back
                continue
            writer.add_tensor(tname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufFile(path, quant, path.stat().st_size, kept)


def _write_hparams(writer, config) -> None:
    model_type = config.model_type
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["full_attention"].get("rope_theta", 10000.0)))
    if "sliding_attention" in rope:
        writer.add_rope_freq_base_swa(float(rope["sliding_attention"].get("rope_theta", 10000.0)))
    if head_dim != config.hidden_size // heads or model_type.startswith("gemma") or model_type == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if model_type == "phi3":
        factor = rope["full_attention"].get("partial_rotary_factor", 1.0)
        writer.add_rope_dimension_count(int(factor * config.hidden_size) // heads)
        writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
    else:
        writer.add_rope_dimension_count(head_dim)
    if model_type.startswith("gemma"):
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        if config.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        if config.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)


def _write_tokenizer(writer, tokenizer, vocab_rows: int) -> None:
    import gguf

    tj = _tokenizer_json(tokenizer)
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_rows:
        raise ExportError(
            "the tokenizer has more tokens than the model has embedding rows",
            [Problem("tokenizer", f"{len(vocab)} tokens, {vocab_rows} rows", "resize the embeddings and retrain")],
        )
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_rows):
        if i not in by_id:  # rows past the tokenizer (a padded embedding): never produced
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tj))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token, add in (
        (tokenizer.bos_token, writer.add_bos_token_id),
        (tokenizer.eos_token, writer.add_eos_token_id),
        (tokenizer.pad_token, writer.add_pad_token_id),
        (tokenizer.unk_token, writer.add_unk_token_id),
    ):
        if token is not None:
            add(tokenizer.convert_tokens_to_ids(token))
    # what the tokenizer really does to a plain text, not what its config claims
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(len(special) > len(plain) and special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(special) > len(plain) and special[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        template = tokenizer.chat_template
        writer.add_chat_template(template if isinstance(template, str) else template.get("default", ""))


# ----------------------------------------------------------------------------------------------- ollama


def write_modelfile(path: Path, gguf_path: Path, tokenizer) -> Path:
    """An Ollama Modelfile: the GGUF file and the tokens that end an answer as stop words.

    Ollama reads the chat template from the file's tokenizer.chat_template metadata, so none is repeated here.
    """
    stops = [tokenizer.eos_token] + [
        t for t in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>") if t in tokenizer.get_vocab()
    ]
    lines = [
        "# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_path.name}",
        *(f'PARAMETER stop "{s}"' for s in dict.fromkeys(s for s in stops if s)),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- llama.cpp


def _llama_cpp_quantize(source: Path, target: Path, quant: str) -> GgufFile:
    """llama.cpp's own quantizer (llama_model_quantize) on the f16 file: the K-quants the gguf package cannot write."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama.cpp could not quantize {source.name} to {quant}", [Problem(str(source), f"rc {rc}")])
    return GgufFile(target, quant, target.stat().st_size)


def weight_bytes(path: Path) -> int:
    """Bytes of the tensors of a GGUF file (what one decoded token reads, the KV cache aside)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return int(sum(t.n_bytes for t in reader.tensors))


def describe(result: GgufExport) -> list[str]:
    lines = []
    for f in result.files:
        note = f" ({len(f.kept_f16)} tensors kept f16: rows not a multiple of 32)" if f.kept_f16 else ""
        lines.append(f"{f.path}\t{f.quant}\t{f.bytes / 2**20:.1f} MiB{note}")
    lines.append(f"{result.modelfile}\tollama create NAME -f {result.modelfile}")
    return lines
