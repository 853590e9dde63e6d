"""The agent: libvirt events -> outbox -> broker, with inventories and heartbeats.

Delivery guarantee: every lifecycle event libvirt reports while the agent runs is
written to the durable outbox before it is sent, and published at least once, in order
per host, with publisher confirms; a broker outage only delays it. Faults (reboots,
watchdogs, I/O errors, ...) take the same path in the same sequence, a storm of one
coalesced into at most one notification per ``[agent] fault_coalesce_interval``
carrying how many occurred (``fault_coalescing``).

Threads, each named (``top -H``):
- ``libvirt-events``, libvirt's event loop: its callback stamps each event and hands
  it to the inbox (``wakeup.Inbox``), which wakes the worker once per batch;
- ``publisher``, the worker: translates and writes what the inbox holds to the outbox
  (``OutboxWriter``, one transaction a batch), then sends the rows just written from
  memory on the AMQP connection it owns, and reads the broker's confirms, all from one
  ``poll`` over the inbox's wake-up and, when the window fills or confirms are to be
  settled, the broker's socket (``Publisher``): at a few events a second, one wake-up
  per event, the callback's, where there were six or seven. A slow
  disk (a stalled commit) holds this thread, not libvirt's, whose keepalives go on;
  a stalled broker holds nothing: sends never wait for the socket, and a connection
  is opened on a thread of its own (``broker-connect``) while the outbox goes on being
  written;
- ``outbox-ckpt``, the outbox checkpointer (syncs the outbox's WAL into its file, off
  the event path);
- the main thread: connects to libvirt, takes inventories, handles signals,
  supervises the others.

The parts are built from the configuration by ``lifecycle_publisher.cmd.build_parts``
(the composition root) and handed to ``Agent``.

Supervision: a worker thread that raises, or ends while the agent is not stopping,
makes the agent log why, say "degraded" in its heartbeats, stop and exit non-zero, so
that its supervisor (systemd's Restart=on-failure) starts it again. What the outbox
holds survives; the next start's inventory reconciles what was not written yet.

Disks: a full disk (or one that refuses writes) does not stop the agent. The writer
counts and drops the events it cannot write, the publisher goes on publishing what the
outbox holds (and heartbeats, built in memory), the health says degraded; once the disk
takes writes again the writer asks for an inventory (reason ``reconnect``: as after a
lost libvirt connection, events were missed), which the main thread takes. A corrupt
outbox found while running makes the agent exit with status 1, after moving the file
aside (as a start would), so that the next start begins a new state instead of failing
again and again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Optional

from lifecycle_common import health, metrics_http, systemd, wire
from lifecycle_common.retry import backoff
from lifecycle_common.threads import named_thread
from lifecycle_publisher import event_source, notifications, observability
from lifecycle_publisher.domain_event import Sequencer
from lifecycle_publisher.errors import LibvirtUnavailable, OutboxCorrupt, OutboxError
from lifecycle_publisher.event_source import EventSource
from lifecycle_publisher.outbox import Checkpointer, Outbox, move_aside
from lifecycle_publisher.outbox_writer import STOP, OutboxWriter
from lifecycle_publisher.publisher import Publisher
from lifecycle_publisher.wakeup import Inbox

LOG = logging.getLogger(__name__)

_LIVENESS_CHECK = 5.0  # seconds between checks that the libvirt connection is alive


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the agent's own loop and its health need of the configuration."""

    host: str
    state_path: str
    heartbeat_interval: float
    inventory_interval: float
    reconnect_interval_max: float
    shutdown_timeout: float
    outbox_age_degraded_after: float
    outbox_age_failing_after: float
    metrics_bind: Optional[tuple[str, int]] = None  # (host, port); None: no /metrics


