"""What libvirt's callback hands over, and what an inventory lists: plain frozen data."""

from __future__ import annotations

import dataclasses
import itertools
import threading


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
