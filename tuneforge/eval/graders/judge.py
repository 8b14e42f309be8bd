"""`score_model`: a judge model on any OpenAI-compatible endpoint (tuneforge serve included) scores each answer.

The judge's reply is read as JSON {"result": x} (OpenAI's shape) or {"score": x}, else its first
number; a reply with no number or one outside `range` is that item's error (scored 0, counted).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tuneforge.eval.graders.core import GradeBatch, Item, Sample, grade_safely, scope
from tuneforge.eval.graders.templates import render

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(reply: str) -> float:
    """The judge's number: {"result": x} / {"score": x}, else the first number in the text."""
    try:
        data = json.loads(reply.strip())
        if isinstance(data, dict) and isinstance(data.get("result", data.get("score")), (int, float)):
            return float(data.get("result", data.get("score")))
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
    except ValueError:
        pass
    found = _NUMBER.search(reply)
    if not found:
        raise ValueError(f"the judge's reply holds no score: {reply[:80]!r}")
    return float(found.group())


class ScoreModel:
    def __init__(self, cfg) -> None:
        self.cfg, self.name, self.family = cfg, cfg.name, cfg.metric_family
        self._client = None

    @property
    def client(self):
        if self._client is None:  # created on first use: building the grader (config checks) needs no endpoint
            import openai

            self._client = openai.OpenAI(
                base_url=self.cfg.base_url,
                api_key=os.environ.get(self.cfg.api_key_env) or "unset",
                timeout=self.cfg.timeout,
                max_retries=1,
            )
        return self._client

    def messages(self, sample: Sample, item: Item) -> list[dict[str, str]]:
        where = scope(sample, item)
        return [{"role": m.role, "content": render(m.content, where)} for m in self.cfg.input]

    def grade(self, sample: Sample, item: Item) -> float:
        p = self.cfg.sampling_params
        extra = {k: v for k, v in (("top_p", p.top_p), ("seed", p.seed)) if v is not None}
        reply = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=self.messages(sample, item),
            temperature=p.temperature,
            max_tokens=p.max_completions_tokens,
            **extra,
        )
        score = parse_score(reply.choices[0].message.content or "")
        low, high = self.cfg.range
        if not low <= score <= high:
            raise ValueError(f"the judge's score {score:g} is outside range [{low:g}, {high:g}]")
        return (score - low) / (high - low)

    def grade_batch(self, samples: Sequence[Sample], items: Sequence[Item]) -> GradeBatch:
        """`concurrency` requests in flight: the endpoint batches them (tuneforge serve does)."""
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            pairs = list(pool.map(lambda si: grade_safely(self, *si), zip(samples, items)))
        return GradeBatch([p[0] for p in pairs], [p[1] for p in pairs])