class AgentState:
    """What the agent's parts tell its main thread, and what its heartbeats say. Set
    from any thread (libvirt's, the worker's): flags only, then the main thread is
    woken."""

    def __init__(self, host: str):
        self.host = host
        self._attention = threading.Event()  # stop, a lost connection, an inventory wanted
        self.lost_reason: Optional[str] = None
        self.inventory_wanted = threading.Event()  # the writer: the disk is back
        self.failure: Optional[str] = None  # why a worker thread (or the writer) died
        self.corrupt: Optional[OutboxCorrupt] = None  # found while running
        self.stopping = False
        self.libvirt = health.Outage(down_since=time.monotonic())

    @property
    def status(self) -> str:
        """What the heartbeats say: running, degraded (a worker died: exiting to be
        restarted) or stopping (a clean stop: the consumer marks the host down)."""
        if self.failure is not None:
            return "degraded"
        return "stopping" if self.stopping else "running"

    def libvirt_lost(self, reason: str) -> None:
        """libvirt's event loop thread: the connection closed."""
        self.libvirt.down(time.monotonic())
        self.lost_reason = reason
        self._attention.set()

    def ask_inventory(self) -> None:
        """The worker thread: the outbox takes writes again after refusing some."""
        self.inventory_wanted.set()
        self._attention.set()

    def failed(self, who: str, exc: BaseException) -> None:
        """``who`` (a worker thread, or the outbox writer inside one) raised: log it,
        remember a corrupt outbox (moved aside at the end), wake the main thread to
        stop the agent, which then exits 1."""
        if isinstance(exc, OutboxCorrupt):  # not a defect: no traceback
            LOG.critical("host %s: %s found the outbox corrupt: %s; the agent moves it "
                         "aside and exits with status 1, to start a new state",
                         self.host, who, exc)
            self.corrupt = self.corrupt or exc
        else:
            LOG.critical("host %s: %s died: %s: %s", self.host, who, type(exc).__name__,
                         exc, exc_info=exc)
        self.fail(f"{who} died: {type(exc).__name__}: {exc}")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self._attention.set()

    def attend(self) -> None:
        self._attention.set()

    def wait(self, timeout: float) -> None:
        self._attention.wait(timeout)
        self._attention.clear()


def heartbeat_body(settings: Settings, epoch: int, sequencer: Sequencer, state: AgentState,
                   source: EventSource) -> bytes:
    note = notifications.heartbeat_notification(
        settings.host, epoch, sequencer.last, settings.heartbeat_interval, state.status,
        source.connected)
    return wire.encode(note)


@dataclasses.dataclass
class Parts:
    """An agent's parts, wired (``lifecycle_publisher.cmd.build_parts``)."""

    settings: Settings
    outbox: Outbox
    epoch: int
    new_state: bool  # the outbox had no epoch: said by the first inventory
    sequencer: Sequencer
    state: AgentState
    inbox: Inbox
    source: EventSource
    writer: OutboxWriter
    publisher: Publisher
    checkpointer: Checkpointer


