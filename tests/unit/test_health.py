"""Health: checks folded into one status; thresholds on outages and on the outbox's age."""

from __future__ import annotations

from lifecycle_common import health
from lifecycle_common.health import Status


def test_a_dependency_away_is_degraded_however_long_never_failing():
    """A restart would not bring libvirt, the broker or the database back."""
    assert health.connection("broker", "the broker", None, 100.0).status is Status.OK
    degraded = health.connection("broker", "the broker", 90.0, 100.0, "events wait")
    assert degraded.status is Status.DEGRADED
    assert degraded.detail == "the broker: unreachable for 10.0s; events wait"
    a_day = health.connection("libvirt", "libvirt", 100.0, 100.0 + 86400)
    assert a_day.status is Status.DEGRADED


def test_the_outbox_age_has_two_thresholds():
    assert health.age("outbox", "row", None, 10, 300).status is Status.OK
    assert health.age("outbox", "row", 5.0, 10, 300).status is Status.OK
    assert health.age("outbox", "row", 10.0, 10, 300).status is Status.DEGRADED
    assert health.age("outbox", "row", 300.0, 10, 300).status is Status.FAILING


def test_an_outbox_waiting_for_an_absent_broker_is_never_failing():
    waiting = health.age("outbox", "row", 3600.0, 10, None, "the broker is away")
    assert waiting.status is Status.DEGRADED
    assert "the broker is away" in waiting.detail


def test_a_dead_thread_fails():
    assert health.threads("threads", [], None).status is Status.OK
    dead = health.threads("threads", ["publisher"], None)
    assert dead.status is Status.FAILING and "publisher" in dead.detail
    assert health.threads("threads", [], "thread x died").detail == "thread x died"


def test_the_report_is_its_worst_check_and_serialises_every_check():
    report = health.report([
        health.Check("a", Status.OK, "fine"),
        health.Check("b", Status.DEGRADED, "slow"),
    ])
    assert report.status is Status.DEGRADED and not report.failing
    assert report.as_dict() == {"status": "degraded", "checks": {
        "a": {"status": "ok", "detail": "fine"}, "b": {"status": "degraded", "detail": "slow"}}}
    assert report.summary() == "degraded (b: slow)"
    assert health.report([]).status is Status.OK
    failing = health.report([*report.checks, health.Check("c", Status.FAILING, "gone")])
    assert failing.failing and failing.summary() == "failing (b: slow; c: gone)"


def test_an_outage_remembers_when_it_began():
    outage = health.Outage(down_since=None)
    outage.down(5.0)
    outage.down(9.0)
    assert outage.down_since == 5.0
    outage.up()
    assert outage.down_since is None
