"""Group relative policy optimisation (Shao et al. 2024) on prompts whose sampled answers graders score.

Each training step samples `group_size` answers per prompt from the current policy, scores them with the
configured graders (a weighted sum), and turns rewards into group-relative advantages

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)      (no division with scale_rewards: false)

then minimises, per answer token, as TRL's GRPOTrainer (one update per generation, so pi_old = pi.detach()):

    -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * ratio * (exp(ref-logp) - (ref-logp) - 1)

with log-probabilities at the sampling temperature, the reference being the base with the adapter switched off
(as in dpo.py). `loss_type` fixes how the per-token terms are averaged (see `policy_loss`). Sampling runs in
`loss`, so the recipe needs nothing new: the batch holds prompt indices, the objective keeps each prompt's item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tuneforge.config import GrpoSection
from tuneforge.data.tokenize import Encoded, encode_prompt
from tuneforge.data.types import Example, PromptExample
from tuneforge.errors import ConfigError, DataError, Problem
from tuneforge.eval.graders import Grader, Sample, build_grader, check_item_fields
from tuneforge.methods.registry import reference_context
from tuneforge.models.chat_templates import prompt_policy
from tuneforge.models.generate import decode, direct_decoding, stop_token_ids
from tuneforge.objectives.base import require_examples

_FIX = "give RFT records: messages ending in a user turn, plus the fields the graders read (e.g. answer)"


@dataclass
class PromptFeature(Encoded):
    """input_ids: the prompt up to the assistant header; labels unused (answers are sampled); `index` into
    the objective's items."""

    index: int = 0


@dataclass
class Completions:
    """A sampled group batch: prompts repeated per answer (left-padded) and their answers (right-padded)."""

    prompt_ids: torch.Tensor  # (N, P), N = prompts x group_size
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, L)
    completion_mask: torch.Tensor  # (N, L): answer tokens up to and including the stop token
    texts: list[str]


