"""[agent] stopped_event_delay: a STOPPED event is held back and dropped if a later
event of the same domain comes first (a reboot), released when its time comes."""

from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import Event
from lifecycle_publisher.outbox_writer import StoppedDelay


def ev(seq, uuid="u1", event=Event.STOPPED):
    return DomainEvent(seq=seq, occurred_at=0.0, uuid=uuid, name="vm", event=int(event), detail=0)


def test_no_delay_passes_everything_at_once():
    delay = StoppedDelay(0)
    assert delay.admit(ev(1), now=0) == [ev(1)]
    assert delay.next_due() is None


def test_stopped_is_held_until_due():
    delay = StoppedDelay(5)
    assert delay.admit(ev(1), now=100) == []
    assert delay.next_due() == 105
    assert delay.due(now=104.9) == []
    assert delay.due(now=105) == [ev(1)]
    assert delay.next_due() is None


def test_a_later_event_of_the_same_domain_cancels_the_stop():
    delay = StoppedDelay(5)
    delay.admit(ev(1), now=100)
    started = ev(2, event=Event.STARTED)
    assert delay.admit(started, now=101) == [started]
    assert delay.due(now=200) == []


def test_other_domains_do_not_cancel_and_are_not_held():
    delay = StoppedDelay(5)
    delay.admit(ev(1, uuid="a"), now=100)
    other = ev(2, uuid="b", event=Event.SUSPENDED)
    assert delay.admit(other, now=100) == [other]
    assert delay.due(now=105) == [ev(1, uuid="a")]


def test_a_second_stop_replaces_the_first_and_restarts_the_clock():
    delay = StoppedDelay(5)
    delay.admit(ev(1), now=100)
    delay.admit(ev(2), now=103)
    assert delay.due(now=105) == []
    assert delay.due(now=108) == [ev(2)]


def test_release_all_returns_held_stops_in_sequence_order():
    delay = StoppedDelay(5)
    delay.admit(ev(3, uuid="b"), now=100)
    delay.admit(ev(1, uuid="a"), now=100)
    assert delay.release_all() == [ev(1, uuid="a"), ev(3, uuid="b")]
    assert delay.next_due() is None


def test_inventories_are_never_held():
    delay = StoppedDelay(5)
    marker = object()
    assert delay.admit(marker, now=0) == [marker]
