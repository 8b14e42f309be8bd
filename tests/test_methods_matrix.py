"""One matrix of invariants over every adaptation method on a tiny causal LM (peft's TEST_CASES idea).

For each method: a few steps reduce the loss; only the intended parameters get gradients;
frozen weights stay bit-identical; save -> load_for_inference reproduces the outputs; the
merged model (where the method can merge) gives the unmerged outputs with finite weights.
"""

from __future__ import annotations

import re

import pytest
import torch

from tuneforge.config import (
    AdapterMethod,
    DataSection,
    DoraMethod,
    FreezeMethod,
    FullMethod,
    IA3Method,
    LoraMethod,
    ModelSection,
    PrefixTuningMethod,
    PromptTuningMethod,
    QLoraMethod,
    RunConfig,
)
from tuneforge.methods import get_method
from tuneforge.models.loading import load_for_inference, load_model

CASES = {
    "full": FullMethod(),
    "freeze-top": FreezeMethod(top_layers=1),
    "freeze-bitfit": FreezeMethod(norms_and_biases=True, patterns=[r"mlp\.down_proj"]),
    "lora": LoraMethod(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    "lora-all-linear": LoraMethod(r=4, alpha=8, dropout=0.1),
    "dora": DoraMethod(r=4, alpha=8),
    "qlora": QLoraMethod(r=4, alpha=8),
    "ia3": IA3Method(),
    "prompt_tuning": PromptTuningMethod(num_virtual_tokens=4),
    "prefix_tuning": PrefixTuningMethod(num_virtual_tokens=4),
    "adapter-houlsby": AdapterMethod(placement="houlsby", bottleneck=8),
    "adapter-parallel": AdapterMethod(placement="parallel", bottleneck=8, activation="silu", scaling=2.0),
}
# where each method's trainable parameters must be, by name (everything else frozen)
INTENDED = {
    "full": r".",
    "freeze-top": r"^model\.layers\.1\.|^model\.norm\.",
    "freeze-bitfit": r"norm|mlp\.down_proj",
    "lora": r"lora_[AB]\.default\.weight$",
    "lora-all-linear": r"lora_[AB]\.default\.weight$",
    "dora": r"lora_[AB]\.default\.weight$|lora_magnitude_vector",
    "qlora": r"lora_[AB]\.default\.weight$",
    "ia3": r"ia3_l\.default$",
    "prompt_tuning": r"^prompt_encoder\.",
    "prefix_tuning": r"^prompt_encoder\.",
    "adapter-houlsby": r"\.adapter\.(down|up)\.",
    "adapter-parallel": r"\.adapter\.(down|up)\.",
}
# soft prompts and IA3 vectors are tiny and need the large learning rates their papers use
LR = {"ia3": 0.1, "prompt_tuning": 0.1, "prefix_tuning": 0.1}
SLOW = {"qlora", "dora", "adapter-parallel", "lora-all-linear", "freeze-bitfit"}


@pytest.fixture(scope="module")
def quantizable_model_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny Llama with an FFN width divisible by 32: bitsandbytes' CPU inference kernel packs
    4-bit weights in blocks of 32 output features (real models' widths always are)."""
    from tuneforge.models.demo import build_tiny_llama, save_model_folder

    model = build_tiny_llama(tiny_tokenizer, hidden=64, layers=2, heads=4, intermediate=128, max_positions=256, seed=0)
    return save_model_folder(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama-q"))


def _canonical(name: str, known: dict) -> str:
    """A base tensor's name with the wrappers' segments removed (peft's prefixes and base_layer, bottleneck's base)."""
    name = re.sub(r"\.base_layer(?=\.)|\.base(?=\.)", "", name)
    for prefix in ("base_model.model.", "base_model."):  # LoRA-style tuners nest one level deeper than prompt learning
        if name.startswith(prefix) and name[len(prefix) :] in known:
            return name[len(prefix) :]
    return name


def _batch(tokenizer):
    texts = ["The printer in room four jams every morning.", "Reset the router, then wait two minutes before calling."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def _loss(model, ids, mask, labels):
    logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def _logits(model, ids, mask):
    model.eval()
    return (
        model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :].float()
    )  # prompt tuning adds virtual positions


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_method_invariants(case, request, tiny_tokenizer, tmp_path):
    cfg = CASES[case]
    tiny_model_dir = request.getfixturevalue("quantizable_model_dir" if case == "qlora" else "tiny_model_dir")
    method = get_method(cfg.name)
    torch.manual_seed(0)
    model = load_model(tiny_model_dir, torch.float32, **method.load_kwargs(cfg))
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    model = method.apply(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(INTENDED[case], n) for n in trainable), sorted(trainable)[:5]

    ids, mask, labels = _batch(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR.get(case, 1e-2))
    losses = []
    for _ in range(8):
        model.train()
        loss = _loss(model, ids, mask, labels)
        loss.backward()
        assert all((p.grad is not None) == p.requires_grad for p in model.parameters()), (
            "a frozen weight got a gradient"
        )
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses

    trained_storage = {p.data_ptr() for p in model.parameters() if p.requires_grad}  # tied weights share storage
    after = {_canonical(n, before): t for n, t in model.state_dict().items()}
    frozen = [n for n in before if n not in after or after[n].data_ptr() not in trained_storage]
    assert all(n in after for n in frozen), [n for n in frozen if n not in after][:3]
    changed = [n for n in frozen if not torch.equal(before[n], after[n])]
    assert not changed, f"frozen weights changed: {changed[:3]}"

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        RunConfig(model=ModelSection(name=str(tiny_model_dir)), data=DataSection(train="x.jsonl"), method=cfg).to_yaml()
    )
    artifact = method.save(model, run_dir)
    tiny_tokenizer.save_pretrained(artifact)
    loaded, _ = load_for_inference(run_dir, device=torch.device("cpu"))
    trained_out = _logits(model, ids, mask)
    loaded_out = _logits(loaded, ids, mask)
    if cfg.name == "qlora":
        # the artifact is loaded onto the full-precision base: it matches the merge onto that base, and the
        # trained 4-bit model only up to quantization error
        merged_out = _logits(method.merge(model), ids, mask)
        torch.testing.assert_close(loaded_out, merged_out, atol=1e-4, rtol=1e-4)
        assert (loaded_out - trained_out).abs().max() < 0.5
        return
    torch.testing.assert_close(loaded_out, trained_out, atol=1e-5, rtol=1e-5)

    if method.merge is None:
        return
    merged = method.merge(model)
    assert all(torch.isfinite(p).all() for p in merged.parameters())
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids, mask), trained_out, atol=1e-4, rtol=1e-4)
