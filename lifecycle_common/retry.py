"""Bounded exponential back-off, shared by every retry loop of both services."""


def backoff(attempt: int, maximum: float, base: float = 0.5) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 0.5, 1, 2, ... capped."""
    return min(maximum, base * (2 ** min(attempt, 30)))
