"""libvirt: the event loop thread, the connection, the lifecycle and fault callbacks,
inventories.

The callbacks run on libvirt's event loop thread. They only stamp the event (a
sequence number and the time) and hand it over to the agent's inbox (a queue, and a
wake-up of the worker once per batch); nothing there blocks, logs or talks to libvirt
over the wire. Faults (reboots, watchdogs, I/O errors, ...) take the same sequence and
the same inbox as the lifecycle events: they are ordered with them, outboxed,
confirmed and deduplicated alike.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Iterable

import libvirt

from lifecycle_publisher.domain_event import (DomainEvent, DomainFault, DomainSnapshot,
                                              Inventory, Sequencer)
from lifecycle_common.threads import named_thread
from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher import translation
from lifecycle_publisher.errors import LibvirtUnavailable
from lifecycle_common.libvirt_codes import JobType
from lifecycle_publisher.outbox_writer import state_read_needed
from lifecycle_publisher.translation import Observed

LOG = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False
_event_loop_failure: str | None = None  # why the loop's thread ended, if it did


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread. libvirt
    allows one per process and it must exist before any connection is opened."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # Errors reach us as exceptions and are logged where handled; libvirt's own
        # handler would print each one to stderr a second time.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        thread = named_thread(_run_event_loop, "libvirt-events", daemon=True)
        thread.start()
        _event_loop_started = True


def _run_event_loop() -> None:
    global _event_loop_failure
    try:
        while True:
            if libvirt.virEventRunDefaultImpl() < 0:
                raise RuntimeError("virEventRunDefaultImpl failed")
    except BaseException as exc:  # noqa: BLE001 - no event is seen any more: say why
        _event_loop_failure = f"libvirt's event loop died: {type(exc).__name__}: {exc}"
        raise


def event_loop_failure() -> str | None:
    """Why libvirt's event loop thread ended (no event reaches any connection since),
    or None while it runs."""
    return _event_loop_failure


# The fault events subscribed to beside the lifecycle events: libvirt's constant (looked
# up by name: an older libvirt-python may lack one) and the fault it reports. libvirt
# passes the fault back as the callback's ``opaque``. IO_ERROR_REASON is IO_ERROR with
# the reason (enospc, ...): libvirt raises both for each error; one is enough.
FAULT_EVENTS = (
    ("VIR_DOMAIN_EVENT_ID_REBOOT", Fault.REBOOTED),
    ("VIR_DOMAIN_EVENT_ID_WATCHDOG", Fault.WATCHDOG),
    ("VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON", Fault.IO_ERROR),
    ("VIR_DOMAIN_EVENT_ID_CONTROL_ERROR", Fault.CONTROL_ERROR),
    ("VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE", Fault.MEMORY_FAILURE),
    ("VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE", Fault.GUEST_AGENT),
)

# How a connection says it cannot deliver an event id (an older libvirtd, a driver
# without it): the client library's check of the id (INVALID_ARG), the daemon's
# (INTERNAL_ERROR "unsupported event ID"), a driver's. Any other error is the
# connection's, and fails the connection as a refused lifecycle subscription does.
_REFUSALS = frozenset(getattr(libvirt, name) for name in (
    "VIR_ERR_NO_SUPPORT", "VIR_ERR_INVALID_ARG", "VIR_ERR_INTERNAL_ERROR",
    "VIR_ERR_OPERATION_UNSUPPORTED", "VIR_ERR_ARGUMENT_UNSUPPORTED") if hasattr(libvirt, name))

KEEPALIVE_INTERVAL = 5  # seconds between keepalive probes on a remote connection
KEEPALIVE_COUNT = 3     # unanswered probes before libvirt closes the connection


class EventSource:
    """One libvirt connection whose lifecycle events go to ``deliver``; ``on_lost`` is
    told (on libvirt's thread, so it must only flag) when the connection closes."""

    def __init__(self, uri: str, sequencer: Sequencer, deliver: Callable[[object], None],
                 on_lost: Callable[[str], None] = lambda reason: None):
        self.uri = uri
        self._sequencer = sequencer
        self._deliver = deliver
        self._on_lost = on_lost
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []  # this connection's event subscriptions
        self.subscribed: tuple[str, ...] = ()  # their constants' names, for the logs and tests
        self._unsupported_warned: set[str] = set()  # each said once, not per reconnection
        self._lock = threading.Lock()  # connect and close are not run concurrently

    @property
    def connected(self) -> bool:
        conn = self._conn
        try:
            return conn is not None and conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def connect(self) -> None:
        """Open the connection, ask for keepalives, and subscribe to its close, to
        lifecycle events and to the fault events (``FAULT_EVENTS``) it supports. Every
        callback is registered anew on every connection."""
        start_event_loop()
        with self._lock:
            self._close_locked()
            conn = None
            try:
                conn = libvirt.open(self.uri)
                _enable_keepalive(conn)
                conn.registerCloseCallback(self._on_close, None)
                self._conn = conn  # from here on, _close_locked undoes what was done
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
                subscribed = ["VIR_DOMAIN_EVENT_ID_LIFECYCLE"]
                subscribed += self._subscribe_faults(conn)
                self.subscribed = tuple(subscribed)
            except libvirt.libvirtError as exc:
                if self._conn is not None:
                    self._close_locked()
                elif conn is not None:
                    _quietly(conn.close)
                raise LibvirtUnavailable(f"{self.uri}: {exc}") from exc
        LOG.info("connected to libvirt at %s", self.uri)

    def _subscribe_faults(self, conn) -> list[str]:
        """Subscribe to each fault event the connection supports; one it refuses, or
        that this libvirt-python does not define, is said once at warning and left
        out. Raises libvirtError for any other error (the connection's)."""
        subscribed = []
        for constant, fault in FAULT_EVENTS:
            event_id = getattr(libvirt, constant, None)
            if event_id is None:
                self._unsupported(constant, fault, "this libvirt-python does not define it")
                continue
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, event_id, self._on_fault, fault))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _REFUSALS:
                    raise
                self._unsupported(constant, fault, f"the connection refuses it: {exc}")
                continue
            subscribed.append(constant)
        return subscribed

    def _unsupported(self, constant: str, fault: Fault, why: str) -> None:
        if constant in self._unsupported_warned:
            LOG.debug("%s: no %s events (%s)", self.uri, constant, why)
            return
        self._unsupported_warned.add(constant)
        LOG.warning("%s: not subscribed to %s: %s; %s notifications are not published "
                    "from this host", self.uri, constant, why, fault.event_type)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        ids, self._callback_ids = self._callback_ids, []
        if conn is None:
            return
        for callback_id in ids:
            _quietly(conn.domainEventDeregisterAny, callback_id)
        _quietly(conn.unregisterCloseCallback)
        _quietly(conn.close)

    def _on_close(self, conn, reason, opaque) -> None:
        # libvirt's thread: flag and return.
        self._on_lost(_CLOSE_REASONS.get(reason, f"reason {reason}"))

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        # libvirt's thread: stamp and hand over, nothing else. The domain object goes
        # along only when it is to be read after the event: otherwise it is released
        # here, as any callback's is, not on the worker's thread.
        self._deliver(DomainEvent(
            seq=self._sequencer.next(), occurred_at=time.time(),
            uuid=dom.UUIDString(), name=dom.name(), event=event, detail=detail,
            domain=dom if state_read_needed(event, detail) else None))

    def _on_fault(self, conn, dom, *args) -> None:
        # libvirt's thread: stamp and hand over, nothing else. ``args`` are the event's
        # own arguments (none for a reboot; srcPath, devAlias, action, reason for an I/O
        # error; ...), then the opaque given at registration: the fault.
        self._deliver(DomainFault(
            seq=self._sequencer.next(), occurred_at=time.time(),
            uuid=dom.UUIDString(), name=dom.name(), fault=args[-1], codes=args[:-1]))

    def observe(self, events: list[DomainEvent]) -> dict[str, Observed]:
        """Each event's domain as it is now (one read per domain, however many events
        it has here): its state, or that it no longer exists, and for SUSPENDED/MIGRATED
        its migration job. A domain that cannot be read is left out."""
        conn = self._conn
        if conn is None or not events:
            return {}
        domains = {e.uuid: e.domain for e in events if e.domain is not None}
        try:
            stats = conn.domainListGetStats(list(domains.values()), libvirt.VIR_DOMAIN_STATS_STATE)
        except libvirt.libvirtError as exc:
            LOG.debug("reading domain states after events failed: %s", exc)
            return {}
        # libvirt leaves out the domains that no longer exist.
        observed = {uuid: Observed(state=None) for uuid in domains}
        for uuid, record in _by_uuid(domains, stats):
            observed[uuid] = Observed(
                state=record.get("state.state", 0), reason=record.get("state.reason", 0))
        for e in events:
            if translation.needs_job(e.event, e.detail) and observed[e.uuid].state is not None:
                observed[e.uuid] = dataclasses.replace(observed[e.uuid], job=_migration_job(e.domain))
        return observed

    def inventory(self, reason: str) -> Inventory:
        """List every domain with its state. The sequence number is taken before the
        listing, so any event that happens while listing is newer than the inventory."""
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable(f"{self.uri}: not connected")
        seq = self._sequencer.next()
        occurred_at = time.time()
        try:
            domains = tuple(_snapshots(conn))
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"{self.uri}: listing domains: {exc}") from exc
        return Inventory(seq=seq, occurred_at=occurred_at, reason=reason, domains=domains)


