"""The bookkeeping of an outbox that cannot be written, and the disk health check: pure,
tested by table."""

from __future__ import annotations

import pytest

from lifecycle_common.health import Status
from lifecycle_publisher.observability import disk_check
from lifecycle_publisher.outbox import Held
from lifecycle_publisher.outbox_outage import (Outage, OutboxOutage, Space, Throttle,
                                               describe_space)

FULL = "database or disk is full"


def outage(**kwargs) -> OutboxOutage:
    return OutboxOutage(rand=lambda: 1.0, **kwargs)  # no jitter: the step itself


def test_the_first_failure_begins_the_outage_and_only_the_first():
    o = outage()
    assert o.failed(FULL, now=10.0) is True
    assert o.failed(FULL, now=11.0) is False
    assert o.current == Outage(since=10.0, reason=FULL)
    o.failed("disk I/O error", now=12.0)
    assert o.current == Outage(since=10.0, reason="disk I/O error")


def test_retries_back_off_to_a_few_seconds():
    o = outage(retry_max=5.0)
    delays = []
    for now in range(8):
        o.failed(FULL, now=float(now))
        delays.append(o.next_retry - now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_a_trial_write_that_works_waits_the_longest_before_the_next():
    o = outage(retry_max=5.0)
    o.failed(FULL, now=0.0)
    o.probed(now=1.0)
    assert o.next_retry == 6.0 and o.current is not None  # nothing real written yet


def test_every_lost_event_is_counted_and_the_first_of_each_interval_logged():
    o = outage(summary_interval=60.0, logged_per_interval=3)
    o.failed(FULL, now=0.0)
    logged = [o.lose_event() for _ in range(5)]
    assert logged == [True, True, True, False, False]
    assert o.current.lost == o.lost_total == 5
    assert o.summary_due(now=59.0) is None  # the loud first line said it all
    summary = o.summary_due(now=60.0)
    assert (summary.outage.lost, summary.unlogged) == (5, 2)
    assert o.summary_due(now=61.0) is None
    assert [o.lose_event() for _ in range(4)] == [True, True, True, False]
    assert o.summary_due(now=120.0).unlogged == 1


def test_a_write_that_works_ends_the_outage_and_says_what_it_cost():
    o = outage()
    o.failed(FULL, now=5.0)
    o.lose_event()
    o.lose_event()
    assert o.written() == Outage(since=5.0, reason=FULL, lost=2)
    assert (o.current, o.next_retry) == (None, None)
    assert o.written() is None
    # The next outage starts afresh; the counter goes on.
    assert o.failed(FULL, now=100.0) is True
    o.lose_event()
    assert (o.current.lost, o.lost_total) == (1, 3)
    assert o.next_retry == 100.5


def test_throttle():
    t = Throttle(10.0)
    assert [t.due(now) for now in (0.0, 5.0, 10.0, 15.0, 20.0)] == [True, False, True,
                                                                    False, True]
    t.reset()
    assert t.due(21.0)


@pytest.mark.parametrize("space, text", [
    (Space(free=0, total=1 << 20), "0 B free of 1.0 MiB"),
    (Space(free=12 * 1024, total=50 << 30), "12.0 KiB free of 50.0 GiB"),
    (None, "free space unknown"),
])
def test_describe_space(space, text):
    assert describe_space(space) == text


def test_the_disk_check_is_degraded_while_the_disk_refuses_never_failing():
    ok = disk_check("/s/outbox.sqlite", None, None, now=100.0)
    assert (ok.name, ok.status) == ("disk", Status.OK)
    full = disk_check("/s/outbox.sqlite", Outage(since=87.7, reason=FULL, lost=57), None,
                      now=100.0)
    assert full.status is Status.DEGRADED
    assert full.detail == ("outbox at /s/outbox.sqlite cannot be written since 12.3s: "
                           "database or disk is full; 57 events not written")
    days = disk_check("/s/outbox.sqlite", Outage(since=0.0, reason=FULL), None, now=1e6)
    assert days.status is Status.DEGRADED
    held = disk_check("/s/outbox.sqlite", None, Held(rows=4, since=90.0, reason=FULL),
                      now=100.0)
    assert held.status is Status.DEGRADED
    assert held.detail == ("outbox at /s/outbox.sqlite: 4 confirmed rows cannot be deleted "
                           "since 10.0s: database or disk is full")


def test_only_the_first_lost_inventory_of_an_outage_is_logged_all_are_counted():
    o = outage()
    o.failed(FULL, now=0.0)
    assert [o.lose_inventory() for _ in range(3)] == [True, False, False]
    assert o.current.inventories == 3 and o.lost_total == 0  # events only in the counter
    o.written()
    o.failed(FULL, now=10.0)
    assert o.lose_inventory() is True
