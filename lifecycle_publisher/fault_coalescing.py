"""Storms of one fault bounded: the first occurrence at once, then at most one
notification per interval carrying how many occurred.

A disk that fails every request makes libvirt report an I/O error per request:
thousands a second. Each written as a notification of its own would flood the outbox,
the broker and the database with rows that say nothing new. Per key (an instance, the
fault, and what tells one of its occurrences from another: the disk and the reason of
an I/O error, the watchdog's action, ...) the coalescer lets the first occurrence
through at once and opens a window of ``interval`` seconds. Occurrences within the
window are counted, not written; when the window ends with some pending, ONE summary is
written, the last pending occurrence itself (its seq, so its order against the
lifecycle events stays the true one) with ``count`` and the first pending's time, and
the next window opens. A window that ends with nothing pending forgets its key: the next
occurrence, however much later, is written at once again.

Pending occurrences live in memory until their summary is written: a clean stop
writes them all (``release_all``); a crash loses at most one interval's count of each
key (its first occurrence is in the outbox already, the fault itself is not lost).

Pure bookkeeping, like ``outbox_writer.StoppedDelay``: the caller says what time it is
(monotonic: ``now`` never goes back), and writes what each call returns.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Hashable, Optional

from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher.domain_event import DomainFault

# Open windows kept at most. A key is an instance's fault on one of its devices: a host
# with a thousand guests of four disks each, all failing, has 4000. Past the cap the
# window that ends soonest is closed early (its pending occurrences written at once as
# its summary, nothing lost) to make room: memory stays bounded, and only the spread of
# notifications over time suffers, in a storm that wide.
MAX_KEYS = 10_000


def coalescing_key(fault: DomainFault) -> Optional[Hashable]:
    """What occurrences of one fault are counted together, or None: never coalesced.

    The guest agent's events are not coalesced: they alternate (connected,
    disconnected, connected), and a summary would say only the last state and hide
    that it went away meanwhile; nor do they storm (a guest agent reconnects at the
    pace of a guest's boot, not of its disk's requests)."""
    if fault.fault is Fault.GUEST_AGENT:
        return None
    if fault.fault is Fault.IO_ERROR:
        _path, device, _action, reason = fault.codes
        return fault.uuid, fault.fault, device, reason  # the (instance, device, reason)
    # watchdog: (action,); memory failure: (recipient, action, flags); reboot and
    # control error: (): all that they say.
    return fault.uuid, fault.fault, fault.codes


@dataclasses.dataclass(slots=True)
class _Window:
    ends_at: float
    count: int = 0  # occurrences pending (not written yet)
    first_occurred_at: float = 0.0  # the first pending's time
    last: Optional[DomainFault] = None  # the last pending occurrence


class FaultCoalescer:
    """Per key, the first occurrence at once and at most one summary per ``interval``
    seconds after; ``interval`` 0 coalesces nothing."""

    def __init__(self, interval: float, max_keys: int = MAX_KEYS):
        self.interval = interval
        self.max_keys = max_keys
        # Windows in the order they end: each is (re)opened at now + interval, and now
        # never goes back, so reopening one moves it to the end; the first ends first.
        self._windows: collections.OrderedDict[Hashable, _Window] = collections.OrderedDict()
        self.coalesced: collections.Counter[str] = collections.Counter()  # by fault value:
        # occurrences written as part of another's summary, not as their own notification

    def __len__(self) -> int:
        """Keys held (open windows)."""
        return len(self._windows)

    def admit(self, fault: DomainFault, now: float) -> list[DomainFault]:
        """What to write now of ``fault``: itself, if its key has no open window (a new
        window opens); nothing, if one is open (it is pending). A window found ended is
        closed first (its summary comes first in the list), as ``due`` would have."""
        key = coalescing_key(fault) if self.interval > 0 else None
        if key is None:
            return [fault]
        out: list[DomainFault] = []
        window = self._windows.get(key)
        if window is not None and window.ends_at <= now:
            out += self._close(key, window, now)
            window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                oldest_key, oldest = next(iter(self._windows.items()))
                out += self._summary(oldest_key, oldest)
                del self._windows[oldest_key]
            self._windows[key] = _Window(ends_at=now + self.interval)
            out.append(fault)
            return out
        if window.count == 0:
            window.first_occurred_at = fault.occurred_at
        window.count += 1
        window.last = fault
        return out

    def due(self, now: float) -> list[DomainFault]:
        """The summaries of the windows ended by ``now``, in seq order; windows ended
        with nothing pending are forgotten."""
        out: list[DomainFault] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.ends_at > now:
                break
            out += self._close(key, window, now)
        return sorted(out, key=lambda f: f.seq)

    def release_all(self) -> list[DomainFault]:
        """Every pending summary now, in seq order, and every key forgotten: a clean
        stop loses no count."""
        out = [s for key, window in self._windows.items() for s in self._summary(key, window)]
        self._windows.clear()
        return sorted(out, key=lambda f: f.seq)

    def next_due(self) -> Optional[float]:
        """When the first open window ends (to close it or to forget its key)."""
        for window in self._windows.values():
            return window.ends_at
        return None

    def _close(self, key: Hashable, window: _Window, now: float) -> list[DomainFault]:
        """An ended window: its summary and a new window, or, with nothing pending,
        its key forgotten."""
        summary = self._summary(key, window)
        if summary:
            self._windows[key] = _Window(ends_at=now + self.interval)
            self._windows.move_to_end(key)
        else:
            del self._windows[key]
        return summary

    def _summary(self, key: Hashable, window: _Window) -> list[DomainFault]:
        if window.count == 0:
            return []
        last = window.last
        self.coalesced[last.fault.value] += window.count - 1
        return [dataclasses.replace(last, count=window.count,
                                    first_occurred_at=window.first_occurred_at)]
