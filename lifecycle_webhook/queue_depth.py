"""How many messages wait on the webhook's queue: the backlog behind a slow or dead
endpoint, read every few seconds on a thread and a broker connection of its own.

Not on the consuming connection: a passive ``queue.declare`` there is a synchronous
call that py-amqp answers by reading the socket itself, and one that lands while a
delivery's frames are half read (``amqp_deliveries.DeliveryReader``) breaks the
connection (seen: "Received frame 3 while expecting type: 1", and every event in
flight sent again). Nor on the loop's time: a broker that is slow to answer holds
only this thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import amqp.exceptions

from lifecycle_common import broker
from lifecycle_common.threads import named_thread

LOG = logging.getLogger(__name__)


class QueueDepth:
    def __init__(self, settings: broker.BrokerSettings, queue: str, interval: float = 5.0):
        self._connector = broker.Connector(settings, role="queue depth connection")
        self._queue = queue
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = named_thread(self._run, "queue-depth", daemon=True)
        self.value: Optional[int] = None  # messages ready, at the last read; None: unknown

    def start(self) -> "QueueDepth":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def read_soon(self) -> None:
        """Read now rather than at the next interval: the queue was just declared (a
        read before that found no queue, and the gauge said unknown)."""
        self._wake.set()

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn, _ = self._connector.connect()
                    channel = conn.channel()
                self.value = channel.queue_declare(self._queue, passive=True).message_count
            except amqp.exceptions.NotFound:
                self.value = None  # not declared yet (the service declares it)
                conn = _release(conn)
            except Exception as exc:  # noqa: BLE001 - any failure: try again later
                LOG.debug("queue depth of %s not read: %s", self._queue, exc)
                self.value = None
                conn = _release(conn)
            self._wake.wait(self._interval)
            self._wake.clear()
        _release(conn)


def _release(conn) -> None:
    if conn is not None:
        broker.release(conn)
    return None
