"""Encoder families (BERT, RoBERTa, DeBERTa-v2, ModernBERT) round-trip exactly through the recipe.

Each base is a tiny random *ForMaskedLM built with `from_config` and saved as users' masked-LM
checkpoints are (no pooler, no classifier), with a WordPiece (BPE for RoBERTa) tokenizer trained
locally carrying the family's special tokens. For each: a classification LoRA run reloads to the
same predictions however the fresh base's random parts start; an MLM LoRA adapter loads and exports
as the masked-LM class; token classification (NER) trains with the default `all-linear` targets.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DebertaV2Config,
    DebertaV2ForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)
from typer.testing import CliRunner

from tuneforge.cli.main import app
from tuneforge.config import DataSection, LoraMethod, ModelSection, QLoraMethod, RunConfig, TrainSection
from tuneforge.data.readers import write_jsonl
from tuneforge.data.types import LabelledExample, TextExample, TokenExample
from tuneforge.models.loading import load_for_inference
from tuneforge.train import train

pytestmark = pytest.mark.slow  # a few short training runs per family

SENTENCES = [
    "the printer was great today",
    "the laptop was awful today",
    "Ada Lovelace flew to Paris on monday",
    "Alan Turing flew to New York on monday",
    "Grace Hopper flew to Oslo",
    "the service was lovely",
    "the delivery was broken",
    "the support team was terrible",
    "excellent wonderful superb poor useless",
]
FAMILIES = ("bert", "roberta", "deberta-v2", "modernbert")
MASKED_LM_CLASS = {
    "bert": "BertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "deberta-v2": "DebertaV2ForMaskedLM",
    "modernbert": "ModernBertForMaskedLM",
}
# the modules a classification model built from a masked-LM checkpoint starts at random
NEW_HEAD = {
    "bert": {"bert.pooler", "classifier"},
    "roberta": {"classifier"},
    "deberta-v2": {"pooler", "classifier"},
    "modernbert": {"classifier"},
}
PROBE = ["the printer was great today", "Grace Hopper flew to Oslo"]


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style: lower-cased WordPiece, [CLS] text [SEP]."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        SENTENCES * 4, trainer=trainers.WordPieceTrainer(vocab_size=200, special_tokens=special, show_progress=False)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """RoBERTa-style: byte-level BPE with a prefix space, <s> text </s>."""
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SENTENCES * 4,
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=special,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), add_prefix_space=True
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        add_prefix_space=True,
    )


def masked_lm(family: str, tok) -> torch.nn.Module:
    """A 2-layer, hidden-64 masked LM of `family`, from its config."""
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    if family == "bert":
        return BertForMaskedLM(BertConfig(**common))
    if family == "roberta":  # RoBERTa's positions start after the padding index
        return RobertaForMaskedLM(
            RobertaConfig(
                **{**common, "max_position_embeddings": 130},
                bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id,
            )
        )
    if family == "deberta-v2":  # DeBERTa-v3's layout: relative positions only
        return DebertaV2ForMaskedLM(
            DebertaV2Config(
                **common,
                relative_attention=True,
                position_buckets=32,
                pos_att_type=["p2c", "c2p"],
                position_biased_input=False,
            )
        )
    return ModernBertForMaskedLM(
        ModernBertConfig(
            **common,
            cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            global_attn_every_n_layers=2,
            local_attention=16,
        )
    )


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory) -> dict:
    dirs = {}
    for family in FAMILIES:
        tok = bpe_tokenizer() if family == "roberta" else wordpiece_tokenizer()
        torch.manual_seed(0)
        dirs[family] = tmp_path_factory.mktemp(f"tiny-{family}")
        masked_lm(family, tok).save_pretrained(dirs[family])
        tok.save_pretrained(dirs[family])
    return dirs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    rng = random.Random(0)
    words = {"positive": ["great", "lovely", "superb"], "negative": ["awful", "broken", "poor"]}
    labelled = [
        LabelledExample(
            f"the {rng.choice(['printer', 'laptop', 'service'])} was {rng.choice(words[label])} today", label
        )
        for label in sorted(words)
        for _ in range(12)
    ]
    people, places = (
        [["Ada", "Lovelace"], ["Alan", "Turing"], ["Grace", "Hopper"]],
        [["Paris"], ["New", "York"], ["Oslo"]],
    )
    tagged = [
        TokenExample([*p, "flew", "to", *q], ["B-PER", "I-PER", "O", "O", "B-LOC"] + ["I-LOC"] * (len(q) - 1))
        for p in people
        for q in places
    ] * 2
    folder = tmp_path_factory.mktemp("encoder-data")
    out = {}
    for name, rows in (
        ("classification", labelled),
        ("tokens", tagged),
        ("mlm", [TextExample(s) for s in SENTENCES * 2]),
    ):
        out[name] = folder / f"{name}.jsonl"
        write_jsonl(rows, out[name])
    return out


def run(family, objective, encoder_dirs, data, out, method=None):
    cfg = RunConfig(
        objective=objective,
        output_dir=out,
        model=ModelSection(name=str(encoder_dirs[family]), max_length=32),
        data=DataSection(train=data[objective], validation=data[objective]),
        method=method or LoraMethod(r=4, alpha=8),
        train=TrainSection(
            max_steps=3, batch_size=8, lr=1e-2, eval_every=1000, save_every=1000, log_every=1, warmup_ratio=0.0, seed=3
        ),
    )
    result = train(cfg, progress=False)
    assert result.status == "completed"
    return result.run_dir


@torch.no_grad()
def logits(ref, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)  # each load initialises what the checkpoint lacks from a different random state
    model, tok = load_for_inference(ref, device=torch.device("cpu"))
    return model, model(**tok(PROBE, return_tensors="pt", padding=True)).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_classification_lora_from_a_masked_lm_reloads_to_the_same_predictions(family, encoder_dirs, data, tmp_path):
    run_dir = run(family, "classification", encoder_dirs, data, tmp_path / "run")
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert NEW_HEAD[family] <= set(adapter_config["modules_to_save"])
    _, first = logits(run_dir, seed=1)
    _, second = logits(run_dir, seed=2)
    torch.testing.assert_close(second, first, atol=1e-5, rtol=1e-5)
    exported = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "export")])
    assert exported.exit_code == 0, exported.output
    _, merged = logits(tmp_path / "export", seed=3)
    torch.testing.assert_close(merged, first, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
def test_classification_qlora_trains_the_missing_pooler_at_full_precision(family, encoder_dirs, data, tmp_path):
    """bitsandbytes makes the pooler a 4-bit layer it never quantizes (its weight is not in the checkpoint)."""
    run_dir = run(family, "classification", encoder_dirs, data, tmp_path / "run", method=QLoraMethod(r=4, alpha=8))
    _, first = logits(run_dir, seed=1)
    _, second = logits(run_dir, seed=2)
    torch.testing.assert_close(second, first, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlm_lora_loads_and_exports_as_the_masked_lm_class(family, encoder_dirs, data, tmp_path):
    run_dir = run(family, "mlm", encoder_dirs, data, tmp_path / "run")
    model, adapter_logits = logits(run_dir, seed=1)
    assert type(model.get_base_model()).__name__ == MASKED_LM_CLASS[family]
    out = tmp_path / "export"
    exported = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert json.loads((out / "config.json").read_text())["architectures"] == [MASKED_LM_CLASS[family]]
    assert (
        type(AutoModelForMaskedLM.from_pretrained(out)).__name__ == MASKED_LM_CLASS[family]
    )  # what users load it with
    _, merged = logits(out, seed=2)
    torch.testing.assert_close(merged, adapter_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_classification_trains_with_the_default_all_linear_lora(family, encoder_dirs, data, tmp_path):
    assert LoraMethod().target_modules == "all-linear"
    run_dir = run(family, "tokens", encoder_dirs, data, tmp_path / "run", method=LoraMethod())
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert "classifier" in adapter_config["modules_to_save"]
    model, first = logits(run_dir, seed=1)
    assert not any(
        "lora" in n for n, _ in model.base_model.model.classifier.named_parameters()
    )  # trained whole, no adapter on it
    _, second = logits(run_dir, seed=2)
    torch.testing.assert_close(second, first, atol=1e-5, rtol=1e-5)
