"""What the webhook service tells an operator: its Prometheus metrics and its health.

Counters and gauges are read from the service when Prometheus scrapes; the two
histograms are observed once per answer and once per event accepted. Names follow the
other services' (``lifecycle_webhook_`` prefix, base units, ``_total`` counters); no
label carries an instance, a host or the endpoint (one process serves one endpoint:
its scrape target says which).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from lifecycle_common import health
from lifecycle_common.metric_families import counter, gauge, health_status
from consumer.observability import LATENCY_BUCKETS, broker_check

if TYPE_CHECKING:
    from lifecycle_webhook.service import WebhookService

PREFIX = "lifecycle_webhook_"

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
# From libvirt's callback to the endpoint's 2xx: milliseconds when all is well, up to
# [webhook] retry_for (a day) behind an endpoint that was down.
DELIVERY_BUCKETS = LATENCY_BUCKETS + (300.0, 3600.0, 21600.0, 86400.0)

ANSWER_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
DEAD_LETTER_CAUSES = ("endpoint", "expired", "unreadable", "publisher")


class WebhookMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            PREFIX + "request_seconds",
            "Time from sending a request to the endpoint's answer (or the failure).",
            buckets=REQUEST_BUCKETS, registry=self.registry)
        self.delivery_latency = Histogram(
            PREFIX + "delivery_latency_seconds",
            "Time from the libvirt callback on the compute host (the event's occurred_at) "
            "to the endpoint's acceptance, retries included; across hosts it includes "
            "their clocks' offsets.", buckets=DELIVERY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def watch(self, service: "WebhookService") -> None:
        self.registry.register(_ServiceCollector(service))

    def delivered(self, latency: float) -> None:
        self.delivery_latency.observe(latency)


class _ServiceCollector(Collector):
    def __init__(self, service: "WebhookService"):
        self._service = service

    def collect(self) -> Iterator:
        service = self._service
        stats, lanes = service.stats, service.lanes
        yield counter(PREFIX + "events_delivered_total",
                      "Events the endpoint accepted (2xx).", stats.delivered)
        answers = CounterMetricFamily(
            PREFIX + "requests_total",
            "Requests to the endpoint by answer: its status class, or error (refused "
            "connection, timeout, TLS failure).", labels=["answer"])
        counts = dict(service.answers)
        for answer in ANSWER_CLASSES:
            answers.add_metric([answer], counts.get(answer, 0))
        yield answers
        yield counter(PREFIX + "retries_total",
                      "Answers after which the event is tried again (408, 429, 5xx, "
                      "errors).", stats.retries)
        dead = CounterMetricFamily(
            PREFIX + "dead_letters_total",
            "Messages dead-lettered to '<queue_name>.dlq', by cause: endpoint (it refused "
            "the event), expired (retried for [webhook] retry_for), unreadable, "
            "publisher (may not speak for its host).", labels=["cause"])
        counts = dict(service.dead_letters)
        for cause in DEAD_LETTER_CAUSES:
            dead.add_metric([cause], counts.get(cause, 0))
        yield dead
        yield counter(PREFIX + "filtered_total",
                      "Events whose type [webhook] event_types does not deliver: acked.",
                      stats.filtered)
        yield counter(PREFIX + "foreign_messages_total",
                      "Notifications of other services on the topic, left alone.",
                      stats.foreign)
        depth = service.queue_depth
        yield gauge(PREFIX + "queue_messages",
                    "Messages ready on the endpoint's queue (read every 5 s): the backlog "
                    "behind a slow or dead endpoint; NaN while it cannot be read.",
                    math.nan if depth is None else depth)
        yield gauge(PREFIX + "held_messages",
                    "Messages taken from the queue and not yet settled (in flight, waiting "
                    "for the instance's previous event, or waiting to be retried); at most "
                    "[webhook] prefetch.", lanes.held)
        yield gauge(PREFIX + "in_flight_requests",
                    "Requests to the endpoint awaiting their answer.",
                    service.sender.in_flight())
        yield gauge(PREFIX + "instances_waiting_retry",
                    "Instances (partitions) whose next event waits to be retried.",
                    lanes.waiting_retry)
        oldest = lanes.oldest_added()
        yield gauge(PREFIX + "oldest_held_seconds",
                    "Age of the oldest message held (0: none).",
                    0.0 if oldest is None else max(0.0, time.monotonic() - oldest))
        yield gauge(PREFIX + "endpoint_up",
                    "0 while the endpoint's last answers call for a retry (5xx, 408, 429, "
                    "errors), 1 otherwise.", int(service.endpoint_failing_since is None))
        yield counter(PREFIX + "broker_reconnects_total",
                      "Broker connections opened after the first.",
                      max(0, service.broker_sessions - 1))
        yield gauge(PREFIX + "broker_connected",
                    "1 while the service holds a broker connection.",
                    int(service.broker.down_since is None))
        yield gauge(PREFIX + "dead_letters_held",
                    "Messages to dead-letter held unacked until the broker confirms their "
                    "dead letter.", service.queue.dead_letters.held)
        yield health_status(PREFIX + "health_status", "webhook", service.health())


REFUSALS_DEGRADED = 3  # answers in a row that dead-letter: the endpoint refuses them all


def endpoint_check(service: "WebhookService", now: float) -> health.Check:
    """Degraded while the endpoint's answers call for retries, however long: the queue
    keeps the events and a restart would not bring the endpoint back; degraded too
    while it refuses every event (a wrong secret, a wrong path: each dead-lettered)."""
    since = service.endpoint_failing_since
    if since is None and service.refusals_in_a_row >= REFUSALS_DEGRADED:
        last = service.last_answer
        return health.Check(
            "endpoint", health.Status.DEGRADED,
            f"refuses every event: {service.refusals_in_a_row} in a row, each "
            f"dead-lettered; last answer: {last.detail if last else '?'} (check the "
            f"endpoint's secret and path)")
    if since is None:
        last = service.last_answer
        return health.Check("endpoint", health.Status.OK,
                            "no answer yet" if last is None else f"last answer: {last.detail}")
    last = service.last_answer
    return health.Check(
        "endpoint", health.Status.DEGRADED,
        f"failing for {now - since:.1f}s: last answer: {last.detail if last else '?'}; "
        f"{service.lanes.held} events held, "
        f"{'?' if service.queue_depth is None else service.queue_depth} on the queue, "
        f"retried with back-off")


def sender_check(service: "WebhookService") -> health.Check:
    return health.threads("sender", service.sender.dead_workers(), None)


def webhook_health(service: "WebhookService") -> health.Report:
    now = time.monotonic()
    return health.report([broker_check(service, now), endpoint_check(service, now),
                          sender_check(service)])
