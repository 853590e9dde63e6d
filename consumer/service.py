"""The consumer service: batches from the queue, applied to the database, then acked.

Delivery guarantee: every notification on the queue is applied to the database once
in effect (or dead-lettered with its reason) before it is acknowledged; redeliveries,
restarts and competing consumers cannot apply an event twice or let an older event
overwrite a newer one.

Every message ends in exactly one of: applied; dead-lettered with a reason (it cannot
be read, its publisher may not speak for its host, or the database or the store
refused it, whatever the exception); held and retried while the database cannot take
it, and only then. No message is refused for what a host's clock says. A message
refused while applying is found by splitting its batch in halves, so that its
batch-mates are applied. What becomes of each message is ``consumer.settle``'s to say
(pure, tested by table); this module does the I/O: the queue, the store, the waits.

Every wait for the database is bounded (``consumer.db.engine.Timeouts``), so a database
that stalls holds the batch like one that is down. Hosts whose heartbeats stopped are
marked down by a thread of their own (``consumer.liveness``), whatever the batch in hand
waits for.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
import threading
import time
from typing import Optional

from lifecycle_common import health, metrics_http, systemd, timeutil, wire
from lifecycle_common.retry import backoff
from lifecycle_common.wire.payloads import HostHeartbeatPayload
from consumer import admission, observability, settle
from consumer.amqp_queue import BatchQueue
from consumer.apply_rules import Outcome
from consumer.database_health import DatabaseHealth
from consumer.liveness import HostLiveness
from consumer.errors import BatchRejected, BrokerUnavailable, DatabaseUnavailable
from consumer.store import Store

LOG = logging.getLogger(__name__)

_PRUNE_INTERVAL = 60.0
_SUMMARY_INTERVAL = 60.0  # an INFO line of what was applied, at most this often
_STOP_GRACE = 2.0  # seconds a stop waits for dead letters in flight to be confirmed



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
                 retry_max: float, journal_retention: float = 7 * 86400,
                 policy: admission.Policy = admission.Policy(),
                 broker_failing_after: float = 30.0, database_failing_after: float = 60.0,
                 max_clock_skew: float = 300.0, database_retry_max: float = 2.0):
        self.queue = queue
        self.store = store
        self.policy = policy
        self._retry_max = retry_max
        self._database_retry_max = min(retry_max, database_retry_max)
        self._stop = threading.Event()
        self._journal_retention = journal_retention
        self._next_prune = 0.0
        self.stats = Stats()
        self.dead_letters: Counter[admission.Cause] = Counter()  # by cause
        self._summarised = Stats()
        self._next_summary = time.monotonic() + _SUMMARY_INTERVAL
        # For the operator: metrics, health, systemd.
        self.applied_by_type: Counter[str] = Counter()
        # Occurrences of faults (and panics) newly applied, by event type.
        self.faults_by_type: Counter[str] = Counter()
        self.broker = health.Outage(down_since=time.monotonic())
        self.database = DatabaseHealth()
        self.liveness = HostLiveness(store, host_down_after, self.database)
        self.broker_sessions = 0
        self._failing_after = (broker_failing_after, database_failing_after)
        self._max_clock_skew = max_clock_skew
        self.skewed_clocks: dict[str, float] = {}  # host -> its offset, beyond the skew
        self.metrics = observability.ConsumerMetrics()
        self.metrics.watch(self)
        self._endpoint: metrics_http.MetricsServer | None = None
        # Ready once running, broker or not (it reconnects by itself; STATUS= says it
        # waits): a start that waited for the broker would be killed by systemd's start
        # timeout and restarted, which would not bring the broker back.
        self._watchdog = systemd.Watchdog(systemd.Notifier(), self.health, ready=lambda: True)

    def health(self) -> health.Report:
        return observability.consumer_health(self, *self._failing_after)

    @property
    def host_counts(self) -> dict[str, int]:
        """Hosts up and down, as the last liveness pass counted them."""
        return self.liveness.host_counts

    def serve_metrics(self, bind_host: str, bind_port: int) -> None:
        """Listen for /metrics and /healthz (now: a port in use raises BindError);
        served while ``run`` runs."""
        self._endpoint = metrics_http.MetricsServer(bind_host, bind_port,
                                                    self.metrics.registry, self.health)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if self.policy.identity is admission.PublisherIdentity.ANY:
            LOG.warning("[consumer] publisher_identity = any: any broker user can speak "
                        "for any host; set it to host_user to accept host H's messages "
                        "only from H's own broker user")
        if self._endpoint is not None:
            self._endpoint.start()
        self._watchdog.start()
        self.liveness.start()
        try:
            self._run()
        finally:
            self.liveness.stop()
            self._watchdog.stop()
            if self._endpoint is not None:
                self._endpoint.stop()
        LOG.info("consumer stopped: %s", self.stats)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.queue.connect()
                self.broker_sessions += 1
                self.broker.up()
                attempt = 0
                self._consume()
            except BrokerUnavailable as exc:
                self.broker.down(time.monotonic())
                delay = backoff(attempt, self._retry_max)
                attempt += 1
                LOG.warning("broker unavailable (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
            finally:
                self.queue.close()

    def _consume(self) -> None:
        while not self._stop.is_set():
            batch = self.queue.next_batch(timeout=0.5)
            if batch:
                self.handle_batch(batch)
            self._housekeeping()
        # Stopping: dead letters just published are acked once confirmed (not while
        # their connection is blocked); the rest returns to the queue.
        self.queue.finish(_STOP_GRACE)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + _SUMMARY_INTERVAL
            self._summarise()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_INTERVAL
            self.database.call_since = now
            try:
                pruned = self.store.prune_journal(self._journal_retention)
                if pruned:
                    LOG.info("pruned %d journal rows older than %.0fs", pruned,
                             self._journal_retention)
            except DatabaseUnavailable as exc:  # the liveness passes tell the health
                LOG.warning("journal pruning skipped: database unavailable (%s)", exc)
            finally:
                self.database.call_since = None

    def handle_batch(self, batch: list) -> None:
        """Settle one batch from the queue (``amqp.Message`` or ``Delivery``): every
        message applied, dead-lettered with its reason or, while the database is away
        and the service stops, left unacked for redelivery; then the batch is acked,
        but for the messages to dead-letter: each of those is acked once the broker
        confirmed its dead letter, which may be after later batches while the dead
        letters' connection is blocked (a resource alarm). What to do with each message
        is ``settle.BatchSettlement``'s to say; this does the I/O. Raises only
        BrokerUnavailable."""
        self.metrics.batch_taken(len(batch))
        now, policy, admit = time.time(), self.policy, admission.admit
        settlement = settle.BatchSettlement(
            batch, [admit(m.body, m.properties.get("user_id"), now, policy) for m in batch],
            self._database_retry_max)
        self.stats.foreign += settlement.foreign
        step = settlement.next()
        if isinstance(step, settle.Apply):
            step = self._apply(settlement, step)
            if step is None:
                return  # stopping while the database is away: leave the batch unacked
        for message, verdict in step.dead_letters:
            self.queue.dead_letter(message, verdict.reason, verdict.cause.value,
                                   on_done=functools.partial(self._dead_lettered, verdict.cause))
        self.queue.ack(step.ack)
        self.stats.batches += 1

    def _dead_lettered(self, cause: admission.Cause) -> None:
        """A dead letter was confirmed (and its original acked)."""
        self.stats.dead_lettered += 1
        self.dead_letters[cause] += 1

    def _apply(self, settlement: settle.BatchSettlement,
               step: settle.Apply) -> Optional[settle.Settled]:
        """Apply what ``settlement`` says, waiting out a database outage, until it is
        settled; returns None if stopped while the database was away. The health knows
        since when the batch has waited on the database, and whether a call to it
        returns."""
        database = self.database
        database.batch_began(time.monotonic(), len(step.notes))
        try:
            while isinstance(step, settle.Apply):
                notes = step.notes
                started = time.monotonic()
                database.call_since = started
                try:
                    try:
                        result = self.store.apply_batch(notes)
                    finally:
                        database.call_since = None
                except DatabaseUnavailable as exc:
                    database.batches.down(time.monotonic(), str(exc))
                    hold = settlement.unavailable()
                    LOG.warning("database unavailable (%s); batch of %d held, retrying in "
                                "%.1fs", exc, len(notes), hold.delay)
                    if not self._wait(hold.delay):
                        return None
                except Exception as exc:  # noqa: BLE001 - BatchRejected, or any other failure
                    refusal = _refusal(exc)
                    alone = settlement.rejected(refusal)
                    if alone is not None:
                        LOG.error("%s refused: %s", _describe(alone), refusal.reason)
                    else:
                        LOG.warning("a batch of %d was refused (%s); splitting it to find "
                                    "the messages refused", len(notes), refusal.reason)
                else:
                    settlement.applied()
                    database.batches.up()
                    try:
                        self.metrics.batch_applied(started, result.applied)
                        self._record(result, notes)
                    except Exception:  # noqa: BLE001 - committed: counting must not undo it
                        LOG.exception("a batch of %d was applied, but counting it failed",
                                      len(notes))
                step = settlement.next()
            return step
        finally:
            database.batch_ended()

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
        s.applied += result.outcomes[Outcome.APPLIED]
        s.stale += result.outcomes[Outcome.STALE]
        s.ignored += result.outcomes[Outcome.IGNORED]
        s.duplicates += result.duplicates
        s.heartbeats += result.heartbeats
        by_type = self.applied_by_type
        for event_type, _ in result.applied:
            by_type[event_type] += 1
        if result.faults:
            self.faults_by_type.update(result.faults)
        if result.clock_offsets:
            self._watch_clocks(result.clock_offsets)
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

    def _watch_clocks(self, offsets: dict[str, float]) -> None:
        """Warn when a host's clock goes beyond [consumer] max_clock_skew of ours, and
        say when it is back: clocks decide nothing here, but a host's occurred_at (and
        the latency measured from it) is off by as much."""
        skew = self._max_clock_skew
        for host, offset in offsets.items():
            if abs(offset) > skew and host not in self.skewed_clocks:
                LOG.warning("host %s: its clock is %.1fs %s of the consumer's (beyond "
                            "max_clock_skew %.0fs): its events still apply in its own "
                            "order, but their occurred_at is off by as much; check its "
                            "time service (NTP)", host, abs(offset),
                            "ahead" if offset > 0 else "behind", skew)
            elif abs(offset) <= skew and host in self.skewed_clocks:
                LOG.info("host %s: its clock is within %.1fs of the consumer's again",
                         host, abs(offset))
                del self.skewed_clocks[host]
                continue
            if abs(offset) > skew:
                self.skewed_clocks[host] = offset

    def _summarise(self) -> None:
        """One INFO line per interval of what changed since the last one (a line per
        batch would be a line per event at low rates)."""
        now, then = dataclasses.asdict(self.stats), dataclasses.asdict(self._summarised)
        delta = {k: now[k] - then[k] for k in now}
        if any(delta.values()):
            LOG.info("in the last %.0fs: %s", _SUMMARY_INTERVAL,
                     ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in delta.items()))
        self._summarised = dataclasses.replace(self.stats)


def _refusal(exc: Exception) -> admission.Refused:
    """The dead letter's reason for a failure to apply."""
    if isinstance(exc, BatchRejected):
        return admission.Refused(f"refused by the database: {exc}", admission.Cause.DATABASE)
    return admission.Refused(f"cannot be applied: {type(exc).__name__}: {exc}",
                             admission.Cause.APPLY)


def _describe(note: wire.Notification) -> str:
    p = note.payload
    if isinstance(p, HostHeartbeatPayload):
        return f"host {p.host} heartbeat (last seq {p.last_seq})"
    return f"host {p.host} seq {p.seq} instance {getattr(p, 'uuid', '-')} {note.event_type}"
