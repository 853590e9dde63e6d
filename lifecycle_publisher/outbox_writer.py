"""Moves stamped events from libvirt's hand-over queue into the outbox, in batches.

Runs on its own thread: reading each domain's state after its events, translation,
serialisation and the SQLite write all happen here, off libvirt's event loop thread.
Each batch is one SQLite transaction; the publisher is woken once it is committed.

With ``stopped_delay`` > 0, a STOPPED event waits that long before it is written and
is dropped if a later event for the same domain comes first: a guest that reboots
emits STOPPED then STARTED, and the control plane should not see it stopped.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Callable

from lifecycle_common import wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, Inventory
from lifecycle_publisher.libvirt_codes import Event
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.translation import Observed, Transition

LOG = logging.getLogger(__name__)

STOP = object()  # put on the queue to end the writer once everything before it is written
MAX_BATCH = 2000
MAX_REMEMBERED = 100_000  # domains whose last transition is kept

Observe = Callable[[list[DomainEvent]], dict[str, Observed]]


class StoppedDelay:
    """Holds STOPPED events back; a later event for the same domain cancels them. Pure
    bookkeeping: the caller says what time it is."""

    def __init__(self, delay: float):
        self.delay = delay
        self._held: dict[str, tuple[float, DomainEvent]] = {}

    def admit(self, item, now: float) -> list:
        """What of ``item`` may be written now (the item, or nothing if held)."""
        if not isinstance(item, DomainEvent) or self.delay <= 0:
            return [item]
        cancelled = self._held.pop(item.uuid, None)
        if cancelled is not None:
            LOG.info("seq %d instance %s: STOPPED dropped, followed within %.1fs by seq %d",
                     cancelled[1].seq, item.uuid, self.delay, item.seq)
        if item.event == Event.STOPPED:
            self._held[item.uuid] = (now + self.delay, item)
            return []
        return [item]

    def due(self, now: float) -> list[DomainEvent]:
        ready = [e for at, e in self._held.values() if at <= now]
        for e in ready:
            del self._held[e.uuid]
        return sorted(ready, key=lambda e: e.seq)

    def release_all(self) -> list[DomainEvent]:
        held = sorted((e for _, e in self._held.values()), key=lambda e: e.seq)
        self._held.clear()
        return held

    def next_due(self) -> float | None:
        return min((at for at, _ in self._held.values()), default=None)


class OutboxWriter:
    def __init__(self, source: queue.SimpleQueue, outbox: Outbox, host: str, epoch: int,
                 wake: threading.Event, observe: Observe = lambda events: {},
                 stopped_delay: float = 0.0):
        self._queue = source
        self._outbox = outbox
        self._host = host
        self._epoch = epoch
        self._wake = wake
        self._observe = observe
        self._delay = StoppedDelay(stopped_delay)
        self._previous: collections.OrderedDict[str, Transition] = collections.OrderedDict()
        self.written = 0
        self.transitions: collections.Counter[str] = collections.Counter()  # events written
        self.inventories = 0

    def run(self) -> None:
        try:
            while True:
                batch, stop = self._next_batch()
                if stop:
                    batch += self._delay.release_all()
                self._write(batch)
                if stop:
                    return
        finally:
            self._outbox.close()

    def _next_batch(self) -> tuple[list, bool]:
        """Block for the first item (or the next held STOPPED falling due), then take
        what else is queued, up to MAX_BATCH."""
        batch: list = []
        while not batch:
            next_due = self._delay.next_due()
            timeout = None if next_due is None else max(0.0, next_due - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                batch += self._delay.due(time.monotonic())
                continue
            while True:
                if item is STOP:
                    return batch, True
                batch += self._delay.admit(item, time.monotonic())
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            batch += self._delay.due(time.monotonic())
        return batch, False

    def _write(self, items: list) -> None:
        if not items:
            return
        events = [i for i in items if isinstance(i, DomainEvent)]
        observed = self._observe(events)
        rows = [self._row(item, observed) for item in items]
        self._outbox.append(rows)
        self.written += len(rows)
        self._wake.set()
        self._count(rows)
        debug = LOG.isEnabledFor(logging.DEBUG)  # this loop runs for every event
        for item in items:
            if isinstance(item, DomainEvent):
                if debug:
                    LOG.debug("host %s seq %d instance %s: %s/%s written to the outbox",
                              self._host, item.seq, item.uuid, item.event, item.detail)
            else:
                LOG.info("host %s seq %d: %s inventory of %d domains written to the outbox",
                         self._host, item.seq, item.reason, len(item.domains))

    def _count(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Count what was written: events by transition ('instance.<transition>')."""
        counts = collections.Counter(event_type for _, event_type, _ in rows)
        self.inventories += counts.pop(notifications.INVENTORY, 0)
        for event_type, count in counts.items():
            self.transitions[event_type.partition(".")[2]] += count

    def _remember(self, uuid: str, transition: Transition) -> None:
        """Each domain's last transition here (translation needs it); bounded."""
        self._previous[uuid] = transition
        self._previous.move_to_end(uuid)
        if len(self._previous) > MAX_REMEMBERED:
            self._previous.popitem(last=False)

    def _row(self, item, observed: dict[str, Observed]) -> tuple[int, str, bytes]:
        if isinstance(item, DomainEvent):
            note = notifications.instance_notification(
                self._host, self._epoch, item, observed.get(item.uuid),
                self._previous.get(item.uuid))
            self._remember(item.uuid, Transition(note.payload.transition))
        elif isinstance(item, Inventory):
            note = notifications.inventory_notification(self._host, self._epoch, item)
        else:
            raise TypeError(f"cannot write {item!r} to the outbox")
        return item.seq, note.event_type, wire.encode(note)
