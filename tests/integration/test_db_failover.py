"""PostgreSQL failover under load: a real ConsumerService on a multi-host URL
(``?host=primary&host=standby&target_session_attrs=read-write``) over a primary and its
synchronous standby of the test's own (``lab.pg_pair``), while the test
publishes a steady stream of events. The primary goes away (stopped, or fenced
read-only and left running) and the standby is promoted. Afterwards every event
published is in the journal of the new primary exactly once, and the first batch was
committed there within 5 s of the promotion.

The consumer runs with the production back-off for the broker ([consumer]
retry_interval_max 30 s) and the database's own ceiling ([database] retry_interval_max,
2 s by default), and the default [database] timeouts.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid

import amqp
import kombu
import psycopg2
import pytest

from consumer.db import engine as db_engine_module
from consumer.db import migrate
from lab.pg_pair import PgPair, postgresql_installed
from lifecycle_common.health import Status
from tests.conftest import ServiceThread, require_service
from tests.support import consumer_run

pytestmark = pytest.mark.integration

DATABASE = "lifecycle"
HOSTS = ("compute-a", "compute-b", "compute-c")
RATE = 150.0  # events per second, over the hosts in turn
CONVERGED_WITHIN = 5.0  # seconds from the promotion to the first batch committed after it
OUTAGE = 3.0  # seconds the database stays away before the promotion (after it is noticed)


@pytest.fixture
def pg_pair():
    """A started PgPair, destroyed at the end; skips (fails under CI=true) without
    PostgreSQL 15's programs."""
    require_service("PostgreSQL 15 (initdb, pg_ctl, pg_basebackup)", postgresql_installed)
    pair = PgPair()
    try:
        yield pair.start()
    finally:
        pair.destroy()


