"""What one delivery attempt's answer means, and when to try again.

Pure. A 2xx accepts the event; no answer at all, 408, 429 and 5xx are the endpoint's
trouble and retried, with exponential back-off and jitter, no sooner than a
Retry-After asks, until ``retry_for`` seconds after the first attempt; any other
answer refuses the event, which is dead-lettered with that answer as the reason.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

from lifecycle_common.retry import backoff

FIRST_DELAY = 1.0  # seconds before the first retry; then 2, 4 ... up to the cap
RETRIED_STATUSES = frozenset({408, 429})
_DELTA_SECONDS = re.compile(r"[+-]?\d{1,15}", re.ASCII)


@dataclass(frozen=True)
class Answer:
    """What one attempt got."""

    status: Optional[int]       # the HTTP status, None if no response
    retry_after: Optional[str]  # the Retry-After header as received
    detail: str                 # "503 Service Unavailable: <body...>", "connection refused"


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # 2xx: done
    RETRY = "retry"        # no answer, 408, 429, 5xx: try again later
    REFUSED = "refused"    # any other answer: dead-letter it


def judge(answer: Answer) -> Verdict:
    """ACCEPTED for a 2xx; RETRY for no response, 408, 429 and 5xx; REFUSED otherwise
    (other 4xx, and 1xx or 3xx: redirects are not followed)."""
    status = answer.status
    if status is None:
        return Verdict.RETRY
    if 200 <= status <= 299:
        return Verdict.ACCEPTED
    if status in RETRIED_STATUSES or 500 <= status <= 599:
        return Verdict.RETRY
    return Verdict.REFUSED


def retry_after_seconds(value: Optional[str], now: float) -> Optional[float]:
    """Seconds a Retry-After header asks to wait: delta-seconds, or an HTTP-date taken
    against ``now`` (Unix time). Negative or past: 0. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(max(0, int(value)))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:  # "-0000": UTC, as every HTTP-date is
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    try:
        seconds = moment.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def delay(attempt: int, retry_after: Optional[float], cap: float,
          rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (0 for the first retry): the step 1, 2,
    4 ... seconds capped at ``cap``, drawn between half of it and all of it
    (``lifecycle_common.retry.backoff``), so that the events that failed together do
    not all come back together. With a Retry-After, at least what it asks, even beyond
    ``cap`` (the caller bounds the whole by ``retry_for``)."""
    seconds = backoff(max(0, attempt), cap, base=FIRST_DELAY, rand=rand)
    if retry_after is not None and retry_after > seconds:
        return retry_after
    return seconds


@dataclass
class Attempts:
    """One message's delivery so far: when its first attempt was sent, how many
    attempts were answered, and the last answer."""

    first_attempt: Optional[float] = None
    count: int = 0
    last: Optional[Answer] = None

    def sending(self, now: float) -> None:
        """An attempt is being sent at ``now``: the first one starts the clock."""
        if self.first_attempt is None:
            self.first_attempt = now


def next_step(attempts: Attempts, answer: Answer, now: float, retry_for: float,
              cap: float, rand: Callable[[], float] = random.random,
              wall_now: Optional[float] = None) -> tuple[Verdict, Optional[float], str]:
    """Record ``answer`` in ``attempts`` and say what follows: ``(ACCEPTED, None, "")``;
    ``(REFUSED, None, reason)`` for a refusal, or when the next attempt would fall more
    than ``retry_for`` seconds after the first; otherwise ``(RETRY, at, "")``, ``at``
    on the clock of ``now``. ``wall_now`` (Unix time, default the clock's) reads a
    Retry-After given as a date."""
    if attempts.first_attempt is None:
        attempts.first_attempt = now
    attempts.count += 1
    attempts.last = answer
    verdict = judge(answer)
    if verdict is Verdict.ACCEPTED:
        return Verdict.ACCEPTED, None, ""
    if verdict is Verdict.REFUSED:
        return Verdict.REFUSED, None, f"endpoint refused it: {answer.detail}"
    if wall_now is None:
        wall_now = time.time()
    wait = delay(attempts.count - 1, retry_after_seconds(answer.retry_after, wall_now),
                 cap, rand)
    at = now + wait
    if at - attempts.first_attempt <= retry_for:
        return Verdict.RETRY, at, ""
    elapsed = now - attempts.first_attempt
    return (Verdict.REFUSED, None,
            f"retries expired after {attempts.count} attempts over {elapsed:.0f}s: "
            f"last answer {answer.detail}")
