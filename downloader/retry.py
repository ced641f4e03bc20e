"""How long to wait before trying a failed request again: one rule for the engine and the backends."""

from __future__ import annotations

import random

BACKOFF_BASE = 0.2
BACKOFF_CAP = 20.0


def backoff_delay(attempt: int, retry_after: float | None, kind: str) -> float:
    """Exponential backoff with full jitter after the `attempt`-th failure; throttling waits at least a second, and
    at least what the server asked for (Retry-After, up to a minute)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1)))
    delay = random.uniform(ceiling / 2, ceiling)
    if kind == "throttled":
        delay = max(delay, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 60.0))
    return delay
