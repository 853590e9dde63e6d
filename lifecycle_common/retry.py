"""Bounded exponential back-off with jitter, shared by every retry loop of both services."""

from __future__ import annotations

import random
from typing import Callable


def backoff(attempt: int, maximum: float, base: float = 0.5,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the step 0.5, 1, 2, ... capped
    at ``maximum``, then drawn between half of it and all of it. Without the draw, a
    fleet of agents that lost the broker together would come back together, every
    retry in step; with it they spread over half the step, and none retries sooner
    than half of it."""
    step = min(maximum, base * (2 ** min(attempt, 30)))
    return step * (0.5 + 0.5 * rand())