def _by_uuid(asked: dict[str, object], stats: list) -> Iterable[tuple[str, dict]]:
    """Pair each stats record with its domain's UUID. libvirt answers in the order it
    was asked, only leaving out the domains gone: when none is left out, the order
    says which is which, and the UUID is not asked of each record (a call into libvirt
    that gives up the GIL, per event)."""
    if len(stats) == len(asked):
        return zip(asked, (record for _, record in stats))
    return ((dom.UUIDString(), record) for dom, record in stats)


_CLOSE_REASONS = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client closed"}


def _enable_keepalive(conn) -> None:
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    except libvirt.libvirtError as exc:  # local drivers (test:///) have no keepalive
        LOG.debug("no keepalive on %s: %s", conn.getURI(), exc)


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except libvirt.libvirtError as exc:
        LOG.debug("libvirt clean-up call %s failed: %s", getattr(call, "__name__", call), exc)


def _migration_job(dom) -> int | None:
    """The migration job's type: under way, or else how the last one ended (nova's
    approach); None when libvirt cannot tell."""
    try:
        job = dom.jobStats().get("type", JobType.NONE)
        if job != JobType.NONE:
            return job
        return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED).get("type", JobType.NONE)
    except libvirt.libvirtError as exc:
        LOG.debug("reading the migration job failed: %s", exc)
        return None


def _snapshots(conn):
    try:
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        LOG.debug("getAllDomainStats unsupported, reading states one by one")
        for dom in conn.listAllDomains():
            try:
                state, reason = dom.state()
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we listed; its event follows
                raise
            yield DomainSnapshot(dom.UUIDString(), dom.name(), state, reason)
        return
    for dom, record in stats:
        yield DomainSnapshot(dom.UUIDString(), dom.name(),
                             record.get("state.state", 0), record.get("state.reason", 0))