class Publisher:
    """Publishes instance events at ``RATE`` per second from a thread of its own (its own
    connection, publisher confirms); ``published`` holds the (host, epoch, seq) of every
    event the broker confirmed."""

    def __init__(self, isolation):
        self._isolation = isolation
        self.published: list[tuple[str, int, int]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop publishing; fails the test if publishing failed."""
        self.halt()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the publisher did not stop"
        assert self.error is None, f"the publisher failed: {self.error!r}"

    def halt(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seqs = {host: itertools.count(1) for host in HOSTS}
        try:
            with kombu.Connection(self._isolation.url, connect_timeout=5) as conn:
                channel = conn.channel()
                next_at = time.monotonic()
                for host in itertools.cycle(HOSTS):
                    if self._stop.wait(max(0.0, next_at - time.monotonic())):
                        return
                    next_at += 1 / RATE
                    seq = next(seqs[host])
                    body = consumer_run.instance_event(host, seq, str(uuid.uuid4()))
                    channel.basic_publish_confirm(
                        amqp.Message(body, delivery_mode=2),
                        exchange=self._isolation.exchange, routing_key=consumer_run.ROUTING_KEY)
                    self.published.append((host, consumer_run.EPOCH, seq))
        except BaseException as exc:  # noqa: BLE001 - said by stop()
            self.error = exc


class JournalWatch:
    """Counts the journal rows on one server (the standby, to be the new primary), on a
    connection of its own that survives the promotion."""

    def __init__(self, server):
        self._server = server
        self._conn = None

    def count(self) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = self._server.connect(DATABASE)
        with self._conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM journal")
            return cursor.fetchone()[0]

    def rows(self) -> list[tuple]:
        with self._server.connect(DATABASE) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT host, epoch, seq, outcome FROM journal")
            return cursor.fetchall()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()


def _run_failover(pair: PgPair, isolation, wait_for, fence) -> dict:
    pair.create_database(DATABASE)
    schema_engine = db_engine_module.create(pair.primary.url(DATABASE))
    try:
        migrate.sync(schema_engine)
    finally:
        schema_engine.dispose()
    pair.wait_for_standby()  # the journal is read there
    engine = db_engine_module.create(pair.multi_host_url(DATABASE))  # the default timeouts
    topology = consumer_run.declared_queue(isolation)
    service = consumer_run.service(isolation, topology, engine, retry_max=30.0)
    running = ServiceThread(service, "consumer")
    publisher = Publisher(isolation).start()
    journal = JournalWatch(pair.standby)
    try:
        wait_for(lambda: journal.count() >= 150, timeout=30,
                 message=lambda: f"a steady state: {journal.count()} journaled on the standby")

        fence(pair)  # the primary goes away; batches are held meanwhile
        wait_for(lambda: (since := service.database.batches.down_since) is not None
                 and time.monotonic() - since >= OUTAGE, timeout=30,
                 message=lambda: f"an outage of {OUTAGE}s: {service.health().summary()}")
        health = service.health()
        assert health.status is Status.DEGRADED, health.summary()
        before = journal.count()
        backlog = len(publisher.published)

        promote_called = time.monotonic()
        promoted = pair.promote()
        wait_for(lambda: journal.count() > before, timeout=30, interval=0.005,
                 message="a batch committed on the new primary")
        first_commit = time.monotonic()
        wait_for(lambda: journal.count() >= backlog, timeout=30, interval=0.005,
                 message="the backlog journaled")
        caught_up = time.monotonic()

        # Still under load after the failover, then every event published accounted for.
        wait_for(lambda: len(publisher.published) >= backlog + 150, timeout=30)
        publisher.stop()
        published = list(publisher.published)
        wait_for(lambda: journal.count() >= len(published), timeout=30,
                 message=lambda: f"{len(published)} journaled, have {journal.count()}")
        wait_for(lambda: service.health().status is Status.OK, timeout=15,
                 message=lambda: f"health ok again: {service.health().summary()}")
    finally:
        publisher.halt()
        running.stop()
        journal.close()
        engine.dispose()

    rows = journal.rows()
    keys = [row[:3] for row in rows]
    assert len(keys) == len(set(keys)), "an event journaled twice"
    lost = set(published) - set(keys)
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert set(keys) == set(published)
    assert {row[3] for row in rows} == {"applied"}  # each applied once, none stale
    with pair.standby.connect(DATABASE) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT uuid) FROM instances")
        assert cursor.fetchone() == (len(published), len(published))
    assert isolation.message_count(topology.queue) == 0
    assert isolation.message_count(f"{topology.queue}.dlq") == 0
    assert not service.dead_letters
    return {"published": len(published),
            "promote": promoted - promote_called,
            "first_commit": first_commit - promote_called,
            "first_commit_after_writable": first_commit - promoted,
            "backlog": caught_up - promote_called}


def _report(case: str, figures: dict) -> None:
    print(f"\n{case}: {figures['published']} events, 0 lost, 0 twice; promotion took "
          f"{figures['promote']:.2f}s; first batch committed on the new primary "
          f"{figures['first_commit']:.2f}s after pg_ctl promote "
          f"({figures['first_commit_after_writable']:.2f}s after it accepted writes); "
          f"the backlog of the outage journaled after {figures['backlog']:.2f}s")


def test_primary_stopped_then_standby_promoted(pg_pair, amqp_isolation, wait_for):
    figures = _run_failover(pg_pair, amqp_isolation, wait_for, PgPair.stop_primary)
    _report("primary stopped", figures)
    assert figures["first_commit"] < CONVERGED_WITHIN


def test_primary_fenced_read_only_then_standby_promoted(pg_pair, amqp_isolation, wait_for):
    """The old primary keeps running and answering, read-only: the consumer's pooled
    connections to it are replaced (a pre-ping would pass), and libpq's
    target_session_attrs=read-write passes it by for the promoted standby."""
    figures = _run_failover(pg_pair, amqp_isolation, wait_for, PgPair.make_primary_read_only)
    _report("primary read-only", figures)
    assert figures["first_commit"] < CONVERGED_WITHIN
    assert pg_pair.primary.query("SHOW default_transaction_read_only") == [("on",)]
