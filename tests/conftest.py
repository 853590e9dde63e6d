"""Fixtures shared by the integration and system tests.

Real services (RabbitMQ, PostgreSQL, MariaDB, libvirt) are used as they run on the
project's machines. When one is unreachable, a test that needs it is skipped on a
laptop and fails under ``CI=true``, saying which service and how to start it.

Every test against the broker gets its own exchange and queues (``amqp_isolation``), so
tests never see each other's messages; every database test gets emptied tables, or an
empty database of its own (``empty_db_url``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import urllib.parse
import uuid

import pytest

from lab import waiting
from lab.forwarder import TcpForwarder

# Certificates and RabbitMQ nodes of the tests' own (TLS listener, per-host users).
pytest_plugins = ["tests.support.fixtures"]

RABBITMQ_URL = os.environ.get("LIFECYCLE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TRANSPORT_URL = os.environ.get("LIFECYCLE_TEST_TRANSPORT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
POSTGRES_ADMIN_URL = os.environ.get("LIFECYCLE_TEST_POSTGRES_URL",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("LIFECYCLE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")

HOW_TO_START = {
    "RabbitMQ": "rabbitmq-server -detached",
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "MariaDB": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    "libvirt": "pip install libvirt-python (needs Debian's libvirt-dev and pkg-config)",
}

BACKENDS = ["sqlite", "postgresql", "mysql"]


# -- helpers -------------------------------------------------------------------------

def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_service(name: str, check) -> None:
    """Run ``check()``; if it raises, skip the test (or fail it under CI=true) with a
    message naming the service and the command that starts it."""
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        message = (f"{name} is not reachable ({type(exc).__name__}: {exc}); "
                   f"start it with: {HOW_TO_START.get(name, '(see DESIGN.md)')}")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _root_log_handlers_removed():
    """A test that runs a command's ``main`` has oslo.log set the root logger up with a
    handler on that test's captured output, closed once the test ends: a later test's
    log lines (a service thread's) would then fail to be written ("Logging error").
    The handlers a test added are removed after it (pytest's own it removes itself)."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)


# The lab's one wait_for, failing a test as an unmet expectation: wait_for(predicate,
# timeout, message=None, interval=0.01); ``message`` may be a callable.
wait_for = functools.partial(waiting.wait_for, error=AssertionError)


class ServiceThread:
    """A service's ``run()`` on a thread of its own (started at once); what it returned
    is ``exit_status`` once it has ended."""

    def __init__(self, service, name: str | None = None):
        self.service = service
        self.exit_status = None
        self.thread = threading.Thread(target=self._run, name=name or type(service).__name__)
        self.thread.start()

    def _run(self):
        self.exit_status = self.service.run()

    def stop(self, timeout: float = 30.0):
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"


def unique(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _tcp_check(url: str, default_port: int):
    parts = urllib.parse.urlsplit(url)

    def check():
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=2):
            pass
    return check


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    """The ``wait_for(predicate, timeout, interval=0.01, message=...)`` helper."""
    return wait_for


# -- RabbitMQ ------------------------------------------------------------------------

def _check_rabbitmq():
    import kombu
    with kombu.Connection(RABBITMQ_URL, connect_timeout=2,
                          transport_options={"max_retries": 0}) as conn:
        conn.connect()


@pytest.fixture
def rabbitmq():
    """The broker's kombu URL; skips (fails under CI) when RabbitMQ is unreachable."""
    require_service("RabbitMQ", _check_rabbitmq)
    return RABBITMQ_URL


class AmqpIsolation:
    """Unique exchange and queue names for one test, a py-amqp channel to inspect them,
    and the list of what to delete at the end."""

    def __init__(self, url: str):
        import kombu
        self.url = url
        self.transport_url = TRANSPORT_URL
        self.prefix = unique("test")
        self.exchange = self.prefix  # test-<uuid>
        self._exchanges = {self.exchange}
        self._queues: set[str] = set()
        self._conn = kombu.Connection(url, connect_timeout=5)
        self._conn.connect()
        self.channel = self._conn.channel()

    def queue_name(self, label: str = "q") -> str:
        """A unique queue name; it and its consumer-style '.dlq' queue and '.dlx'
        exchange are deleted at the end of the test."""
        name = f"{self.prefix}-{label}"
        self.track(queues=[name, f"{name}.dlq"], exchanges=[f"{name}.dlx"])
        return name

    def track(self, queues=(), exchanges=()) -> None:
        self._queues.update(queues)
        self._exchanges.update(exchanges)

    def declare_exchange(self, name: str | None = None) -> str:
        name = name or self.exchange
        self.track(exchanges=[name])
        self.channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
        return name

    def declare_queue(self, label: str, routing_key: str, exchange: str | None = None) -> str:
        """A durable queue bound to the (declared) test exchange with ``routing_key``."""
        exchange = self.declare_exchange(exchange)
        name = self.queue_name(label)
        self.channel.queue_declare(name, durable=True, auto_delete=False)
        self.channel.queue_bind(name, exchange, routing_key)
        return name

    def publish(self, body: bytes, routing_key: str = "notifications.info",
                exchange: str | None = None, **properties) -> None:
        import amqp
        properties.setdefault("delivery_mode", 2)
        self.channel.basic_publish(amqp.Message(body, **properties),
                                   exchange=exchange or self.exchange, routing_key=routing_key)

    def get(self, queue: str):
        """One message from ``queue`` (acked), or None."""
        return self.channel.basic_get(queue, no_ack=True)

    def get_all(self, queue: str) -> list:
        messages = []
        while (message := self.get(queue)) is not None:
            messages.append(message)
        return messages

    def message_count(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).message_count

    def close(self) -> None:
        try:
            channel = self._conn.channel()
            for queue in sorted(self._queues):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
            for exchange in sorted(self._exchanges):
                with contextlib.suppress(Exception):
                    channel.exchange_delete(exchange)
        finally:
            self._conn.release()


@pytest.fixture
def amqp_isolation(rabbitmq):
    """Per test: exchange ``test-<uuid>``, unique queue names, a channel to publish and
    inspect; at the end every exchange and queue it named is deleted."""
    isolation = AmqpIsolation(rabbitmq)
    try:
        yield isolation
    finally:
        isolation.close()


@pytest.fixture
def tcp_forwarder(rabbitmq):
    """A started ``TcpForwarder`` toward the broker; ``.port``, ``.stop()``, ``.start()``."""
    parts = urllib.parse.urlsplit(rabbitmq)
    forwarder = TcpForwarder((parts.hostname, parts.port or 5672))
    forwarder.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


# -- libvirt -------------------------------------------------------------------------

@pytest.fixture
def libvirt_conn():
    """An open ``test:///default`` connection. In one process every connection to it
    shares the same fake host, so domains changed here raise events in the agent's
    connection; the host resets once the last connection closes."""
    def check():
        import libvirt  # noqa: F401
    require_service("libvirt", check)
    import libvirt
    from lifecycle_publisher.event_source import start_event_loop
    start_event_loop()  # before any connection, so that events reach later ones
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()


# -- databases -----------------------------------------------------------------------

def _server_url(admin_url: str, database: str) -> str:
    import sqlalchemy as sa
    return sa.make_url(admin_url).set(database=database).render_as_string(hide_password=False)


class DatabaseFactory:
    """Creates empty databases (SQLite files, PostgreSQL and MariaDB databases with
    unique names) and drops the server ones at the end of the session."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._created: list[tuple[str, str]] = []

    def check(self, backend: str) -> None:
        if backend == "postgresql":
            require_service("PostgreSQL", lambda: self._admin_execute("postgresql", "SELECT 1"))
        elif backend == "mysql":
            require_service("MariaDB", lambda: self._admin_execute("mysql", "SELECT 1"))

    def _admin_execute(self, backend: str, statement: str) -> None:
        import sqlalchemy as sa
        if backend == "postgresql":
            url = sa.make_url(POSTGRES_ADMIN_URL)
            import psycopg2
            conn = psycopg2.connect(host=url.host or "127.0.0.1", port=url.port or 5432,
                                    user=url.username or "postgres", password=url.password,
                                    dbname=url.database or "postgres", connect_timeout=3)
            conn.autocommit = True
        else:
            url = sa.make_url(MYSQL_ADMIN_URL)
            import pymysql
            conn = pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                                   user=url.username or "root", password=url.password or "",
                                   connect_timeout=3, autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            conn.close()

    def create(self, backend: str) -> str:
        """The SQLAlchemy URL of a new, empty database on ``backend``."""
        self.check(backend)
        name = f"lifecycle_test_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{self._tmp.mktemp('db') / (name + '.sqlite')}"
        if backend == "postgresql":
            self._admin_execute(backend, f'CREATE DATABASE "{name}"')
            self._created.append((backend, name))
            return _server_url(POSTGRES_ADMIN_URL, name)
        if backend == "mysql":
            self._admin_execute(backend, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            self._created.append((backend, name))
            return _server_url(MYSQL_ADMIN_URL, name)
        raise ValueError(backend)

    def drop_all(self) -> None:
        for backend, name in self._created:
            quoted = f'"{name}"' if backend == "postgresql" else f"`{name}`"
            force = " WITH (FORCE)" if backend == "postgresql" else ""
            with contextlib.suppress(Exception):
                self._admin_execute(backend, f"DROP DATABASE IF EXISTS {quoted}{force}")
        self._created.clear()


@pytest.fixture(scope="session")
def database_factory(tmp_path_factory):
    """Session-wide: ``create(backend) -> url`` of an empty database; drops them at the end."""
    factory = DatabaseFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture(scope="session")
def _migrated_databases(database_factory):
    """One database per backend for the whole session, schema made by ``db sync``."""
    cache: dict[str, str] = {}

    def get(backend: str) -> str:
        database_factory.check(backend)
        if backend not in cache:
            from consumer.db import engine as db_engine
            from consumer.db import migrate
            url = database_factory.create(backend)
            engine = db_engine.create(url)
            try:
                migrate.sync(engine)
            finally:
                engine.dispose()
            cache[backend] = url
        return cache[backend]
    return get


@pytest.fixture(params=BACKENDS)
def empty_db_url(request, database_factory):
    """URL of a new empty database, per test, on each backend (parametrized)."""
    return database_factory.create(request.param)


@pytest.fixture(params=BACKENDS)
def db_url(request, _migrated_databases):
    """URL of a migrated database on each backend (parametrized; narrow it with
    ``@pytest.mark.parametrize("db_url", [...], indirect=True)``); its tables are
    emptied before the test."""
    url = _migrated_databases(request.param)
    from consumer.db import engine as db_engine
    from consumer.db.tables import metadata
    engine = db_engine.create(url)
    try:
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()
    return url


@pytest.fixture
def db_engine(db_url):
    """An engine (``consumer.db.engine.create``) on ``db_url``, disposed at the end."""
    from consumer.db import engine as db_engine_module
    engine = db_engine_module.create(db_url)
    try:
        yield engine
    finally:
        engine.dispose()
