"""pytest fixtures for TLS tests and RabbitMQ nodes of a test's own.

Load with ``pytest_plugins = ["tests.support.fixtures"]``. The fixtures:

- ``test_pki`` (session): a ``Pki`` (CA, other CA, server certificate for ``localhost``,
  ``client_cert(cn)``) in a temporary directory;
- ``tls_broker`` (session): one started ``RabbitNode`` with TLS and EXTERNAL login,
  shared by the whole session and stopped at its end;
- ``rabbit_node_factory`` (per test): ``make(**kwargs) -> RabbitNode``, started; every
  node made is stopped at the end of the test;
- ``rabbitmq_installed`` (per test): nothing, but skips as below, for tests that run
  RabbitMQ's scripts themselves;
- ``rabbit_cluster`` (per module): a started three-node ``RabbitCluster``, each node in
  a network namespace of its own (``.lab``, a ``NetLab``, cuts traffic between them),
  destroyed at the end of the module;
- ``netns_available`` (per test): nothing, but skips as below when network namespaces
  cannot be made (no ``ip``, not root).

Where RabbitMQ (or openssl, or ``ip``) is not installed these skip, and fail under ``CI=true``,
the convention of ``require_service`` in tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.certs import Pki, make_pki
from lab.netlab import ip_available
from lab.rabbit_cluster import RabbitCluster
from lab.rabbit_node import RabbitNode, rabbitmq_installed

__all__ = ["netns_available_fixture", "pki_fixture", "rabbit_cluster_fixture",
           "rabbit_node_factory", "rabbitmq_installed_fixture", "require_netns",
           "require_rabbitmq", "tls_broker_fixture"]


def _require(what: str, present: bool, install: str) -> None:
    """Skip the test (fail it under CI=true) when ``what`` is not installed."""
    if present:
        return
    message = f"{what} is not installed; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_rabbitmq() -> None:
    """Skip the test (fail it under CI=true) when RabbitMQ is not installed."""
    _require("RabbitMQ", rabbitmq_installed(), "apt-get install rabbitmq-server")


@pytest.fixture(name="rabbitmq_installed")
def rabbitmq_installed_fixture() -> None:
    """Skips the test (fails it under CI=true) when RabbitMQ is not installed."""
    require_rabbitmq()


@pytest.fixture(scope="session", name="test_pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's test PKI (see ``lab.certs``)."""
    _require("openssl", shutil.which("openssl") is not None, "apt-get install openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session", name="tls_broker")
def tls_broker_fixture(test_pki: Pki) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the session's own: plain AMQP on ``.port`` (``.url``, as its
    administrator), TLS on ``.tls_port`` with ``test_pki``'s server certificate
    (valid for ``localhost`` only), EXTERNAL login by the client certificate's CN."""
    require_rabbitmq()
    node = RabbitNode(pki=test_pki)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def rabbit_node_factory() -> Iterator[Callable[..., RabbitNode]]:
    """``make(**kwargs)``: a started ``RabbitNode(**kwargs)`` (e.g. ``pki=test_pki``,
    ``home=`` a directory shared by a cluster's nodes); all stopped after the test."""
    require_rabbitmq()
    nodes: list[RabbitNode] = []

    def make(**kwargs: Any) -> RabbitNode:
        node = RabbitNode(**kwargs)
        nodes.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in reversed(nodes):
            node.stop()


def require_netns() -> None:
    """Skip the test (fail it under CI=true) when network namespaces cannot be made
    here (iproute2's ``ip`` missing, or not running as root)."""
    _require("iproute2 (ip netns, as root)", ip_available(),
             "apt-get install iproute2, and run the tests as root")


@pytest.fixture(name="netns_available")
def netns_available_fixture() -> None:
    """Skips the test (fails it under CI=true) when network namespaces cannot be made."""
    require_netns()


@pytest.fixture(scope="module", name="rabbit_cluster")
def rabbit_cluster_fixture() -> Iterator[RabbitCluster]:
    """A started three-node ``RabbitCluster`` of the module's own (nodes ``1..3`` in
    namespaces ``n1..n3`` of ``.lab``; pause_minority, net_ticktime 6 s); destroyed at
    the end of the module, or earlier by a test calling ``destroy()``."""
    require_rabbitmq()
    require_netns()
    cluster = RabbitCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
