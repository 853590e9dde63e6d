"""Per-partition ordering and bounded concurrency for delivery, as pure bookkeeping.

One lane per partition key (an instance's uuid, or a host), holding its events in the
order they arrived. Only a lane's head is ever sent, and only when the lane has
nothing in flight, so a partition's event never leaves before the one before it was
accepted or given up; the lanes themselves go on independently, at most
``max_in_flight`` heads at a time, in the order they became ready. Nothing here
touches a socket or a clock: the caller says what happened and what time it is.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from typing import Any, Optional

_READY = "ready"          # in the ready queue, head waiting for a slot
_IN_FLIGHT = "in flight"  # head handed out by take_ready, no done/retry yet
_WAITING = "waiting"      # head failed; in the retry heap until its time
_SETTLING = "settling"    # head answered for good, its settlement (a dead letter) not
                          # yet confirmed: no slot taken, the lane's next item held back


class _Lane:
    __slots__ = ("items", "state")

    def __init__(self):
        self.items: collections.deque = collections.deque()  # (number, item)
        self.state = _READY


class Lanes:
    """The lanes of the events held. Costs: ``add``, ``done``, ``retry`` O(log
    waiting); ``take_ready`` O(ready lanes handed out + retries come due), whatever
    the number of lanes (a backlog of 10,000 lanes is not scanned).

    Misuse is an error, not ignored: ``done`` or ``retry`` of a key whose head is not
    in flight raises KeyError (after ``clear``, answers for what was in flight must be
    dropped by the caller)."""

    def __init__(self, max_in_flight: int):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._lanes: dict[str, _Lane] = {}
        self._ready: collections.deque = collections.deque()  # keys, in order of readiness
        self._waiting: list = []  # heap of (retry_at, tie-break number, key)
        self._added: collections.OrderedDict = collections.OrderedDict()  # number -> when
        self._numbers = itertools.count()
        self._in_flight = 0

    # -- what the caller does ---------------------------------------------------------

    def add(self, key: str, item: Any, now: Optional[float] = None) -> None:
        """Hold ``item`` at the end of lane ``key``; ``now`` (monotonic, default the
        clock's) is when, for ``oldest_added``."""
        number = next(self._numbers)
        self._added[number] = time.monotonic() if now is None else now
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            self._ready.append(key)
        lane.items.append((number, item))

    def take_ready(self, now: float, limit: Optional[int] = None) -> list:
        """The items to send now, marked in flight: the head of each lane that has
        nothing in flight and no retry pending after ``now``, lanes in the order they
        became ready, at most ``max_in_flight`` minus those in flight (and at most
        ``limit`` in flight in all, when given: 1 while the endpoint fails)."""
        waiting, ready, lanes = self._waiting, self._ready, self._lanes
        while waiting and waiting[0][0] <= now:
            _, _, key = heapq.heappop(waiting)
            lane = lanes[key]
            lane.state = _READY
            ready.append(key)
        taken = []
        room = (self.max_in_flight if limit is None else min(limit, self.max_in_flight)) \
            - self._in_flight
        while room > 0 and ready:
            key = ready.popleft()
            lane = lanes[key]
            lane.state = _IN_FLIGHT
            taken.append(lane.items[0][1])
            room -= 1
        self._in_flight += len(taken)
        return taken

    def settling(self, key: str) -> None:
        """Lane ``key``'s head is answered for good but not settled yet (its dead letter
        awaits the broker's confirm): its slot is free, and the lane stays held until
        ``done`` (so that an event whose dead letter never lands, and comes back from the
        queue, is not overtaken by its successors)."""
        lane = self._in_flight_lane(key, "settling")
        self._in_flight -= 1
        lane.state = _SETTLING

    def done(self, key: str) -> None:
        """Lane ``key``'s head was accepted or given up (in flight, or settling): drop
        it; the next item, if any, is ready."""
        lane = self._lanes.get(key)
        if lane is None or lane.state not in (_IN_FLIGHT, _SETTLING):
            raise KeyError(f"done: lane {key!r} has nothing in flight or settling")
        number, _ = lane.items.popleft()
        del self._added[number]
        if lane.state is _IN_FLIGHT:
            self._in_flight -= 1
        if lane.items:
            lane.state = _READY
            self._ready.append(key)
        else:
            del self._lanes[key]

    def retry(self, key: str, at: float) -> None:
        """Lane ``key``'s head is to be sent again at ``at``; the lane waits till
        then (its later items with it)."""
        lane = self._in_flight_lane(key, "retry")
        self._in_flight -= 1
        lane.state = _WAITING
        heapq.heappush(self._waiting, (at, next(self._numbers), key))

    def clear(self) -> list:
        """Forget everything (the broker connection is lost: its deliveries will come
        again) and return every item held, in flight or not, each lane in order."""
        items = [item for lane in self._lanes.values() for _, item in lane.items]
        self._lanes.clear()
        self._ready.clear()
        self._waiting.clear()
        self._added.clear()
        self._in_flight = 0
        return items

    # -- what the caller reads ---------------------------------------------------------

    def next_due(self) -> Optional[float]:
        """The earliest time a waiting lane's retry is due, None if none waits."""
        return self._waiting[0][0] if self._waiting else None

    def oldest_added(self) -> Optional[float]:
        """When the oldest item held was added (``add``'s ``now``), None if none."""
        for when in self._added.values():
            return when
        return None

    @property
    def held(self) -> int:
        """Items in all lanes, in flight included."""
        return len(self._added)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @property
    def waiting_retry(self) -> int:
        return len(self._waiting)

    @property
    def ready(self) -> int:
        """Lanes whose head waits only for a slot (retries come due not counted until
        ``take_ready`` sees them)."""
        return len(self._ready)

    def _in_flight_lane(self, key: str, what: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None or lane.state is not _IN_FLIGHT:
            raise KeyError(f"{what}: lane {key!r} has nothing in flight")
        return lane
