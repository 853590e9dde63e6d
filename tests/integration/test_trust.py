"""Trust, against a RabbitMQ node of the tests' own with a TLS listener (``tls_broker``):
TLS with server and hostname verification, client certificates and EXTERNAL login,
per-host broker users with the least permissions each service needs, and a consumer
that refuses what one host's user says about another host.

The node's certificate names ``localhost`` only, so ``127.0.0.1`` is a wrong hostname.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import pytest
import sqlalchemy as sa

from consumer import admission
from consumer.amqp_queue import REASON_HEADER, BatchQueue
from consumer.cmd import manage
from consumer.db.tables import hosts, instances, journal
from consumer.service import ConsumerService
from consumer.store import Store
from consumer.topology import Topology
from lifecycle_common import broker
from lifecycle_publisher import config as agent_config
from lifecycle_publisher.cmd import build_agent
from lifecycle_publisher.outbox import Outbox
from tests.conftest import AmqpIsolation, ServiceThread, unique

pytestmark = pytest.mark.integration

DOMAIN_XML = ("<domain type='test'><name>{name}</name><memory>1024</memory>"
              "<os><type>hvm</type></os></domain>")


# -- set-up -----------------------------------------------------------------------------

class Node:
    """The TLS node, one test's exchange and queue on it, and users made for the test."""

    def __init__(self, node, pki):
        self.node = node
        self.pki = pki
        self.isolation = AmqpIsolation(node.url)  # as the node's administrator
        self.exchange = self.isolation.declare_exchange()
        self.queue = self.isolation.queue_name("consumer")
        self.users: list[str] = []

    def tls_url(self, host: str = "localhost", user: str = "", password: str = "") -> str:
        credentials = f"{user}:{password}@" if user else ""
        return f"rabbit://{credentials}{host}:{self.node.tls_port}/"

    def tls_options(self, cn: str | None = None, ca=None) -> dict:
        options = {"ssl": True, "ssl_ca_file": str(ca or self.pki.ca_cert)}
        if cn is not None:
            cert, key = self.pki.client_cert(cn)
            options.update(ssl_cert_file=str(cert), ssl_key_file=str(key),
                           rabbit_login_method="EXTERNAL")
        return options

    def host_user(self, name: str) -> str:
        """A broker user for compute host ``name`` with the least an agent needs: write
        to the exchange, on the notifications routing key only; nothing else. It logs
        in with its certificate (CN = its name)."""
        self.node.add_user(name)
        self.users.append(name)
        exchange = re.escape(self.exchange)
        self.node.set_permissions(name, configure="^$", write=f"^{exchange}$", read="^$")
        self.node.set_topic_permissions(name, self.exchange, write=r"^notifications\.info$",
                                        read="^$")
        return name

    def consumer_user(self) -> tuple[str, str]:
        """A broker user for the consumer with the least it needs: declare and bind its
        queue, dead-letter exchange and queue; read its queue; write dead letters."""
        name, password = unique("consumer"), uuid.uuid4().hex
        self.node.add_user(name, password)
        self.users.append(name)
        q, x = re.escape(self.queue), re.escape(self.exchange)
        self.node.set_permissions(
            name, configure=f"^({x}|{q}|{q}\\.dlx|{q}\\.dlq)$",
            write=f"^({q}|{q}\\.dlx|{q}\\.dlq)$", read=f"^({x}|{q}|{q}\\.dlx)$")
        return name, password

    def close(self):
        for user in self.users:
            self.node.delete_user(user)
        self.isolation.close()


@pytest.fixture
def node(tls_broker, test_pki):
    n = Node(tls_broker, test_pki)
    yield n
    n.close()


def agent_conf(tmp_path, node: Node, host: str, transport_url: str, rabbit: dict, **agent):
    state = tmp_path / f"agent-{host}-{uuid.uuid4().hex[:6]}"
    return agent_config.in_code(
        {"host": host, "transport_url": transport_url, "control_exchange": node.exchange,
         "state_path": str(state)},
        libvirt={"connection_uri": "test:///default", "reconnect_interval_max": 0.5},
        agent={"heartbeat_interval": 0.2, "broker_retry_interval_max": 0.3,
               "shutdown_timeout": 3.0, "inventory_interval": 0, **agent},
        oslo_messaging_rabbit=rabbit)


@pytest.fixture
def running():
    started: list[ServiceThread] = []

    def start(service) -> ServiceThread:
        started.append(ServiceThread(service))
        return started[-1]
    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


def consumer_service(node: Node, db_engine, user: str, password: str, policy) -> ConsumerService:
    conf = agent_config.in_code(
        {"transport_url": node.tls_url(user=user, password=password)},
        oslo_messaging_rabbit={**node.tls_options(), "rabbit_login_method": "PLAIN"})
    topology = Topology(exchange=node.exchange, queue=node.queue,
                        routing_key="notifications.info")
    return ConsumerService(BatchQueue(broker.Connector(broker.settings(conf)), topology, 50, 0),
                           Store(db_engine), host_down_after=60, retry_max=0.3, policy=policy)


