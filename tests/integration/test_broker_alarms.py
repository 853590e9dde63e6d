"""Both services under RabbitMQ's resource alarms, and an agent on a node that nacks
everything, on RabbitMQ nodes of the tests' own (never the machine's broker).

- A disk alarm: the consumer applies and acks a backlog but for the one message it
  must dead-letter, which it holds unacked until the alarm clears (its dead letters
  publish on a connection of their own, which the alarm blocks); a clean stop takes
  seconds; the message held returns to the queue.
- A memory alarm: an agent keeps its events in the outbox, says "blocked" in its health
  (degraded) and metrics, stops cleanly within its shutdown_timeout; once the alarm
  clears every event is published and applied.
- A node whose queue rejects every publish (``x-overflow = reject-publish`` at
  ``x-max-length`` 0: RabbitMQ nacks each mandatory publish routed to it): the agent
  retries with back-off, gives the node up after confirm_timeout and publishes every
  event on the next node of transport_url.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid

import kombu
import pytest
import sqlalchemy as sa

from consumer.amqp_queue import BatchQueue
from consumer.db.tables import hosts, journal
from consumer.service import ConsumerService
from consumer.store import Store
from consumer.topology import Topology, declare
from lab.rabbit_node import RabbitNode
from lifecycle_common import broker, wire
from lifecycle_publisher import config as agent_config
from lifecycle_publisher import observability
from lifecycle_publisher.cmd import build_agent
from lifecycle_publisher.outbox import Outbox
from tests.conftest import ServiceThread, wait_for
from tests.integration.test_consumer_service import body
from tests.support.fixtures import require_rabbitmq

pytestmark = pytest.mark.integration
on_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

ROUTING_KEY = "notifications.info"
HOST = "alarm-host-1"
STOP_BUDGET = 10.0  # seconds: [agent] shutdown_timeout's default, and a systemd stop's


@pytest.fixture(scope="module")
def node():
    """One node of the module's own: its alarms are set and cleared by each test."""
    require_rabbitmq()
    started = RabbitNode()
    try:
        started.start()
        yield started
    finally:
        started.stop()


@contextlib.contextmanager
def alarm(node: RabbitNode, kind: str):
    """A real resource alarm on ``node`` (``disk`` or ``memory``) while inside; cleared
    on the way out, whatever happened."""
    raise_it, clear_it = {
        "disk": (("set_disk_free_limit", "100000GB"), ("set_disk_free_limit", "50MB")),
        "memory": (("set_vm_memory_high_watermark", "0.0000001"),
                   ("set_vm_memory_high_watermark", "0.4")),
    }[kind]
    try:
        node.ctl(*raise_it)
        wait_for(lambda: kind in alarms(node), timeout=30, interval=0.2,
                 message=f"the {kind} alarm")
        yield
    finally:
        node.ctl(*clear_it)
        wait_for(lambda: kind not in alarms(node), timeout=30, interval=0.2,
                 message=f"the {kind} alarm cleared")


def alarms(node: RabbitNode) -> str:
    return node.ctl("eval", "rabbit_alarm:get_alarms().")


def queue_counts(node: RabbitNode, queue: str) -> tuple[int, int]:
    """(ready, unacked) of ``queue``, as the broker counts them."""
    for line in node.ctl("list_queues", "name", "messages_ready",
                         "messages_unacknowledged").splitlines():
        name, _, counts = line.partition("\t")
        if name == queue:
            ready, unacked = counts.split("\t")
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue} on {node.node}")


class NodeBroker:
    """Names of this test's own on the node, and a connection to publish and look."""

    def __init__(self, node: RabbitNode, label: str):
        self.node = node
        self.exchange = f"alarm-{label}-{uuid.uuid4().hex[:8]}"
        self.conn = kombu.Connection(node.url, connect_timeout=5)
        self.conn.connect()
        self.channel = self.conn.channel()

    @property
    def transport_url(self) -> str:
        return self.node.transport_url

    def topology(self) -> Topology:
        return Topology(exchange=self.exchange, queue=f"{self.exchange}-consumer",
                        routing_key=ROUTING_KEY)

    def publish(self, data: bytes, **properties) -> None:
        import amqp
        self.channel.basic_publish(amqp.Message(data, delivery_mode=2, **properties),
                                   exchange=self.exchange, routing_key=ROUTING_KEY)

    def count(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).message_count

    def close(self) -> None:
        with contextlib.suppress(Exception):
            channel = self.conn.channel()
            topology = self.topology()
            for queue in (topology.queue, topology.dead_letter_queue):
                channel.queue_delete(queue)
            for exchange in (self.exchange, topology.dead_letter_exchange):
                channel.exchange_delete(exchange)
        broker.release(self.conn)


