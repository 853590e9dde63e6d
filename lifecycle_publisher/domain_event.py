"""What libvirt's callback hands over, and what an inventory lists: plain frozen data."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import Optional

from lifecycle_common.wire.vocabulary import Fault


@dataclasses.dataclass(frozen=True, slots=True)
class DomainEvent:
    """A lifecycle event as stamped on libvirt's thread: nothing translated yet."""

    seq: int
    occurred_at: float  # time.time() when the callback ran
    uuid: str
    name: str
    event: int
    detail: int
    # libvirt's domain object, to read the state after the event off libvirt's thread;
    # None when the event needs no read (outbox_writer.state_read_needed).
    domain: object = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DomainFault:
    """A fault event (reboot, watchdog, I/O error, ...) as stamped on libvirt's thread:
    ``codes`` are the callback's own arguments after the domain, as libvirt gave them
    (``(srcPath, devAlias, action, reason)`` of an I/O error, ``(action,)`` of a
    watchdog, ``()`` of a reboot): named on the worker thread, not on libvirt's.

    ``count`` > 1: a summary the coalescer made of ``count`` occurrences of one fault
    (``fault_coalescing``), this record being the last of them and ``first_occurred_at``
    the first's time."""

    seq: int
    occurred_at: float  # time.time() when the callback ran
    uuid: str
    name: str
    fault: Fault
    codes: tuple
    count: int = 1
    first_occurred_at: Optional[float] = None  # None: occurred_at (a single occurrence)


@dataclasses.dataclass(frozen=True, slots=True)
class DomainSnapshot:
    """One domain's state as read for an inventory."""

    uuid: str
    name: str
    state: int
    reason: int


@dataclasses.dataclass(frozen=True, slots=True)
class Inventory:
    seq: int
    occurred_at: float
    reason: str  # start, reconnect, periodic
    domains: tuple[DomainSnapshot, ...]
    new_state: bool = False  # the first inventory of a state that had no epoch


class Sequencer:
    """The per-host sequence: one counter shared by events and inventories, so that
    their order on the host is their order on the wire. Cheap enough for libvirt's thread."""

    def __init__(self, first: int):
        self._counter = itertools.count(first)
        self._lock = threading.Lock()
        self.last = first - 1

    def next(self) -> int:
        with self._lock:
            self.last = next(self._counter)
            return self.last
