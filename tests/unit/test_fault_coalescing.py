"""The fault coalescer, by table: the first occurrence of a key at once, the rest of a
storm as one summary per interval (count, first time, last seq), keys independent, a
quiet key forgotten, interval 0, release at stop, and the cap on keys."""

import pytest

from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher.domain_event import DomainFault
from lifecycle_publisher.fault_coalescing import FaultCoalescer, coalescing_key

VM, OTHER = "6695eb01-f6a4-8304-79aa-97f2502e193f", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def io_error(seq, at, device="vda", reason="eio", uuid=VM, action=1, path="/d"):
    return DomainFault(seq=seq, occurred_at=at, uuid=uuid, name="vm", fault=Fault.IO_ERROR,
                       codes=(path, device, action, reason))


def fault(seq, at, kind, codes=(), uuid=VM):
    return DomainFault(seq=seq, occurred_at=at, uuid=uuid, name="vm", fault=kind, codes=codes)


def summary(last, count, first_at):
    return DomainFault(seq=last.seq, occurred_at=last.occurred_at, uuid=last.uuid,
                       name=last.name, fault=last.fault, codes=last.codes, count=count,
                       first_occurred_at=first_at)


def test_the_first_occurrence_is_written_at_once():
    c = FaultCoalescer(1.0)
    first = io_error(1, 100.0)
    assert c.admit(first, now=10.0) == [first]
    assert c.next_due() == 11.0 and len(c) == 1


def test_a_storm_gives_one_summary_per_interval_with_count_first_and_last():
    c = FaultCoalescer(1.0)
    assert c.admit(io_error(1, 100.0), now=10.0) == [io_error(1, 100.0)]
    storm = [io_error(seq, 100.0 + seq / 100) for seq in range(2, 12)]  # 10 within the window
    for i, f in enumerate(storm):
        assert c.admit(f, now=10.0 + i / 20) == []
    assert c.due(now=10.99) == []
    assert c.due(now=11.0) == [summary(storm[-1], 10, storm[0].occurred_at)]
    # the summary opened a new window: the next occurrence waits for it
    later = io_error(20, 101.5)
    assert c.admit(later, now=11.5) == []
    assert c.next_due() == 12.0
    assert c.due(now=12.0) == [summary(later, 1, later.occurred_at)]
    assert c.coalesced == {"io_error": 9}  # 10 occurrences in one notification, then 1 in 1


def test_a_window_ended_with_nothing_pending_forgets_its_key():
    c = FaultCoalescer(1.0)
    c.admit(io_error(1, 100.0), now=10.0)
    assert c.due(now=11.0) == [] and len(c) == 0 and c.next_due() is None
    again = io_error(2, 105.0)
    assert c.admit(again, now=15.0) == [again]  # at once, as a first occurrence


def test_an_ended_window_met_by_admit_before_due_is_closed_first():
    c = FaultCoalescer(1.0)
    c.admit(io_error(1, 100.0), now=10.0)
    pending = io_error(2, 100.5)
    c.admit(pending, now=10.5)
    late = io_error(3, 101.2)
    # the window ended at 11: its summary first; the late one is pending in the next
    assert c.admit(late, now=11.2) == [summary(pending, 1, pending.occurred_at)]
    assert c.release_all() == [summary(late, 1, late.occurred_at)]


def test_after_a_quiet_window_the_next_occurrence_is_written_at_once_even_without_due():
    c = FaultCoalescer(1.0)
    c.admit(io_error(1, 100.0), now=10.0)
    again = io_error(2, 103.0)
    assert c.admit(again, now=13.0) == [again]


@pytest.mark.parametrize(("a", "b"), [
    (io_error(1, 0.0, device="vda"), io_error(2, 0.0, device="vdb")),
    (io_error(1, 0.0, reason="eio"), io_error(2, 0.0, reason="enospc")),
    (io_error(1, 0.0), io_error(2, 0.0, uuid=OTHER)),
    (fault(1, 0.0, Fault.WATCHDOG, (1,)), fault(2, 0.0, Fault.WATCHDOG, (2,))),
    (fault(1, 0.0, Fault.MEMORY_FAILURE, (1, 1, 0)),
     fault(2, 0.0, Fault.MEMORY_FAILURE, (1, 1, 1))),
    (fault(1, 0.0, Fault.REBOOTED), fault(2, 0.0, Fault.CONTROL_ERROR)),
    (fault(1, 0.0, Fault.REBOOTED), fault(2, 0.0, Fault.REBOOTED, uuid=OTHER)),
], ids=["device", "reason", "instance", "watchdog action", "memory flags", "fault",
        "reboot instance"])
