"""schemathesis against the service's own OpenAPI: every operation gets a fixed number of generated requests
(valid and invalid bodies, queries, path ids) with a valid key; no answer may be a 5xx, and every status must be
one the schema declares for that operation. `make fuzz` runs it with more examples
(TUNEFORGE_FUZZ_EXAMPLES: 4 per operation of valid requests here; make fuzz: 10 per operation, valid and invalid)."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from helpers import tiny_service
from tuneforge.serve import keys

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("TUNEFORGE_FUZZ_EXAMPLES", "4"))
# Requests that fit the schema, and (make fuzz) also ones that do not: invalid ones are slow to generate
# (hypothesis filters many candidates for path ids), ~1 min more even at 2 examples a mode on a busy machine.
MODES = os.environ.get("TUNEFORGE_FUZZ_MODES", "positive").split(",")
SKIP = {("GET", "/metrics")}  # Prometheus text, not JSON; its 401 is tested in test_serve_api


def test_fuzz_no_server_errors_and_only_declared_statuses(tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.generation.modes import GenerationMode

    failures: list[str] = []
    seen: Counter = Counter()
    slowest: Counter = Counter()
    # Small limits keep generated prompts and max_tokens cheap on the tiny model.
    with tiny_service(tmp_path, max_upload_bytes=100_000) as (url, store, app, _):
        _, key = keys.create_key(store, "fuzz")
        schema = schemathesis.openapi.from_dict(app.openapi())
        started = time.time()
        for result in schema.get_all_operations():
            op = result.ok()
            if (op.method.upper(), op.path) in SKIP:
                continue
            for mode in map(GenerationMode, MODES):
                t0 = time.time()
                fuzz_operation(op, mode, set(op.definition.raw.get("responses", {})), url, key, seen, failures)
                slowest[f"{mode} {op.method.upper()} {op.path}"] = time.time() - t0
        elapsed = time.time() - started
    print(f"\nfuzz: {sum(seen.values())} requests in {elapsed:.0f} s, statuses {dict(sorted(seen.items()))}")
    print("slowest operations (s):", {k: round(v, 1) for k, v in slowest.most_common(5)})
    assert not failures, "\n".join(dict.fromkeys(failures))


def fuzz_operation(op, mode, declared: set[str], url: str, key: str, seen: Counter, failures: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(mode))
    def run(case) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        code = response.status_code
        seen[code] += 1
        if code >= 500 or (str(code) not in declared and "default" not in declared):
            body = response.text[:300]
            failures.append(f"{mode} {op.method.upper()} {op.path} -> {code} (declared {sorted(declared)}): {body}")

    try:
        run()
    except Unsatisfiable:  # negative mode: an operation without parameters has nothing to get wrong
        assert mode == "negative", op.path
