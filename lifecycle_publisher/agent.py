"""The agent: libvirt events -> outbox -> broker, with inventories and heartbeats.

Delivery guarantee: every lifecycle event libvirt reports while the agent runs is
written to the durable outbox and published at least once, in order per host, with
publisher confirms; a broker outage only delays it.

Threads: libvirt's event loop (stamps events), the outbox writer (translates and
writes), the publisher (owns the AMQP connection), the outbox checkpointer (syncs the
outbox's WAL into its file, off the event path), and the main thread (connects to
libvirt, takes inventories, handles signals, supervises the others).

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
import queue
import threading
import time
from typing import Callable, Optional

from oslo_config import cfg

from lifecycle_common import broker, health, metrics_http, systemd, wire
from lifecycle_common.threads import named_thread
from lifecycle_publisher import event_source, notifications, observability
from lifecycle_publisher.domain_event import Sequencer
from lifecycle_publisher.errors import LibvirtUnavailable, OutboxCorrupt, OutboxError
from lifecycle_publisher.event_source import EventSource
from lifecycle_publisher.outbox import Checkpointer, Outbox, move_aside, outbox_path
from lifecycle_publisher.outbox_writer import STOP, OutboxWriter
from lifecycle_common.retry import backoff
from lifecycle_publisher.publisher import Publisher
from lifecycle_publisher.wakeup import Wakeup

LOG = logging.getLogger(__name__)

_LIVENESS_CHECK = 5.0  # seconds between checks that the libvirt connection is alive


class Agent:
    def __init__(self, conf: cfg.ConfigOpts):
        self.conf = conf
        self.host = conf.host
        # OutboxUnwritable (a full disk) from here: lifecycle-agent waits and tries again.
        self.outbox = Outbox(outbox_path(conf.state_path),
                             conf.agent.outbox_synchronous, auto_checkpoint=False)
        self.checkpointer = Checkpointer(self.outbox)
        try:
            self.outbox.claim(self.host)  # HostMismatch: another host's state
            opened = self.outbox.open_epoch()
        finally:
            self.outbox.close()  # this thread's connection: run() may be on another thread
        if opened.fresh:
            LOG.info("host %s: a new state in %s: epoch %d taken from the clock, sequence "
                     "from 1", self.host, conf.state_path, opened.epoch)
        self.epoch = opened.epoch
        self._new_state = opened.fresh  # said by the first inventory, then done
        self.sequencer = Sequencer(opened.next_seq)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = Wakeup()  # the writer wakes the publisher
        self._stop = threading.Event()
        self._attention = threading.Event()  # stop, or the libvirt connection was lost
        self._lost_reason: str | None = None
        self._inventory_wanted = threading.Event()  # the writer: the disk is back
        self._corrupt: OutboxCorrupt | None = None  # found while running
        self._stopping = False
        self.failure: Optional[str] = None  # why a worker thread died
        self.libvirt = health.Outage(down_since=time.monotonic())
        self.libvirt_sessions = 0  # connections opened since start
        self.source = EventSource(conf.libvirt.connection_uri, self.sequencer, self._queue.put,
                                  on_lost=self._libvirt_lost)
        self.writer = OutboxWriter(self._queue, self.outbox, self.host, self.epoch, self._wake,
                                   observe=self.source.observe,
                                   stopped_delay=conf.agent.stopped_event_delay,
                                   ask_inventory=self._ask_inventory)
        topics = conf.oslo_messaging_notifications.topics
        self.publisher = Publisher(
            self.outbox, broker.Connector(broker.settings(conf)), conf.control_exchange,
            [f"{topic}.info" for topic in topics], conf.agent.publish_window,
            conf.agent.broker_retry_interval_max, self._heartbeat_body,
            conf.agent.heartbeat_interval, self._wake,
            user_id=conf.agent.broker_user or None, confirm_timeout=conf.agent.confirm_timeout)
        self._threads = [
            self._supervised(self.writer.run, "outbox-writer"),
            self._supervised(self.publisher.run, "publisher"),
            self._supervised(self.checkpointer.run, "outbox-ckpt"),
        ]
        # Bound now, so that a port in use stops the agent before it starts anything.
        self.metrics_server = None
        if conf.metrics.bind_port:
            self.metrics_server = metrics_http.MetricsServer(
                conf.metrics.bind_host, conf.metrics.bind_port,
                observability.registry(self), self.health)
        # Ready once running, libvirt or not: the agent waits for libvirtd (and the
        # broker) by itself, STATUS= says so; a start that waited for them would be
        # killed by systemd's start timeout and restarted, which would not bring them.
        self.watchdog = systemd.Watchdog(systemd.Notifier(), self.health, ready=lambda: True)

    def health(self) -> health.Report:
        return observability.agent_health(self)

    def thread_states(self) -> dict[str, bool]:
        """Whether each worker thread (and libvirt's event loop) is alive."""
        states = {thread.name: thread.is_alive() for thread in self._threads}
        states["libvirt-events"] = event_source.event_loop_failure() is None
        return states

    @property
    def status(self) -> str:
        """What the heartbeats say: running, degraded (a worker died: exiting to be
        restarted) or stopping (a clean stop: the consumer marks the host down)."""
        if self.failure is not None:
            return "degraded"
        return "stopping" if self._stopping else "running"

    def _heartbeat_body(self) -> bytes:
        note = notifications.heartbeat_notification(
            self.host, self.epoch, self.sequencer.last, self.conf.agent.heartbeat_interval,
            self.status, self.source.connected)
        return wire.encode(note)

    def _supervised(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A worker thread whose death (an exception, or an end before stopping) is
        recorded and wakes the main thread."""
        def run() -> None:
            try:
                target()
            except OutboxCorrupt as exc:  # not a defect: no traceback
                LOG.critical("host %s: thread %s found the outbox corrupt: %s; the agent "
                             "moves it aside and exits with status 1, to start a new state",
                             self.host, name, exc)
                self._corrupt = self._corrupt or exc
                self._failed(f"thread {name} died: {type(exc).__name__}: {exc}")
                return
            except BaseException as exc:  # noqa: BLE001 - recorded, then the agent exits
                LOG.critical("host %s: thread %s died: %s: %s", self.host, name,
                             type(exc).__name__, exc, exc_info=True)
                self._failed(f"thread {name} died: {type(exc).__name__}: {exc}")
                return
            if not self._stopping:
                self._failed(f"thread {name} ended before the agent stopped")
        return named_thread(run, name)

    def _failed(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self._attention.set()
        self.publisher.heartbeat_now()  # if it is alive: "degraded", before the farewell

    def run(self) -> int:
        """Run until ``stop()`` is called (from a signal handler or another thread), or
        a worker thread dies. Returns the exit status: 0, or 1 after a failure."""
        LOG.info("agent for host %s starting: epoch %d, next seq %d, %d events in the outbox",
                 self.host, self.epoch, self.sequencer.last + 1, self.outbox.pending())
        for thread in self._threads:
            thread.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.watchdog.start()
        try:
            self._connect_libvirt(reason="start")
            interval = self.conf.agent.inventory_interval
            next_inventory = time.monotonic() + interval if interval else None
            while not self._stop.is_set():
                timeout = _LIVENESS_CHECK
                if next_inventory is not None:
                    timeout = min(timeout, max(0.0, next_inventory - time.monotonic()))
                self._attention.wait(timeout)
                self._attention.clear()
                if self.failure is None and event_source.event_loop_failure():
                    self._failed(event_source.event_loop_failure())
                if self._stop.is_set() or self.failure is not None:
                    break
                if self._lost_reason is not None or not self.source.connected:
                    LOG.warning("host %s: libvirt connection to %s lost (%s); reconnecting",
                                self.host, self.source.uri, self._lost_reason or "not alive")
                    self._lost_reason = None
                    self.libvirt.down(time.monotonic())
                    self._inventory_wanted.clear()  # the reconnection's inventory does it
                    self._connect_libvirt(reason="reconnect")
                elif self._inventory_wanted.is_set():
                    self._inventory_wanted.clear()
                    LOG.debug("host %s: an inventory for the events the outbox could not "
                              "take", self.host)
                    self._publish_inventory("reconnect")
                elif next_inventory is not None and time.monotonic() >= next_inventory:
                    self._publish_inventory("periodic")
                    next_inventory = time.monotonic() + interval
        finally:
            self._shutdown()
        if self.failure is not None:
            LOG.critical("host %s: agent exits with status 1 (%s) to be restarted; the "
                         "outbox keeps every event written", self.host, self.failure)
            return 1
        return 0

    def stop(self) -> None:
        self._stop.set()
        self._attention.set()

    def _ask_inventory(self) -> None:
        # Called on the writer's thread: flag only.
        self._inventory_wanted.set()
        self._attention.set()

    def _libvirt_lost(self, reason: str) -> None:
        # Called on libvirt's event loop thread: flag only.
        self.libvirt.down(time.monotonic())
        self._lost_reason = reason
        self._attention.set()

    def _connect_libvirt(self, reason: str) -> None:
        attempt = 0
        while not self._stop.is_set() and self.failure is None:
            try:
                self.source.connect()
                self.libvirt_sessions += 1
                self.libvirt.up()
                self._publish_inventory(reason)
                return
            except LibvirtUnavailable as exc:
                self.libvirt.down(time.monotonic())
                self.source.close()
                delay = backoff(attempt, self.conf.libvirt.reconnect_interval_max)
                attempt += 1
                LOG.warning("host %s: libvirt unavailable (%s); events cannot be seen until "
                            "it returns; retrying in %.1fs", self.host, exc, delay)
                self._attention.wait(delay)  # a stop or a failure ends the wait
                self._attention.clear()

    def _publish_inventory(self, reason: str) -> None:
        try:
            inventory = self.source.inventory(reason)
            if self._new_state:
                inventory = dataclasses.replace(inventory, new_state=True)
                self._new_state = False
            self._queue.put(inventory)
        except LibvirtUnavailable as exc:
            LOG.warning("host %s: %s inventory skipped: %s", self.host, reason, exc)

    def _shutdown(self) -> None:
        LOG.info("agent for host %s stopping", self.host)
        self._stopping = True
        self.watchdog.stop()
        self.source.close()
        if not self._threads[0].is_alive() and not self._queue.empty():
            LOG.error("host %s: %d events were not written to the outbox (the writer "
                      "died); the next start's inventory reconciles them", self.host,
                      self._queue.qsize())
        self._queue.put(STOP)
        self._threads[0].join()
        timeout = self.conf.agent.shutdown_timeout
        self.publisher.drain(timeout)
        self._threads[1].join(timeout + 5)
        self.publisher.stop()
        self._threads[1].join()
        self.checkpointer.stop()
        self._threads[2].join()
        if self._corrupt is not None:
            self.outbox.close()
            try:
                move_aside(self.outbox.path, self._corrupt.reason)
            except OutboxError as exc:  # the next start's check tries again
                LOG.error("host %s: the corrupt outbox could not be moved aside: %s",
                          self.host, exc)
        else:
            LOG.info("agent for host %s stopped: last seq %d, %d events left in the outbox",
                     self.host, self.sequencer.last, self.outbox.pending())
        self.outbox.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
