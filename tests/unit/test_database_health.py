"""The consumer's database check: degraded while the database is away or slow, however
long; failing only when a call does not return despite the timeouts, or the liveness
thread died (what a restart fixes). And the liveness thread that records it."""

from __future__ import annotations

import threading

import pytest

from consumer.database_health import SLOW_AFTER, DatabaseHealth, check
from consumer.errors import DatabaseUnavailable
from consumer.liveness import HostLiveness
from lifecycle_common.health import Status

FAILING_AFTER = 60.0


def test_ok_while_both_users_reach_it():
    result = check(DatabaseHealth(), now=100.0, failing_after=FAILING_AFTER)
    assert (result.name, result.status, result.detail) == (
        "database", Status.OK, "the database: reachable")


def test_unreachable_is_degraded_however_long_and_says_what():
    db = DatabaseHealth()
    db.batches.down(100.0, "connection refused")
    db.batches.down(105.0, "could not connect: no read-write host")  # the first moment stays
    for later in (1.0, 12.3, 3600.0):
        result = check(db, now=100.0 + later, failing_after=FAILING_AFTER)
        assert result.status is Status.DEGRADED
        assert result.detail == (f"the database: unavailable for {later:.1f}s: could not "
                                 "connect: no read-write host")
    db.batches.up()
    assert check(db, now=5000.0, failing_after=FAILING_AFTER).status is Status.OK


def test_a_batch_waiting_on_the_database_is_degraded_once_it_waited_long():
    db = DatabaseHealth()
    db.batch_began(100.0, 50)
    assert check(db, now=100.0 + SLOW_AFTER - 0.1, failing_after=FAILING_AFTER).status is Status.OK
    result = check(db, now=108.1, failing_after=FAILING_AFTER)
    assert result.status is Status.DEGRADED
    assert result.detail == ("the database: a batch of 50 has waited 8.1s on the database "
                             "(held, not acked)")
    db.batch_ended()
    assert check(db, now=200.0, failing_after=FAILING_AFTER).status is Status.OK


def test_liveness_and_batches_are_told_apart():
    """A lock on the instances holds batches while liveness, on the hosts, still works:
    a successful liveness pass does not hide the held batch."""
    db = DatabaseHealth()
    db.batches.down(100.0, "canceling statement due to lock timeout")
    db.liveness.up()
    result = check(db, now=103.0, failing_after=FAILING_AFTER)
    assert result.status is Status.DEGRADED
    assert "lock timeout" in result.detail
    db.batches.up()
    db.liveness.down(100.0, "server closed the connection")
    result = check(db, now=103.0, failing_after=FAILING_AFTER)
    assert result.detail == ("the database: host liveness: unavailable for 3.0s: server "
                             "closed the connection")
    assert db.down_since == 100.0


def test_a_call_that_does_not_return_is_failing():
    db = DatabaseHealth()
    db.call_since = 100.0
    assert check(db, now=100.0 + FAILING_AFTER - 1, failing_after=FAILING_AFTER).status \
        is not Status.FAILING
    result = check(db, now=100.0 + FAILING_AFTER + 1.5, failing_after=FAILING_AFTER)
    assert result.status is Status.FAILING
    assert result.detail == ("a call to the database by the consume loop has not returned "
                             "for 61.5s despite the timeouts (failing after 60s)")
    db.call_since = None
    db.liveness_call_since = 100.0
    result = check(db, now=200.0, failing_after=FAILING_AFTER)
    assert result.status is Status.FAILING and "host liveness" in result.detail


class _Store:
    """Store's two liveness queries, answering as told."""

    def __init__(self):
        self.silent: list[str] = []
        self.error: Exception | None = None
        self.passes = threading.Semaphore(0)

    def mark_silent_hosts_down(self, down_after):
        self.passes.release()
        if self.error is not None:
            raise self.error
        silent, self.silent = self.silent, []
        return silent

    def count_hosts(self):
        return {"up": 3, "down": 1}


def _passes(store: _Store, count: int) -> None:
    for _ in range(count):
        assert store.passes.acquire(timeout=5), "no liveness pass"


def test_liveness_runs_on_its_own_schedule_and_records_reachability():
    store, db = _Store(), DatabaseHealth()
    liveness = HostLiveness(store, down_after=0.15, database=db)
    assert liveness.interval == pytest.approx(0.05)  # down_after / 3: hosts down on time
    assert HostLiveness(store, down_after=30, database=db).interval == 5.0  # at most
    liveness.start()
    try:
        _passes(store, 2)
        assert liveness.host_counts == {"up": 3, "down": 1}
        store.error = DatabaseUnavailable("canceling statement due to statement timeout")
        _passes(store, 2)
        assert db.liveness.snapshot()[1] == "canceling statement due to statement timeout"
        store.error = None
        _passes(store, 2)
    finally:
        liveness.stop()
    assert db.liveness.down_since is None
    assert check(db, now=1e9, failing_after=FAILING_AFTER).status is Status.OK


def test_a_liveness_thread_that_died_is_failing():
    store, db = _Store(), DatabaseHealth()
    store.error = RuntimeError("a bug")
    liveness = HostLiveness(store, down_after=30, database=db)
    liveness.start()
    _passes(store, 1)
    liveness.stop()
    result = check(db, now=1.0, failing_after=FAILING_AFTER)
    assert result.status is Status.FAILING
    assert result.detail.startswith("the host liveness thread died (RuntimeError: a bug)")