def rows(engine, table, where=None) -> list:
    with engine.connect() as conn:
        query = sa.select(table) if where is None else sa.select(table).where(where)
        return conn.execute(query).all()


# -- the tests --------------------------------------------------------------------------

@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_per_host_users_over_tls_and_a_host_that_speaks_for_another(
        node, db_engine, libvirt_conn, tmp_path, running, wait_for):
    """Two compute hosts, each with its own broker user holding only write on the
    exchange for the notifications key, log in with their certificates (EXTERNAL)
    over TLS; the consumer, under its own least-permission user, applies what
    compute-a says of itself and dead-letters what compute-b's user says of
    compute-a, changing nothing."""
    host_a, host_b = node.host_user(unique("compute-a")), node.host_user(unique("compute-b"))
    consumer_user = node.consumer_user()
    strict = admission.Policy(identity=admission.PublisherIdentity.HOST_USER)
    consumer = running(consumer_service(node, db_engine, *consumer_user, strict))
    wait_for(lambda: consumer.service.queue._conn is not None, timeout=15,
             message="the consumer connected over TLS")

    agent_a = build_agent(agent_conf(tmp_path, node, host_a, node.tls_url(),
                                     node.tls_options(host_a)))
    running(agent_a)
    wait_for(lambda: rows(db_engine, hosts, hosts.c.name == host_a), timeout=20,
             message="compute-a's start inventory applied")
    dom = libvirt_conn.defineXML(DOMAIN_XML.format(name=f"tr-{uuid.uuid4().hex[:8]}"))
    try:
        dom.create()
        vm = dom.UUIDString()
        wait_for(lambda: [r for r in rows(db_engine, instances, instances.c.uuid == vm)
                          if r.power_state == "running" and r.host == host_a],
                 timeout=15, message="compute-a's start of the domain applied")
    finally:
        dom.destroy()
        dom.undefine()
    epoch_a = rows(db_engine, hosts, hosts.c.name == host_a)[0].epoch

    # compute-b's agent, misconfigured (or malicious) to say it is compute-a, with an
    # epoch two minutes ahead (within max_clock_skew): were it believed, compute-a's
    # real events would look older than its.
    rogue_conf = agent_conf(tmp_path, node, host_a, node.tls_url(), node.tls_options(host_b))
    ahead = Outbox(f"{rogue_conf.state_path}/outbox.sqlite")
    ahead.open_epoch(now=time.time() + 120)
    ahead.close()
    rogue = build_agent(rogue_conf)
    journal_before = len(rows(db_engine, journal))
    running(rogue)
    dlq = f"{node.queue}.dlq"
    wait_for(lambda: node.isolation.message_count(dlq) >= 2, timeout=20,
             message="the rogue's inventory and heartbeats dead-lettered")
    reasons = {m.properties["application_headers"][REASON_HEADER]
               for m in node.isolation.get_all(dlq)}
    assert reasons == {f"user {host_b!r} may not speak for host {host_a!r}: publisher_identity "
                       f"= host_user accepts only user {host_a!r} or a trusted publisher"}
    assert rogue.epoch > epoch_a + 100
    assert rows(db_engine, hosts, hosts.c.name == host_a)[0].epoch == epoch_a
    assert not [r for r in rows(db_engine, journal) if r.epoch == rogue.epoch]
    assert len(rows(db_engine, journal)) == journal_before


def test_a_stamp_of_another_users_name_is_refused_by_the_broker_itself(
        node, libvirt_conn, tmp_path, running, caplog, wait_for):
    """An agent told to stamp compute-a's user while it logs in as compute-b: RabbitMQ
    closes the channel (406), nothing is delivered, the events wait in the outbox."""
    host_a, host_b = node.host_user(unique("compute-a")), node.host_user(unique("compute-b"))
    queue = node.isolation.declare_queue("all", "notifications.info", node.exchange)
    caplog.set_level(logging.WARNING, logger="lifecycle_publisher.publisher")
    conf = agent_conf(tmp_path, node, host_a, node.tls_url(), node.tls_options(host_b),
                      broker_user=host_a)
    agent = build_agent(conf)
    running(agent)
    wait_for(lambda: "PRECONDITION_FAILED - user_id property set to" in caplog.text, timeout=20,
             message="the broker refusing the forged user_id")
    assert f"but authenticated user was '{host_b}'" in caplog.text
    assert node.isolation.message_count(queue) == 0
    assert agent.outbox.pending() >= 1


