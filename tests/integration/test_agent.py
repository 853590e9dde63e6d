"""The agent against a real RabbitMQ and libvirt's in-process ``test:///default``."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from oslo_config import cfg

from lifecycle_common import wire
from lifecycle_publisher import config as agent_config
from lifecycle_publisher.cmd import build_agent
from lifecycle_publisher.outbox import Outbox
from tests.conftest import ServiceThread

pytestmark = pytest.mark.integration

HOST = "agent-host-1"


def make_conf(state_path, exchange: str, transport_url: str, **agent_opts) -> cfg.ConfigOpts:
    options = {"heartbeat_interval": 0.2, "broker_retry_interval_max": 0.2,
               "shutdown_timeout": 5.0, "inventory_interval": 0, **agent_opts}
    return agent_config.in_code(
        {"host": HOST, "transport_url": transport_url, "control_exchange": exchange,
         "state_path": str(state_path)},
        libvirt={"connection_uri": "test:///default", "reconnect_interval_max": 0.5},
        agent=options)


class RunningAgent(ServiceThread):
    def __init__(self, conf):
        self.agent = build_agent(conf)
        super().__init__(self.agent, name="agent")


class Received:
    """Everything that arrived on a queue, decoded (and so validated) with wire.decode."""

    def __init__(self, isolation, queue: str):
        self._isolation = isolation
        self.queue = queue
        self.notes: list[wire.Notification] = []

    def poll(self) -> list[wire.Notification]:
        for message in self._isolation.get_all(self.queue):
            assert message.delivery_info["routing_key"] == "notifications.info"
            self.notes.append(wire.decode(message.body))
        return self.notes

    def of_type(self, *event_types) -> list[wire.Notification]:
        return [n for n in self.poll() if n.event_type in event_types]

    def inventories(self):
        return self.of_type("host.inventory")

    def heartbeats(self):
        return self.of_type("host.heartbeat")

    def instance_events(self, vm: str):
        return [n for n in self.poll()
                if n.event_type.startswith("instance.") and n.payload.uuid == vm]


@pytest.fixture
def agents():
    running: list[RunningAgent] = []

    def start(conf) -> RunningAgent:
        agent = RunningAgent(conf)
        running.append(agent)
        return agent
    yield start
    for agent in running:
        if agent.thread.is_alive():
            agent.stop()


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(os.path.join(tmp_path, "outbox.sqlite"))
    yield box
    box.close()


@pytest.fixture
def bound_queue(amqp_isolation):
    return amqp_isolation.declare_queue("agent", "notifications.*")


def test_inventory_events_in_order_and_stopping_heartbeat(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, wait_for):
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url))
    (start,) = wait_for(received.inventories, timeout=10, message="the start inventory")
    assert start.publisher_id == f"lifecycle-agent:{HOST}"
    inv = start.payload
    assert (inv.host, inv.reason, inv.epoch) == (HOST, "start", running.agent.epoch)
    test_dom = libvirt_conn.lookupByName("test")
    listed = {e.uuid: e for e in inv.instances}
    assert listed[test_dom.UUIDString()].name == "test"
    assert listed[test_dom.UUIDString()].power_state == "running"

    # One step at a time: an event's power state is the domain's state read after it
    # (payload 1.1), so waiting for each event makes every state deterministic.
    dom = domain()
    vm = dom.UUIDString()
    steps = [(None, "instance.defined", "shutdown"), (dom.create, "instance.started", "running"),
             (dom.suspend, "instance.paused", "paused"), (dom.resume, "instance.resumed", "running"),
             (dom.destroy, "instance.stopped", "shutdown"), (dom.undefine, "instance.undefined", None)]
    for count, (action, event_type, _) in enumerate(steps, 1):
        if action is not None:
            action()
        wait_for(lambda: len(received.instance_events(vm)) >= count, timeout=10,
                 message=lambda: f"{event_type}, have "
                                 f"{[n.event_type for n in received.instance_events(vm)]}")
    events = received.instance_events(vm)
    assert [n.event_type for n in events] == [t for _, t, _ in steps]
    assert [n.payload.power_state for n in events] == [p for _, _, p in steps]
    seqs = [n.payload.seq for n in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[0] > inv.seq
    assert {(n.payload.host, n.payload.epoch) for n in events} == {(HOST, running.agent.epoch)}
    wait_for(received.heartbeats, timeout=5, message="a heartbeat")

    running.stop()
    last = received.heartbeats()[-1].payload
    assert (last.status, last.last_seq, last.epoch) == ("stopping", seqs[-1], running.agent.epoch)
    assert all(h.payload.status == "running" for h in received.heartbeats()[:-1])


def test_restart_grows_the_epoch_and_continues_the_sequence(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, wait_for):
    received = Received(amqp_isolation, bound_queue)
    conf = make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url)
    first = agents(conf)
    wait_for(received.inventories, timeout=10, message="the first start inventory")
    dom = domain()
    wait_for(lambda: received.instance_events(dom.UUIDString()), timeout=10)
    first.stop()
    # Stopped, the agent leaves its outbox in one file: the WAL checkpointed, removed.
    assert not os.path.exists(os.path.join(tmp_path, "outbox.sqlite-wal"))
    before = [n.payload for n in received.poll() if n.event_type != "host.heartbeat"]
    last_seq = max(p.seq for p in before)

    second = agents(conf)
    inventories = wait_for(lambda: len(received.inventories()) == 2 and received.inventories(),
                           timeout=10, message="the second start inventory")
    again = inventories[1].payload
    assert again.epoch == second.agent.epoch > first.agent.epoch
    assert again.seq == last_seq + 1
    dom.create()
    (started,) = wait_for(lambda: [n for n in received.instance_events(dom.UUIDString())
                                   if n.event_type == "instance.started"], timeout=10)
    assert (started.payload.epoch, started.payload.seq) == (second.agent.epoch, last_seq + 2)


def test_events_wait_in_the_outbox_while_the_broker_is_unreachable(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, outbox,
        tcp_forwarder, wait_for):
    received = Received(amqp_isolation, bound_queue)
    url = f"rabbit://guest:guest@127.0.0.1:{tcp_forwarder.port}/"
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, url))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    wait_for(lambda: outbox.pending() == 0, timeout=5, message="the inventory confirmed")

    tcp_forwarder.stop()
    dom = domain()
    vm = dom.UUIDString()
    dom.create()
    for _ in range(20):
        dom.suspend()
        dom.resume()
    wait_for(lambda: outbox.pending() >= 42, timeout=10,
             message=lambda: f"42 events in the outbox, have {outbox.pending()}")
    wait_for(lambda: not running.agent.publisher.connected.is_set(), timeout=10,
             message="the publisher noticing the outage")
    assert outbox.pending() >= 42
    assert received.instance_events(vm) == []

    tcp_forwarder.start()
    events = wait_for(lambda: len({n.payload.seq for n in received.instance_events(vm)}) == 42
                      and received.instance_events(vm), timeout=15,
                      message=lambda: f"42 events after the outage, have "
                                      f"{len(received.instance_events(vm))}")
    wait_for(lambda: outbox.pending() == 0, timeout=10, message="the outbox emptied")
    seqs = sorted({n.payload.seq for n in events})
    assert seqs == list(range(seqs[0], seqs[0] + 42))  # none lost
    assert [n.event_type for n in events][:3] == ["instance.defined", "instance.started",
                                                   "instance.paused"]


def test_unroutable_events_stay_in_the_outbox_until_a_queue_is_bound(
        tmp_path, amqp_isolation, libvirt_conn, agents, outbox, caplog, wait_for):
    caplog.set_level(logging.ERROR, logger="lifecycle_publisher.publisher")
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url))
    wait_for(lambda: "no queue is bound" in caplog.text, timeout=10,
             message="the broker returning the unroutable inventory")
    assert outbox.pending() >= 1
    assert running.agent.publisher.confirmed == 0

    queue = amqp_isolation.declare_queue("late", "notifications.*")
    received = Received(amqp_isolation, queue)
    (inventory,) = wait_for(received.inventories, timeout=15,
                            message="the inventory, retried once a queue is bound")
    assert inventory.payload.reason == "start"
    wait_for(lambda: outbox.pending() == 0, timeout=5, message="the outbox emptied")


def test_the_publish_window_carries_thousands_of_events(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, agents, outbox, wait_for):
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url,
                               publish_window=256))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    wait_for(lambda: outbox.pending() == 0, timeout=5)
    test_dom = libvirt_conn.lookupByName("test")
    vm = test_dom.UUIDString()
    in_flight = []
    sampling = threading.Event()

    def sample():  # the publisher's unconfirmed messages, sampled while it works
        while not sampling.is_set():
            in_flight.append(running.agent.publisher.in_flight)
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    for _ in range(1000):
        test_dom.suspend()
        test_dom.resume()
    generated = time.monotonic()
    wait_for(lambda: running.agent.publisher.confirmed >= 2001 and outbox.pending() == 0,
             timeout=60, interval=0.002,
             message=lambda: f"2000 events confirmed, {running.agent.publisher.confirmed} so far")
    confirmed = time.monotonic()
    sampling.set()
    sampler.join()
    events = wait_for(lambda: len(received.instance_events(vm)) >= 2000 and
                      received.instance_events(vm), timeout=30)
    seqs = [n.payload.seq for n in events]
    assert len(set(seqs)) == 2000 and seqs == sorted(seqs)
    assert [n.event_type for n in events[:2]] == ["instance.paused", "instance.resumed"]
    rate = 2000 / (confirmed - started)
    print(f"\n2000 events: generated in {generated - started:.3f}s, all confirmed and "
          f"deleted from the outbox after {confirmed - started:.3f}s: {rate:.0f} events/s; "
          f"most unconfirmed at once: {max(in_flight)}")
    assert max(in_flight) > 1, "the publisher never had two messages unconfirmed at once"


# -- supervision ----------------------------------------------------------------------

def test_a_corrupt_outbox_found_while_running_degrades_the_heartbeat_and_the_agent_exits(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, caplog, wait_for):
    """The outbox writer finds the outbox corrupt (SQLite's "malformed", simulated): the
    agent says so in its log, its heartbeats say degraded, it moves the file aside (so
    that the next start begins a new state rather than failing again) and stops with
    status 1 for systemd to restart it."""
    from lifecycle_publisher.errors import OutboxCorrupt
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    path = running.agent.outbox.path

    def corrupt(rows):
        raise OutboxCorrupt(path, "database disk image is malformed")
    running.agent.outbox.append = corrupt
    caplog.set_level(logging.INFO, logger="lifecycle_publisher")
    domain()  # an event for the writer to fail on
    running.thread.join(30)
    assert not running.thread.is_alive(), "the agent did not exit"
    assert running.exit_status == 1
    assert ("the outbox writer found the outbox corrupt: outbox %s: database disk image "
            "is malformed" % path) in caplog.text
    assert "agent exits with status 1" in caplog.text
    assert not os.path.exists(path)
    assert [f for f in os.listdir(tmp_path) if f.startswith("outbox.sqlite.corrupt-")]
    assert "is corrupt (database disk image is malformed): moved aside" in caplog.text
    statuses = [h.payload.status for h in received.heartbeats()]
    assert "degraded" in statuses and statuses[-1] == "degraded", statuses
    assert "stopping" not in statuses  # not a clean stop: the host is not marked down


def test_a_dead_publisher_makes_the_agent_exit_non_zero(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, agents, caplog, wait_for):
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.agent")

    def broken(*args, **kwargs):
        raise RuntimeError("a defect")
    running.agent.publisher._publish = broken
    running.agent.publisher.heartbeat_now()
    running.thread.join(30)
    assert running.exit_status == 1
    assert "thread publisher died: RuntimeError: a defect" in caplog.text


# -- routing keys -----------------------------------------------------------------------

def test_a_topic_nobody_listens_to_does_not_duplicate_the_others(
        tmp_path, amqp_isolation, libvirt_conn, agents, caplog, wait_for):
    """topics = a,b with a queue bound for a only: the broker returns b's copy; only b
    is retried (with back-off), so a's queue gets each event once; the row stays in the
    outbox until b is routable, then leaves it."""
    a = amqp_isolation.declare_queue("a", "a.info")
    caplog.set_level(logging.ERROR, logger="lifecycle_publisher.publisher")
    conf = make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url)
    conf.set_override("topics", ["a", "b"], group="oslo_messaging_notifications")
    running = agents(conf)
    publisher = running.agent.publisher
    retries = []
    due = publisher.ledger.due

    def counting_due(now):
        rows = due(now)
        retries.extend(rows)
        return rows
    publisher.ledger.due = counting_due
    wait_for(lambda: len(retries) >= 3, timeout=20, message="three retries on b")
    assert "for routing key b.info" in caplog.text
    assert caplog.text.count("no queue is bound") == 1  # said once, not every retry
    assert publisher.ledger.unroutable == {"b.info"}
    assert running.agent.outbox.pending() >= 1

    b = amqp_isolation.declare_queue("b", "b.info")
    wait_for(lambda: amqp_isolation.message_count(b) >= 1, timeout=15, message="b's copy")
    wait_for(lambda: running.agent.outbox.pending() == 0, timeout=10, message="the outbox emptied")
    on_a = [wire.decode(m.body) for m in amqp_isolation.get_all(a)]
    inventories = [n for n in on_a if n.event_type == "host.inventory"]
    assert len(inventories) == 1, f"{len(inventories)} copies of the inventory on a"


def test_a_broker_that_stops_confirming_is_given_up_for_the_next_one(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, tcp_forwarder,
        caplog, wait_for):
    """The first broker of the URL goes on taking messages and never confirms them (its
    replies are dropped, as from a cluster node that lost its majority; its heartbeats
    too, but AMQP heartbeats would take 60 s to tell): after confirm_timeout the agent
    gives that connection up and publishes on the next broker; nothing is lost."""
    received = Received(amqp_isolation, bound_queue)
    url = (f"rabbit://guest:guest@127.0.0.1:{tcp_forwarder.port},"
           "guest:guest@127.0.0.1:5672/")
    conf = make_conf(tmp_path, amqp_isolation.exchange, url, confirm_timeout=2.0)
    conf.set_override("heartbeat_timeout_threshold", 60, group="oslo_messaging_rabbit")
    caplog.set_level(logging.WARNING, logger="lifecycle_publisher.publisher")
    running = agents(conf)
    wait_for(received.inventories, timeout=10, message="the start inventory, via the forwarder")
    publisher = running.agent.publisher
    assert publisher.connected.is_set()

    tcp_forwarder.stalled.set()
    dom = domain()
    dom.create()
    wait_for(lambda: "no confirm for 2s" in caplog.text, timeout=15,
             message=lambda: f"the agent giving the silent broker up: {caplog.text!r}")
    events = wait_for(lambda: len({n.payload.seq for n in received.instance_events(
        dom.UUIDString())}) >= 2 and received.instance_events(dom.UUIDString()), timeout=15,
        message="the events, through the second broker")
    assert [n.event_type for n in events][:2] == ["instance.defined", "instance.started"]
    wait_for(lambda: running.agent.outbox.pending() == 0, timeout=10, message="outbox empty")
    assert f"127.0.0.1:{tcp_forwarder.port}" in caplog.text  # the one given up, named


def test_events_are_written_while_a_silent_broker_holds_a_connection_attempt(
        tmp_path, libvirt_conn, domain, agents, outbox, wait_for):
    """A broker that takes the TCP connection and never answers holds a connection
    attempt for the connect timeout: the outbox goes on being written meanwhile (the
    attempt runs on a thread of its own), so every event is durable at once."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing is ever said
    try:
        url = f"rabbit://guest:guest@127.0.0.1:{silent.getsockname()[1]}/"
        running = agents(make_conf(tmp_path, "silent-exchange", url))
        wait_for(lambda: outbox.pending() >= 1, timeout=10, message="the start inventory")
        dom = domain()
        dom.create()
        dom.suspend()
        started = time.monotonic()
        wait_for(lambda: outbox.pending() >= 4, timeout=10,
                 message=lambda: f"the 3 events in the outbox, have {outbox.pending()}")
        assert time.monotonic() - started < 2.0  # not after the 5 s connect timeout
        assert not running.agent.publisher.connected.is_set()
    finally:
        silent.close()


def test_a_stop_does_not_wait_for_a_connection_attempt_a_silent_broker_holds(
        tmp_path, libvirt_conn, agents, outbox, wait_for):
    """A stop while a connection attempt waits on a silent broker (up to the 5 s
    connect timeout) leaves the attempt behind: the agent stops within its
    shutdown_timeout, and what it wrote stays in the outbox."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"rabbit://guest:guest@127.0.0.1:{silent.getsockname()[1]}/"
        running = agents(make_conf(tmp_path, "silent-exchange", url, shutdown_timeout=1.0))
        wait_for(lambda: outbox.pending() >= 1, timeout=10, message="the start inventory")
        silent.setblocking(False)
        while True:  # the attempts already under way or given up
            try:
                silent.accept()[0].close()
            except BlockingIOError:
                break
        silent.settimeout(15)
        held, _ = silent.accept()  # an attempt that has just begun: about 5 s to go
        stopping = time.monotonic()
        running.stop()
        assert time.monotonic() - stopping < 3.0
        assert outbox.pending() >= 1
        held.close()
    finally:
        silent.close()


def test_events_are_sent_as_written_without_reading_the_outbox_back(
        tmp_path, amqp_isolation, bound_queue, libvirt_conn, domain, agents, wait_for):
    """Once the publisher has caught up with the outbox, the rows the writer commits
    are sent from memory: the outbox is not read for them."""
    probe = Outbox(os.path.join(tmp_path, "probe.sqlite"))
    says_keys = probe.append([(1, "instance.started", b"{}")]) is not None
    probe.close()
    if not says_keys:
        pytest.skip("Outbox.append does not return the keys of the rows it writes")
    received = Received(amqp_isolation, bound_queue)
    running = agents(make_conf(tmp_path, amqp_isolation.exchange, amqp_isolation.transport_url))
    wait_for(received.inventories, timeout=10, message="the start inventory")
    outbox = running.agent.outbox
    reads = []
    fetch_after = outbox.fetch_after
    outbox.fetch_after = lambda *args: reads.append(args) or fetch_after(*args)
    dom = domain()
    vm = dom.UUIDString()
    dom.create()
    for _ in range(10):
        dom.suspend()
        dom.resume()
    wait_for(lambda: len(received.instance_events(vm)) == 22, timeout=10,
             message=lambda: f"22 events, have {len(received.instance_events(vm))}")
    assert reads == []
