"""libvirt: the event loop thread, the connection, the lifecycle callback, inventories.

The callback runs on libvirt's event loop thread. It only stamps the event (a
sequence number and the time) and hands it over to a queue; nothing there blocks,
logs or talks to libvirt over the wire.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import libvirt

from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory, Sequencer
from lifecycle_publisher.errors import LibvirtUnavailable

LOG = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread. libvirt
    allows one per process and it must exist before any connection is opened."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="libvirt-event-loop", daemon=True)
        thread.start()
        _event_loop_started = True


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class EventSource:
    """One libvirt connection whose lifecycle events go to ``deliver``."""

    def __init__(self, uri: str, sequencer: Sequencer, deliver: Callable[[object], None]):
        self.uri = uri
        self._sequencer = sequencer
        self._deliver = deliver
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None

    @property
    def connected(self) -> bool:
        conn = self._conn
        try:
            return conn is not None and conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def connect(self) -> None:
        """Open the connection and subscribe to lifecycle events."""
        start_event_loop()
        try:
            conn = libvirt.open(self.uri)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"{self.uri}: {exc}") from exc
        self._conn = conn
        LOG.info("connected to libvirt at %s", self.uri)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            conn.close()
        except libvirt.libvirtError as exc:
            LOG.debug("closing libvirt connection %s: %s", self.uri, exc)
        self._callback_id = None

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        # libvirt's thread: stamp and hand over, nothing else.
        self._deliver(DomainEvent(
            seq=self._sequencer.next(), occurred_at=time.time(),
            uuid=dom.UUIDString(), name=dom.name(), event=event, detail=detail))

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
