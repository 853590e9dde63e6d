"""What the agent tells an operator: its Prometheus metrics and its health.

The metrics are read from the agent's own counters when Prometheus scrapes, not kept
twice: the event path pays nothing for them. Names follow Prometheus' conventions
(``lifecycle_agent_`` prefix, base units, ``_total`` counters); no label carries an
instance, so a host with thousands of domains exports as many series as one with none.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Optional

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lifecycle_common import broker, health
from lifecycle_common.metric_families import counter, gauge, health_status
from lifecycle_publisher.outbox import Held
from lifecycle_publisher.outbox_outage import Outage

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
        yield from _fault_metrics(agent)
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
        blocked = agent.publisher.blocked
        yield gauge(PREFIX + "broker_blocked",
                     "1 while the broker blocks the agent's connection (connection.blocked: "
                     "a memory or disk alarm); events wait in the outbox meanwhile.",
                     int(blocked.is_blocked))
        yield counter(PREFIX + "broker_blocked_seconds_total",
                       "Seconds the broker has blocked the agent's connection since start.",
                       blocked.seconds_total())
        yield gauge(PREFIX + "libvirt_connected", "1 while the libvirt connection is alive.",
                     int(agent.source.connected))

        alive = GaugeMetricFamily(PREFIX + "thread_alive",
                                  "1 while the worker thread runs.", labels=["thread"])
        for name, is_alive in agent.thread_states().items():
            alive.add_metric([name], int(is_alive))
        yield alive

        yield from _disk_metrics(agent)

        report = agent_health(agent)
        yield health_status(PREFIX + "health_status", "agent", report)


def _fault_metrics(agent: "Agent") -> Iterator:
    """Faults libvirt reported, by fault (rebooted, watchdog, io_error, ...), and how many
    of them a storm's summary stood for rather than a notification of their own."""
    writer = agent.writer
    seen = CounterMetricFamily(
        PREFIX + "faults_total",
        "Fault events libvirt reported (occurrences), by fault: rebooted, watchdog, "
        "io_error, control_error, memory_failure, guest_agent.", labels=["fault"])
    for fault, count in sorted(writer.faults.items()):
        seen.add_metric([fault], count)
    yield seen
    coalesced = CounterMetricFamily(
        PREFIX + "faults_coalesced_total",
        "Fault occurrences published only as part of a summary ([agent] "
        "fault_coalesce_interval), not as a notification of their own, by fault; "
        "faults_total minus this is the fault notifications written (pending "
        "summaries aside).", labels=["fault"])
    for fault, count in sorted(writer.coalescer.coalesced.items()):
        coalesced.add_metric([fault], count)
    yield coalesced
    yield gauge(PREFIX + "fault_coalescing_keys",
                "Faults (per instance, fault and device or action) whose coalescing "
                "window is open: the coalescer's memory, bounded.", len(writer.coalescer))


def _disk_metrics(agent: "Agent") -> Iterator:
    """The outbox's disk: whether it takes writes, and what a full one cost."""
    outage, held = agent.writer.outage.current, agent.outbox.held()
    yield counter(PREFIX + "events_unwritten_total",
                  "Lifecycle events and faults the outbox could not take (a full disk): "
                  "counted, logged and dropped; the inventory after the outage reconciles "
                  "the instances' states (a fault lost is lost).",
                  agent.writer.outage.lost_total)
    yield gauge(PREFIX + "outbox_writable",
                "1 while the outbox takes writes; 0 while its disk refuses them (full).",
                int(outage is None and held is None))
    yield gauge(PREFIX + "outbox_undeleted_rows",
                "Confirmed outbox rows whose delete the disk refused; deleted once it "
                "takes writes again.", held.rows if held is not None else 0)
    space = agent.outbox.space()
    if space is not None:
        yield gauge(PREFIX + "outbox_filesystem_free_bytes",
                    "Free bytes on the filesystem that holds the outbox.", space.free)


def agent_health(agent: "Agent") -> health.Report:
    """The agent's health now: libvirt, the broker, its threads, the outbox's age and
    its disk."""
    settings = agent.settings
    now = time.monotonic()
    _, oldest = agent.outbox.depth()
    dead = [name for name, is_alive in agent.thread_states().items() if not is_alive]
    # The outbox not draining is failing only while the broker takes messages (the
    # publisher is stuck: a restart would help); while the broker is away or blocks
    # the agent, the outbox is doing its job.
    broker_away = (agent.publisher.broker.down_since is not None
                   or agent.publisher.blocked.since is not None)
    return health.report([
        health.connection("libvirt", f"libvirt at {agent.source.uri}",
                          agent.libvirt.down_since, now,
                          "no event can be seen until it is back; reconnecting"),
        # Degraded while unreachable or blocked, however long: the outbox keeps the
        # events, and a restart would not bring the broker back ([health]
        # broker_failing_after is kept for compatibility and has no effect).
        broker.check("the broker", agent.publisher.broker.down_since, agent.publisher.blocked,
                     now, "events wait in the outbox"),
        health.threads("threads", dead, agent.failure),
        health.age("outbox", "outbox row", None if oldest is None else max(0.0, time.time() - oldest),
                   settings.outbox_age_degraded_after,
                   None if broker_away else settings.outbox_age_failing_after,
                   "the broker is away or blocks the agent"),
        disk_check(agent.outbox.path, agent.writer.outage.current, agent.outbox.held(), now),
    ])


def disk_check(path: str, outage: Optional[Outage], held: Optional[Held],
               now: float) -> health.Check:
    """The outbox's disk: degraded while it refuses writes (a full disk), never
    failing: the agent does what it can meanwhile (it publishes what the outbox holds,
    counts what it cannot write) and recovers by itself once there is space; a restart
    would not make any. ``now`` is monotonic, as ``outage.since`` and ``held.since``."""
    if outage is not None:
        return health.Check("disk", health.Status.DEGRADED,
                            f"outbox at {path} cannot be written since "
                            f"{max(0.0, now - outage.since):.1f}s: {outage.reason}; "
                            f"{outage.lost} events not written")
    if held is not None:
        return health.Check("disk", health.Status.DEGRADED,
                            f"outbox at {path}: {held.rows} confirmed rows cannot be "
                            f"deleted since {max(0.0, now - held.since):.1f}s: {held.reason}")
    return health.Check("disk", health.Status.OK, f"outbox at {path} can be written")
