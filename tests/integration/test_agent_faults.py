"""The agent's fault events against libvirt's in-process ``test:///default``: every
connection subscribes to the six fault event ids beside LIFECYCLE and lets go of them
on close; a connection that refuses one goes on with the rest; a storm of I/O errors
driven through the real callback into a real writer and outbox leaves a handful of
rows that count every occurrence, and one key in the coalescer."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc

import pytest

from lifecycle_common import wire
from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher import config as agent_config
from lifecycle_publisher.domain_event import DomainEvent, DomainFault, Sequencer
from lifecycle_publisher.event_source import FAULT_EVENTS, EventSource
from lifecycle_common.libvirt_codes import Event
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.outbox_writer import STOP, OutboxWriter
from lifecycle_publisher.wakeup import Inbox, Wakeup
from tests.integration.test_agent import (Received, agents, bound_queue,  # noqa: F401
                                          make_conf)

pytestmark = pytest.mark.integration

ALL_IDS = {"VIR_DOMAIN_EVENT_ID_LIFECYCLE"} | {constant for constant, _ in FAULT_EVENTS}
VM = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def test_every_connection_subscribes_to_the_fault_events_and_lets_go_on_close(
        libvirt_conn, domain, wait_for):
    import libvirt
    delivered: list = []
    source = EventSource("test:///default", Sequencer(1), delivered.append)
    try:
        for _ in range(2):  # a reconnection subscribes anew
            source.connect()
            conn = source._conn
            assert set(source.subscribed) == ALL_IDS and len(ALL_IDS) == 7
            # libvirt-python's own record of the connection's subscriptions
            assert len(conn.domainEventCallbackID) == 7
            assert sorted(conn.domainEventCallbackID.values(), key=str) == sorted(
                [None] + [fault for _, fault in FAULT_EVENTS], key=str)
            dom = domain()  # the lifecycle events still arrive
            wait_for(lambda: any(isinstance(d, DomainEvent) and d.uuid == dom.UUIDString()
                                 and d.event == libvirt.VIR_DOMAIN_EVENT_DEFINED
                                 for d in delivered), timeout=5, message="DEFINED")
            source.close()
            assert conn.domainEventCallbackID == {}  # each deregistered
            assert source._callback_ids == []
    finally:
        source.close()


class RefusingConnection:
    """A real connection that refuses one event id as an older libvirtd does."""

    def __init__(self, conn, refused: int, code: int):
        self._conn, self._refused, self._code = conn, refused, code

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        import libvirt
        if event_id == self._refused:
            exc = libvirt.libvirtError(f"unsupported event ID {event_id}")
            exc.err = (self._code, 0, str(exc), 0, "", None, None, -1, -1)
            raise exc
        return self._conn.domainEventRegisterAny(dom, event_id, cb, opaque)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.parametrize("code_name", ["VIR_ERR_NO_SUPPORT", "VIR_ERR_INTERNAL_ERROR",
                                       "VIR_ERR_INVALID_ARG"])
def test_a_refused_event_id_is_said_once_and_the_rest_subscribed(
        libvirt_conn, monkeypatch, caplog, code_name):
    import libvirt
    real_open = libvirt.open
    monkeypatch.setattr(libvirt, "open", lambda uri: RefusingConnection(
        real_open(uri), libvirt.VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE, getattr(libvirt, code_name)))
    source = EventSource("test:///default", Sequencer(1), lambda item: None)
    caplog.set_level(logging.DEBUG, logger="lifecycle_publisher.event_source")
    try:
        for _ in range(2):
            source.connect()
            assert set(source.subscribed) == ALL_IDS - {"VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE"}
            source.close()
    finally:
        source.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE" in warnings[0].getMessage()
    assert "instance.memory_failure" in warnings[0].getMessage()


def test_a_constant_missing_from_libvirt_python_is_said_and_the_rest_subscribed(
        libvirt_conn, monkeypatch, caplog):
    import libvirt
    monkeypatch.delattr(libvirt, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE")
    source = EventSource("test:///default", Sequencer(1), lambda item: None)
    try:
        source.connect()
        assert set(source.subscribed) == ALL_IDS - {"VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE"}
    finally:
        source.close()
    assert "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE" in caplog.text
    assert "does not define it" in caplog.text


def test_another_error_fails_the_connection_and_leaves_nothing_subscribed(
        libvirt_conn, monkeypatch):
    import libvirt
    from lifecycle_publisher.errors import LibvirtUnavailable
    opened = []
    real_open = libvirt.open

    def open_refusing(uri):
        opened.append(real_open(uri))
        return RefusingConnection(opened[-1], libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG,
                                  libvirt.VIR_ERR_SYSTEM_ERROR)
    monkeypatch.setattr(libvirt, "open", open_refusing)
    source = EventSource("test:///default", Sequencer(1), lambda item: None)
    with pytest.raises(LibvirtUnavailable):
        source.connect()
    assert opened[0].domainEventCallbackID == {} and source._conn is None


class FakeDomain:
    def UUIDString(self):
        return VM

    def name(self):
        return "storm-vm"


def test_a_storm_of_io_errors_leaves_a_handful_of_rows_counting_every_occurrence(tmp_path):
    """50,000 I/O errors of one disk at 10,000 a second, through EventSource's callback
    into a real writer and outbox on a fake clock, the writer stepped as the worker
    would be (after each thousand): one row at once, one a second, the rest at stop."""
    inbox = Inbox(Wakeup())
    sequencer = Sequencer(1)
    source = EventSource("test:///default", sequencer, inbox.put)
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    now = [0.0]
    writer = OutboxWriter(inbox, outbox, "storm-host", 3, fault_coalesce_interval=1.0,
                          clock=lambda: now[0])
    dom = FakeDomain()
    tracemalloc.start()
    try:
        for i in range(50_000):
            source._on_fault(None, dom, "/var/lib/disk", "virtio-disk0", 1, "eio", Fault.IO_ERROR)
            now[0] = i / 10_000
            if i % 1000 == 999:
                writer.step()
        assert len(writer.coalescer) == 1  # one key, however long the storm
        assert inbox.qsize() == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    inbox.put(STOP)
    writer.step()
    notes = [wire.decode(r.body) for r in outbox.fetch_after(0, 1000)]
    print(f"\n50,000 I/O errors -> {len(notes)} rows, counts {[n.payload.count for n in notes]}, "
          f"tracemalloc peak {peak / 1e6:.2f} MB")
    assert 2 <= len(notes) <= 8
    assert sum(n.payload.count for n in notes) == 50_000
    assert notes[0].payload.count == 1
    seqs = [n.payload.seq for n in notes]
    assert seqs == sorted(seqs) and seqs[-1] == sequencer.last == 50_000
    assert {(n.payload.device, n.payload.reason, n.payload.action) for n in notes} == {
        ("virtio-disk0", "eio", "pause")}
    assert writer.faults == {"io_error": 50_000}
    assert writer.coalescer.coalesced == {"io_error": 50_000 - len(notes)}
    assert len(writer.coalescer) == 0
    outbox.close()


def test_the_inbox_stays_bounded_while_the_callback_runs_flat_out(tmp_path):
    """The writer's thread drains faults faster than the callback's own Python part can
    make them (a fault costs the writer about a microsecond, the callback about three;
    libvirt's delivery costs more besides), so the inbox holds at most a few batches
    however long the storm. Printed, not asserted on time: a figure for the report."""
    inbox = Inbox(Wakeup())
    source = EventSource("test:///default", Sequencer(1), inbox.put)
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    writer = OutboxWriter(inbox, outbox, "storm-host", 3, fault_coalesce_interval=1.0)
    thread = threading.Thread(target=writer.run)
    thread.start()
    dom, peak, total = FakeDomain(), 0, 200_000
    started = time.perf_counter()
    try:
        for i in range(total):
            source._on_fault(None, dom, "/var/lib/disk", "vda", 1, "eio", Fault.IO_ERROR)
            if i % 1000 == 0:
                peak = max(peak, inbox.qsize())
        elapsed = time.perf_counter() - started
    finally:
        inbox.put(STOP)
        thread.join(30)
    counts = [wire.decode(r.body).payload.count
              for r in Outbox(str(tmp_path / "outbox.sqlite")).fetch_after(0, 1000)]
    print(f"\n{total / elapsed:,.0f} faults/s through the callback: inbox peak {peak}, "
          f"{len(counts)} rows")
    assert sum(counts) == total and len(counts) < 50
    assert inbox.empty()


def test_the_agent_counts_faults_seen_and_coalesced_in_its_metrics(tmp_path, libvirt_conn):
    from prometheus_client import generate_latest
    from lifecycle_publisher import observability
    from lifecycle_publisher.cmd import build_agent
    conf = agent_config.in_code(
        {"host": "metrics-host", "transport_url": "rabbit://guest:guest@127.0.0.1:1/",
         "state_path": str(tmp_path)}, libvirt={"connection_uri": "test:///default"})
    agent = build_agent(conf)
    try:
        assert conf.agent.fault_coalesce_interval == 1.0  # the default
        for seq in range(1, 6):
            agent._inbox.put(DomainFault(seq=seq, occurred_at=1.0, uuid=VM, name="vm",
                                         fault=Fault.WATCHDOG, codes=(1,)))
        agent._inbox.put(DomainEvent(seq=6, occurred_at=1.0, uuid=VM, name="vm",
                                     event=int(Event.RESUMED), detail=0))
        agent._inbox.put(STOP)
        agent.writer.step()
        text = generate_latest(observability.registry(agent)).decode()
    finally:
        agent.outbox.close()
    assert 'lifecycle_agent_faults_total{fault="watchdog"} 5.0' in text
    assert 'lifecycle_agent_faults_coalesced_total{fault="watchdog"} 3.0' in text
    assert "lifecycle_agent_fault_coalescing_keys 0.0" in text
    assert 'lifecycle_agent_events_total{transition="resumed"} 1.0' in text
    assert 'transition="watchdog"' not in text


def test_faults_reach_the_broker_in_sequence_with_the_lifecycle_events(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, wait_for):  # noqa: F811
    """A running agent, its callback fed as libvirt's event loop would feed it (the test
    driver raises no fault event): a reboot, a guest agent connecting, and a storm of
    I/O errors around a start arrive decoded (so valid), coalesced, in seq order."""
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url,
                               fault_coalesce_interval=0.2))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    dom = domain()
    vm = dom.UUIDString()
    wait_for(lambda: received.instance_events(vm), timeout=10, message="instance.defined")
    source = running.agent.source
    source._on_fault(None, dom, Fault.REBOOTED)
    source._on_fault(None, dom, 1, 1, Fault.GUEST_AGENT)
    for _ in range(500):
        source._on_fault(None, dom, "/img", "vda", 1, "enospc", Fault.IO_ERROR)
    dom.create()
    for _ in range(500):
        source._on_fault(None, dom, "/img", "vda", 1, "enospc", Fault.IO_ERROR)

    def io_errors():
        return [n for n in received.instance_events(vm) if n.event_type == "instance.io_error"]
    wait_for(lambda: sum(n.payload.count for n in io_errors()) == 1000, timeout=10,
             message=lambda: f"1000 I/O errors, have {[n.payload.count for n in io_errors()]}")
    notes = received.instance_events(vm)
    types = [n.event_type for n in notes]
    assert {"instance.defined", "instance.rebooted", "instance.guest_agent",
            "instance.started"} <= set(types)
    assert io_errors()[0].payload.count == 1 and len(io_errors()) <= 4
    by_type = {n.event_type: n.payload for n in notes}
    assert (by_type["instance.guest_agent"].state, by_type["instance.guest_agent"].reason) == (
        "connected", "domain_started")
    assert by_type["instance.io_error"].reason == "enospc"
    seqs = [n.payload.seq for n in notes]
    assert len(set(seqs)) == len(seqs)
    started = by_type["instance.started"].seq
    # the first I/O error at once, before the start; the last summary's seq is its last
    # occurrence's, after the start's
    assert io_errors()[0].payload.seq < started < io_errors()[-1].payload.seq
    assert {(n.payload.host, n.payload.epoch) for n in notes} == {
        ("agent-host-1", running.agent.epoch)}
