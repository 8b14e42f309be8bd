"""Utilisation reporting (FLOP convention, matmul-peak cache, batch counting), thread choice and the warm-up start."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, get_scheduler

from tests.helpers import make_config
from tuneforge.data.tokenize import Encoded
from tuneforge.objectives.base import pack_batch, pad_batch
from tuneforge.train import utilisation
from tuneforge.train.optim import build_scheduler


def _features(lengths: list[int]) -> list[Encoded]:
    return [Encoded(list(range(3, 3 + n)), [-100] + list(range(4, 3 + n))) for n in lengths]


def test_batch_work_is_the_same_for_padded_and_packed_layouts():
    feats = _features([5, 9, 3, 12])
    padded = utilisation.batch_work(pad_batch(feats, 0), 0)
    packed = utilisation.batch_work(pack_batch(feats, 0, 16), 0)  # rows of <= 16 tokens with a padded tail
    assert padded == packed == (29, 25 + 81 + 9 + 144)
    pairs = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "chosen_input_ids": torch.zeros(2, 4)}
    assert utilisation.batch_work(pairs, 0) is None  # preference pairs follow another convention


@pytest.mark.parametrize("method", ["full", "lora"])
def test_flop_convention_matches_torch_flop_counter(tiny_model_dir, method):
    """(4 N + 2 N_trained) per token + the attention term equals the matmul FLOPs torch counts for one step."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    # eager attention: torch's counter sees its two batched matmuls (it has no formula for the CPU sdpa kernel)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        model.enable_input_require_grads()  # layer 0's inputs want their gradient too, as every later layer's do
    work = utilisation.model_work(model)
    if method == "full":
        assert work.matmul_params == work.trained_matmul_params
        assert work.matmul_params == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    else:
        assert work.trained_matmul_params == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    seq = 24
    ids = torch.randint(3, 100, (1, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    attention_counted = 12 * work.layers * work.hidden * seq * seq  # torch counts the full square, not the causal half
    causal = work.flops(seq, seq * seq)
    assert counter.get_total_flops() == pytest.approx(causal - attention_counted / 2 + attention_counted, rel=1e-6)


def test_matmul_peak_is_measured_once_and_cached(tmp_path):
    first = utilisation.matmul_peak(torch.device("cpu"), tmp_path, seconds=0.1)
    second = utilisation.matmul_peak(torch.device("cpu"), tmp_path, seconds=0.1)
    assert not first["cached"] and second["cached"]
    assert first["flops_per_s"] == second["flops_per_s"] > 1e8
    assert first["key"] in json.loads((tmp_path / utilisation.CACHE_NAME).read_text())
    (tmp_path / utilisation.CACHE_NAME).write_text("{not json")  # a damaged cache is measured again, not an error
    assert not utilisation.matmul_peak(torch.device("cpu"), tmp_path, seconds=0.1)["cached"]


def test_thread_choice_leaves_the_busy_cores_alone():
    assert utilisation.thread_count("auto", cores=8, load=0.2)[0] == 8
    assert utilisation.thread_count("auto", cores=2, load=1.1)[0] == 1
    assert utilisation.thread_count("auto", cores=4, load=9.0)[0] == 1  # at least one
    assert utilisation.thread_count(3, cores=2, load=5.0) == (3, "train.threads=3")


def test_ranks_on_one_machine_share_its_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node 2: 2 threads each would oversubscribe
    expected = (1, "auto: 2 cores shared by 2 ranks, 0.0 busy elsewhere")
    assert utilisation.thread_count("auto", cores=2, load=0.0) == expected
    assert utilisation.thread_count("auto", cores=8, load=0.0)[0] == 4


def test_busy_elsewhere_sees_a_spinning_neighbour():
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = utilisation.busy_elsewhere()
    finally:
        spinner.kill()
    assert busy >= 0.6  # one core spun; other users of the machine only add to it


def test_threads_setting_is_validated():
    from pydantic import ValidationError

    from tuneforge.config import TrainSection

    assert TrainSection(threads=2).threads == 2 and TrainSection().threads == "auto"
    with pytest.raises(ValidationError, match="threads"):
        TrainSection(threads=0)


def test_objectives_with_other_work_claim_no_share():
    work = utilisation.ModelWork(1000, 1000, 2, 8)
    batch = pad_batch(_features([4, 6]), 0)
    sft = utilisation.Meter(work, {"flops_per_s": 1e9}, 1, "train.threads=1")
    sft.add(batch, 0)
    assert sft.share(1.0) == pytest.approx(work.flops(10, 52) / 1e9)
    grpo = utilisation.Meter(work, {"flops_per_s": 1e9}, 1, "train.threads=1", objective="grpo")
    grpo.add(batch, 0)
    assert grpo.share(1.0) is None and "sampling" in grpo.report(1.0)["not_counted"]


def test_hints_name_the_setting_to_change():
    base = {"cores": 2, "threads": 2, "load_average": 0.3, "data_time_share": 0.02, "peak_share": 0.6}
    assert utilisation.hints(base) == []
    assert "train.threads" in utilisation.hints({**base, "load_average": 4.0})[0]
    assert "input-bound" in utilisation.hints({**base, "data_time_share": 0.4})[0]
    assert "train.batch_size" in utilisation.hints({**base, "peak_share": 0.05})[0]


def test_run_reports_its_utilisation(tiny_model_dir, support_data, tmp_path):
    from tuneforge.train.recipe import train

    before = torch.get_num_threads()
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=2, eval_every=100, save_every=100)
    cfg.train.threads = 1
    train(cfg, progress=False)
    report = json.loads((tmp_path / "run" / "manifest.json").read_text())["utilisation"]
    assert 0 < report["peak_share"] < 2 and report["matmul_peak_flops_per_s"] > 0
    assert report["threads"] == 1 and report["threads_why"] == "train.threads=1"
    assert report["tokens_per_s"] > 0 and report["real_tokens_per_s"] > report["tokens_per_s"]  # prompts count too
    assert "4 N + 2 N_trained" in report["convention"] and isinstance(report["hints"], list)
    assert torch.get_num_threads() == before  # the process's threads are given back


# ---------------------------------------------------------------- warm-up (issue 20 part 4)


def _lrs(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_warmup_starts_above_zero_then_follows_transformers(kind):
    def optimizer():
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)

    total, ratio, warmup = 20, 0.1, 2
    ours_opt = optimizer()
    ours = _lrs(build_scheduler(ours_opt, kind, total, ratio), ours_opt, total)
    hf_opt = optimizer()
    name = "constant_with_warmup" if kind == "constant" else kind
    hf = _lrs(get_scheduler(name, hf_opt, num_warmup_steps=warmup, num_training_steps=total), hf_opt, total)
    assert hf[0] == 0.0  # transformers' first step learns nothing
    assert ours[:warmup] == pytest.approx([1 / 3, 2 / 3])  # step i of the warm-up at i / (warmup + 1)
    assert ours[warmup:] == pytest.approx(hf[warmup:])  # the peak and the decay are transformers' own
    no_warmup_opt, hf0_opt = optimizer(), optimizer()
    assert _lrs(build_scheduler(no_warmup_opt, kind, total, 0.0), no_warmup_opt, total) == pytest.approx(
        _lrs(get_scheduler(name, hf0_opt, num_warmup_steps=0, num_training_steps=total), hf0_opt, total)
    )


def test_warmup_schedule_resumes_from_its_state():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    first = build_scheduler(opt, "linear", 10, 0.3)
    _lrs(first, opt, 2)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    resumed = build_scheduler(opt2, "linear", 10, 0.3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.get_last_lr() == first.get_last_lr() == pytest.approx([0.75])