class Agent:
    def __init__(self, parts: Parts):
        self.settings = parts.settings
        self.host = parts.settings.host
        self.outbox = parts.outbox
        self.epoch = parts.epoch
        self._new_state = parts.new_state  # said by the first inventory, then done
        self.sequencer = parts.sequencer
        self.state = parts.state
        self._inbox = parts.inbox
        self._wake = parts.inbox.wake  # the worker's
        self.source = parts.source
        self.writer = parts.writer
        self.publisher = parts.publisher
        self.checkpointer = parts.checkpointer
        self._stop = threading.Event()
        self.libvirt_sessions = 0  # connections opened since start
        self._worker = self._supervised(self.publisher.run, "publisher")
        self._checkpointing = self._supervised(self.checkpointer.run, "outbox-ckpt")
        # Bound now, so that a port in use stops the agent before it starts anything.
        self.metrics_server = None
        if self.settings.metrics_bind is not None:
            self.metrics_server = metrics_http.MetricsServer(
                *self.settings.metrics_bind, observability.registry(self), self.health)
        # Ready once running, libvirt or not: the agent waits for libvirtd (and the
        # broker) by itself, STATUS= says so; a start that waited for them would be
        # killed by systemd's start timeout and restarted, which would not bring them.
        self.watchdog = systemd.Watchdog(systemd.Notifier(), self.health, ready=lambda: True)

    # -- what observability reads ----------------------------------------------------
    @property
    def failure(self) -> Optional[str]:
        return self.state.failure

    @property
    def libvirt(self) -> health.Outage:
        return self.state.libvirt

    @property
    def status(self) -> str:
        return self.state.status

    def health(self) -> health.Report:
        return observability.agent_health(self)

    def thread_states(self) -> dict[str, bool]:
        """Whether each worker thread (and libvirt's event loop) is alive."""
        states = {thread.name: thread.is_alive()
                  for thread in (self._worker, self._checkpointing)}
        states["libvirt-events"] = event_source.event_loop_failure() is None
        return states

    # -- running ---------------------------------------------------------------------
    def _supervised(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A worker thread whose death (an exception, or an end before stopping) is
        recorded and wakes the main thread."""
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - recorded, then the agent exits
                self.state.failed(f"thread {name}", exc)
                self.publisher.heartbeat_now()  # if it is alive: "degraded" first
                return
            if not self.state.stopping:
                self._failed(f"thread {name} ended before the agent stopped")
        return named_thread(run, name)

    def _failed(self, reason: str) -> None:
        self.state.fail(reason)
        self.publisher.heartbeat_now()  # if it is alive: "degraded", before the farewell

    def run(self) -> int:
        """Run until ``stop()`` is called (from a signal handler or another thread), or
        a worker thread dies. Returns the exit status: 0, or 1 after a failure."""
        LOG.info("agent for host %s starting: epoch %d, next seq %d, %d events in the outbox",
                 self.host, self.epoch, self.sequencer.last + 1, self.outbox.pending())
        self._worker.start()
        self._checkpointing.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.watchdog.start()
        state = self.state
        try:
            self._connect_libvirt(reason="start")
            interval = self.settings.inventory_interval
            next_inventory = time.monotonic() + interval if interval else None
            while not self._stop.is_set():
                timeout = _LIVENESS_CHECK
                if next_inventory is not None:
                    timeout = min(timeout, max(0.0, next_inventory - time.monotonic()))
                state.wait(timeout)
                if state.failure is None and event_source.event_loop_failure():
                    self._failed(event_source.event_loop_failure())
                if self._stop.is_set() or state.failure is not None:
                    break
                if state.lost_reason is not None or not self.source.connected:
                    LOG.warning("host %s: libvirt connection to %s lost (%s); reconnecting",
                                self.host, self.source.uri, state.lost_reason or "not alive")
                    state.lost_reason = None
                    state.libvirt.down(time.monotonic())
                    state.inventory_wanted.clear()  # the reconnection's inventory does it
                    self._connect_libvirt(reason="reconnect")
                elif state.inventory_wanted.is_set():
                    state.inventory_wanted.clear()
                    LOG.debug("host %s: an inventory for the events the outbox could not "
                              "take", self.host)
                    self._publish_inventory("reconnect")
                elif next_inventory is not None and time.monotonic() >= next_inventory:
                    self._publish_inventory("periodic")
                    next_inventory = time.monotonic() + interval
        finally:
            self._shutdown()
        if state.failure is not None:
            LOG.critical("host %s: agent exits with status 1 (%s) to be restarted; the "
                         "outbox keeps every event written", self.host, state.failure)
            return 1
        return 0

    def stop(self) -> None:
        self._stop.set()
        self.state.attend()

    def _connect_libvirt(self, reason: str) -> None:
        attempt = 0
        while not self._stop.is_set() and self.state.failure is None:
            try:
                self.source.connect()
                self.libvirt_sessions += 1
                self.state.libvirt.up()
                self._publish_inventory(reason)
                return
            except LibvirtUnavailable as exc:
                self.state.libvirt.down(time.monotonic())
                self.source.close()
                delay = backoff(attempt, self.settings.reconnect_interval_max)
                attempt += 1
                LOG.warning("host %s: libvirt unavailable (%s); events cannot be seen until "
                            "it returns; retrying in %.1fs", self.host, exc, delay)
                self.state.wait(delay)  # a stop or a failure ends the wait

    def _publish_inventory(self, reason: str) -> None:
        try:
            inventory = self.source.inventory(reason)
            if self._new_state:
                inventory = dataclasses.replace(inventory, new_state=True)
                self._new_state = False
            self._inbox.put(inventory)
        except LibvirtUnavailable as exc:
            LOG.warning("host %s: %s inventory skipped: %s", self.host, reason, exc)

    def _shutdown(self) -> None:
        LOG.info("agent for host %s stopping", self.host)
        self.state.stopping = True
        self.watchdog.stop()
        self.source.close()
        # The worker writes everything before STOP, sends it and the farewell heartbeat
        # and waits for their confirms, within the shutdown timeout; then it stops.
        self._inbox.put(STOP)
        timeout = self.settings.shutdown_timeout
        self.publisher.drain(timeout)
        self._worker.join(timeout + 5)
        self.publisher.stop()
        self._worker.join()
        unwritten = self._inbox.qsize() - (0 if self.writer.stopped else 1)  # (the STOP)
        if unwritten > 0:
            LOG.error("host %s: %d events were not written to the outbox (the writer "
                      "died); the next start's inventory reconciles them", self.host,
                      unwritten)
        self.checkpointer.stop()
        self._checkpointing.join()
        if self.state.corrupt is not None:
            self.outbox.close()
            try:
                move_aside(self.outbox.path, self.state.corrupt.reason)
            except OutboxError as exc:  # the next start's check tries again
                LOG.error("host %s: the corrupt outbox could not be moved aside: %s",
                          self.host, exc)
        else:
            LOG.info("agent for host %s stopped: last seq %d, %d events left in the outbox",
                     self.host, self.sequencer.last, self.outbox.pending())
        self.outbox.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