class GroupRelative:
    name = "grpo"
    task = "causal_lm"

    def __init__(self, settings: GrpoSection | None = None) -> None:
        self.cfg = settings or GrpoSection()
        self.graders: list[Grader] = [build_grader(g, f"grpo.graders[{i}]") for i, g in enumerate(self.cfg.graders)]
        self.weights = self.cfg.weights or [1.0] * len(self.graders)
        self.items: list[dict] = []  # by PromptFeature.index, for train and validation prompts
        self.tokenizer = None
        self._step: dict[str, list[float]] = {}  # metrics of the micro-batches since the last `step_metrics`

    def prepare(self, train_examples: Sequence[Example]) -> None:
        require_examples(train_examples, PromptExample, "the grpo objective needs prompts (answers are sampled)", _FIX)
        try:  # a template reading a field no training prompt has: refused before the model loads
            check_item_fields(self.cfg.graders, [ex.item for ex in train_examples], "the training data")
        except ConfigError as exc:
            raise ConfigError(
                exc.summary,
                [
                    Problem(
                        p.where.replace("eval.graders", "grpo.graders"),
                        p.message.replace("test example", "training prompt"),
                        p.fix,
                    )
                    for p in exc.problems
                ],
            ) from None

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return {}

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        require_examples(examples, PromptExample, "the grpo objective needs prompts (answers are sampled)", _FIX)
        self.tokenizer = tokenizer
        policy = prompt_policy(tokenizer)
        feats, long = [], []
        for ex in examples:
            ids = encode_prompt(
                tokenizer,
                [{"role": m.role, "content": m.content} for m in ex.prompt],
                policy,
                where=ex.source or "a prompt",
            )
            if len(ids) + self.cfg.max_new_tokens > max_length:
                long.append(
                    Problem(
                        ex.source or f"prompt {len(self.items)}",
                        f"{len(ids)} prompt tokens + grpo.max_new_tokens={self.cfg.max_new_tokens} "
                        f"exceed model.max_length={max_length}",
                        "raise model.max_length, lower grpo.max_new_tokens or shorten the prompt",
                    )
                )
                continue
            feats.append(PromptFeature(ids, [], False, len(self.items)))
            self.items.append(ex.item)
        if long:  # a cut prompt would be answered as another question: refused, never trained on
            raise DataError(f"{len(long)} prompt(s) leave no room for a sampled answer", long[:10])
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """Left-padded prompts (B, P) (every prompt ends at the last column, as decoding wants) and their indices."""
        width = max(len(f.input_ids) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, f in enumerate(features):
            ids[row, width - len(f.input_ids) :] = torch.tensor(f.input_ids)
            mask[row, width - len(f.input_ids) :] = 1
        return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([f.index for f in features])}

    # ---- sampling and reward

    @torch.no_grad()
    def sample(self, model, batch: dict[str, torch.Tensor], answers: int | None = None) -> Completions:
        """`answers` (group_size) answers per prompt from the current policy, through the KV-cache decode loop.

        One prefill per prompt: its KV cache is expanded to the group's rows (`decode(repeat=g)`), which are
        sampled together in one batch; row b * g + k is prompt b's k-th answer.
        """
        if not direct_decoding(model):
            raise ConfigError(
                "objective grpo samples through the KV-cache decode loop, which this model does not support",
                [
                    Problem(
                        "method.name",
                        "prompt-learning adapters add virtual tokens",
                        "use lora, dora or another adapter method",
                    )
                ],
            )
        g = answers or self.cfg.group_size
        ids = batch["input_ids"].repeat_interleave(g, dim=0)  # (N, P): the rows the loss reads
        mask = batch["attention_mask"].repeat_interleave(g, dim=0)
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            stops = stop_token_ids(model, self.tokenizer)
            pad = self.tokenizer.pad_token_id
            cfg = self.cfg
            prompts, prompt_mask = batch["input_ids"], batch["attention_mask"]  # (B, P)
            new = decode(
                model, prompts, prompt_mask, cfg.max_new_tokens, cfg.temperature, cfg.top_p, stops, pad, repeat=g
            )
        finally:
            model.train(was_training)
        is_stop = torch.isin(new, torch.tensor(stops or [-1], device=new.device))  # (N, L)
        first = torch.where(is_stop.any(1), is_stop.int().argmax(1), new.shape[1])  # (N,)
        keep = torch.arange(new.shape[1], device=new.device)[None] <= first[:, None]  # the stop token counts, as TRL's
        texts = [self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(new, first)]
        return Completions(ids, mask, new, keep.long(), texts)

    def rewards(self, texts: Sequence[str], items: Sequence[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the graders' scores per answer (N,), and each grader's mean score and error count.

        A grader that raises scores that answer 0 and is counted (`grade_batch`)."""
        samples = [Sample(t) for t in texts]
        total = torch.zeros(len(texts), dtype=torch.float64)
        report: dict[str, float] = {}
        for grader, weight in zip(self.graders, self.weights):
            graded = grader.grade_batch(samples, items)
            scores = torch.tensor(graded.scores, dtype=torch.float64)
            total += weight * scores
            report[f"grader/{grader.name}"] = float(scores.mean())
            report[f"grader/{grader.name}/errors"] = float(graded.error_count)
        return total.float(), report

    # ---- loss

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        done = self.sample(model, batch)
        items = [self.items[i] for i in batch["index"].tolist() for _ in range(self.cfg.group_size)]
        rewards, graded = self.rewards(done.texts, items)
        rewards = rewards.to(done.prompt_ids.device)
        advantages, flat = group_advantages(rewards, self.cfg.group_size, self.cfg.scale_rewards)
        ref = None
        if self.cfg.beta > 0:
            with torch.no_grad(), reference_context(model):
                ref = completion_logps(model, done, self.cfg.temperature)
        logps = completion_logps(model, done, self.cfg.temperature)
        total, count, kl = policy_loss(logps, ref, advantages, done.completion_mask.float(), self.cfg)
        if not bool(torch.isfinite(rewards).all()):  # stops the run like a NaN loss, at the last good checkpoint
            total = total * float("nan")
        if model.training:
            self._record(rewards, flat, kl, done, graded)
        return total, count

    def _record(self, rewards, flat, kl, done: Completions, graded: dict[str, float]) -> None:
        lengths = done.completion_mask.sum(1).float()
        values = {
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "kl": kl,
            "completion_length": lengths.mean().item(),
            "zero_advantage_groups": flat,
            **graded,
        }
        for key, value in values.items():
            self._step.setdefault(key, []).append(value)

    def step_metrics(self) -> dict[str, float]:
        """Means of the reward metrics over the micro-batches since the last call (error counts summed)."""
        out = {k: (sum(v) if k.endswith("/errors") else sum(v) / len(v)) for k, v in self._step.items()}
        self._step = {}
        return out

    @torch.no_grad()
    def metrics(self, model, features: Sequence[Encoded], batch_size: int, pad_id: int, device) -> dict[str, float]:
        """Validation reward: mean and std over eval_samples (group_size) sampled answers per validation prompt,
        per grader."""
        rewards, sums, n = [], {}, 0
        answers = self.cfg.eval_samples or self.cfg.group_size
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(features[i : i + batch_size], pad_id).items()}
            done = self.sample(model, batch, answers)
            items = [self.items[j] for j in batch["index"].tolist() for _ in range(answers)]
            r, graded = self.rewards(done.texts, items)
            rewards.append(r)
            for k, v in graded.items():
                sums[k] = sums.get(k, 0.0) + (v if k.endswith("/errors") else v * len(r))
            n += len(r)
        if not rewards:
            return {}
        r = torch.cat(rewards)
        out = {"reward": r.mean().item(), "reward_std": r.std().item() if r.numel() > 1 else 0.0}
        out.update({k: (v if k.endswith("/errors") else v / n) for k, v in sums.items()})
        return out


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool) -> tuple[torch.Tensor, float]:
    """(N,) rewards -> (N,) advantages against each group's mean (divided by its std + 1e-4 when `scale`), and the
    share of groups whose rewards are all equal (zero advantage: no learning signal), as TRL computes them."""
    grouped = rewards.view(-1, group_size)  # (B, G)
    mean = grouped.mean(1).repeat_interleave(group_size)
    std = grouped.std(1).repeat_interleave(group_size)  # unbiased, as TRL's nanstd
    advantages = rewards - mean
    if scale:
        advantages = advantages / (std + 1e-4)
    flat = torch.isclose(grouped.std(1), torch.zeros(()), atol=1e-8).float().mean().item() if group_size > 1 else 1.0
    return advantages, flat


def completion_logps(model, done: Completions, temperature: float) -> torch.Tensor:
    """log p(answer token) at the sampling temperature: (N, L). Positions follow the attention mask only (no
    position_ids), as TRL's forward over left-padded prompt + answer."""
    ids = torch.cat([done.prompt_ids, done.completion_ids], dim=1)  # (N, P+L)
    mask = torch.cat([done.prompt_mask, done.completion_mask], dim=1)
    n = done.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -n - 1 : -1].float()  # (N, L, V)
    logits = logits / temperature
    return torch.gather(logits.log_softmax(-1), 2, done.completion_ids[..., None])[..., 0]


def policy_loss(
    logps: torch.Tensor, ref: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor, cfg: GrpoSection
) -> tuple[torch.Tensor, int, float]:
    """TRL's clipped loss as (sum, count, mean KL): the recipe divides the sum by the step's count, so

        grpo:        sum over answers of (their token mean); count = answers        -> mean of answer means
        dr_grpo:     token sum / max_new_tokens; count = answers                     -> sum / (N x max_new_tokens)
        dapo, bnpo:  token sum; count = answer tokens                                -> mean over every token

    give TRL's loss for one micro-batch, and under gradient accumulation the loss of one large batch.
    """
    old = logps.detach()  # one update per generation: pi_old is the policy that sampled
    ratio = torch.exp(logps - old)  # (N, L)
    clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + (cfg.epsilon_high or cfg.epsilon))
    a = advantages[:, None]
    per_token = -torch.min(ratio * a, clipped * a)
    kl_mean = 0.0
    if ref is not None:
        kl = torch.exp(ref - logps) - (ref - logps) - 1  # k3: unbiased, always >= 0
        # times the ratio (value 1 here, gradient kl * grad logp): the unbiased reverse-KL gradient (DeepSeek-V3.2),
        # TRL's default use_bias_correction_kl
        per_token = per_token + cfg.beta * kl * ratio
        kl_mean = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
    masked = per_token * mask
    if cfg.loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum(), int(mask.shape[0]), kl_mean
    if cfg.loss_type == "dr_grpo":
        return masked.sum() / cfg.max_new_tokens, int(mask.shape[0]), kl_mean
    return masked.sum(), max(int(mask.sum()), 1), kl_mean