@pytest.fixture
def on_node(node):
    made: list[NodeBroker] = []

    def make(label: str, where: RabbitNode | None = None) -> NodeBroker:
        made.append(NodeBroker(where or node, label))
        return made[-1]
    yield make
    for nb in made:
        nb.close()


class Consumer(ServiceThread):
    def __init__(self, nb: NodeBroker, engine):
        connector = broker.Connector(broker.plain(nb.transport_url))
        super().__init__(ConsumerService(
            BatchQueue(connector, nb.topology(), batch_size=50, linger=0.002, retry_max=0.5),
            Store(engine), host_down_after=60.0, retry_max=0.5), name="consumer")


def journal_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(journal)).scalar()


def timed_stop(service: ServiceThread) -> float:
    started = time.monotonic()
    service.stop(timeout=60)
    return time.monotonic() - started


# -- the consumer under a disk alarm -----------------------------------------------------

@on_sqlite
def test_the_consumer_drains_a_backlog_during_a_disk_alarm_and_dead_letters_after(
        node, on_node, db_engine, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle_common.broker")
    nb = on_node("consumer")
    topology = nb.topology()
    declare(nb.channel, topology)
    for seq in range(1, 31):
        nb.publish(body(seq, str(uuid.uuid4())), message_id=f"m{seq}")
        if seq == 15:
            nb.publish(b"\x00not json", message_id="unreadable")
    running: list[Consumer] = []
    try:
        with alarm(node, "disk"):
            first = Consumer(nb, db_engine)
            running.append(first)
            service = first.service
            wait_for(lambda: journal_count(db_engine) == 30, timeout=20,
                     message=lambda: f"30 applied, have {journal_count(db_engine)}")
            # Every good message acked; the unreadable one held, unacked, its dead
            # letter waiting on a connection the broker blocked.
            wait_for(lambda: queue_counts(node, topology.queue) == (0, 1), timeout=15,
                     interval=0.2, message=lambda: f"(ready, unacked) = (0, 1), have "
                                                   f"{queue_counts(node, topology.queue)}")
            wait_for(lambda: service.queue.dead_letters.blocked.is_blocked, timeout=10,
                     message="the dead-letter connection blocked")
            assert queue_counts(node, topology.dead_letter_queue) == (0, 0)
            check = service.health().as_dict()["checks"]["broker"]
            assert check["status"] == "degraded", check
            assert "blocked" in check["detail"] and "low on disk" in check["detail"], check
            assert "1 messages to dead-letter held" in check["detail"], check
            registry = service.metrics.registry
            assert registry.get_sample_value("lifecycle_consumer_broker_blocked") == 1
            assert registry.get_sample_value("lifecycle_consumer_dead_letters_held") == 1
            assert "blocked this service's dead-letter connection: low on disk" in caplog.text

            stop_took = timed_stop(first)
            print(f"\nconsumer stop during a disk alarm: {stop_took:.3f}s")
            assert stop_took <= STOP_BUDGET
            assert service.stats.applied == 30 and service.stats.dead_lettered == 0
            # What was held returns to the queue; the next consumer holds it in turn.
            assert queue_counts(node, topology.queue) == (1, 0)
            second = Consumer(nb, db_engine)
            running.append(second)
            wait_for(lambda: second.service.queue.dead_letters.held == 1, timeout=15,
                     message="the second consumer holding the unreadable message")
            cleared = time.monotonic()
        # The first consumer's copy was written before it stopped: the broker reads it
        # once the alarm clears, so the dead-letter queue may hold two copies (at least
        # once); the original is acked once, by the consumer whose copy was confirmed.
        dlq = topology.dead_letter_queue
        wait_for(lambda: second.service.stats.dead_lettered == 1, timeout=30,
                 message=lambda: "the dead letter, once the alarm cleared: " + node.ctl(
                     "list_queues", "name", "messages_ready", "messages_unacknowledged"))
        wait_for(lambda: queue_counts(node, topology.queue) == (0, 0), timeout=15,
                 interval=0.2)
        print(f"dead-lettered {time.monotonic() - cleared:.2f}s after the alarm cleared")
        registry = second.service.metrics.registry
        assert registry.get_sample_value("lifecycle_consumer_broker_blocked") == 0
        assert registry.get_sample_value("lifecycle_consumer_broker_blocked_seconds_total") > 0
        assert second.service.health().as_dict()["checks"]["broker"]["status"] == "ok"
        assert "unblocked this service's dead-letter connection" in caplog.text
    finally:
        for consumer in running:
            if consumer.thread.is_alive():
                consumer.stop()
    copies = []
    while (dead := nb.channel.basic_get(dlq, no_ack=True)) is not None:
        copies.append(dead.properties["message_id"])
    assert copies in (["unreadable"], ["unreadable"] * 2), copies
    assert journal_count(db_engine) == 30


# -- the agent under a memory alarm --------------------------------------------------------

def agent_conf(state_path, exchange: str, transport_url: str, **agent_opts):
    options = {"heartbeat_interval": 1.0, "broker_retry_interval_max": 0.5,
               "shutdown_timeout": STOP_BUDGET, "inventory_interval": 0, **agent_opts}
    return agent_config.in_code(
        {"host": HOST, "transport_url": transport_url, "control_exchange": exchange,
         "state_path": str(state_path)},
        libvirt={"connection_uri": "test:///default", "reconnect_interval_max": 0.5},
        agent=options)


def journaled(engine, vm: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(journal.c.event_type)
                                 .where(journal.c.instance_uuid == vm)
                                 .order_by(journal.c.seq)).scalars())


