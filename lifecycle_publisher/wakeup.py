"""A wake-up flag that a thread can wait on together with a socket (a self-pipe).

The publisher waits for either of two things at once: the broker's confirms on its
AMQP socket, and the outbox writer saying it committed new rows. ``poll`` over the
socket and this pipe lets it sleep until one happens, instead of polling in a loop.
(``poll``, not ``select``: ``select`` cannot watch a descriptor numbered 1024 or more,
which a process with many open files, 100 agents in one benchmark process say, has.)
"""

from __future__ import annotations

import math
import os
import select
import threading


class Wakeup:
    """Like ``threading.Event`` for set/is_set/clear/wait, plus ``fileno()``."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._flag = threading.Event()

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        if not self._flag.is_set():
            self._flag.set()
            try:
                os.write(self._write, b"x")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def is_set(self) -> bool:
        return self._flag.is_set()

    def clear(self) -> None:
        self._flag.clear()
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None, also=None) -> bool:
        """Sleep until set, or ``also`` (something with fileno()) is readable, or
        ``timeout`` passes. Returns whether the flag is set."""
        if self._flag.is_set():
            return True
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        if also is not None:
            poller.register(also, select.POLLIN)
        poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return self._flag.is_set()

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
