"""What the agent tells an operator: its Prometheus metrics and its health.

The metrics are read from the agent's own counters when Prometheus scrapes, not kept
twice: the event path pays nothing for them. Names follow Prometheus' conventions
(``lifecycle_agent_`` prefix, base units, ``_total`` counters); no label carries an
instance, so a host with thousands of domains exports as many series as one with none.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lifecycle_common import health
from lifecycle_common.metric_families import counter, gauge, health_status

if TYPE_CHECKING:
    from lifecycle_publisher.agent import Agent

PREFIX = "lifecycle_agent_"


def registry(agent: "Agent") -> CollectorRegistry:
    """A registry of the agent's metrics and of its process (CPU, memory, files)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(AgentCollector(agent))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


class AgentCollector(Collector):
    def __init__(self, agent: "Agent"):
        self._agent = agent

    def collect(self) -> Iterator:
        agent = self._agent
        ledger = agent.publisher.ledger

        info = GaugeMetricFamily(PREFIX + "info", "The agent: its host and epoch (always 1).",
                                 labels=["host", "epoch"])
        info.add_metric([agent.host, str(agent.epoch)], 1)
        yield info

        events = CounterMetricFamily(
            PREFIX + "events_total",
            "Lifecycle events written to the outbox, by transition (started, paused, ...).",
            labels=["transition"])
        for transition, count in sorted(agent.writer.transitions.items()):
            events.add_metric([transition], count)
        yield events
        inventories = CounterMetricFamily(
            PREFIX + "inventories_total", "Inventories of the host written to the outbox.")
        inventories.add_metric([], agent.writer.inventories)
        yield inventories

        rows, oldest = agent.outbox.depth()
        yield gauge(PREFIX + "outbox_rows", "Rows in the outbox: written, not yet confirmed by the broker.",
                     rows)
        yield gauge(PREFIX + "outbox_oldest_age_seconds",
                     "Age of the oldest row in the outbox (0 when it is empty).",
                     max(0.0, time.time() - oldest) if oldest is not None else 0.0)

        yield counter(PREFIX + "confirms_total", "Outbox rows the broker confirmed (on every routing key).",
                       ledger.confirmed)
        yield counter(PREFIX + "nacks_total", "Messages the broker refused (nack); they are sent again.",
                       ledger.nacks)
        yield counter(PREFIX + "returns_total",
                       "Messages the broker returned as unroutable (no queue bound); they "
                       "stay in the outbox and are retried.", ledger.returns)
        yield counter(PREFIX + "heartbeats_sent_total", "Heartbeats sent.", agent.publisher.heartbeats_sent)
        yield gauge(PREFIX + "in_flight_messages", "Messages sent and not yet confirmed.", ledger.in_flight)

        yield counter(PREFIX + "broker_reconnects_total",
                       "Broker connections opened after the first one.",
                       max(0, agent.publisher.sessions - 1))
        yield counter(PREFIX + "libvirt_reconnects_total",
                       "libvirt connections opened after the first one.",
                       max(0, agent.libvirt_sessions - 1))
        yield gauge(PREFIX + "broker_connected", "1 while the agent holds a broker connection.",
                     int(agent.publisher.connected.is_set()))
        yield gauge(PREFIX + "libvirt_connected", "1 while the libvirt connection is alive.",
                     int(agent.source.connected))

        alive = GaugeMetricFamily(PREFIX + "thread_alive",
                                  "1 while the worker thread runs.", labels=["thread"])
        for name, is_alive in agent.thread_states().items():
            alive.add_metric([name], int(is_alive))
        yield alive

        report = agent_health(agent)
        yield health_status(PREFIX + "health_status", "agent", report)



def agent_health(agent: "Agent") -> health.Report:
    """The agent's health now: libvirt, the broker, its threads, the outbox's age."""
    h = agent.conf.health
    now = time.monotonic()
    _, oldest = agent.outbox.depth()
    dead = [name for name, is_alive in agent.thread_states().items() if not is_alive]
    return health.report([
        health.connection("libvirt", f"libvirt at {agent.source.uri}",
                          agent.libvirt.down_since, now, h.libvirt_failing_after),
        health.connection("broker", "the broker", agent.publisher.broker.down_since, now,
                          h.broker_failing_after),
        health.threads("threads", dead, agent.failure),
        health.age("outbox", "outbox row", None if oldest is None else max(0.0, time.time() - oldest),
                   h.outbox_age_degraded_after, h.outbox_age_failing_after),
    ])