def host_known(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(hosts.c.name).where(hosts.c.name == HOST)).first() is not None


@on_sqlite
def test_an_agent_keeps_its_events_during_a_memory_alarm_and_stops_in_time(
        node, on_node, db_engine, domain, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle_common.broker")
    nb = on_node("agent")
    declare(nb.channel, nb.topology())
    consumer = Consumer(nb, db_engine)
    conf = agent_conf(tmp_path, nb.exchange, nb.transport_url)
    agent = ServiceThread(build_agent(conf), name="agent")
    outbox = Outbox(os.path.join(tmp_path, "outbox.sqlite"))
    try:
        wait_for(lambda: host_known(db_engine), timeout=20, message="the start inventory applied")
        wait_for(lambda: outbox.pending() == 0, timeout=10)
        with alarm(node, "memory"):
            dom = domain()  # defined, then started, paused, resumed: 4 events
            vm = dom.UUIDString()
            dom.create()
            dom.suspend()
            dom.resume()
            publisher = agent.service.publisher
            wait_for(lambda: publisher.blocked.is_blocked, timeout=15,
                     message="the agent's connection blocked")
            assert publisher.blocked.reason == "low on memory"
            wait_for(lambda: outbox.pending() >= 4, timeout=10,
                     message=lambda: f"4 events in the outbox, have {outbox.pending()}")
            check = agent.service.health().as_dict()["checks"]["broker"]
            assert check["status"] == "degraded", check
            assert "blocked" in check["detail"] and "low on memory" in check["detail"]
            assert "events wait in the outbox" in check["detail"]
            registry = observability.registry(agent.service)
            assert registry.get_sample_value("lifecycle_agent_broker_blocked") == 1
            assert journaled(db_engine, vm) == []

            stop_took = timed_stop(agent)
            print(f"\nagent stop during a memory alarm: {stop_took:.3f}s")
            assert stop_took <= STOP_BUDGET
            assert agent.exit_status == 0
            assert outbox.pending() >= 4  # kept for the next start
            assert "stopping while" in caplog.text and "blocks the connection" in caplog.text
            agent = ServiceThread(build_agent(conf), name="agent")  # started again, still blocked
            wait_for(lambda: agent.service.publisher.blocked.is_blocked, timeout=15)
            cleared = time.monotonic()
        want = ["instance.defined", "instance.started", "instance.paused", "instance.resumed"]
        wait_for(lambda: journaled(db_engine, vm) == want, timeout=30,
                 message=lambda: f"{want} applied, have {journaled(db_engine, vm)}")
        print(f"every event applied {time.monotonic() - cleared:.2f}s after the alarm cleared")
        wait_for(lambda: outbox.pending() == 0, timeout=10, message="the outbox emptied")
        assert agent.service.health().as_dict()["checks"]["broker"]["status"] == "ok"
        registry = observability.registry(agent.service)
        assert registry.get_sample_value("lifecycle_agent_broker_blocked") == 0
        assert registry.get_sample_value("lifecycle_agent_broker_blocked_seconds_total") > 0
    finally:
        outbox.close()
        if agent.thread.is_alive():
            agent.stop()
        consumer.stop()


# -- a node that nacks everything ------------------------------------------------------------

def test_an_agent_moves_from_a_node_that_nacks_everything_to_the_next(
        node, rabbit_node_factory, on_node, domain, tmp_path, caplog):
    second_node = rabbit_node_factory()
    caplog.set_level(logging.WARNING, logger="lifecycle_publisher.publisher")
    refusing, accepting = on_node("nacks"), on_node("ok", second_node)
    accepting.exchange = refusing.exchange  # the same exchange name on both nodes
    for nb, arguments in ((refusing, {"x-max-length": 0, "x-overflow": "reject-publish"}),
                          (accepting, {})):
        nb.channel.exchange_declare(nb.exchange, "topic", durable=True, auto_delete=False)
        nb.channel.queue_declare(f"{nb.exchange}-q", durable=True, auto_delete=False,
                                 arguments=arguments)
        nb.channel.queue_bind(f"{nb.exchange}-q", nb.exchange, "notifications.*")
    url = (f"{node.transport_url[:-1]},"  # the refusing node first, then the other
           f"{second_node.transport_url[len('rabbit://'):]}")
    confirm_timeout = 3.0
    conf = agent_conf(tmp_path, refusing.exchange, url, confirm_timeout=confirm_timeout,
                      broker_retry_interval_max=4.0, heartbeat_interval=30.0)
    agent = ServiceThread(build_agent(conf), name="agent")
    try:
        publisher = agent.service.publisher
        wait_for(lambda: publisher.ledger.nacks >= 1, timeout=15, message="a nack")
        first_nack = time.monotonic()
        dom = domain()
        dom.create()  # inventory, defined, started: 3 rows refused by the first node
        wait_for(lambda: publisher.sessions >= 2 and publisher.connected.is_set(),
                 timeout=30, message="the agent moving to the second node")
        moved_after = time.monotonic() - first_nack
        nacks = publisher.ledger.nacks
        assert "nacked everything for 3s" in caplog.text
        assert f"127.0.0.1:{node.port}" in caplog.text  # the node given up, named
        queue = f"{accepting.exchange}-q"
        wait_for(lambda: accepting.count(queue) >= 3, timeout=15,
                 message=lambda: f"3 rows on the second node, have {accepting.count(queue)}")
        wait_for(lambda: agent.service.outbox.pending() == 0, timeout=10)
        notes = []
        while (message := accepting.channel.basic_get(queue, no_ack=True)) is not None:
            notes.append(wire.decode(message.body))
        kinds = [n.event_type for n in notes if n.event_type != "host.heartbeat"]
        assert sorted(kinds) == ["host.inventory", "instance.defined", "instance.started"]
        assert refusing.count(f"{refusing.exchange}-q") == 0
        # Back-off: rounds at 0.5, 1, 2 s (and their jitter) fit in confirm_timeout, so
        # each row is nacked at most 5 times: not once per round trip.
        rows = 3
        print(f"\nnacks before moving: {nacks} (rows {rows}); moved {moved_after:.2f}s "
              "after the first nack")
        assert nacks <= rows * 5, nacks
        assert moved_after <= confirm_timeout + 5.0
        assert caplog.text.count("refused outbox row") <= 2  # said once per run of nacks
    finally:
        if agent.thread.is_alive():
            agent.stop()
        for nb in (refusing, accepting):
            with contextlib.suppress(Exception):
                nb.channel.queue_delete(f"{nb.exchange}-q")
