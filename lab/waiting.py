"""Waiting on a condition: poll it with a deadline, never a bare sleep standing in for
one. The tests, the benchmarks and the lab's own parts all wait with ``wait_for``."""

from __future__ import annotations

import time
from typing import Callable, Optional, Union


def wait_for(predicate: Callable[[], object], timeout: float,
             message: Union[str, Callable[[], str], None] = None, interval: float = 0.01, *,
             error: type[Exception] = TimeoutError,
             watch: Optional[Callable[[], None]] = None,
             ignoring: tuple[type[BaseException], ...] = ()):
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy,
    and return that. After ``timeout`` seconds raise ``error`` ("timed out after 30s
    waiting for <message>"; ``message`` may be a callable, read only then, and defaults
    to the predicate's name). An exception of a kind in ``ignoring`` counts as "not
    yet" (a probe of a part still starting), and the last one is named in the error.
    ``watch``, called after each poll that found nothing, may raise to end the wait
    early (a process that exited, say)."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ignoring as exc:
            last_error = exc
        if watch is not None:
            watch()
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            cause = f" (last error: {last_error})" if last_error is not None else ""
            raise error(f"timed out after {timeout}s waiting for "
                        f"{text or getattr(predicate, '__name__', 'a condition')}{cause}")
        time.sleep(interval)
