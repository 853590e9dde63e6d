"""The consumer service: batches from the queue, applied to the database, then acked.

Delivery guarantee: every notification on the queue is applied to the database once
in effect (or dead-lettered with its reason) before it is acknowledged; redeliveries,
restarts and competing consumers cannot apply an event twice or let an older event
overwrite a newer one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import amqp

from lifecycle_common import timeutil, wire
from lifecycle_common.retry import backoff
from lifecycle_common.wire.payloads import HostHeartbeatPayload
from consumer.amqp_queue import BatchQueue
from consumer.errors import BatchRejected, BrokerUnavailable, DatabaseUnavailable
from consumer.store import Store

LOG = logging.getLogger(__name__)

AGENT_PUBLISHER_PREFIX = "lifecycle-agent:"
_PRUNE_INTERVAL = 60.0
_SUMMARY_INTERVAL = 60.0  # an INFO line of what was applied, at most this often



@dataclasses.dataclass
class Stats:
    applied: int = 0
    stale: int = 0
    ignored: int = 0
    duplicates: int = 0
    heartbeats: int = 0
    dead_lettered: int = 0
    foreign: int = 0
    batches: int = 0


class ConsumerService:
    def __init__(self, queue: BatchQueue, store: Store, host_down_after: float,
                 retry_max: float, journal_retention: float = 7 * 86400):
        self.queue = queue
        self.store = store
        self._host_down_after = host_down_after
        self._retry_max = retry_max
        self._stop = threading.Event()
        self._next_liveness = 0.0
        self._journal_retention = journal_retention
        self._next_prune = 0.0
        self.stats = Stats()
        self._summarised = Stats()
        self._next_summary = time.monotonic() + _SUMMARY_INTERVAL

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.queue.connect()
                attempt = 0
                self._consume()
            except BrokerUnavailable as exc:
                delay = backoff(attempt, self._retry_max)
                attempt += 1
                LOG.warning("broker unavailable (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
            finally:
                self.queue.close()
        LOG.info("consumer stopped: %s", self.stats)

    def _consume(self) -> None:
        while not self._stop.is_set():
            batch = self.queue.next_batch(timeout=0.5)
            if batch:
                self._handle(batch)
            self._housekeeping()

    def _housekeeping(self) -> None:
        self._check_liveness()
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + _SUMMARY_INTERVAL
            self._summarise()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_INTERVAL
            try:
                pruned = self.store.prune_journal(self._journal_retention)
                if pruned:
                    LOG.info("pruned %d journal rows older than %.0fs", pruned,
                             self._journal_retention)
            except DatabaseUnavailable as exc:
                LOG.warning("journal pruning skipped: database unavailable (%s)", exc)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        if now < self._next_liveness:
            return
        self._next_liveness = now + min(self._host_down_after / 3, 5.0)
        try:
            for name in self.store.mark_silent_hosts_down(self._host_down_after):
                LOG.warning("host %s marked down: no heartbeat for %.0fs",
                            name, self._host_down_after)
        except DatabaseUnavailable as exc:
            LOG.warning("host liveness check skipped: database unavailable (%s)", exc)

    def _handle(self, batch: list[amqp.Message]) -> None:
        notes: list[tuple[amqp.Message, wire.Notification]] = []
        rejected: list[tuple[amqp.Message, str]] = []
        for message in batch:
            try:
                note = wire.decode(message.body)
            except wire.WireError as exc:
                if _is_foreign(message.body):
                    self.stats.foreign += 1
                    continue
                rejected.append((message, str(exc)))
                continue
            notes.append((message, note))
        if notes and not self._apply(notes, rejected):
            return  # stopping while the database is away: leave the batch unacked
        for message, reason in rejected:
            self.queue.dead_letter(message, reason)
            self.stats.dead_lettered += 1
        self.queue.ack(batch)
        self.stats.batches += 1

    def _apply(self, notes, rejected) -> bool:
        """Apply, waiting out a database outage; returns False if stopped meanwhile."""
        attempt = 0
        while True:
            try:
                self._record(self.store.apply_batch([n for _, n in notes]), notes)
                return True
            except DatabaseUnavailable as exc:
                delay = backoff(attempt, self._retry_max)
                attempt += 1
                LOG.warning("database unavailable (%s); batch of %d held, retrying in %.1fs",
                            exc, len(notes), delay)
                if not self._wait(delay):
                    return False
            except BatchRejected as exc:
                if len(notes) == 1:
                    rejected.append((notes[0][0], f"database refused it: {exc}"))
                    return True
                LOG.warning("database refused a batch of %d (%s); applying one by one",
                            len(notes), exc)
                for single in notes:
                    if not self._apply([single], rejected):
                        return False
                return True

    def _wait(self, delay: float) -> bool:
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self.queue.keepalive()
            self._stop.wait(min(remaining, 1.0))
        return False

    def _record(self, result, notes) -> None:
        s = self.stats
        s.applied += result.outcomes["applied"]
        s.stale += result.outcomes["stale"]
        s.ignored += result.outcomes["ignored"]
        s.duplicates += result.duplicates
        s.heartbeats += result.heartbeats
        if LOG.isEnabledFor(logging.DEBUG):
            for _, note in notes:
                p = note.payload
                if not isinstance(p, HostHeartbeatPayload):
                    lag = result.applied_at - timeutil.parse(p.occurred_at)
                    LOG.debug("host %s seq %d instance %s: %s applied %.1f ms after it occurred",
                              p.host, p.seq, getattr(p, "uuid", "-"), note.event_type,
                              lag.total_seconds() * 1000)
        LOG.debug("batch of %d: %s, %d duplicate, %d heartbeat", len(notes),
                  dict(result.outcomes), result.duplicates, result.heartbeats)

    def _summarise(self) -> None:
        """One INFO line per interval of what changed since the last one (a line per
        batch would be a line per event at low rates)."""
        now, then = dataclasses.asdict(self.stats), dataclasses.asdict(self._summarised)
        delta = {k: now[k] - then[k] for k in now}
        if any(delta.values()):
            LOG.info("in the last %.0fs: %s", _SUMMARY_INTERVAL,
                     ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in delta.items()))
        self._summarised = dataclasses.replace(self.stats)


def _is_foreign(body: bytes) -> bool:
    """A well-formed notification from another publisher sharing the exchange and topic
    (e.g. nova's own): not ours to apply, nothing wrong with it either."""
    try:
        message = wire.envelope.unwrap(body)
    except wire.WireError:
        return False
    publisher = message.get("publisher_id")
    return isinstance(publisher, str) and not publisher.startswith(AGENT_PUBLISHER_PREFIX)
