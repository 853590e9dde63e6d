"""What the consumer tells an operator: its Prometheus metrics and its health.

Counters are read from the service's own statistics when Prometheus scrapes; the two
histograms (batch sizes, and the time from libvirt's callback on the compute host to
the commit here) are observed once per batch and once per applied message. Names follow
Prometheus' conventions (``lifecycle_consumer_`` prefix, base units, ``_total``
counters); no label carries an instance or a host.
"""

from __future__ import annotations

import bisect
import collections
import math
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lifecycle_common import broker, health
from lifecycle_common.metric_families import counter, gauge, health_status
from consumer import admission, database_health

if TYPE_CHECKING:
    from consumer.service import ConsumerService

PREFIX = "lifecycle_consumer_"

# Seconds, from 1 ms (a quiet pipeline on one machine) to a minute (a backlog).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0)


class ConsumerMetrics:
    """The histograms a service observes, in a registry of its own (several services
    may share a process: the tests and benchmarks run them so)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            PREFIX + "event_latency_seconds",
            "Time from the libvirt callback on the compute host (the event's occurred_at) "
            "to the commit of the transaction that applied it; across hosts it includes "
            "their clocks' offsets.", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            PREFIX + "batch_messages", "Messages per batch taken from the queue.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.commit = Histogram(
            PREFIX + "batch_commit_seconds",
            "Time to apply a batch and commit it (a batch held while the database is "
            "away is not counted).", buckets=COMMIT_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def watch(self, service: "ConsumerService") -> None:
        self.registry.register(ServiceCollector(service))

    def batch_applied(self, started: float, applied: list[tuple[str, float]]) -> None:
        """One batch committed at this moment, ``started`` (monotonic) when it began."""
        committed = time.time()
        self.commit.observe(time.monotonic() - started)
        observe_all(self.latency, [max(0.0, committed - occurred_at)
                                   for _, occurred_at in applied])

    def batch_taken(self, size: int) -> None:
        self.batch_size.observe(size)


def observe_all(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe(amount)`` for each of ``amounts``, in one pass: each bucket
    and the sum incremented once (the sum by the amounts' total, so its last bits may
    round differently). One by one, ``observe`` takes about 2.2 microseconds a value
    (two locks each); this about 0.5 (benchmarks/micro_consumer.py). It reads
    prometheus_client's own bucket bounds and values; a histogram without them (another
    version of the library) is observed one by one
    (tests/unit/test_consumer_metrics.py compares the two)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (not amounts or not isinstance(bounds, list) or not isinstance(buckets, list)
            or len(bounds) != len(buckets) or total is None or bounds[-1] != math.inf
            or getattr(histogram, "_labelnames", ())):  # a parent of labelled children
        for amount in amounts:
            histogram.observe(amount)
        return
    top = bounds[-1]
    # observe: the first bucket whose bound is >= the amount (NaN: none).
    for index, count in collections.Counter(
            bisect.bisect_left(bounds, a) for a in amounts if a <= top).items():
        buckets[index].inc(count)
    total.inc(sum(amounts))


class ServiceCollector(Collector):
    def __init__(self, service: "ConsumerService"):
        self._service = service

    def collect(self) -> Iterator:
        service = self._service
        stats = service.stats

        applied = CounterMetricFamily(
            PREFIX + "events_applied_total",
            "Events and inventories that changed the database, by event type.",
            labels=["event_type"])
        for event_type, count in sorted(dict(service.applied_by_type).items()):
            applied.add_metric([event_type], count)
        yield applied
        faults = CounterMetricFamily(
            PREFIX + "faults_total",
            "Faults of instances newly applied, by event type, counted by occurrences "
            "(a notification standing for a storm's 37 I/O errors counts 37), whether or "
            "not they changed the instance's row; a panic (libvirt's CRASHED event) "
            "counts as instance.crashed.", labels=["event_type"])
        for event_type, count in sorted(dict(service.faults_by_type).items()):
            faults.add_metric([event_type], count)
        yield faults
        yield counter(PREFIX + "duplicate_events_total",
                       "Messages applied before (redeliveries, replays): changed nothing.",
                       stats.duplicates)
        yield counter(PREFIX + "stale_events_total",
                       "Events older than what the database holds: changed nothing.",
                       stats.stale)
        yield counter(PREFIX + "ignored_events_total",
                       "Events that carry nothing to apply (libvirt events deliberately "
                       "ignored).", stats.ignored)
        yield counter(PREFIX + "heartbeats_total", "Heartbeats applied.", stats.heartbeats)
        yield counter(PREFIX + "foreign_messages_total",
                       "Notifications of other services on the topic, left alone.",
                       stats.foreign)

        dead = CounterMetricFamily(
            PREFIX + "dead_letters_total",
            "Messages dead-lettered, by reason: unreadable, publisher (may not speak for "
            "its host), clock (beyond the consumer's clock), database (refused), apply.",
            labels=["reason"])
        counts = dict(service.dead_letters)
        for cause in admission.Cause:
            dead.add_metric([cause.value], counts.get(cause, 0))
        yield dead

        hosts = GaugeMetricFamily(PREFIX + "hosts",
                                  "Hosts in the database by status (read at most every 5 s).",
                                  labels=["status"])
        for status, count in sorted(service.host_counts.items()):
            hosts.add_metric([status], count)
        yield hosts

        yield gauge(PREFIX + "hosts_clock_skewed",
                     "Hosts whose last heartbeat said a moment further than [consumer] "
                     "max_clock_skew from when it arrived here (their clocks are wrong; "
                     "nothing is decided on them, but their occurred_at is off).",
                     len(service.skewed_clocks))
        yield counter(PREFIX + "broker_reconnects_total", "Broker connections opened after the first.",
                       max(0, service.broker_sessions - 1))
        yield gauge(PREFIX + "broker_connected", "1 while the consumer holds a broker connection.",
                     int(service.broker.down_since is None))
        dead_letters = service.queue.dead_letters
        yield gauge(PREFIX + "broker_blocked",
                     "1 while the broker blocks the consumer's dead-letter connection "
                     "(connection.blocked: a memory or disk alarm); messages to dead-letter "
                     "are held meanwhile, the others applied and acked.",
                     int(dead_letters.blocked.is_blocked))
        yield counter(PREFIX + "broker_blocked_seconds_total",
                       "Seconds the broker has blocked the consumer's dead-letter connection "
                       "since start.", dead_letters.blocked.seconds_total())
        yield gauge(PREFIX + "dead_letters_held",
                     "Messages to dead-letter held unacked until the broker confirms their "
                     "dead letter (the dead-letter connection blocked or away).",
                     dead_letters.held)
        yield gauge(PREFIX + "database_up", "1 while the database took the last attempt at a "
                     "batch and answered the last pass of host liveness.",
                     int(service.database.down_since is None))

        report = service.health()
        yield health_status(PREFIX + "health_status", "consumer", report)



def broker_check(service, now: float) -> health.Check:
    """The broker's check of a service that consumes with a ``BatchQueue`` (``.queue``)
    and knows since when the broker is away (``.broker``): the consumer, the webhook.
    Degraded while the broker is unreachable, or blocks or refuses the dead-letter
    connection, however long: the queue keeps the messages and a restart would not
    bring the broker back, so never failing ([health] broker_failing_after is kept for
    compatibility and has no effect)."""
    dead_letters = service.queue.dead_letters
    held = dead_letters.held
    consequence = (f"{held} messages to dead-letter held unacked, the others applied"
                   if held else "messages to dead-letter would be held, the others applied")
    if service.broker.down_since is not None or dead_letters.blocked.is_blocked:
        return broker.check("the broker", service.broker.down_since, dead_letters.blocked,
                            now, "messages wait in the queue"
                            if service.broker.down_since is not None else consequence)
    if held and dead_letters.down_since is not None:
        return health.Check("broker", health.Status.DEGRADED,
                            f"the broker: the dead-letter connection unavailable for "
                            f"{now - dead_letters.down_since:.1f}s; {consequence}")
    return health.Check("broker", health.Status.OK, "the broker: reachable")


def consumer_health(service: "ConsumerService", broker_failing_after: float,
                    database_failing_after: float) -> health.Report:
    now = time.monotonic()
    return health.report([
        broker_check(service, now),
        database_health.check(service.database, now, database_failing_after),
    ])
