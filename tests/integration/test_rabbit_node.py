"""A RabbitMQ node of the tests' own (lab): plain and TLS listeners, certificate
(EXTERNAL) login, and what RabbitMQ's permissions and ``user_id`` check refuse."""

from __future__ import annotations

import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import amqp
import kombu
import pytest

from lab.rabbit_node import RabbitNode, beam_pids, reap_leftovers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def tls_options(ca: Path, hostname: str = "localhost",
                client: tuple[Path, Path] | None = None) -> dict:
    options: dict = {"ca_certs": str(ca), "cert_reqs": ssl.CERT_REQUIRED,
                     "server_hostname": hostname}
    if client is not None:
        options["certfile"], options["keyfile"] = str(client[0]), str(client[1])
    return options


def connect(host: str, **kwargs) -> amqp.Connection:
    conn = amqp.Connection(host=host, connect_timeout=5, **kwargs)
    conn.connect()
    return conn


def publish_confirmed(channel: amqp.Channel, exchange: str, routing_key: str,
                      **properties) -> str:
    """Publish one message on a confirm-mode channel and wait for the broker's verdict:
    'ack' or 'nack', or the channel error the broker closed the channel with (raised)."""
    verdicts: list[str] = []
    channel.events["basic_ack"].add(lambda tag, multiple: verdicts.append("ack"))
    channel.events["basic_nack"].add(lambda tag, multiple: verdicts.append("nack"))
    channel.basic_publish(amqp.Message(b"{}", **properties), exchange=exchange,
                          routing_key=routing_key)
    deadline = time.monotonic() + 5
    while not verdicts:
        assert time.monotonic() < deadline, "no confirm within 5 s"
        channel.connection.drain_events(timeout=1)
    return verdicts[0]


# -- the node, plain and TLS ------------------------------------------------------------

def test_plain_login_as_the_nodes_administrator(tls_broker: RabbitNode):
    assert tls_broker.url.endswith(f"@127.0.0.1:{tls_broker.port}//")
    with kombu.Connection(tls_broker.url, connect_timeout=5) as conn:
        conn.connect()
        assert conn.connection.server_properties["product"] == "RabbitMQ"


def test_tls_to_localhost_with_the_ca_and_hostname_verification(tls_broker, test_pki):
    conn = connect(f"localhost:{tls_broker.tls_port}", userid=tls_broker.admin_user,
                   password=tls_broker.admin_password, login_method="AMQPLAIN",
                   ssl=tls_options(test_pki.ca_cert))
    try:
        assert conn.transport.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()


def test_tls_password_login_needs_an_explicit_login_method(tls_broker, test_pki):
    # The broker offers EXTERNAL over TLS, and py-amqp's default preference puts
    # EXTERNAL before AMQPLAIN/PLAIN: without a client certificate that login is refused.
    with pytest.raises(amqp.exceptions.AccessRefused, match="mechanism EXTERNAL"):
        connect(f"localhost:{tls_broker.tls_port}", userid=tls_broker.admin_user,
                password=tls_broker.admin_password, ssl=tls_options(test_pki.ca_cert))


def test_tls_with_another_ca_fails_verification(tls_broker, test_pki):
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        connect(f"localhost:{tls_broker.tls_port}", userid=tls_broker.admin_user,
                password=tls_broker.admin_password, login_method="AMQPLAIN",
                ssl=tls_options(test_pki.other_ca_cert))


def test_tls_to_the_ip_address_is_a_hostname_mismatch(tls_broker, test_pki):
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        connect(f"127.0.0.1:{tls_broker.tls_port}", userid=tls_broker.admin_user,
                password=tls_broker.admin_password, login_method="AMQPLAIN",
                ssl=tls_options(test_pki.ca_cert, hostname="127.0.0.1"))


# -- certificate login (EXTERNAL) -----------------------------------------------------------

def test_external_login_as_the_user_named_by_the_certificate(tls_broker, test_pki):
    user = f"host-{secrets.token_hex(4)}"
    tls_broker.add_user(user)  # no password: certificate login only
    tls_broker.set_permissions(user, "", ".*", "")
    conn = connect(f"localhost:{tls_broker.tls_port}", login_method="EXTERNAL",
                   ssl=tls_options(test_pki.ca_cert, client=test_pki.client_cert(user)))
    try:
        channel = conn.channel()
        channel.confirm_select()
        # The broker accepts user_id == the logged-in user: the login was as ``user``.
        assert publish_confirmed(channel, "amq.topic", "x", user_id=user) == "ack"
    finally:
        conn.close()
        tls_broker.delete_user(user)


def test_external_login_with_a_cn_that_is_no_user_is_refused(tls_broker, test_pki):
    with pytest.raises(amqp.exceptions.AccessRefused,
                       match="Login was refused using authentication mechanism EXTERNAL"):
        connect(f"localhost:{tls_broker.tls_port}", login_method="EXTERNAL",
                ssl=tls_options(test_pki.ca_cert, client=test_pki.client_cert("nobody-here")))


# -- what a narrowly permitted publisher may do -------------------------------------------------

