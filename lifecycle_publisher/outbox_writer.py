"""Moves stamped events from libvirt's hand-over inbox into the outbox, in batches.

Stepped on the agent's worker thread, by the publisher's loop (``Publisher`` with this
writer as its source): reading a domain's state after the events that need it
(``state_read_needed``: a migration's job, an event that does not say the power state),
translation, serialisation and the SQLite write all happen there, off libvirt's event
loop thread. Each batch is one SQLite transaction; ``step`` returns the rows written,
which the publisher sends without reading them back.

With ``stopped_delay`` > 0, a STOPPED event waits that long before it is written and
is dropped if a later event for the same domain comes first: a guest that reboots
emits STOPPED then STARTED, and the control plane should not see it stopped.

Faults (reboots, watchdogs, I/O errors, ...: ``DomainFault``) pass a held STOPPED
by without cancelling it (the guest's state did not change), and go through the
``FaultCoalescer`` (``[agent] fault_coalesce_interval``): the first of a storm is
written at once, the rest as at most one summary per interval, written by the step
that finds its window ended; the inbox's STOP writes every pending summary.

When the disk refuses a write (it is full), the batch is dropped, each event counted
and logged (``outbox_outage``), and the writer goes on: what the outbox held stays and
is published. It tries again with the next batch and, with none coming, with a small
trial write on a timer; once the disk takes writes again it asks the agent for an
inventory, which puts the control plane right about the events that were lost. A
corrupt outbox (OutboxCorrupt) ends the writer, and so the agent, to be restarted.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from typing import Callable, Optional

from lifecycle_common import wire
from lifecycle_publisher import notifications
from lifecycle_common.wire.vocabulary import FAULTS_BY_EVENT_TYPE
from lifecycle_publisher.domain_event import DomainEvent, DomainFault, Inventory
from lifecycle_publisher.errors import OutboxFull, OutboxUnwritable
from lifecycle_publisher.fault_coalescing import FaultCoalescer
from lifecycle_common.libvirt_codes import Event
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.outbox_outage import RETRY_MAX, OutboxOutage, describe_space
from lifecycle_publisher.wakeup import Inbox
from lifecycle_publisher.translation import (MIGRATION, Observed, Transition, needs_job,
                                              translate)

LOG = logging.getLogger(__name__)

STOP = object()  # put on the queue to end the writer once everything before it is written
MAX_BATCH = 2000
MAX_REMEMBERED = 100_000  # domains whose last transition is kept

Observe = Callable[[list[DomainEvent]], dict[str, Observed]]


# Events whose power state libvirt may leave other than the event says: a definition
# of a running transient domain (DEFINED/ADDED, and the domain runs), a crash whose
# on_crash action restarts or preserves the guest. Rare: read after, as every event was.
_STATE_MAY_DIFFER = frozenset({Event.DEFINED, Event.CRASHED})


@functools.lru_cache(maxsize=1024)
def state_read_needed(event: int, detail: int) -> bool:
    """Whether the domain must be read after this event (``EventSource.observe``) to
    translate it: for a SUSPENDED/MIGRATED, the migration job (a pause or a leaving
    guest?); for an event that says nothing of the power state (SHUTDOWN, UNDEFINED,
    DEFINED/UPDATED) or whose state libvirt may leave otherwise (DEFINED, CRASHED), the
    state. Not for the rest (STARTED, SUSPENDED, RESUMED, STOPPED, PMSUSPENDED and the
    migration transitions), whose power state the event itself says: the read would
    give the same answer, unless the domain changed again meanwhile, and then that
    change's own event follows in order; a missed one is reconciled by the next
    inventory. (tests/unit/test_state_read.py proves the same translation without the
    read, by table.)

    Why: the read is a call to libvirtd per batch (``domainListGetStats``), which wakes
    libvirt's event loop twice and waits for the daemon's answer: 18% of the agent's
    samples in a burst, and at one event per batch several cross-thread wake-ups per
    event (20 to 36 us of CPU each here)."""
    if needs_job(event, detail):
        return True
    edge = translate(event, detail)
    if edge.transition in MIGRATION or edge.transition is Transition.IGNORED:
        return False  # a read changes neither the transition nor the power state
    return edge.power_state is None or event in _STATE_MAY_DIFFER


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


@dataclasses.dataclass(frozen=True)
class Written:
    """What one ``OutboxWriter.step`` wrote: the rows as ``(row key, body)`` in outbox
    order, for the publisher to send without reading them back (None: written, but the
    outbox did not say their keys: read them from it); and whether the inbox's STOP was
    reached (everything before it is written)."""

    rows: Optional[list[tuple[int, bytes]]]
    stopped: bool = False



class OutboxWriter:
    """Translates what the inbox holds and writes it to the outbox, one transaction a
    step; stepped by the worker thread (``Publisher``), or by ``run`` on a thread of its
    own."""

    def __init__(self, inbox: Inbox, outbox: Outbox, host: str, epoch: int,
                 observe: Observe = lambda events: {}, stopped_delay: float = 0.0,
                 ask_inventory: Callable[[], None] = lambda: None,
                 outage: OutboxOutage | None = None, fault_coalesce_interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        """``ask_inventory``: called (on the writer's thread) once the disk takes writes
        again after refusing some; it must only flag the request and return. ``clock``:
        what time it is for the held STOPPEDs and the faults' windows (tests set it)."""
        self._inbox = inbox
        self._outbox = outbox
        self._host = host
        self._epoch = epoch
        self._observe = observe
        self._clock = clock
        self._delay = StoppedDelay(stopped_delay)
        self.coalescer = FaultCoalescer(fault_coalesce_interval)
        self.faults: collections.Counter[str] = collections.Counter()  # seen, by fault value
        self._previous: collections.OrderedDict[str, Transition] = collections.OrderedDict()
        self.written = 0
        self.transitions: collections.Counter[str] = collections.Counter()  # events written
        self.inventories = 0
        self._ask_inventory = ask_inventory
        self.outage = outage or OutboxOutage()  # the disk, as this writer saw it
        self.stopped = False  # the inbox's STOP was reached

    def deadline(self) -> float | None:
        """When ``step`` has work even if nothing more comes (monotonic): a held STOPPED
        falls due, a fault's coalescing window ends, or a trial write of a disk that
        refused; None: nothing is waited for."""
        deadlines = [at for at in (self._delay.next_due(), self.coalescer.next_due(),
                                   self.outage.next_retry) if at is not None]
        return min(deadlines) if deadlines else None

    def step(self) -> Written:
        """Take what the inbox holds (up to MAX_BATCH, and the held STOPPEDs and fault
        summaries now due), write it in one transaction, and say what was written. Never
        waits for the inbox. A disk that refuses is counted and logged (``Written([])``);
        a corrupt outbox raises OutboxCorrupt."""
        if self.stopped:
            return Written([], True)
        now = self._clock()
        batch: list = []
        admit, coalesce, faults = self._delay.admit, self.coalescer.admit, self.faults
        for item in self._inbox.take(MAX_BATCH):
            if item is STOP:
                self.stopped = True
                break
            if type(item) is DomainFault:
                faults[item.fault.value] += 1
                batch += coalesce(item, now)
            else:
                batch += admit(item, now)
        batch += self._delay.due(now)
        batch += self.coalescer.due(now)
        if self.stopped:
            batch += self._delay.release_all()
            batch += self.coalescer.release_all()
        if not batch:
            retry = self.outage.next_retry
            if retry is not None and now >= retry:
                self._probe(now)
            return Written([], self.stopped)
        return Written(self._write(batch), self.stopped)

    def write_rest(self) -> None:
        """Write what the inbox holds up to its STOP (or while it holds anything): the
        end of a stop, once nothing more is published."""
        while not self.stopped and not self._inbox.empty():
            self.step()

    def run(self) -> None:
        """Step until the inbox's STOP, sleeping on the inbox's wake-up in between: the
        writer alone on a thread (tests, tools; the agent steps it from its worker)."""
        wake = self._inbox.wake
        try:
            while not self.stopped:
                deadline = self.deadline()
                wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                wake.clear()
                self.step()
        finally:
            self._outbox.close()

    def _write(self, items: list) -> Optional[list[tuple[int, bytes]]]:
        to_read = [i for i in items
                   if isinstance(i, DomainEvent) and state_read_needed(i.event, i.detail)]
        observed = self._observe(to_read) if to_read else {}
        rows = [self._row(item, observed) for item in items]
        refused = None
        try:
            keys = self._outbox.append(rows)
        except OutboxUnwritable as exc:
            refused = exc
        if refused is not None:  # logged outside the except: oslo.log would add the error
            self._not_written(items, rows, refused)
            return []
        if self.outage.current is not None:
            self._writable_again(items)
        self.written += len(rows)
        self._count(rows)
        debug = LOG.isEnabledFor(logging.DEBUG)  # this loop runs for every event
        for item in items:
            if isinstance(item, DomainEvent):
                if debug:
                    LOG.debug("host %s seq %d instance %s: %s/%s written to the outbox",
                              self._host, item.seq, item.uuid, item.event, item.detail)
            elif isinstance(item, DomainFault):
                if debug:
                    LOG.debug("host %s seq %d instance %s: %s (%d) written to the outbox",
                              self._host, item.seq, item.uuid, item.fault.value, item.count)
            else:
                LOG.info("host %s seq %d: %s inventory of %d domains written to the outbox",
                         self._host, item.seq, item.reason, len(item.domains))
        if keys is None:  # another process's rows lie between: the publisher reads them
            return None
        return [(key, body) for key, (_, _, body) in zip(keys, rows)]

    def _not_written(self, items: list, rows: list[tuple[int, str, bytes]],
                     exc: OutboxUnwritable) -> None:
        """The disk refused the batch: say so (loudly once), count and log what is
        lost, and go on; the next batch, or the timer, tries again."""
        now = time.monotonic()
        if self.outage.failed(exc.reason, now):
            LOG.error("host %s: the outbox at %s cannot be written, %s: %s (%s); events "
                      "that cannot be written are counted and dropped, what the outbox "
                      "holds stays and is published; writes are tried again with each "
                      "batch and at least every %.0fs", self._host, exc.path,
                      "the disk is full" if isinstance(exc, OutboxFull) else
                      "the disk refuses writes", exc.reason,
                      describe_space(self._outbox.space()), RETRY_MAX)
        for item, (_, event_type, _) in zip(items, rows):
            if isinstance(item, DomainEvent):
                if self.outage.lose_event():
                    LOG.warning("host %s seq %d instance %s: %s not written to the outbox "
                                "(%s): lost; the inventory taken once the disk takes "
                                "writes again reconciles it", self._host, item.seq,
                                item.uuid, event_type.partition(".")[2], exc.reason)
            elif isinstance(item, DomainFault):  # no inventory says a fault again
                if self.outage.lose_event():
                    LOG.warning("host %s seq %d instance %s: %s (%d occurrences) not "
                                "written to the outbox (%s): lost", self._host, item.seq,
                                item.uuid, item.fault.value, item.count, exc.reason)
            elif self.outage.lose_inventory():
                LOG.warning("host %s seq %d: %s inventory of %d domains not written to the "
                            "outbox (%s): lost; another is taken once the disk takes "
                            "writes again", self._host, item.seq, item.reason,
                            len(item.domains), exc.reason)
        self._summarise(now)

    def _probe(self, now: float) -> None:
        """Nothing to write, and the last write failed: a trial write. If it works and
        the filesystem has space, ask for an inventory (whose write ends the outage, or
        fails like the rest). A trial write can fit in the last, partly used block of
        the WAL file on a filesystem with none left: an inventory then would only be
        lost again."""
        refused = None
        try:
            self._outbox.probe()
        except OutboxUnwritable as exc:
            refused = exc
        if refused is not None:
            self.outage.failed(refused.reason, now)
            self._summarise(now)
            return
        self.outage.probed(now)
        space = self._outbox.space()
        if space is not None and space.free == 0:
            self._summarise(now)
            return
        LOG.debug("host %s: the outbox at %s takes a trial write; asking for an inventory",
                  self._host, self._outbox.path)
        self._ask_inventory()

    def _summarise(self, now: float) -> None:
        summary = self.outage.summary_due(now)
        if summary is None:
            return
        outage = summary.outage
        LOG.warning("host %s: the outbox at %s still cannot be written after %.0fs (%s; "
                    "%s): %d events not written so far (%d of them since the last summary "
                    "not logged one by one), and %d inventories; trying again at least "
                    "every %.0fs", self._host, self._outbox.path, now - outage.since,
                    outage.reason, describe_space(self._outbox.space()), outage.lost,
                    summary.unlogged, outage.inventories, RETRY_MAX)

    def _writable_again(self, items: list) -> None:
        ended = self.outage.written()
        reconciled = any(isinstance(item, Inventory) for item in items)
        LOG.info("host %s: the outbox at %s can be written again after %.1fs; %d events "
                 "were not written meanwhile; %s", self._host, self._outbox.path,
                 time.monotonic() - ended.since, ended.lost,
                 "the inventory just written reconciles them" if reconciled else
                 "asking for an inventory to reconcile them")
        if not reconciled:
            self._ask_inventory()

    def _count(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Count what was written: events by transition ('instance.<transition>');
        faults are counted as they are seen (``step``)."""
        counts = collections.Counter(event_type for _, event_type, _ in rows)
        self.inventories += counts.pop(notifications.INVENTORY, 0)
        for event_type, count in counts.items():
            if event_type not in FAULTS_BY_EVENT_TYPE:
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
        elif isinstance(item, DomainFault):
            note = notifications.fault_notification(self._host, self._epoch, item)
        elif isinstance(item, Inventory):
            note = notifications.inventory_notification(self._host, self._epoch, item)
        else:
            raise TypeError(f"cannot write {item!r} to the outbox")
        return item.seq, note.event_type, wire.encode(note)
