"""Object ids in OpenAI's style (`file-…`, `ftjob-…`) and the clock the store uses."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(nbytes)}"


def now() -> int:
    return int(time.time())
