"""The publisher's bookkeeping of what the broker has confirmed. Pure: no I/O, no clock
of its own; table-tested without a broker (tests/unit/test_confirms.py).

It is fed what the publisher sent (an outbox row on a routing key, or a heartbeat) and
what the broker answered (``basic.ack``, ``basic.nack``, ``basic.return``, the
connection lost), and says what may be deleted from the outbox, which rows to send
again on which routing keys, and when.

The rules:
- every row is owed to every routing key; a row may be deleted once the broker has
  confirmed it on each of them without returning it;
- RabbitMQ returns an unroutable mandatory message before it confirms it, so a return
  then an ack on the same key means "no queue is bound for that key": the row is sent
  again on that key only, after a back-off that grows while nothing is routable
  (with jitter, so that a fleet does not retry in step); a nack is retried the same
  way at once, at the first step of the back-off;
- a lost connection loses nothing: what was in flight is owed still and is sent again
  on the next one (RabbitMQ also leaves unconfirmed what follows a publish it refused
  on a channel); what was confirmed on some keys is owed only on the others.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Callable, Iterable, Optional

from lifecycle_common.retry import backoff


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One message sent: an outbox row on one routing key, or (row None) a heartbeat."""

    row_id: Optional[int]
    routing_key: str


class ConfirmLedger:
    def __init__(self, routing_keys: list[str], window: int, retry_max: float,
                 rand: Callable[[], float] = random.random):
        if not routing_keys:
            raise ValueError("at least one routing key")
        self.routing_keys = tuple(routing_keys)
        self.window = window
        self._retry_max = retry_max
        self._rand = rand
        self._owed: dict[int, set[str]] = {}         # row -> keys not confirmed yet
        self._retry: dict[int, float] = {}           # row -> when to send it again
        self._done: list[int] = []                   # rows confirmed on every key
        self._unroutable_rounds = 0                  # back-off steps while nothing routes
        self.confirmed = 0                           # rows confirmed since start
        self.unroutable: set[str] = set()            # keys whose last return said so
        self.connection_lost()

    # -- what to send -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def room(self) -> int:
        """Messages that may be sent before the window is full."""
        return self.window - len(self._inflight)

    def owed(self, row_id: int) -> list[str]:
        """The routing keys the broker has not confirmed ``row_id`` on yet."""
        owed = self._owed.get(row_id)
        return list(self.routing_keys) if owed is None else sorted(owed)

    def keys_for(self, row_id: int) -> list[str]:
        """The routing keys ``row_id`` is to be sent on now: those it is owed on, none
        while it waits for a retry or is in flight already."""
        if row_id in self._retry or row_id in self._sending:
            return []
        return self.owed(row_id)

    def due(self, now: float) -> list[int]:
        """Rows whose retry is due (taken off the schedule: send them with keys_for)."""
        rows = [row for row, at in self._retry.items() if at <= now]
        for row in rows:
            del self._retry[row]
        if rows:
            self._unroutable_rounds += 1
        return sorted(rows)

    def next_retry(self) -> Optional[float]:
        return min(self._retry.values(), default=None)

    def sent(self, delivery: Delivery) -> int:
        """Record a message written to the channel; returns its delivery tag."""
        self._tag += 1
        self._inflight[self._tag] = delivery
        if delivery.row_id is not None:
            self._owed.setdefault(delivery.row_id, set(self.routing_keys))
            self._sending[delivery.row_id] += 1
        return self._tag

    # -- what the broker said -----------------------------------------------------------
    def acked(self, tag: int, multiple: bool, now: float) -> None:
        for delivery in self._settle(tag, multiple):
            row = delivery.row_id
            if row is None:
                continue
            if (row, delivery.routing_key) in self._returned:
                self._returned.discard((row, delivery.routing_key))
                self.unroutable.add(delivery.routing_key)
                self._schedule(row, now, self._unroutable_rounds)
            else:
                self.unroutable.discard(delivery.routing_key)
                self._owed[row].discard(delivery.routing_key)
                if not self._owed[row] and row not in self._retry:
                    del self._owed[row]
                    self._done.append(row)
                    self.confirmed += 1
                    self._unroutable_rounds = 0

    def nacked(self, tag: int, multiple: bool, now: float) -> list[Delivery]:
        """The broker could not take these; they are sent again soon. Returns them."""
        refused = [d for d in self._settle(tag, multiple) if d.row_id is not None]
        for delivery in refused:
            self._returned.discard((delivery.row_id, delivery.routing_key))
            self._schedule(delivery.row_id, now, 0)
        return refused

    def returned(self, row_id: int, routing_key: str) -> bool:
        """The broker could not route ``row_id`` on ``routing_key`` (its ack follows).
        Returns whether this is news (the key was routable until now): worth a log line."""
        self._returned.add((row_id, routing_key))
        return routing_key not in self.unroutable

    def connection_lost(self) -> None:
        """Whatever was in flight is owed still; delivery tags start over."""
        self._tag = 0
        self._inflight: collections.OrderedDict[int, Delivery] = collections.OrderedDict()
        self._sending: collections.Counter[int] = collections.Counter()
        self._returned: set[tuple[int, str]] = set()

    def take_done(self) -> list[int]:
        """Rows confirmed on every key since the last call: delete them."""
        done, self._done = self._done, []
        return done

    @property
    def done_count(self) -> int:
        return len(self._done)

    def forget(self, rows: Iterable[int]) -> None:
        """Rows no longer in the outbox (deleted elsewhere): nothing more is owed."""
        for row in rows:
            self._owed.pop(row, None)
            self._retry.pop(row, None)

    # -- internals ------------------------------------------------------------------------
    def _settle(self, tag: int, multiple: bool) -> list[Delivery]:
        if not multiple:
            delivery = self._inflight.pop(tag, None)
            settled = [] if delivery is None else [delivery]
        else:
            settled = []
            while self._inflight:
                first = next(iter(self._inflight))
                if first > tag:
                    break
                settled.append(self._inflight.pop(first))
        for delivery in settled:
            if delivery.row_id is not None:
                self._sending[delivery.row_id] -= 1
                if self._sending[delivery.row_id] <= 0:
                    del self._sending[delivery.row_id]
        return settled

    def _schedule(self, row: int, now: float, step: int) -> None:
        if row not in self._retry:
            self._retry[row] = now + backoff(step, self._retry_max, rand=self._rand)
