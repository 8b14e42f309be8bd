"""GRPO reporting and sampling: a group's answers share one prefill (the prompt's KV cache expanded) with the
tokens of separate prompts, the progress line shows the reward, a group whose answers are all rewarded alike is
reported as carrying no learning signal (and gives no gradient), and validation samples eval_samples answers."""

from __future__ import annotations

import io

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.config import GrpoSection
from tuneforge.data.types import Message, PromptExample
from tuneforge.models.generate import decode
from tuneforge.objectives import get_objective
from tuneforge.train.progress import Events, TrainStep, reward_field

ALWAYS = {  # 1 for every answer: each group's rewards are constant
    "type": "string_check",
    "name": "always",
    "input": "{{sample.output_text}}",
    "reference": "\u2603 never said \u2603",
    "operation": "not_like",
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _prompts(tok, texts):
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left-padded, as decode wants
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_group_shares_one_prefill_and_samples_as_repeated_prompts(tiny, temperature):
    model, tok = tiny
    ids, mask = _prompts(tok, ["How much is the plan?", "Warranty of the Hub, please"])
    g, seen = 3, []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        torch.manual_seed(5)
        shared = decode(model, ids, mask, 6, temperature, 1.0, [], tok.pad_token_id, repeat=g)
    finally:
        hook.remove()
    torch.manual_seed(5)
    repeated = decode(
        model, ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0), 6, temperature, 1.0, [], tok.pad_token_id
    )
    assert seen[0] == tuple(ids.shape)  # the prefill ran on 2 prompts, not on 6 rows
    assert all(shape == (2 * g, 1) for shape in seen[1:])
    assert torch.equal(shared, repeated)


def test_progress_line_shows_the_reward_and_flat_groups(tmp_path):
    from tuneforge.train.rundir import RunDir

    assert reward_field({"reward": 0.5, "reward_std": 0.25}) == "reward 0.500±0.250"
    assert reward_field({"reward": 1.0, "reward_std": 0.0, "zero_advantage_groups": 0.5}).endswith("(50% flat groups)")
    for name in ("run", "sft"):
        (tmp_path / name).mkdir()
    events = Events(RunDir(tmp_path / "run"), None, 4, show=True)
    events.progress.console.file = io.StringIO()
    with events:
        events.emit(TrainStep(1, 0, 0.1, 1e-3, 10, 5.0, {"reward": 0.75, "reward_std": 0.1}))
    assert events.progress.tasks[0].fields["reward"] == "reward 0.750±0.100"
    with Events(RunDir(tmp_path / "sft"), None, 4, show=True) as plain:  # other objectives: no reward part
        plain.progress.console.file = io.StringIO()
        plain.emit(TrainStep(1, 0, 0.1, 1e-3, 10, 5.0))
    assert plain.progress.tasks[0].fields["reward"] == ""


def _grpo(tiny, **cfg):
    model, tok = tiny
    grpo = get_objective("grpo", settings=GrpoSection(graders=[ALWAYS], max_new_tokens=4, **cfg))
    examples = [PromptExample([Message("user", f"What is plan {i}?")], {"answer": str(i)}) for i in range(3)]
    grpo.prepare(examples)
    feats = grpo.encode(examples, tok, 64)
    return grpo, feats


def test_constant_reward_groups_are_reported_and_give_no_gradient(tiny):
    model, tok = tiny
    grpo, feats = _grpo(tiny, group_size=2)
    model.train()
    try:
        loss, count = grpo.loss(model, grpo.collate(feats, tok.pad_token_id))
        loss.backward()
    finally:
        model.eval()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert count > 0 and float(loss.detach()) == 0.0 and all(float(g.abs().max()) == 0.0 for g in grads)
    model.zero_grad(set_to_none=True)
    m = grpo.step_metrics()
    assert m["zero_advantage_groups"] == 1.0 and m["reward"] == 1.0 and m["reward_std"] == 0.0
    assert m["grader/always"] == 1.0 and m["grader/always/errors"] == 0.0
    assert grpo.step_metrics() == {}  # per step: emptied once read


def test_validation_samples_eval_samples_answers_per_prompt(tiny, monkeypatch):
    model, tok = tiny
    grpo, feats = _grpo(tiny, group_size=2, eval_samples=5)
    graded = []
    original = type(grpo).rewards

    def counting(self, texts, items):
        graded.append(len(texts))
        return original(self, texts, items)

    monkeypatch.setattr(type(grpo), "rewards", counting)
    out = grpo.metrics(model, feats, 2, tok.pad_token_id, torch.device("cpu"))
    assert graded == [2 * 5, 1 * 5]  # batches of 2 and 1 prompts, 5 answers each
    assert out["reward"] == 1.0 and out["grader/always"] == 1.0


def test_the_data_report_of_rft_prompts_counts_their_prompt_tokens(tmp_path, tiny):
    """What tuneforge eval's training cost reads for a grpo run: its RFT file, prompts only (answers are sampled)."""
    import json

    from tuneforge.data.report import build_report
    from tuneforge.data.token_count import count_tokens

    _, tok = tiny
    rows = [{"messages": [{"role": "user", "content": f"How much is plan {i}?"}], "fact": f"${i}"} for i in range(6)]
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(path, tok, model=None, format="rft", measure_hardware=False)
    assert report["examples"] == 6 and report["invalid"] == 0
    prompt = PromptExample([Message("user", "How much is plan 1?")], {"fact": "$1"})
    ids = tok.apply_chat_template([{"role": "user", "content": "How much is plan 1?"}])["input_ids"]
    assert count_tokens(tok, prompt) == len(ids)
