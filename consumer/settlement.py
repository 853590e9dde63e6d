"""What the consumer owes the broker for each message it was delivered, and when it may
pay it. Pure: no I/O, no clock of its own; table-tested without a broker
(tests/unit/test_settlement.py).

- ``Unacked``: the deliveries of the consuming channel not acked yet. Acking some of
  them takes one ``basic.ack`` with ``multiple`` up to the highest of them that lies
  below every other unacked delivery, and one ``basic.ack`` each for the rest: a
  multiple ack must never settle a message that is still held.
- ``DeadLetterBook``: the messages to dead-letter. Each one is held, unacked, until the
  broker confirms its copy on the dead-letter queue; only then is the original acked.
  A copy nacked or returned (no queue bound to the dead-letter exchange) is published
  again after a back-off; a copy whose connection is lost is published again on the
  next one; if the consuming connection is lost, the held originals go back to the
  queue with it and nothing more is owed for them.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Iterable, Optional

from lifecycle_common.retry import backoff


class Unacked:
    """Delivery tags of one consuming channel not acked yet, in delivery order."""

    def __init__(self):
        self._tags: dict[int, None] = {}  # insertion order is delivery order

    def __len__(self) -> int:
        return len(self._tags)

    def delivered(self, tag: int) -> None:
        self._tags[tag] = None

    def acks(self, tags: Iterable[int]) -> list[tuple[int, bool]]:
        """Settle ``tags`` (those still unacked); returns the ``(delivery_tag,
        multiple)`` of the ``basic.ack`` frames that ack exactly them."""
        settled = sorted(tag for tag in set(tags) if tag in self._tags)
        for tag in settled:
            del self._tags[tag]
        first_other = next(iter(self._tags), None)  # the lowest tag still unacked
        below = [tag for tag in settled if first_other is None or tag < first_other]
        frames = [(below[-1], len(below) > 1)] if below else []
        return frames + [(tag, False) for tag in settled[len(below):]]

    def clear(self) -> None:
        """The channel is gone: its deliveries return to the queue."""
        self._tags.clear()


@dataclasses.dataclass
class _Held:
    copy: Any                                # what to publish (opaque here)
    dead_letter_id: str
    on_done: Optional[Callable[[], None]]
    attempt: int = 0                         # refusals so far (nack or return)
    retry_at: float = float("-inf")
    dl_tag: Optional[int] = None             # its copy's delivery tag, while in flight
    returned: bool = False


class DeadLetterBook:
    """Per consumer; fed from the consumer's one thread."""

    def __init__(self, retry_max: float, rand: Callable[[], float] = random.random):
        self._retry_max = retry_max
        self._rand = rand
        self._held: dict[int, _Held] = {}       # original's delivery tag -> held
        self._by_id: dict[str, int] = {}        # dead-letter id -> original's tag
        self._confirmed: list[tuple[int, Optional[Callable[[], None]]]] = []
        self.refused = 0                        # copies nacked or returned since start
        self.connection_lost()

    @property
    def held(self) -> int:
        """Originals waiting for their copy to be confirmed (unacked meanwhile)."""
        return len(self._held)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def hold(self, tag: int, copy: Any, dead_letter_id: str,
             on_done: Optional[Callable[[], None]] = None) -> None:
        """Hold the original delivered as ``tag`` until ``copy`` is confirmed."""
        self._held[tag] = _Held(copy, dead_letter_id, on_done)
        self._by_id[dead_letter_id] = tag

    def due(self, now: float) -> list[tuple[int, Any]]:
        """Copies to publish now, in delivery order: held, not in flight, and past
        their back-off if they were refused."""
        return [(tag, h.copy) for tag, h in self._held.items()
                if h.dl_tag is None and h.retry_at <= now]

    def next_retry(self) -> Optional[float]:
        return min((h.retry_at for h in self._held.values() if h.dl_tag is None),
                   default=None)

    def sent(self, tag: int) -> int:
        """The copy of ``tag`` was published; returns its delivery tag."""
        self._dl_tag += 1
        self._inflight[self._dl_tag] = tag
        self._held[tag].dl_tag = self._dl_tag
        self._held[tag].returned = False
        return self._dl_tag

    def returned(self, dead_letter_id: str) -> None:
        """The broker returned a copy as unroutable (its ack follows): not stored."""
        tag = self._by_id.get(dead_letter_id)
        if tag is not None and self._held[tag].dl_tag is not None:
            self._held[tag].returned = True

    def acked(self, dl_tag: int, multiple: bool, now: float) -> None:
        self._last_settled = now
        for tag in self._settle(dl_tag, multiple):
            held = self._held[tag]
            if held.returned:
                self._refused(held, now)
                continue
            del self._held[tag]
            del self._by_id[held.dead_letter_id]
            self._confirmed.append((tag, held.on_done))

    def nacked(self, dl_tag: int, multiple: bool, now: float) -> None:
        self._last_settled = now
        for tag in self._settle(dl_tag, multiple):
            self._refused(self._held[tag], now)

    def take_confirmed(self) -> list[tuple[int, Optional[Callable[[], None]]]]:
        """Originals whose copy is confirmed since the last call, with their
        ``on_done``: ack them now."""
        confirmed, self._confirmed = self._confirmed, []
        return confirmed

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether copies in flight have waited more than ``timeout`` seconds with
        nothing confirmed meanwhile."""
        if not self._inflight:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return now - max(self._waiting_since, self._last_settled) > timeout

    def restart_wait(self, now: float) -> None:
        """The broker could not confirm anything until ``now`` (it blocked the
        connection): the wait for confirms starts over."""
        if self._inflight:
            self._waiting_since = now

    def connection_lost(self) -> None:
        """The dead-letter connection is gone: copies in flight are published again on
        the next one (at once); delivery tags start over."""
        self._dl_tag = 0
        self._inflight: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._waiting_since: Optional[float] = None
        self._last_settled = float("-inf")
        for held in self._held.values():
            held.dl_tag = None
            held.returned = False

    def release_all(self) -> int:
        """The consuming connection is gone: the held originals return to the queue
        with it (to be delivered and refused again), so nothing more is owed for them.
        Returns how many were held."""
        count = len(self._held)
        self._held.clear()
        self._by_id.clear()
        self._confirmed.clear()
        self._inflight.clear()  # confirms still to come settle nothing
        return count

    def _settle(self, dl_tag: int, multiple: bool) -> list[int]:
        """The originals whose copies ``dl_tag`` (and, ``multiple``, every earlier
        tag) settles; their copies are no longer in flight."""
        inflight = self._inflight
        if not multiple:
            tags = [inflight.pop(dl_tag)] if dl_tag in inflight else []
        else:
            tags = []
            while inflight and next(iter(inflight)) <= dl_tag:
                tags.append(inflight.popitem(last=False)[1])
        settled = [tag for tag in tags if tag in self._held]
        for tag in settled:
            self._held[tag].dl_tag = None
        return settled

    def _refused(self, held: _Held, now: float) -> None:
        self.refused += 1
        held.dl_tag = None
        held.returned = False
        held.retry_at = now + backoff(held.attempt, self._retry_max, rand=self._rand)
        held.attempt += 1
