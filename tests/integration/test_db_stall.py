"""A database that stops answering without an error: a lock held on ``instances`` by
another session. The consumer's timeouts turn the stall into 'database unavailable':
the batch is held (unacked, not dead-lettered), the health says degraded with what, a
host whose heartbeats stopped is still marked down on time (liveness has its own thread
and connection, and ``hosts`` is not locked), and once the lock goes everything is
applied. On the machine's PostgreSQL and MariaDB."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from consumer import database_health
from consumer.db import engine as db_engine_module
from consumer.db.engine import Timeouts
from lifecycle_common.health import Status
from tests.conftest import ServiceThread
from tests.support import consumer_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True),
]

TIMEOUTS = Timeouts(connect=2, statement=1.0, lock=0.5)
DOWN_AFTER = 1.5  # liveness every 0.5 s
SILENT, BUSY = "compute-silent", "compute-busy"


class TableLock:
    """Another session holding ``instances`` locked (PostgreSQL: ACCESS EXCLUSIVE in an
    open transaction; MariaDB: LOCK TABLES ... WRITE) until ``release``. Its engine has
    no timeouts of ours: an idle-in-transaction timeout would end the holder."""

    def __init__(self, url: str):
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self._conn = self._engine.raw_connection()
        self._postgresql = self._engine.dialect.name == "postgresql"
        cursor = self._conn.cursor()
        if self._postgresql:
            cursor.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")  # psycopg2 began
        else:
            cursor.execute("LOCK TABLES instances WRITE")
        self.held = True

    def release(self) -> None:
        if self.held:
            if not self._postgresql:
                self._conn.cursor().execute("UNLOCK TABLES")
            self._conn.rollback()
            self._conn.close()
            self._engine.dispose()
            self.held = False


def test_a_lock_on_instances_holds_the_batch_and_hosts_still_go_down(db_url, amqp_isolation,
                                                                     wait_for):
    engine = db_engine_module.create(db_url, TIMEOUTS)
    topology = consumer_run.declared_queue(amqp_isolation)
    service = consumer_run.service(amqp_isolation, topology, engine, host_down_after=DOWN_AFTER)
    running = ServiceThread(service, "consumer")
    lock = None
    try:
        vm = str(uuid.uuid4())
        amqp_isolation.publish(consumer_run.heartbeat(SILENT, 0))
        amqp_isolation.publish(consumer_run.instance_event(BUSY, 1, vm))
        wait_for(lambda: consumer_run.host_status(engine, SILENT) == "up"
                 and len(consumer_run.journal_keys(engine)) == 1, timeout=15,
                 message="the heartbeat and the first event applied")
        last_beat = time.monotonic()  # SILENT beats no more from here

        lock = TableLock(db_url)
        locked = time.monotonic()
        amqp_isolation.publish(consumer_run.instance_event(BUSY, 2, vm, paused=True))
        # Degraded soon: the first lock (or statement) timeout.
        wait_for(lambda: service.health().status is Status.DEGRADED, timeout=10,
                 interval=0.02, message=lambda: f"degraded: {service.health().summary()}")
        degraded = time.monotonic() - locked

        # The silent host goes down on time, although every batch waits on the lock.
        wait_for(lambda: consumer_run.host_status(engine, SILENT) == "down",
                 timeout=DOWN_AFTER + service.liveness.interval + 3,
                 message="the silent host marked down while the apply is stuck")
        down_after = time.monotonic() - last_beat
        print(f"\nhealth degraded {degraded:.2f}s after the lock was taken; silent host "
              f"marked down {down_after:.2f}s after its last heartbeat (host_down_after "
              f"{DOWN_AFTER}s, liveness every {service.liveness.interval}s)")
        assert lock.held and down_after < DOWN_AFTER + service.liveness.interval + 2

        # Degraded, saying what, and never failing: the broker's queue holds the batch.
        report = service.health()
        assert report.status is Status.DEGRADED, report.summary()
        database = next(check for check in report.checks if check.name == "database")
        assert database.status is Status.DEGRADED
        assert "the database: unavailable for" in database.detail, database.detail
        assert any(sign in database.detail for sign in ("lock timeout", "max_statement_time",
                                                        "Lock wait timeout")), database.detail
        report = wait_for(lambda: "a batch of 1 has waited" in (r := service.health()).summary()
                          and r, timeout=database_health.SLOW_AFTER + 5,
                          message=lambda: f"the wait told: {service.health().summary()}")
        assert report.status is Status.DEGRADED
        print(f"health while the lock is held: {report.summary()}")

        # Held: not applied, not dead-lettered, still unacked (the broker would give it
        # to another consumer only when this one goes).
        assert len(consumer_run.journal_keys(engine)) == 1
        assert amqp_isolation.message_count(f"{topology.queue}.dlq") == 0
        assert not service.dead_letters and service.stats.dead_lettered == 0
        assert service.health().status is Status.DEGRADED

        lock.release()
        wait_for(lambda: len(consumer_run.journal_keys(engine)) == 2, timeout=15,
                 message="the held event applied once the lock went")
        wait_for(lambda: service.health().status is Status.OK, timeout=15,
                 message=lambda: f"health ok again: {service.health().summary()}")
    finally:
        if lock is not None:
            lock.release()
        running.stop()
        engine.dispose()
    assert amqp_isolation.message_count(topology.queue) == 0  # all acked
    assert amqp_isolation.message_count(f"{topology.queue}.dlq") == 0
