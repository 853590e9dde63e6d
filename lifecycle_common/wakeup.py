"""A wake-up flag that a thread can wait on together with a socket (a self-pipe).

The agent's worker thread waits for any of three things at once: the broker's frames
(confirms) on its AMQP socket, an event handed over by libvirt's callback, and a word
from another thread (a stop, a heartbeat due now); the webhook's loop waits for its
queue's frames and its sender's answers, and the sender's I/O thread for jobs. ``poll``
over the socket and this pipe lets each sleep until one happens, instead of polling in
a loop. (``poll``, not ``select``: ``select`` cannot watch a descriptor numbered 1024 or
more, which a process with many open files, 100 agents in one benchmark process say,
has.)
"""

from __future__ import annotations

import math
import os
import select


class Wakeup:
    """Like ``threading.Event`` for set/is_set/clear/wait, plus ``fileno()``.

    The flag is a plain attribute (reads and writes of one are atomic in CPython): a
    ``set`` while it is set costs an attribute read, so that a burst of events wakes the
    waiter once, with one byte down the pipe. The waiter clears the flag before it looks
    at what it was woken for: a ``set`` racing with that ``clear`` either lands after it
    (and wakes the next wait) or before it, and then what it announced is seen. A ``set``
    that lands between the flag's clearing and the pipe's draining has its byte written
    again, so that a waiter that polls the pipe alone (the webhook's queue) sees what the
    flag says."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._flag = False
        self._pollers: dict = {}  # what is waited on with the pipe -> its poll object

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            try:
                os.write(self._write, b"x")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        try:
            while len(os.read(self._read, 4096)) == 4096:
                pass  # (less than asked for: the pipe is empty; no read to learn it)
        except BlockingIOError:
            pass
        if self._flag:  # a set() between the two steps: its byte was just read
            try:
                os.write(self._write, b"x")  # so that a poll of the pipe sees it too
            except BlockingIOError:
                pass

    def wait(self, timeout: float | None = None, also=None) -> bool:
        """Sleep until set, or ``also`` (something with fileno()) is readable, or
        ``timeout`` passes. Returns whether the flag is set."""
        if self._flag:
            return True
        poller = self._pollers.get(also)
        if poller is None:  # one per socket waited on with it: the worker's few
            if len(self._pollers) > 8:
                self._pollers.clear()
            poller = self._pollers[also] = select.poll()
            poller.register(self._read, select.POLLIN)
            if also is not None:
                poller.register(also, select.POLLIN)
        poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return self._flag

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
