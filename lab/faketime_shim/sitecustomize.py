"""Loaded by processes the tests run under libfaketime (lab/fake_clock.py):
``time.sleep`` waits on an event, since libfaketime 0.9.10 refuses the absolute
monotonic sleep CPython's own uses (EINVAL)."""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