def test_keys_are_independent(a, b):
    c = FaultCoalescer(1.0)
    assert c.admit(a, now=0.0) == [a]
    assert c.admit(b, now=0.0) == [b]
    assert len(c) == 2


@pytest.mark.parametrize(("a", "b"), [
    (io_error(1, 0.0, action=1, path="/a"), io_error(2, 0.0, action=2, path="/b")),
    (fault(1, 0.0, Fault.REBOOTED), fault(2, 0.0, Fault.REBOOTED)),
    (fault(1, 0.0, Fault.CONTROL_ERROR), fault(2, 0.0, Fault.CONTROL_ERROR)),
    (fault(1, 0.0, Fault.WATCHDOG, (1,)), fault(2, 0.0, Fault.WATCHDOG, (1,))),
], ids=["io_error: path and action do not part", "reboot", "control error", "watchdog"])
def test_occurrences_of_one_key_are_coalesced(a, b):
    c = FaultCoalescer(1.0)
    assert c.admit(a, now=0.0) == [a]
    assert c.admit(b, now=0.0) == []
    assert c.due(now=1.0) == [summary(b, 1, b.occurred_at)]  # the last's fields


def test_the_guest_agent_is_never_coalesced():
    c = FaultCoalescer(1.0)
    events = [fault(i, 0.0, Fault.GUEST_AGENT, (1 + i % 2, 2)) for i in range(1, 5)]
    assert [out for e in events for out in c.admit(e, now=0.0)] == events
    assert coalescing_key(events[0]) is None and len(c) == 0


def test_interval_zero_coalesces_nothing():
    c = FaultCoalescer(0.0)
    storm = [io_error(seq, 0.0) for seq in range(1, 6)]
    assert [out for f in storm for out in c.admit(f, now=0.0)] == storm
    assert len(c) == 0 and c.next_due() is None and c.release_all() == []


def test_due_summaries_come_in_seq_order():
    c = FaultCoalescer(1.0)
    c.admit(io_error(1, 0.0, device="vda"), now=0.0)
    c.admit(io_error(2, 0.0, device="vdb"), now=0.1)
    c.admit(io_error(4, 0.0, device="vda"), now=0.2)
    c.admit(io_error(3, 0.0, device="vdb"), now=0.3)  # (an out-of-order seq, for the test)
    assert [f.seq for f in c.due(now=5.0)] == [3, 4]


def test_release_all_writes_every_pending_summary_and_forgets_every_key():
    c = FaultCoalescer(1.0)
    c.admit(io_error(1, 0.0, device="vda"), now=0.0)
    c.admit(io_error(2, 0.0, device="vdb"), now=0.0)
    c.admit(io_error(3, 0.5, device="vda"), now=0.5)
    c.admit(io_error(4, 0.6, device="vda"), now=0.6)
    assert c.release_all() == [summary(io_error(4, 0.6, device="vda"), 2, 0.5)]
    assert len(c) == 0 and c.next_due() is None


def test_past_the_cap_the_window_ending_first_is_closed_early():
    c = FaultCoalescer(1.0, max_keys=2)
    c.admit(io_error(1, 0.0, device="a"), now=0.0)
    pending = io_error(2, 0.1, device="a")
    c.admit(pending, now=0.1)
    c.admit(io_error(3, 0.2, device="b"), now=0.2)
    third = io_error(4, 0.3, device="c")
    # "a" ends first: its pending occurrence is written now, its key given up
    assert c.admit(third, now=0.3) == [summary(pending, 1, 0.1), third]
    assert len(c) == 2
    assert c.due(now=10.0) == []  # b and c had nothing pending


def test_a_burst_holds_one_key_whatever_its_size():
    c = FaultCoalescer(1.0)
    written = []
    for seq in range(1, 50_001):
        now = seq / 10_000  # 10,000 a second for 5 s
        written += c.admit(io_error(seq, 1000.0 + now), now=now)
        written += c.due(now)
        assert len(c) == 1
    written += c.release_all()
    assert sum(f.count for f in written) == 50_000
    assert len(written) <= 7  # the first, one a second, the rest at stop
    assert written[-1].seq == 50_000
