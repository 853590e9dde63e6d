"""A child process's output, line by line, waited for with a deadline."""

from __future__ import annotations

import queue
import threading
import time


class Lines:
    """A pipe's lines, read on a thread, taken with a deadline."""

    def __init__(self, pipe):
        self._lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe):
        for line in pipe:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line within {timeout}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the stream ended; saw {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line
