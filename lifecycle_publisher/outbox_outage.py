"""When the outbox cannot be written (a full disk): what to log and when, when to try
again, and how many events were lost. Pure bookkeeping, in the way of h11: the caller
says what happened and what time it is, does the writing and the logging itself, and
is told what to say.

An event that cannot be written is dropped: memory must stay bounded however long the
disk stays full, and libvirt cannot be asked for an event again. What the outbox held
before stays in it and is published; the inventory taken once writes work again puts
the control plane right about the events that were lost.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

from lifecycle_common.retry import backoff

# Writes are tried again with the next batch of events and, with none coming, on a
# timer: 0.5 s, 1 s, 2 s, then every RETRY_MAX at most (drawn between half of it and
# all of it), so that the agent notices the disk is back within a few seconds.
RETRY_MAX = 5.0
# One line saying the outbox still cannot be written, at most this often.
SUMMARY_INTERVAL = 60.0
# Lost events logged one by one (host, seq, instance, transition) per SUMMARY_INTERVAL;
# past that only counted, and the count said in the summary. A host evacuated or
# restarted on a full disk emits thousands of events in seconds; a line for each
# would go to a journal that may well sit on the same full filesystem, and the
# inventory after the outage corrects every one of them anyway. The first ones name
# what went missing; the counter and the summaries say how many.
EVENTS_LOGGED_PER_INTERVAL = 20


@dataclasses.dataclass(frozen=True)
class Outage:
    since: float   # monotonic seconds: when the first write failed
    reason: str    # SQLite's message of the last failure
    lost: int = 0  # lifecycle events not written during it
    inventories: int = 0  # inventories not written during it


@dataclasses.dataclass(frozen=True)
class Space:
    """A filesystem's space, as os.statvfs tells it."""
    free: int   # bytes this process may still write (root: the reserved blocks too)
    total: int  # bytes of the filesystem


@dataclasses.dataclass(frozen=True)
class Summary:
    outage: Outage
    unlogged: int  # events lost since the last summary and not logged one by one


class Throttle:
    """Says yes at the first call, then at most once per ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self._next: Optional[float] = None

    def due(self, now: float) -> bool:
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.interval
        return True

    def start(self, now: float) -> None:
        """The first yes only after ``interval`` from now."""
        self._next = now + self.interval

    def reset(self) -> None:
        self._next = None


class OutboxOutage:
    """One outbox writer's view of the disk. Read from other threads (health, metrics)
    through ``current`` and ``lost_total`` only: each is replaced in one assignment."""

    def __init__(self, retry_max: float = RETRY_MAX,
                 summary_interval: float = SUMMARY_INTERVAL,
                 logged_per_interval: int = EVENTS_LOGGED_PER_INTERVAL,
                 rand: Callable[[], float] = random.random):
        self.current: Optional[Outage] = None
        self.lost_total = 0  # events not written since start (a counter)
        self.next_retry: Optional[float] = None  # when to try a write with nothing to write
        self._retry_max = retry_max
        self._rand = rand
        self._attempt = 0
        self._summary = Throttle(summary_interval)
        self._logged_per_interval = logged_per_interval
        self._logged = 0    # events logged one by one in this summary interval
        self._unlogged = 0  # events lost and not logged one by one since the last summary

    def failed(self, reason: str, now: float) -> bool:
        """A write failed; True if that began an outage (say so loudly, once)."""
        began = self.current is None
        if began:
            self.current = Outage(since=now, reason=reason)
            self._attempt = 0
            self._summary.start(now)
        elif reason != self.current.reason:
            self.current = dataclasses.replace(self.current, reason=reason)
        self.next_retry = now + backoff(self._attempt, self._retry_max, rand=self._rand)
        self._attempt += 1
        return began

    def lose_event(self) -> bool:
        """One lifecycle event was not written (during an outage); True if it is to be
        logged by itself, False if it is only counted."""
        assert self.current is not None, "an event is lost only during an outage"
        self.current = dataclasses.replace(self.current, lost=self.current.lost + 1)
        self.lost_total += 1
        if self._logged < self._logged_per_interval:
            self._logged += 1
            return True
        self._unlogged += 1
        return False

    def lose_inventory(self) -> bool:
        """An inventory was not written (during an outage); True for the first of the
        outage, to be logged: the next is taken at the next trial write that works, and
        a disk that keeps refusing would repeat the line every few seconds."""
        assert self.current is not None, "an inventory is lost only during an outage"
        self.current = dataclasses.replace(self.current,
                                           inventories=self.current.inventories + 1)
        return self.current.inventories == 1

    def probed(self, now: float) -> None:
        """A trial write worked while the outage goes on (nothing real written yet):
        try again at the longest interval, in case what is written next fails again."""
        self.next_retry = now + self._retry_max

    def summary_due(self, now: float) -> Optional[Summary]:
        """The summary to log now, if one is due (at most every summary interval)."""
        if self.current is None or not self._summary.due(now):
            return None
        summary = Summary(self.current, self._unlogged)
        self._logged = self._unlogged = 0
        return summary

    def written(self) -> Optional[Outage]:
        """A write worked: the outage it ended (to log, with what was lost), or None."""
        ended = self.current
        self.current = None
        self.next_retry = None
        self._logged = self._unlogged = 0
        self._summary.reset()
        return ended


def describe_space(space: Optional[Space]) -> str:
    """'12.0 KiB free of 1.0 MiB', for a log line (None: unknown)."""
    if space is None:
        return "free space unknown"
    return f"{_size(space.free)} free of {_size(space.total)}"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
