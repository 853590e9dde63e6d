"""Moves stamped events from libvirt's hand-over queue into the outbox, in batches.

Runs on its own thread: translation, serialisation and the SQLite write all happen
here, off libvirt's event loop thread. Each batch is one SQLite transaction; the
publisher is woken once it is committed.
"""

from __future__ import annotations

import logging
import queue
import threading

from lifecycle_common import wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, Inventory
from lifecycle_publisher.outbox import Outbox

LOG = logging.getLogger(__name__)

STOP = object()  # put on the queue to end the writer once everything before it is written
MAX_BATCH = 2000


class OutboxWriter:
    def __init__(self, source: queue.SimpleQueue, outbox: Outbox, host: str, epoch: int,
                 wake: threading.Event):
        self._queue = source
        self._outbox = outbox
        self._host = host
        self._epoch = epoch
        self._wake = wake
        self.written = 0

    def run(self) -> None:
        try:
            while True:
                batch, stop = self._next_batch()
                self._write(batch)
                if stop:
                    return
        finally:
            self._outbox.close()

    def _next_batch(self) -> tuple[list, bool]:
        item = self._queue.get()
        batch = []
        while item is not STOP:
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _write(self, items: list) -> None:
        rows = [self._row(item) for item in items]
        self._outbox.append(rows)
        self.written += len(rows)
        self._wake.set()
        for item in items:
            if isinstance(item, DomainEvent):
                LOG.debug("host %s seq %d instance %s: %s/%s written to the outbox",
                          self._host, item.seq, item.uuid, item.event, item.detail)
            else:
                LOG.info("host %s seq %d: %s inventory of %d domains written to the outbox",
                         self._host, item.seq, item.reason, len(item.domains))

    def _row(self, item) -> tuple[int, str, bytes]:
        if isinstance(item, DomainEvent):
            note = notifications.instance_notification(self._host, self._epoch, item)
        elif isinstance(item, Inventory):
            note = notifications.inventory_notification(self._host, self._epoch, item)
        else:
            raise TypeError(f"cannot write {item!r} to the outbox")
        return item.seq, note.event_type, wire.encode(note)