@pytest.mark.parametrize(("how", "logged"), [
    ("wrong CA", "TLS: the broker's certificate was refused (self-signed certificate in "
                 "certificate chain); check ssl_ca_file"),
    ("wrong hostname", "TLS: the broker's certificate was refused (IP address mismatch, "
                       "certificate is not valid for '127.0.0.1'.)"),
])
def test_a_broker_that_cannot_prove_its_name_gets_nothing(
        node, libvirt_conn, tmp_path, running, caplog, wait_for, how, logged):
    host = node.host_user(unique("compute-a"))
    options = node.tls_options(host, ca=node.pki.other_ca_cert if how == "wrong CA" else None)
    url = node.tls_url(host="127.0.0.1" if how == "wrong hostname" else "localhost")
    caplog.set_level(logging.WARNING, logger="lifecycle_publisher.publisher")
    agent = build_agent(agent_conf(tmp_path, node, host, url, options))
    running(agent)
    wait_for(lambda: logged in caplog.text, timeout=20, message=f"a log line saying {logged}")
    assert not agent.publisher.connected_once
    outbox = Outbox(agent.outbox.path)
    try:
        wait_for(lambda: outbox.pending() >= 1, timeout=10, message="the inventory waiting")
    finally:
        outbox.close()


def test_hostname_verification_can_be_turned_off_but_not_the_chain(node, test_pki):
    conf = agent_config.in_code(
        {"transport_url": node.tls_url(host="127.0.0.1", user=node.node.admin_user,
                                       password=node.node.admin_password)},
        oslo_messaging_rabbit={**node.tls_options(), "rabbit_login_method": "PLAIN",
                               "ssl_enforce_hostname_verification": False})
    conn, _ = broker.Connector(broker.settings(conf)).connect()
    broker.release(conn)
    conf.set_override("ssl_ca_file", str(test_pki.other_ca_cert), group="oslo_messaging_rabbit")
    with pytest.raises(broker.BrokerConnectError, match="certificate was refused"):
        broker.Connector(broker.settings(conf)).connect()


def test_failover_skips_a_broker_that_refuses_and_says_why(node):
    closed = _closed_port()
    settings = broker.plain(f"rabbit://{node.node.admin_user}:{node.node.admin_password}"
                            f"@127.0.0.1:{closed},{node.node.admin_user}:"
                            f"{node.node.admin_password}@127.0.0.1:{node.node.port}/")
    connector = broker.Connector(settings)
    conn, used = connector.connect()
    broker.release(conn)
    assert used.port == node.node.port
    with pytest.raises(broker.BrokerConnectError) as caught:
        broker.Connector(broker.plain(f"rabbit://u:p@127.0.0.1:{closed}/")).connect()
    assert str(caught.value) == f"amqp://u@127.0.0.1:{closed}/: connection refused"
    with pytest.raises(broker.BrokerConnectError, match="login refused"):
        broker.Connector(broker.plain(f"rabbit://nobody:x@127.0.0.1:{node.node.port}/")).connect()


def test_manage_reads_the_queue_over_tls_with_a_client_certificate(node, tmp_path, capsys,
                                                                   wait_for):
    """An operator's user that may do nothing but log in reads the queue's state with
    lifecycle-manage, over TLS with its certificate; the wrong CA gets nothing."""
    import amqp
    channel = node.isolation.channel
    channel.queue_declare(node.queue, durable=True, auto_delete=False)
    channel.queue_declare(f"{node.queue}.dlq", durable=True, auto_delete=False)
    channel.basic_publish(amqp.Message(b"{}"), exchange="", routing_key=node.queue)
    wait_for(lambda: node.isolation.message_count(node.queue) == 1, timeout=10)
    reader = unique("operator")
    node.node.add_user(reader)
    node.users.append(reader)
    node.node.set_permissions(reader, configure="^$", write="^$", read="^$")
    cert, key = node.pki.client_cert(reader)
    config = tmp_path / "manage.conf"
    config.write_text(
        f"[DEFAULT]\ntransport_url = rabbit://localhost:{node.node.tls_port}/?ssl=1\n"
        f"[oslo_messaging_rabbit]\nssl_ca_file = {node.pki.ca_cert}\n"
        f"ssl_cert_file = {cert}\nssl_key_file = {key}\nrabbit_login_method = EXTERNAL\n"
        f"[consumer]\nqueue_name = {node.queue}\n")
    assert manage.main(["--config-file", str(config), "queue", "status", "--format", "json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out) == [
        {"queue": node.queue, "messages": 1, "consumers": 0},
        {"queue": f"{node.queue}.dlq", "messages": 0, "consumers": 0}]
    config.write_text(config.read_text().replace(str(node.pki.ca_cert),
                                                 str(node.pki.other_ca_cert)))
    assert manage.main(["--config-file", str(config), "queue", "status"]) == 1
    assert "certificate was refused" in capsys.readouterr().err


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
