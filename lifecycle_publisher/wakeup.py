"""The inbox that libvirt's callback hands events to, and the worker's wake-up flag
(``lifecycle_common.wakeup.Wakeup``, which the worker polls with its AMQP socket)."""

from __future__ import annotations

import queue

from lifecycle_common.wakeup import Wakeup  # noqa: F401 - the agent's modules import it here


class Inbox:
    """What libvirt's callback (and the main thread: inventories, the stop) hands to the
    worker: a queue, and the worker's ``Wakeup`` set after each put. ``put`` is cheap
    enough for libvirt's thread and never blocks; a burst wakes the worker once."""

    def __init__(self, wake: Wakeup):
        self.wake = wake
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item) -> None:
        """Any thread."""
        self._queue.put(item)
        self.wake.set()

    def take(self, limit: int) -> list:
        """Up to ``limit`` items, without waiting (the worker's thread). If more wait,
        the wake-up is set again, so that the worker comes back for them."""
        items = []
        get = self._queue.get_nowait
        try:
            while len(items) < limit:
                items.append(get())
        except queue.Empty:
            return items
        if not self._queue.empty():
            self.wake.set()
        return items

    def empty(self) -> bool:
        return self._queue.empty()

    def qsize(self) -> int:
        return self._queue.qsize()