@dataclass(frozen=True)
class Publisher:
    user: str
    password: str
    other_user: str
    exchange: str
    queue: str


@pytest.fixture(scope="module")
def narrow_publisher(tls_broker: RabbitNode) -> Iterator[Publisher]:
    """A user allowed only to write to one existing topic exchange, and only with the
    routing key ``notifications.info``; the exchange is bound to a queue taking all."""
    tag = secrets.token_hex(4)
    publisher = Publisher(user=f"pub-{tag}", password=secrets.token_hex(8),
                          other_user=f"other-{tag}", exchange=f"exch-{tag}", queue=f"q-{tag}")
    with kombu.Connection(tls_broker.url, connect_timeout=5) as admin:
        channel = admin.channel()
        channel.exchange_declare(publisher.exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(publisher.queue, durable=True, auto_delete=False)
        channel.queue_bind(publisher.queue, publisher.exchange, "#")
    tls_broker.add_user(publisher.user, publisher.password)
    tls_broker.add_user(publisher.other_user, secrets.token_hex(8))
    tls_broker.set_permissions(publisher.user, "^$", f"^{re.escape(publisher.exchange)}$", "^$")
    tls_broker.set_topic_permissions(publisher.user, publisher.exchange,
                                     r"^notifications\.info$", "^$")
    yield publisher
    for user in (publisher.user, publisher.other_user):
        tls_broker.delete_user(user)


@pytest.fixture
def publisher_channel(tls_broker, narrow_publisher) -> Iterator[amqp.Channel]:
    conn = connect(f"127.0.0.1:{tls_broker.port}", userid=narrow_publisher.user,
                   password=narrow_publisher.password)
    try:
        channel = conn.channel()
        channel.confirm_select()
        yield channel
    finally:
        conn.close()


def test_passive_declare_of_the_exchange_is_allowed(publisher_channel, narrow_publisher):
    publisher_channel.exchange_declare(narrow_publisher.exchange, "topic", passive=True)


def test_redeclaring_the_existing_exchange_needs_configure(publisher_channel, narrow_publisher):
    expected = (f"ACCESS_REFUSED - access to exchange '{narrow_publisher.exchange}' in vhost "
                f"'/' refused for user '{narrow_publisher.user}'")
    with pytest.raises(amqp.exceptions.AccessRefused, match=re.escape(expected)) as error:
        publisher_channel.exchange_declare(narrow_publisher.exchange, "topic", durable=True,
                                           auto_delete=False)
    assert error.value.code == 403


def test_publishing_with_the_permitted_routing_key_is_confirmed(publisher_channel,
                                                                 narrow_publisher):
    assert publish_confirmed(publisher_channel, narrow_publisher.exchange,
                             "notifications.info") == "ack"


def test_another_routing_key_closes_the_channel_with_403(publisher_channel, narrow_publisher):
    expected = (f"ACCESS_REFUSED - access to topic 'other.info' in exchange "
                f"'{narrow_publisher.exchange}' in vhost '/' refused for user "
                f"'{narrow_publisher.user}'")
    with pytest.raises(amqp.exceptions.AccessRefused, match=re.escape(expected)) as error:
        publish_confirmed(publisher_channel, narrow_publisher.exchange, "other.info")
    assert error.value.code == 403
    assert error.value.method_name == "Basic.publish"


def test_user_id_of_another_user_closes_the_channel_with_406(publisher_channel,
                                                              narrow_publisher):
    expected = (f"PRECONDITION_FAILED - user_id property set to '{narrow_publisher.other_user}'"
                f" but authenticated user was '{narrow_publisher.user}'")
    with pytest.raises(amqp.exceptions.PreconditionFailed, match=re.escape(expected)) as error:
        publish_confirmed(publisher_channel, narrow_publisher.exchange, "notifications.info",
                          user_id=narrow_publisher.other_user)
    assert error.value.code == 406


def test_user_id_of_the_logged_in_user_is_confirmed(publisher_channel, narrow_publisher):
    assert publish_confirmed(publisher_channel, narrow_publisher.exchange, "notifications.info",
                             user_id=narrow_publisher.user) == "ack"


# -- the node's own lifecycle ------------------------------------------------------------------

def test_stop_is_idempotent_and_leaves_nothing(rabbit_node_factory: Callable[..., RabbitNode]):
    node = rabbit_node_factory()
    assert node.tls_port is None
    assert node.running
    node.stop()
    node.stop()
    assert not node.running
    assert not node.directory.exists()


def test_a_node_whose_owner_died_is_reaped(rabbitmq_installed):
    script = ("import os, signal\n"
              "from lab.rabbit_node import RabbitNode\n"
              "node = RabbitNode()\n"
              "node.start()\n"
              "print(node.node, node.directory, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.stdout, f"the owner did not start its node: {result.stderr}"
    node, directory = result.stdout.split()
    try:
        assert beam_pids(node), "the node should outlive its killed owner"
        assert node in reap_leftovers()
        deadline = time.monotonic() + 10
        while beam_pids(node):
            assert time.monotonic() < deadline, f"{node} still runs after reaping"
            time.sleep(0.05)
        assert not Path(directory).exists()
    finally:
        reap_leftovers()
